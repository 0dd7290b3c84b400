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
        description="Stage 1: DP depth shrinking (or a baseline) and width importance ranking on real "
        "calibration text. The DP checkpoints each finished row beside --out; --resume continues it.",
    )
    add_model_argument(parser)
    parser.add_argument("--data", help="calibration text: .txt, .jsonl or .json (default: the embedded KJV corpus)")
    parser.add_argument(
        "--method",
        choices=DEPTH_METHODS,
        default="dp",
        help="depth selection (default dp, the paper's recurrence); validated: DP, block influence and one-shot "
        "perplexity propose on half the calibration chunks and the lowest perplexity on the other half wins",
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
        default=True,
        help="keep the best set per ending (last layer kept / removed), which reaches runs of neighbouring "
        "layers; --no-split-ends is the paper's DP at about half the time (default: on)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the data split and random methods (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="chunks per forward pass (default 4)")
    parser.add_argument("--resume", action="store_true", help="continue the DP from the checkpoint beside --out")
    parser.add_argument("--out", required=True, help="plan JSON to write (atomically)")
    parser.set_defaults(run=run)


def checkpoint_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".dp-checkpoint.json")


def _load_checkpoint(path: Path, key: dict):
    """The DP table saved at ``path`` if it was made with the same model, data and settings."""
    from amoebasearch.plan.depth import DPTable

    if not path.is_file():
        print(f"no DP checkpoint at {path}: starting afresh", file=sys.stderr)
        return None
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
        table = DPTable.from_dict(data["table"])
    except (KeyError, TypeError, ValueError):
        raise unreadable from None
    print(f"resuming the DP from row {table.rows_done} of {table.num_layers + 1}", file=sys.stderr)
    return table


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from amoebasearch.data import calibration_split, read_documents
    from amoebasearch.models import load, model_signature
    from amoebasearch.plan import make_plan

    out = Path(args.out)
    check_output_path(out, "--out")
    ckpt = checkpoint_path(out)
    if ckpt.is_dir():
        raise UsageError(f"the DP checkpoint beside --out, {ckpt}, is a folder: remove it or pick another --out")
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
    }
    runs_dp = args.method in ("dp", "validated")
    table = _load_checkpoint(ckpt, key) if args.resume and runs_dp else None

    bar = tqdm(total=num_layers + 1, desc="DP rows", unit="row", disable=not runs_dp, file=sys.stderr)
    bar.update(table.rows_done if table else 0)

    def on_row(partial) -> None:
        atomic.write_json(ckpt, {"key": key, "table": partial.to_dict()})
        bar.update(partial.rows_done - bar.n)

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
        table=table,
        on_row=on_row,
        beam=args.beam,
        split_ends=args.split_ends,
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
    """The validation perplexity of the chosen set beside each method's own proposal, per depth."""
    sources = ["dp", "bi", "ppl"]
    lines = [
        "validation perplexity (calibration text not used to propose the sets):",
        f"{'depth':>5} {'chosen':>9} " + " ".join(f"{name:>8}" for name in sources) + "  from",
    ]
    for depth, scores in sorted(per_depth.items(), key=lambda item: -int(item[0])):
        chosen = scores["chosen"]
        lines.append(
            f"{depth:>5} {scores[chosen]:9.2f} " + " ".join(f"{scores[name]:8.2f}" for name in sources) + f"  {chosen}"
        )
    return "\n".join(lines)
