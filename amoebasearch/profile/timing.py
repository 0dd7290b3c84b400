"""The timing harness: warm-up, many repeats, robust statistics.

Every latency in a table comes from `measure` (one program) or `measure_interleaved` (several
programs timed round-robin, so a slow drift of a shared machine hits all of them alike instead
of biasing whichever ran during the drift). CPU timing uses ``time.perf_counter_ns``; CUDA timing
uses CUDA events recorded on the current stream, synchronised once per repeat. Inputs come from
a ``make_input`` callable run *outside* the timed region, so every repeat sees fresh random data.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIN_REPEATS = 20
MAX_REPEAT_FACTOR = 10  # `sample_interleaved`'s ``min_seconds`` stretches ``repeats`` at most this much
SPREAD_LIMIT = 1.05  # p90/p10 above this flags a noisy measurement
COLLECTOR_POLICY = "cyclic garbage collector off while timing"  # recorded in a table's settings


@dataclass(frozen=True)
class Stats:
    """Summary of one program's repeated timings, in microseconds."""

    median_us: float
    p10_us: float
    p90_us: float
    repeats: int

    @property
    def spread(self) -> float:
        return self.p90_us / self.p10_us if self.p10_us > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return self.spread > SPREAD_LIMIT


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted values, q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples_us: Sequence[float]) -> Stats:
    ordered = sorted(samples_us)
    return Stats(
        median_us=statistics.median(ordered),
        p10_us=percentile(ordered, 10),
        p90_us=percentile(ordered, 90),
        repeats=len(ordered),
    )


def median_of_instances(instances: Sequence[Stats]) -> Stats:
    """One latency for several independently allocated instances of the same program.

    Medians (and percentiles) are taken over the instances' own statistics, so a single instance
    whose weights landed badly in memory moves the result by at most one rank.
    """
    if not instances:
        raise ValueError("no instances to combine")
    return Stats(
        median_us=statistics.median(s.median_us for s in instances),
        p10_us=statistics.median(s.p10_us for s in instances),
        p90_us=statistics.median(s.p90_us for s in instances),
        repeats=sum(s.repeats for s in instances),
    )


def instance_spread(instances: Sequence[Stats]) -> float:
    """Slowest over fastest instance median: how much the allocation alone moved this program."""
    medians = [s.median_us for s in instances]
    return max(medians) / min(medians)


class Clock:
    """Wall-clock timer for CPU work: ``start()`` returns a token, ``stop(token)`` microseconds."""

    def start(self) -> Any:
        return time.perf_counter_ns()

    def stop(self, token: Any) -> float:
        return (time.perf_counter_ns() - token) / 1000.0


class CudaClock(Clock):
    """CUDA-event timer: GPU time between two events on the current stream.

    ``start`` synchronises first so queued work from the previous repeat (or input creation)
    is not billed to this one; ``stop`` synchronises on the end event before reading it.
    """

    def __init__(self, device: Any = None) -> None:
        import torch

        self.torch = torch
        self.device = device

    def start(self) -> Any:
        torch = self.torch
        torch.cuda.synchronize(self.device)
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        return begin, end

    def stop(self, token: Any) -> float:
        begin, end = token
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) * 1000.0  # elapsed_time is in milliseconds


def clock_for(device: str) -> Clock:
    return CudaClock(device) if device.startswith("cuda") else Clock()


def measure(
    run: Callable[[Any], Any],
    make_input: Callable[[], Any],
    reset: Callable[[], Any] | None = None,
    *,
    clock: Clock | None = None,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    min_seconds: float = 0.0,
) -> Stats:
    """Time ``run(make_input())``: ``warmup`` untimed calls, then ``repeats`` timed ones (more to
    fill ``min_seconds``, see `sample_interleaved`)."""
    programs = [(run, make_input, reset)]
    return measure_interleaved(programs, clock=clock, warmup=warmup, repeats=repeats, min_seconds=min_seconds)[0]


def measure_interleaved(
    programs: Sequence[tuple[Callable[[Any], Any], Callable[[], Any], Callable[[], Any] | None]],
    *,
    clock: Clock | None = None,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    alternate: bool = False,
    done: Sequence[Sequence[float]] | None = None,
    on_round: Callable[[list[list[float]]], Any] | None = None,
    min_seconds: float = 0.0,
) -> list[Stats]:
    """`sample_interleaved`, summarised per program."""
    samples = sample_interleaved(
        programs,
        clock=clock,
        warmup=warmup,
        repeats=repeats,
        alternate=alternate,
        done=done,
        on_round=on_round,
        min_seconds=min_seconds,
    )
    return [summarize(s) for s in samples]


