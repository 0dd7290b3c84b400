"""`amoebasearch eval --tasks hellaswag --supernet S --shape best_shape.json`: one subnet's scores on
lm-evaluation-harness tasks; `--write-task DIR` writes the default cloze task as an lm-eval task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from amoebasearch.cli.options import add_option, option_fields
from amoebasearch.errors import UsageError
from amoebasearch.search.request import QualitySettings
from amoebasearch.userfiles import check_output_path

# the flags `eval` shares with `find`: which weights, which tasks, how many items
FIELDS = ("supernet", "model", "plan", "tasks", "tasks_dir", "eval_items")


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "eval",
        help="score one subnet on lm-evaluation-harness tasks",
        description="Scores a shape of a trained supernet (--supernet), of a plan-only base model (--plan, "
        "--model), or a whole exported subnet (--model DIR) on lm-eval tasks, in place through the supernet and "
        "exactly as `find --metric lm-eval` scores each shape: acc_norm per task (acc where a task reports no "
        "acc_norm) and their mean. --write-task DIR writes amoebasearch's default cloze task as the lm-eval task "
        "amoebasearch_cloze, which plain lm-eval runs too: lm_eval --model hf --model_args "
        "pretrained=EXPORTED_DIR --include_path DIR --tasks amoebasearch_cloze",
    )
    for config_field in option_fields(QualitySettings):
        if config_field.name in FIELDS:
            add_option(parser, config_field)
    parser.add_argument(
        "--shape",
        help="the subnet: DEPTH/HEADS/FFN such as 24/6/1024 (the plan's layers for that depth), or a shape JSON "
        "file such as find's best_shape.json (default: the whole model)",
    )
    parser.add_argument(
        "--write-task",
        metavar="DIR",
        help="write the default cloze task (--eval-items items) to DIR as amoebasearch_cloze.yaml + .jsonl; "
        "with --tasks, evaluate too (DIR is then the --tasks-dir)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from amoebasearch.search.evaluate import evaluate_tasks, write_cloze_task

    written = None
    if args.write_task:
        check_output_path(Path(args.write_task), "--write-task", folder=True)
        written = write_cloze_task(args.write_task, args.eval_items)
        if not args.json:
            print(
                f"wrote the lm-eval task amoebasearch_cloze ({args.eval_items} items) to {written}; run it with "
                f"lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path {args.write_task} "
                "--tasks amoebasearch_cloze"
            )
        if args.tasks is None:
            if args.json:
                print(json.dumps({"task": "amoebasearch_cloze", "yaml": str(written)}, indent=1))
            return 0
    if not args.tasks:
        raise UsageError("no tasks: give --tasks T1,T2 (`lm-eval ls tasks` lists them), or --write-task DIR")
    given = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    request = QualitySettings(**given | {"tasks_dir": args.tasks_dir or args.write_task})
    report = evaluate_tasks(request, args.shape)
    if written is not None:
        report["task_yaml"] = str(written)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    shape = report["shape"]
    source = f"supernet {report['supernet']}" if report["supernet"] else report["model"]
    print(f"depth={len(shape['layers'])} heads={shape['heads']} ffn={shape['ffn']} of {source}:")
    width = max(len("task"), *(len(score["task"]) for score in report["tasks"]))
    print(f"  {'task':<{width}}  {'metric':<8}  {'value':>6}  {'items':>5}")
    for score in report["tasks"]:
        print(f"  {score['task']:<{width}}  {score['metric']:<8}  {score['value']:>6.4f}  {score['items']:>5}")
    if len(report["tasks"]) > 1:
        print(f"  {'mean':<{width}}  {'':<8}  {report['quality']:>6.4f}")
    print(f"  {report['wall_s']:.1f}s")
    return 0
