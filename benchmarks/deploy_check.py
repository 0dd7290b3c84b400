"""Do latency budgets hold where the subnet is deployed?

Seeded random subnets of a plan are exported twice, as a Hugging Face model directory and as a
GGUF file, and each is timed in the engine a user would serve it with: plain `transformers`
(reloaded with ``AutoModelForCausalLM``, its own forward and KV cache) at the eager table's
thread count, and llama.cpp at the llama.cpp table's quantisation and threads. Each measurement
(`amoebasearch.search.deploy.verify`, the one `find --verify` makes) is set against the matching
table's prediction: one row per subnet and engine, with ``error_pct`` (predicted vs measured).

    python benchmarks/deploy_check.py --eager-table T.csv --llamacpp-table T.csv [--subnets 20]

Writes benchmarks/results/deploy_check{tag}.csv and .json (settings, summary, machine).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from transformers import AutoModelForCausalLM

from amoebasearch import atomic, models
from amoebasearch.export import extract, save_subnet
from amoebasearch.export_gguf import write_gguf
from amoebasearch.planfile import Plan
from amoebasearch.profile.blocks import Point
from amoebasearch.profile.fingerprint import device_fingerprint
from amoebasearch.profile.predict import predict_latency, table_space
from amoebasearch.profile.table import load_table
from amoebasearch.search.deploy import table_quant, verify

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PLAN = RESULTS / "plan-dp-importance-512tok.json"


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (results name no machine's folders)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eager-table", type=Path, required=True, help="this CPU's eager table (transformers)")
    parser.add_argument("--llamacpp-table", type=Path, required=True, help="this CPU's llamacpp table")
    parser.add_argument("--plan", type=Path, default=PLAN, help="plan whose layer and width orderings cut the subnets")
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--context", type=int, default=128, help="decode at this context (a point of both tables)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)

    loaded = models.load(models.DEFAULT_MODEL)
    plan = Plan.load(args.plan, loaded.model.config)
    tables = {"transformers": load_table(args.eager_table), "llama.cpp": load_table(args.llamacpp_table)}
    space = table_space(tables["transformers"], plan.ordering)
    rng = random.Random(args.seed)
    shapes = [space.sample(rng) for _ in range(args.subnets)]
    point = Point("decode", 1, args.context)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as scratch:
        for index, shape in enumerate(shapes):
            subnet = extract(loaded.model, shape, plan.ordering)
            folder = save_subnet(subnet, Path(scratch) / f"hf-{index}", loaded.tokenizer)
            plain = AutoModelForCausalLM.from_pretrained(folder).eval()  # nothing of ours left in the model
            quant = table_quant(tables["llama.cpp"])
            gguf = write_gguf(subnet, loaded.tokenizer, Path(scratch) / f"{index}.gguf", quant)
            for engine, table in tables.items():
                predicted = predict_latency(shape, table, "decode", 1, args.context) / 1000.0
                measured = verify(table, plain, predicted, point, "cpu", gguf=gguf if engine == "llama.cpp" else None)
                rows.append(
                    {
                        "subnet": index,
                        "engine": engine,
                        "depth": shape.depth,
                        "heads": shape.heads,
                        "ffn": shape.ffn,
                        "threads": measured["threads"],
                        "weights": table_quant(table) or table.meta.get("dtype"),
                        "predicted_ms": measured["predicted_ms"],
                        "measured_ms": measured["measured_ms"],
                        "error_pct": measured["error_pct"],
                    }
                )
                row = rows[-1]
                print(f"{index:2d} {engine:12s} {shape}: {row['predicted_ms']:.3f} ms predicted, "
                      f"{row['measured_ms']:.3f} measured ({row['error_pct']:+.1f} %)", flush=True)  # fmt: skip
    frame = pd.DataFrame(rows)
    summary = {
        engine: {
            "subnets": len(group),
            "within_5pct": round(float((group["error_pct"].abs() <= 5).mean()), 3),
            "within_10pct": round(float((group["error_pct"].abs() <= 10).mean()), 3),
            "mape_pct": round(float(group["error_pct"].abs().mean()), 2),
            "median_error_pct": round(float(group["error_pct"].median()), 2),
            "table": shown(tables[engine].path),
        }
        for engine, group in frame.groupby("engine")
    }
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"deploy_check{args.tag}"
    atomic.write_text(f"{stem}.csv", frame.to_csv(index=False))
    meta = {
        "settings": {k: shown(v) if isinstance(v, Path) else str(v) for k, v in vars(args).items()},
        "summary": summary,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": device_fingerprint("cpu"),
    }
    atomic.write_text(f"{stem}.json", json.dumps(meta, indent=1) + "\n")
    print(f"wrote {stem}.csv and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
