"""Build the programs of one interleaved group without letting the kernel kill the run.

A group holds every program it times at once: every width of a grid point times ``--instances``
independently allocated copies (72 widths x 3 copies for SmolLM2 at the default FFN step). For
ONNX Runtime a copy is a session with its own weights (about 47 MB per decoder stack on the
AMD EPYC VM), so ``--instances 9`` asked for some 30 GB on a 24 GB machine, and the kernel's
out-of-memory killer ended the run with no message at all. Watching the memory the machine
still has while the programs are built turns that into a one-line error that names the fix,
before any timing starts (so nothing measured is lost).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from amoebasearch.errors import UsageError

T = TypeVar("T")
MEMINFO = Path("/proc/meminfo")
FLOOR_BYTES = 1 << 30  # stop while at least this much (or 5 % of the machine) is still free
FLOOR_SHARE = 0.05


def meminfo() -> dict[str, int]:
    """``MemTotal`` and ``MemAvailable`` in bytes (Linux); empty where the kernel does not say."""
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            out[key] = int(value.split()[0]) * 1024
    return out


def build_within_memory(
    builds: Iterable[T], total: int, fix: str, read: Callable[[], dict[str, int]] | None = None
) -> list[T]:
    """Everything ``builds`` yields (``total`` items), or a `UsageError` saying ``fix`` as soon as
    the machine's available memory (``read``, default `meminfo`) falls under its floor."""
    built = []
    for item in builds:
        built.append(item)
        info = (read or meminfo)()
        if "MemAvailable" not in info:
            continue
        floor = max(FLOOR_BYTES, FLOOR_SHARE * info.get("MemTotal", 0))
        if info["MemAvailable"] < floor:
            raise UsageError(
                f"memory ran low building a group of {total} programs timed together: "
                f"{info['MemAvailable'] / 2**30:.1f} GiB left after {len(built)} of them; {fix}"
            )
    return built
