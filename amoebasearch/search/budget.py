"""Parse latency budgets as users type them: ``30ms``, ``30 ms``, ``0.03s``, ``2.5ms``, ``30`` (ms)."""

from __future__ import annotations

import math
import re

from amoebasearch.errors import UsageError

_BUDGET = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|us|µs)?\s*$", re.IGNORECASE)
_TO_MS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}


def parse_budget(text: str) -> float:
    """The budget in milliseconds; a bare number means milliseconds."""
    match = _BUDGET.match(str(text))
    if not match:
        raise UsageError(f"budget {text!r} is not a latency: write e.g. 30ms, 0.03s or 30 (milliseconds)")
    value = float(match["number"]) * _TO_MS[(match["unit"] or "ms").lower()]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"budget {text!r} must be a positive latency, e.g. 30ms")
    return value
