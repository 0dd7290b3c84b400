"""The finished rounds of an interleaved group that is still being timed, kept on disk.

All decoder widths of one grid point are timed as one interleaved group (drift then moves every
row alike), and on a 2-core CPU that group takes minutes: without this log a profile killed
near its end would lose all of them. Every 10 seconds, between rounds, the raw samples of the
complete rounds are written atomically beside the table; ``--resume`` times only the rounds
that are missing and the log is removed once the group's rows are in the table.

After a resume a program's samples come from two allocations of its weights (the killed
process's and the new one's), so the row blends them: the kind of difference the median over
``--instances`` copies is meant to absorb, and a kill's only cost beyond the lost rounds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from amoebasearch import atomic


def rounds_path(table_path: Path) -> Path:
    """Where a table's unfinished group keeps its rounds: beside the table, named after it."""
    return Path(table_path).with_suffix(".rounds.json")


class RoundLog:
    """Samples of one group's complete rounds, saved at most every ``every_s`` seconds (and on interrupt).

    ``key`` names the group and how it is timed (grid point, widths in timing order, instances,
    repeats, threads, runtime): a log left by another group, or by a run with other settings, is
    never resumed from. The file is only a cache: one that cannot be read, or does not hold
    ``programs`` lists of complete rounds, is ignored, and one that cannot be written costs the
    resume, not the run.
    """

    def __init__(self, path: Path, key: dict[str, Any], programs: int, repeats: int, every_s: float = 10.0) -> None:
        self.path = Path(path)
        self.key = {**key, "programs": programs, "repeats": repeats}
        self.programs = programs
        self.repeats = repeats
        self.every_s = every_s
        # the harness's own lists, which it keeps appending to: read, never changed, here
        self._samples: list[list[float]] | None = None
        self._saved_at = time.monotonic()
        self._broken = False

    def load(self) -> list[list[float]] | None:
        """The samples a killed run of this same group finished, or None."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict) or data.get("key") != self.key:
            return None
        samples = data.get("samples")
        if not self._complete_rounds(samples):
            return None
        return samples

    def _complete_rounds(self, samples: Any) -> bool:
        if not isinstance(samples, list) or len(samples) != self.programs:
            return False
        if not all(isinstance(s, list) for s in samples) or len({len(s) for s in samples}) != 1:
            return False
        if len(samples[0]) > self.repeats:
            return False
        return all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0
            for s in samples
            for x in s
        )

    def record(self, samples: list[list[float]]) -> None:
        """`timing.sample_interleaved`'s ``on_round``: remember the rounds, write now and then."""
        self._samples = samples
        if time.monotonic() - self._saved_at >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the complete rounds so far (a round cut short by an interrupt is left out)."""
        if self._samples is None or self._broken:
            return
        rounds = min(len(s) for s in self._samples)
        data = {"key": self.key, "samples": [s[:rounds] for s in self._samples]}
        try:
            atomic.write_text(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as err:  # a full disk or a read-only folder: keep timing, without the log
            self._broken = True
            print(f"warning: cannot keep finished rounds in {self.path} ({err}); a kill now loses the group",
                  file=sys.stderr)  # fmt: skip
        self._saved_at = time.monotonic()
