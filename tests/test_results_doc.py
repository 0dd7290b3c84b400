"""docs/results.md and the README's headline results are what benchmarks/results/ says today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_results_doc_is_current():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "results_doc.py"), "--check"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
