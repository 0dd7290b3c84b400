"""Wall time of `amoebasearch plan` at its defaults, for 8 and for 15 removed layers.

Runs the whole command (model load, calibration split, depth selection, width ranking, plan file)
as a user would, on the embedded model and calibration text, once per ``--max-remove``:

    python benchmarks/plan_wall_time.py [--max-remove 8,15] [--tag=-amd-epyc-2026-12-04]

Writes benchmarks/results/plan_wall_time{tag}.json: per removal bound, the command's wall time,
the plan's own time (`metrics.wall_time_s`), its settings and per-depth choice, and the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fingerprint import machine

from amoebasearch import atomic
from amoebasearch.cli.profile import comma_list

RESULTS = Path(__file__).resolve().parent / "results"


def timed_plan(max_remove: int, folder: Path) -> dict:
    out = folder / f"plan-r{max_remove}.json"
    command = [sys.executable, "-m", "amoebasearch", "plan", "--max-remove", str(max_remove), "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    plan = json.loads(out.read_text())
    validation = plan["metrics"].get("depth_validation", {})
    return {
        "command": "amoebasearch plan --max-remove " + str(max_remove) + " --out plan.json",
        "command_wall_s": round(wall, 1),
        "plan_wall_s": plan["metrics"]["wall_time_s"],
        "depth_method": plan["depth_method"],
        "calibration": plan["calibration"],
        "chosen_from": {depth: row["chosen"] for depth, row in validation.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-remove", type=comma_list(int), default=[8, 15])
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for max_remove in args.max_remove:
            runs[str(max_remove)] = timed_plan(max_remove, Path(folder))
            print(f"--max-remove {max_remove}: {runs[str(max_remove)]['command_wall_s']} s", flush=True)
    path = RESULTS / f"plan_wall_time{args.tag}.json"
    atomic.write_text(path, json.dumps({"runs": runs, "machine": machine()}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
