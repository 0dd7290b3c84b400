"""`amoebasearch find --budget 30ms`: the best subnet for a latency budget on one device/runtime."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from amoebasearch import atomic
from amoebasearch.cli.options import add_options, build
from amoebasearch.devices import check_device, check_device_name, default_runtime
from amoebasearch.errors import UsageError
from amoebasearch.quality import METRIC_LABELS
from amoebasearch.search.budget import parse_budget
from amoebasearch.search.margin import parse_margin
from amoebasearch.search.request import FindRequest
from amoebasearch.userfiles import check_output_path


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "find",
        help="search the shape space for the best subnet under a latency budget",
        description="Latency comes from a profile table (measured for this device first, else estimated); "
        "quality (held-out perplexity, instruction perplexity, multiple-choice accuracy or lm-eval tasks) "
        "is measured through the supernet and cached in the Optuna storage, so any later budget or device "
        "reuses it.",
    )
    parser.add_argument("--budget", required=True, help="latency budget: 30ms, 0.03s, 2.5ms or 30 (ms)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_options(parser, FindRequest)
    parser.set_defaults(run=run)


def request_from(args: argparse.Namespace) -> FindRequest:
    """The request the flags ask, with what needs checking or deriving: the budget and margin parsed,
    the device checked (on this machine only for --verify), the runtime defaulted for that device."""
    from amoebasearch.profile.runtimes import RUNTIMES
    from amoebasearch.profile.table import load_table
    from amoebasearch.search.tables import check_table_matches

    budget_ms = parse_budget(args.budget)
    # --verify runs on the device now; otherwise it only names whose table to search
    device = check_device(args.device or "cpu") if args.verify else check_device_name(args.device or "cpu")
    if args.runtime is not None and args.runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {args.runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if args.table and (args.device or args.runtime):
        check_table_matches(load_table(args.table), args.device and device, args.runtime)
    check_output_path(args.out, "--out", folder=True)
    if args.export_format == "gguf" and not args.export:
        raise UsageError("--format gguf is the format of --export DIR: add --export, or drop --format")
    if args.export:
        from amoebasearch.export import check_export_dir

        check_export_dir(args.export, "--export")  # what the export will refuse, refused before the search
        export, out = Path(args.export).resolve(), args.out.resolve()
        if export == out or export in out.parents or out in export.parents:
            raise UsageError(
                f"--export {args.export} and --out {args.out} overlap: the export replaces its folder whole, "
                "so give each its own path"
            )
    if args.supernet and args.plan:
        raise UsageError("--plan comes from the supernet directory: pass --supernet or --plan, not both")
    return build(
        FindRequest,
        args,
        budget_ms=budget_ms,
        margin=parse_margin(args.margin),
        device=device,
        runtime=args.runtime or default_runtime(device),
        progress=not args.json,
    )


def run(args: argparse.Namespace) -> int:
    import optuna

    from amoebasearch.search.find import find, quality_identity
    from amoebasearch.search.qualities import known_qualities, write_qualities

    request = request_from(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    identity = quality_identity(request)  # reads the config, hashes adapter weights: once for both uses
    report = find(request, warn=lambda message: print(message, file=sys.stderr), identity=identity)
    report["wall_s"] = round(time.perf_counter() - start, 2)
    out = request.out
    atomic.write_json(out / "best_shape.json", report["best"]["shape"])
    atomic.write_json(out / "find.json", report)
    front = pd.DataFrame([{**c["shape"], "depth": len(c["shape"]["layers"]), **c} for c in report["front"]])
    front = front.drop(columns=["shape"]) if not front.empty else front
    atomic.write_text(out / "pareto.csv", front.to_csv(index=False))
    write_qualities(known_qualities(request, identity), out / "qualities.csv")  # for `amoebasearch plot fronts`
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    best = report["best"]
    point = f"{request.phase}, batch {request.batch}, context {request.context}"
    print(
        f"best subnet for {request.budget_ms:g} ms ({point}): "
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
    how = (
        "picked by the quality model fitted on the cache (--explore runs the sampler's trials)"
        if report["guided"]
        else f"{report['trials']} trials ({report['new_trials']} run now)"
    )
    print(
        f"  {report['evaluations']} new quality evaluations ({report['cached_shapes']} shapes cached), "
        f"{how}, {report['wall_s']:.1f}s"
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
