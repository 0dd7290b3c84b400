"""`amoebasearch plan`: choose the layers of every depth and rank heads/channels; write the plan JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from amoebasearch import atomic
from amoebasearch.cli.common import add_model_argument
from amoebasearch.cli.options import add_options, build
from amoebasearch.errors import UsageError
from amoebasearch.plan import PlanConfig
from amoebasearch.userfiles import check_output_path


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "plan",
        help="select layers per depth and rank heads/channels on calibration text",
        description="Stage 1: depth shrinking (the paper's DP checked against published layer-dropping "
        "criteria on held-back calibration chunks, or one method alone) and width importance ranking on real "
        "calibration text. The DP checkpoints each finished row beside --out; --resume continues it.",
    )
    add_model_argument(parser)
    parser.add_argument("--resume", action="store_true", help="continue the DP from the checkpoint beside --out")
    parser.add_argument("--out", required=True, help="plan JSON to write (atomically)")
    add_options(parser, PlanConfig)
    parser.set_defaults(run=run)


def checkpoint_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".dp-checkpoint.json")


def _load_checkpoint(path: Path, key: dict) -> dict:
    """The DP tables saved at ``path`` (by run name) if they were made with the same model, data and settings."""
    from amoebasearch.plan.depth import DPTable

    if not path.is_file():
        print(f"no DP checkpoint at {path}: starting afresh", file=sys.stderr)
        return {}
    unreadable = UsageError(f"DP checkpoint {path} is unreadable: delete it and run without --resume")
    try:
        data = json.loads(path.read_text())
        saved_key = data["key"]
        if not isinstance(saved_key, dict):
            raise unreadable
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise unreadable from None
    if saved_key != key:
        changed = sorted(k for k in key if saved_key.get(k) != key[k])
        raise UsageError(
            f"DP checkpoint {path} was made with different {', '.join(changed)}: delete it or drop --resume"
        )
    try:
        tables = {str(name): DPTable.from_dict(table) for name, table in data["tables"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise unreadable from None
    done = ", ".join(f"{name} from row {t.rows_done} of {t.num_layers + 1}" for name, t in tables.items())
    print(f"resuming the DP: {done}", file=sys.stderr)
    return tables


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from amoebasearch.data import read_documents
    from amoebasearch.models import load, model_signature
    from amoebasearch.plan import make_plan

    out = Path(args.out)
    check_output_path(out, "--out")
    ckpt = checkpoint_path(out)
    if ckpt.is_dir():
        raise UsageError(f"the DP checkpoint beside --out, {ckpt}, is a folder: remove it or pick another --out")
    config = build(PlanConfig, args)
    docs = read_documents(config.data)  # reject a bad data file before the slow model load
    loaded = load(args.model)
    split = config.calibration(loaded.tokenizer, docs)
    num_layers = loaded.dims.num_layers
    key = {
        "model": model_signature(loaded.model.config),
        "data": split.fingerprint(),
        "metric": config.metric,
        "max_remove": config.max_remove,
        "beam": config.beam,
        "split_ends": config.split_ends,
        "method": config.depth_method,
        "search_dtype": config.search_dtype,
    }
    dp_runs = int(config.depth_method in ("dp", "validated"))
    tables = _load_checkpoint(ckpt, key) if args.resume and dp_runs else {}

    bar = tqdm(total=(num_layers + 1) * dp_runs, desc="DP rows", unit="row", disable=not dp_runs, file=sys.stderr)
    bar.update(sum(t.rows_done for t in tables.values()))

    def on_row(name, partial) -> None:
        tables[name] = partial
        atomic.write_json(ckpt, {"key": key, "tables": {n: t.to_dict() for n, t in tables.items()}})
        bar.update(sum(t.rows_done for t in tables.values()) - bar.n)

    started = time.perf_counter()
    plan = make_plan(loaded.model, split, config, tables=dict(tables), on_row=on_row)
    bar.close()
    plan.metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    plan.save(out)
    ckpt.unlink(missing_ok=True)
    depths = sorted(plan.ordering.layer_sets)
    print(
        f"planned {loaded.name}: depth method {config.depth_method}, width method {config.width_method}, depths "
        f"{depths[0]}..{depths[-1]}, {split.settings['calibration_tokens']} calibration tokens, "
        f"{plan.metrics['wall_time_s']} s -> {out}"
    )
    if "depth_validation" in plan.metrics:
        print(validation_report(plan.metrics["depth_validation"]))
    return 0


def validation_report(per_depth: dict[str, dict[str, float | str]]) -> str:
    """Per depth, each source's perplexity on the validation half of the calibration text and the one chosen."""
    sources = ["dp", "bi", "ppl"]
    lines = [
        "validation perplexity per depth (the DP fitted on the other half; it replaces the better baseline only "
        "where lower by more than the noise):",
        f"{'depth':>5} {'chosen':>9} " + " ".join(f"{name:>8}" for name in sources) + "  from",
    ]
    for depth, scores in sorted(per_depth.items(), key=lambda item: -int(item[0])):
        chosen = scores["chosen"]
        lines.append(
            f"{depth:>5} {scores[chosen]:9.2f} " + " ".join(f"{scores[name]:8.2f}" for name in sources) + f"  {chosen}"
        )
    return "\n".join(lines)
