"""The finished rounds of an interleaved group that is still being timed, kept on disk.

All decoder widths of one grid point are timed as one interleaved group (drift then moves every
row alike), and on a 2-core CPU that group takes minutes: without this log a profile killed
near its end would lose all of them. Every few seconds, between rounds, the raw samples of the
complete rounds are written atomically beside the table; ``--resume`` times only the rounds
that are missing and the log is removed once the group's rows are in the table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from amoebasearch import atomic


def rounds_path(table_path: Path) -> Path:
    return Path(table_path).with_suffix(".rounds.json")


class RoundLog:
    """Samples of one group's complete rounds, saved at most every ``every_s`` seconds (and on interrupt).

    ``key`` names the group (grid point, programs in their timing order, repeats): a log left by
    a different group, or by a run with other settings, is never resumed from.
    """

    def __init__(self, path: Path, key: dict[str, Any], every_s: float = 10.0) -> None:
        self.path = Path(path)
        self.key = key
        self.every_s = every_s
        self.latest: list[list[float]] | None = None
        self._saved_at = time.monotonic()

    def load(self) -> list[list[float]] | None:
        """The samples a killed run of this same group finished, or None."""
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if data.get("key") != self.key:
            return None
        return data["samples"]

    def record(self, samples: list[list[float]]) -> None:
        """`timing.sample_interleaved`'s ``on_round``: remember the rounds, write now and then."""
        self.latest = samples
        if time.monotonic() - self._saved_at >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.latest is None:
            return
        rounds = min(len(s) for s in self.latest)  # complete rounds only
        atomic.write_json(self.path, {"key": self.key, "samples": [s[:rounds] for s in self.latest]})
        self._saved_at = time.monotonic()
