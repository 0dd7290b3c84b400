"""The import contracts in pyproject.toml hold: imports only go down the floors, no two modules or
packages import each other in a loop, and the pure table modules stay pure. A new upward import
(function-level ones included) fails here, as it fails `lint-imports` in `make lint`."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_contract_is_kept():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    script = Path(sys.executable).with_name("lint-imports")  # the console script of this environment
    result = subprocess.run(
        [str(script), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout
