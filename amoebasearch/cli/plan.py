"""`amoebasearch plan`: choose the layers of every depth and rank heads/channels; write the plan JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from amoebasearch import atomic
from amoebasearch.cli.common import add_model_argument, positive_int
from amoebasearch.errors import UsageError
from amoebasearch.userfiles import check_output_path


def register(verbs: argparse._SubParsersAction) -> None:
    from amoebasearch.plan import DEPTH_METHODS, METRICS, WIDTH_METHODS
    from amoebasearch.plan.metrics import DEFAULT_CALIBRATION_TOKENS, DEFAULT_METRIC

    parser = verbs.add_parser(
        "plan",
        help="select layers per depth and rank heads/channels on calibration text",
        description="Stage 1: depth shrinking (the paper's DP checked against published layer-dropping "
        "criteria on held-back calibration chunks, or one method alone) and width importance ranking on real "
        "calibration text. The DP checkpoints each finished row beside --out; --resume continues it.",
    )
    add_model_argument(parser)
    parser.add_argument("--data", help="calibration text: .txt, .jsonl or .json (default: the embedded KJV corpus)")
    parser.add_argument(
        "--method",
        choices=DEPTH_METHODS,
        default="validated",
        help="depth selection (default validated: per depth, the DP's set or a published baseline's, whichever "
        "holds best on calibration text it was not fitted on; dp: the paper's recurrence on all chunks)",
    )
    parser.add_argument(
        "--width-method", choices=WIDTH_METHODS, default="importance", help="head/channel ranking (default importance)"
    )
    parser.add_argument(
        "--metric", choices=METRICS, default=DEFAULT_METRIC, help=f"the DP's metric (default {DEFAULT_METRIC})"
    )
    parser.add_argument(
        "--tokens",
        type=positive_int,
        default=DEFAULT_CALIBRATION_TOKENS,
        help=f"calibration tokens (default {DEFAULT_CALIBRATION_TOKENS})",
    )
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per calibration chunk (default 256)")
    parser.add_argument(
        "--max-remove", type=int, help="most layers any depth removes (default: half the layers); bounds the DP table"
    )
    parser.add_argument(
        "--beam", type=positive_int, default=1, help="layer sets kept per DP cell (default 1: the paper's DP)"
    )
    parser.add_argument(
        "--split-ends",
        action=argparse.BooleanOptionalAction,
        help="keep the best set per ending (last layer kept / removed), which reaches runs of neighbouring "
        "layers at about twice the DP's time (default: on with --method dp, off with validated)",
    )
    parser.add_argument(
        "--search-dtype",
        choices=("bfloat16", "float32"),
        default="bfloat16",
        help="dtype of the depth search passes (default bfloat16: about half the time of float32 on CPUs with "
        "bf16 units, same choices within noise; see docs)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the data split and random methods (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="chunks per forward pass (default 4)")
    parser.add_argument("--resume", action="store_true", help="continue the DP from the checkpoint beside --out")
    parser.add_argument("--out", required=True, help="plan JSON to write (atomically)")
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
    import torch
    from tqdm import tqdm

    from amoebasearch.data import calibration_split, read_documents
    from amoebasearch.models import load, model_signature
    from amoebasearch.plan import make_plan

    out = Path(args.out)
    check_output_path(out, "--out")
    ckpt = checkpoint_path(out)
    if ckpt.is_dir():
        raise UsageError(f"the DP checkpoint beside --out, {ckpt}, is a folder: remove it or pick another --out")
    from amoebasearch.plan.select import default_split_ends

    if args.split_ends is None:
        args.split_ends = default_split_ends(args.method)
    docs = read_documents(args.data)  # reject a bad data file before the slow model load
    loaded = load(args.model)
    split = calibration_split(loaded.tokenizer, args.data, args.seq_len, args.tokens, 0, args.seed, docs=docs)
    num_layers = loaded.dims.num_layers
    key = {
        "model": model_signature(loaded.model.config),
        "data": split.fingerprint(),
        "metric": args.metric,
        "max_remove": args.max_remove,
        "beam": args.beam,
        "split_ends": args.split_ends,
        "method": args.method,
        "search_dtype": args.search_dtype,
    }
    dp_runs = int(args.method in ("dp", "validated"))
    tables = _load_checkpoint(ckpt, key) if args.resume and dp_runs else {}

    bar = tqdm(total=(num_layers + 1) * dp_runs, desc="DP rows", unit="row", disable=not dp_runs, file=sys.stderr)
    bar.update(sum(t.rows_done for t in tables.values()))

    def on_row(name, partial) -> None:
        tables[name] = partial
        atomic.write_json(ckpt, {"key": key, "tables": {n: t.to_dict() for n, t in tables.items()}})
        bar.update(sum(t.rows_done for t in tables.values()) - bar.n)

    started = time.perf_counter()
    plan = make_plan(
        loaded.model,
        split,
        depth_method=args.method,
        width_method=args.width_method,
        metric=args.metric,
        max_remove=args.max_remove,
        seed=args.seed,
        batch_size=args.batch_size,
        tables=dict(tables),
        on_row=on_row,
        beam=args.beam,
        split_ends=args.split_ends,
        search_dtype=getattr(torch, args.search_dtype),
    )
    bar.close()
    plan.metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    plan.save(out)
    ckpt.unlink(missing_ok=True)
    depths = sorted(plan.ordering.layer_sets)
    print(
        f"planned {loaded.name}: depth method {args.method}, width method {args.width_method}, depths "
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