def sample_interleaved(
    programs: Sequence[tuple[Callable[[Any], Any], Callable[[], Any], Callable[[], Any] | None]],
    *,
    clock: Clock | None = None,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    alternate: bool = False,
    done: Sequence[Sequence[float]] | None = None,
    on_round: Callable[[list[list[float]]], Any] | None = None,
    min_seconds: float = 0.0,
) -> list[list[float]]:
    """Time several ``(run, make_input, reset)`` programs round-robin, one repeat each per round.

    Returns the raw samples (microseconds) per program; sample ``i`` of every program comes
    from the same round, so paired differences cancel drift. ``reset`` (optional, untimed) runs
    after every call, e.g. to crop a KV cache back to its context length.

    ``alternate`` runs every other round in reverse order. A program's time depends on what ran
    just before it: on the Intel Xeon VM the narrowest decoder stack, run right after the widest
    (the wrap-around of a plain round-robin over widths sorted by size), read 27 % (prefill) and
    8.5x (decode) over its time inside a real subnet. Sorted by size and run there and back, every program
    follows one of similar size, as each block of a real subnet follows one of its own width.

    ``done`` holds the samples of rounds an interrupted run already finished (one list per
    program, all of one length): only the remaining rounds are timed, after a fresh warm-up, and
    the round count (so the direction of ``alternate``) carries on. ``on_round`` hears every
    program's samples after each complete round, outside any program's timing, which is where a
    caller saves them; the lists are the harness's own, still growing, so it must not keep them
    past the call without copying.

    ``min_seconds`` asks for more rounds than ``repeats`` where a round is short: as many as fill
    that long at the round's duration seen in warm-up (at most `MAX_REPEAT_FACTOR` x ``repeats``),
    so programs of a few milliseconds get a median over seconds of host time, not a fraction of one.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"at least {MIN_REPEATS} repeats are needed for stable medians, got {repeats}")
    samples: list[list[float]] = [list(s) for s in done] if done is not None else [[] for _ in programs]
    if len(samples) != len(programs) or len({len(s) for s in samples}) > 1:
        raise ValueError("done needs one list of samples per program, all of the same length (complete rounds)")
    if samples and len(samples[0]) > repeats:
        raise ValueError(f"done holds {len(samples[0])} rounds, more than the {repeats} repeats asked for")
    clock = clock or Clock()
    round_s = 0.0
    for run, make_input, reset in programs:
        for _ in range(warmup):
            data = make_input()
            begin = time.perf_counter()
            run(data)
            last = time.perf_counter() - begin
            if reset is not None:
                reset()
        round_s += last if warmup else 0.0
    if min_seconds > 0 and round_s > 0:
        repeats = max(repeats, min(math.ceil(min_seconds / round_s), MAX_REPEAT_FACTOR * repeats))
    forward = list(enumerate(programs))
    with collector_paused():
        for round_index in range(len(samples[0]) if samples else 0, repeats):
            for index, (run, make_input, reset) in forward[::-1] if alternate and round_index % 2 else forward:
                data = make_input()
                token = clock.start()
                run(data)
                samples[index].append(clock.stop(token))
                if reset is not None:
                    reset()
            if on_round is not None:
                on_round(samples)
    return samples


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while timing (as `timeit` does), after one full
    collection: a collection that happens to fall inside a repeat bills its milliseconds to
    whichever program ran then. Restored on exit, also on error."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def fix_malloc_thresholds(threshold: int = 128 * 1024) -> str:
    """Fix glibc's mmap and trim thresholds for the rest of this process (Linux/glibc only).

    By default glibc raises its mmap threshold each time a large block is freed, so after a few
    models have come and gone, new weights land in the recycled heap instead of fresh mappings,
    and how fast they run depends on the process's history. Measured on this CPU: a freshly
    built ONNX Runtime session against one built at start varied by sd 2.1 % across groups with
    the default, 1.2 % with fixed thresholds. Not reversible, so it is called only where a
    measurement must match a table: by `profile` before anything allocates, and by `find --verify`
    after its search (`same_malloc_policy`).
    Returns the allocation policy now in force (recorded in a table's settings), including
    whether glibc backs large allocations with transparent huge pages, which only the
    environment can ask for before the process starts (`huge_page_policy`).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        return "default"
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    fixed = mallopt(m_mmap_threshold, threshold) and mallopt(m_trim_threshold, threshold)
    policy = f"glibc mmap/trim thresholds fixed at {threshold} bytes" if fixed else "default"
    return policy + huge_page_policy(os.environ)  # glibc honours the tunable either way


def same_malloc_policy(recorded: str | None) -> str:
    """Give this process the allocation policy a table records (``settings.malloc``) before a
    program is measured against the table: fixed glibc thresholds if the table had them. Returns
    the policy now in force; a table without fixed thresholds changes nothing."""
    fixed = re.search(r"thresholds fixed at (\d+) bytes", recorded or "")
    if fixed is None:
        return "default" + huge_page_policy(os.environ)
    return fix_malloc_thresholds(int(fixed.group(1)))


def huge_page_policy(environ: Mapping[str, str]) -> str:
    """``"; huge pages (glibc.malloc.hugetlb=N)"`` when the process was started with glibc's
    huge-page tunable set, else ``""``.

    Huge pages change what a program costs: on the AMD EPYC VM, six identical ONNX Runtime decode
    sessions differed by 5.6 % (slowest / fastest, median over rounds) with 4 KiB pages and 2.9 %
    with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, and ran 8 % faster. A table measured one way
    must be used, and resumed, the same way, so the sidecar says which.
    """
    for tunable in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = tunable.partition("=")
        if name == "glibc.malloc.hugetlb" and value not in ("", "0"):
            return f"; huge pages (glibc.malloc.hugetlb={value})"
    return ""


@contextlib.contextmanager
def measurement_threads(device: str, threads: int) -> Iterator[list[int] | None]:
    """Run with ``threads`` torch threads and, on CPU, pinned to the last ``threads`` cores (no
    migrations mid-measurement); yields the pinned cores. The process is restored on exit, so a
    notebook or test calling this gets its process back as it was.
    """
    import torch

    previous, affinity = torch.get_num_threads(), getattr(os, "sched_getaffinity", lambda _: None)(0)
    torch.set_num_threads(threads)
    try:
        pinned = None
        if device == "cpu" and affinity is not None:
            pinned = sorted(affinity)[-threads:]
            os.sched_setaffinity(0, pinned)
        yield pinned
    finally:
        torch.set_num_threads(previous)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
