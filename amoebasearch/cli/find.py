"""`amoebasearch find --budget 30ms`: the best subnet for a latency budget on one device/runtime."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from amoebasearch import atomic
from amoebasearch.cli.common import add_model_argument, add_plan_argument, positive_int, positive_int_up_to
from amoebasearch.devices import check_device, check_device_name, default_runtime
from amoebasearch.errors import UsageError
from amoebasearch.search.budget import parse_budget
from amoebasearch.search.find import METRICS
from amoebasearch.search.margin import parse_margin
from amoebasearch.search.quality import METRIC_LABELS
from amoebasearch.search.study import SAMPLERS
from amoebasearch.userfiles import check_output_path

PHASES = ("decode", "prefill")
MAX_EVAL_ITEMS = 10_000  # a cap with a reason beats a run that never ends


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "find",
        help="search the shape space for the best subnet under a latency budget",
        description="Latency comes from a profile table (measured for this device first, else estimated); "
        "quality is held-out perplexity or multiple-choice accuracy through the supernet, cached in the "
        "Optuna storage so any later budget or device reuses it.",
    )
    parser.add_argument("--budget", required=True, help="latency budget: 30ms, 0.03s, 2.5ms or 30 (ms)")
    parser.add_argument(
        "--margin",
        default="auto",
        help="share of the budget kept free for prediction error: auto (default: the 95th percentile of "
        "how far held-out subnets ran over their prediction in the table's validation file; 0 without "
        "one), or a percentage such as 3%%",
    )
    parser.add_argument("--profile", help="latency table CSV (default: pick one for --device/--runtime)")
    parser.add_argument("--profiles", default="profiles", help="folder searched for tables (default profiles/)")
    parser.add_argument("--device", help="device whose table to use (default cpu)")
    parser.add_argument("--runtime", help="runtime whose table to use (default: cudagraph on CUDA, eager on CPU)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads the subnet will run at (default: the runtime's own default here); picks the table "
        "timed at that count and refuses one timed at another",
    )
    parser.add_argument("--phase", choices=PHASES, default="decode", help="what the budget is for (default decode)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size of the table point (default 1)")
    parser.add_argument("--context", type=positive_int, default=128, help="context length (default 128)")
    parser.add_argument("--supernet", help="supernet directory from `amoebasearch train`")
    add_model_argument(parser)
    add_plan_argument(parser)
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="ppl",
        help="quality: held-out perplexity (ppl, default), response perplexity on held-out instruction pairs "
        "(instruct) or multiple-choice accuracy (accuracy)",
    )
    parser.add_argument(
        "--data",
        help="ppl: held-out text; instruct: Alpaca/ShareGPT pairs (its last ones, which train never reads); "
        "accuracy: multiple-choice JSONL (context/question/ctx, endings/choices, label/answer/gold). Default: "
        "the embedded corpus (accuracy: a cloze task on its held-out chapters; instruct: the supernet's "
        "training data, else the embedded ShareGPT pairs)",
    )
    parser.add_argument("--eval-tokens", type=positive_int, default=2048, help="ppl: held-out tokens per shape (2048)")
    parser.add_argument(
        "--eval-items",
        type=positive_int_up_to(MAX_EVAL_ITEMS, "each item costs a forward pass per choice per shape (200: 20-51 s)"),
        default=200,
        help=f"accuracy: items per shape; instruct: held-out pairs per shape (200, at most {MAX_EVAL_ITEMS:,})",
    )
    parser.add_argument("--trials", type=positive_int, default=60, help="Optuna trials (default 60)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler (default tpe)")
    parser.add_argument("--pareto", action="store_true", help="multi-objective study (quality, latency)")
    parser.add_argument("--storage", help="Optuna storage: postgresql://…, sqlite:///f.db or f.journal")
    parser.add_argument("--study", help="study name (default: derived from table, point, budget)")
    parser.add_argument("--out", default="runs/find", help="run directory: storage, shape JSON, front CSV")
    parser.add_argument(
        "--export", metavar="DIR", help="write the chosen subnet: a Hugging Face model, or with --format gguf a GGUF"
    )
    parser.add_argument(
        "--format",
        choices=("hf", "gguf"),
        default="hf",
        help="--export as a Hugging Face model directory (hf, default) or one GGUF file for llama.cpp (gguf)",
    )
    parser.add_argument(
        "--quant",
        choices=("q4_k_m", "q8_0", "f16", "f32"),
        help="llamacpp: the GGUF quantisation deployed (picks that table; default: the table's); "
        "--format gguf: the export's (default: the llamacpp table's, else q8_0)",
    )
    parser.add_argument("--verify", action="store_true", help="measure the chosen subnet on the device")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from amoebasearch.fronts import write_qualities
    from amoebasearch.profile.runtimes import RUNTIMES
    from amoebasearch.profile.table import load_table
    from amoebasearch.search.find import FindRequest, find, known_qualities
    from amoebasearch.search.tables import check_table_matches

    budget_ms = parse_budget(args.budget)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # --verify runs on the device now; otherwise it only names whose table to search
    device = check_device(args.device or "cpu") if args.verify else check_device_name(args.device or "cpu")
    if args.runtime is not None and args.runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {args.runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if args.profile and (args.device or args.runtime):
        check_table_matches(load_table(args.profile), args.device and device, args.runtime)
    check_output_path(Path(args.out), "--out", folder=True)
    if args.format == "gguf" and not args.export:
        raise UsageError("--format gguf is the format of --export DIR: add --export, or drop --format")
    if args.export:
        from amoebasearch.export import check_export_dir

        check_export_dir(args.export, "--export")  # what the export will refuse, refused before the search
        export, out = Path(args.export).resolve(), Path(args.out).resolve()
        if export == out or export in out.parents or out in export.parents:
            raise UsageError(
                f"--export {args.export} and --out {args.out} overlap: the export replaces its folder whole, "
                "so give each its own path"
            )
    if args.supernet and args.plan:
        raise UsageError("--plan comes from the supernet directory: pass --supernet or --plan, not both")
    request = FindRequest(
        budget_ms=budget_ms,
        margin=parse_margin(args.margin),
        table=args.profile,
        profiles=Path(args.profiles),
        device=device,
        runtime=args.runtime or default_runtime(device),
        phase=args.phase,
        batch=args.batch,
        context=args.context,
        supernet=args.supernet,
        model=args.model,
        plan=args.plan,
        data=args.data,
        metric=args.metric,
        eval_tokens=args.eval_tokens,
        eval_items=args.eval_items,
        trials=args.trials,
        sampler=args.sampler,
        pareto=args.pareto,
        storage=args.storage,
        study=args.study,
        out=Path(args.out),
        export=args.export,
        verify=args.verify,
        seed=args.seed,
        progress=not args.json,
        threads=args.threads,
        quant=args.quant,
        export_format=args.format,
    )
    start = time.perf_counter()
    report = find(request, warn=lambda message: print(message, file=sys.stderr))
    report["wall_s"] = round(time.perf_counter() - start, 2)
    out = Path(args.out)
    atomic.write_json(out / "best_shape.json", report["best"]["shape"])
    atomic.write_json(out / "find.json", report)
    front = pd.DataFrame([{**c["shape"], "depth": len(c["shape"]["layers"]), **c} for c in report["front"]])
    front = front.drop(columns=["shape"]) if not front.empty else front
    atomic.write_text(out / "pareto.csv", front.to_csv(index=False))
    write_qualities(known_qualities(request), out / "qualities.csv")  # for `amoebasearch plot fronts`
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    best = report["best"]
    print(
        f"best subnet for {budget_ms:g} ms ({args.phase}, batch {args.batch}, context {args.context}): "
        f"depth={len(best['shape']['layers'])} heads={best['shape']['heads']} ffn={best['shape']['ffn']}"
    )
    at = f", {report['threads']} threads" if report.get("threads") else ""
    print(f"  predicted latency {best['latency_ms']:.3f} ms from {report['table']} ({report['table_source']}{at})")
    if report["margin_pct"]:
        print(
            f"  searched under {report['search_budget_ms']:.3f} ms: a {report['margin_pct']:.1f}% margin "
            f"for prediction error ({report['margin_source']}; --margin 0 to search the whole budget)"
        )
    else:
        print(f"  no margin for prediction error ({report['margin_source']})")
    if report["metric"] == "accuracy":
        print(f"  multiple-choice accuracy {best['quality']:.3f} ({best['quality']:.1%})")
    else:
        print(f"  {METRIC_LABELS[report['metric']]} {best['quality']:.3f}")
    if "quality_gguf" in best:
        print(f"  held-out perplexity of its GGUF in llama.cpp {best['quality_gguf']:.3f}")
    print(
        f"  {report['trials']} trials, {report['evaluations']} new quality evaluations "
        f"({report['cached_shapes']} shapes cached), {report['wall_s']:.1f}s"
    )
    if report.get("verify"):
        v = report["verify"]
        rounds = ", ".join(f"{m:.3f}" for m in v["round_medians_ms"])
        verdict = "within" if v["within_budget"] else "OVER"
        where = f" in llama.cpp ({v['quant']})" if v.get("quant") else ""
        threads = f" at {v['threads']} threads" if v.get("threads") else ""
        print(
            f"  measured {v['measured_ms']:.3f} ms{where}{threads}, {verdict} budget "
            f"(predicted {v['predicted_ms']:.3f}, {v['error_pct']:+.1f}%; round medians {rounds} ms)"
        )
    if report.get("export"):
        print(f"  exported to {report['export']}")
    print(
        f"  wrote {out / 'best_shape.json'}, {out / 'pareto.csv'} ({len(report['front'])} front points), "
        f"{out / 'qualities.csv'} (`amoebasearch plot fronts --qualities` draws them per device)"
    )
    return 0
