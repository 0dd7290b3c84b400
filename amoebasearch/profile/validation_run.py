"""A validation run: seeded subnets extracted and timed end to end, to validate a latency table.

Seeded random shapes are extracted (physically sliced, as ``export`` does) and timed whole in
the table's runtime, each as several independently allocated instances (`subnet_instances`).
``validate.py`` fits the calibration on some of them and scores the table on the others.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from amoebasearch import atomic
from amoebasearch.errors import UsageError
from amoebasearch.export import extract
from amoebasearch.profile import timing
from amoebasearch.profile.blocks import Point, share_embeddings, stack_model
from amoebasearch.profile.memory import build_within_memory
from amoebasearch.profile.predict import build_lookup
from amoebasearch.profile.programs import Context, model_program
from amoebasearch.profile.table import LatencyTable, read_validation, validation_path
from amoebasearch.profile.validate import (
    COLUMNS,
    closer_pass,
    disturbed,
    finish_validation,
    point_key,
    rebase_sentinel,
    restore_sentinel_history,
    sample_shapes,
)
from amoebasearch.shape import ModelDims, Shape

MAX_ATTEMPTS = 5
# subnets timed together, round-robin, with one sentinel: drift hits a group's members alike
GROUP_SIZE = 4


def _row(index: int, shape: Shape, point: Point, instances: list[timing.Stats], composed: float) -> dict:
    stats = timing.median_of_instances(instances)
    return {
        "subnet": index,
        "split": "pending",  # decided by `finish_validation`
        "depth": shape.depth,
        "heads": shape.heads,
        "ffn": shape.ffn,
        "phase": point.phase,
        "batch": point.batch,
        "context": point.context,
        "composed_us": round(composed, 3),
        "predicted_us": round(composed, 3),
        "measured_us": round(stats.median_us, 3),
        "measured_p10_us": round(stats.p10_us, 3),
        "measured_p90_us": round(stats.p90_us, 3),
        "error_pct": round((composed - stats.median_us) / stats.median_us * 100, 3),
        "instances": len(instances),
        "instance_spread": round(timing.instance_spread(instances), 4),
    }


def sentinel(model: nn.Module, table: LatencyTable, ctx: Context, point: Point):
    """A fixed reference subnet (the full-width block stack with embedding and head) run end to end,
    its (empty) timing history, and the latency the table composes for it."""
    dims = ModelDims.from_config(model.config)
    stack = ctx.runtime.prepare_model(stack_model(model, dims.num_heads, dims.ffn))
    shape = Shape(tuple(range(len(stack.model.layers))), dims.num_heads, dims.ffn)
    table_us = build_lookup(table, calibrated=False)[(point.phase, point.batch, point.context)].raw(shape)
    return model_program(stack, point, ctx), [], table_us


def measure_group(
    programs,
    sentinel_and_history,
    clock,
    warmup: int,
    repeats: int,
    tolerance: float,
    pause_s: float = 0.0,
    report: Callable[[str], Any] | None = None,
    min_seconds: float = 0.0,
):
    """Time ``programs`` plus the sentinel, interleaved; retry while the sentinel is off its usual value.

    The sentinel's usual value is the median of its timings before this group, every attempt of
    every group (the first group's first attempt sets it): a group measured while a neighbour
    hammered the host stands out against it, and a lasting shift of the host (a neighbour that
    stays, or leaves) becomes the new usual value after one group's attempts instead of
    postponing every later group. The run's final judgement is `rebase_sentinel`'s, against all
    groups.
    Before each retry the harness sleeps ``pause_s``, doubling every time (a neighbour's burst
    on this VM lasted minutes: back-to-back retries only measured it again).
    Returns the stats of the attempt whose sentinel was closest (every
    attempt is a complete, real measurement of all programs) and what the check saw.
    ``report`` hears why a retry waits (a long validation on a noisy host otherwise looks stuck).
    ``min_seconds`` stretches short rounds (`timing.sample_interleaved`).
    """
    program, history, table_us = sentinel_and_history
    usual = statistics.median(history) if history else None
    best = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        *stats, check = timing.measure_interleaved(
            [*programs, program], clock=clock, warmup=warmup, repeats=repeats, min_seconds=min_seconds
        )
        if usual is None:  # the first group's first attempt sets the usual value
            usual = check.median_us
        history.append(check.median_us)
        ratio = check.median_us / usual
        if best is None or abs(ratio - 1) < abs(best[1] - 1):
            best = (stats, ratio, attempt, check.median_us)
        if abs(ratio - 1) <= tolerance:
            break
        if attempt < MAX_ATTEMPTS:
            wait = pause_s * 2 ** (attempt - 1)
            if report is not None:
                report(f"sentinel {ratio - 1:+.1%} off, attempt {attempt}/{MAX_ATTEMPTS}; again in {wait:g} s")
            if wait > 0:
                time.sleep(wait)
    stats, ratio, chosen, sentinel_us = best
    return stats, {
        "sentinel_ratio": round(ratio, 4),
        "sentinel_vs_table": round(sentinel_us / table_us, 4),
        "attempts": attempt,
        "chosen_attempt": chosen,
    }


def subnet_instances(model: nn.Module, shape: Shape, ctx: Context, count: int) -> list[nn.Module]:
    """``count`` independently allocated copies of one extracted subnet (see `Runtime.instances`);
    on this CPU single ONNX Runtime sessions of one subnet measured up to 25 % apart."""
    return ctx.runtime.instances(lambda: share_embeddings(extract(model, shape), model), count)


def check_resumed_rows(
    rows: list[dict[str, Any]], shapes: list[Shape], lookup: dict, out: Path, instances: int
) -> None:
    """Refuse to resume from rows of other subnets (another --seed, --validate, --calibrate or
    --ffn-step), priced on another table (re-measured since) or timed as another number of copies
    (--validate-instances): mixed in, they would be calibrated and scored as if this run had
    measured them."""
    for r in rows:
        timed_as = r.get("instances")
        if timed_as is not None and pd.notna(timed_as) and int(timed_as) != instances:
            raise UsageError(
                f"{out} holds subnets timed as {int(timed_as)} copies each, not {instances}: "
                f"resume with --validate-instances {int(timed_as)}, or delete it"
            )
        index = int(r["subnet"])
        shape = shapes[index] if index < len(shapes) else None
        same_subnet = shape is not None and (shape.depth, shape.heads, shape.ffn) == (
            int(r["depth"]),
            int(r["heads"]),
            int(r["ffn"]),
        )
        point = lookup.get(point_key(r))
        if not same_subnet or point is None or abs(point.raw(shape) - float(r["composed_us"])) > 0.01:
            raise UsageError(
                f"{out} holds subnet {index} of another validation (other --seed, --validate, --calibrate or "
                "--ffn-step) or of an earlier table: delete it, or resume with that run's settings"
            )


def validate_table(
    model: nn.Module,
    table: LatencyTable,
    ctx: Context,
    points: list[Point],
    n: int,
    *,
    calibrate: int = 16,
    seed: int = 0,
    ffn_step: int = 64,
    warmup: int = 3,
    repeats: int = 21,
    resume: bool = False,
    group: int = GROUP_SIZE,
    instances: int = 3,
    tolerance: float = 0.02,
    pause_s: float = 0.0,
    progress: Callable[[int], Any] | None = None,
    report: Callable[[str], Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure ``calibrate + n`` seeded subnets end to end; fit calibration; return (rows, summary).

    Subnets are timed ``group`` at a time, ``instances`` independently allocated copies of each
    (`subnet_instances`), all round-robin, so drift hits a group's members alike.
    A sentinel (a fixed full-width reference subnet) runs in every group; when it is more than
    ``tolerance`` off its usual value, the machine was disturbed (a noisy neighbour on a shared
    host) and the group is measured again, up to `MAX_ATTEMPTS` times, ``pause_s`` apart and
    doubling (see `measure_group`). After every group is timed, each group's sentinel is judged
    again against the median over all groups (`rebase_sentinel`); a group off that is measured
    once more, from fresh copies, and the pass whose sentinel was closer is kept (a disturbance
    lasting minutes then costs a later retry instead of a group of misses, and a run that began
    while the host was slow re-times its first groups instead of every later one).
    With ``resume``, rows whose sentinel stayed off are measured again too.

    Rows are written to ``<table>.validation.csv`` after every group, and the fitted calibration
    into the table's sidecar, so ``predict_latency`` uses it from then on.
    """
    dims = ModelDims.from_config(model.config)
    out = validation_path(table.path) if table.path else None
    shapes = sample_shapes(dims, calibrate + n, seed, ffn_step)
    lookup = build_lookup(table, calibrated=False)
    rows: list[dict[str, Any]] = []
    if resume and out is not None and out.is_file():
        # rows timed while the host stayed disturbed are not finished: measure them again now
        rows = read_validation(out, COLUMNS).to_dict("records")
        rebase_sentinel(rows, group)
        check_resumed_rows(rows, shapes, lookup, out, instances)
        rows = [r for r in rows if not disturbed(r, tolerance)]
    finished = {(r["subnet"], r["phase"], r["batch"], r["context"]) for r in rows}
    clock = timing.clock_for(ctx.device)
    sentinels = {p: sentinel(model, table, ctx, p) for p in points}
    restore_sentinel_history(rows, sentinels, group)

    def measure_members(members: list[int], todo: list[Point]) -> dict[Point, list[dict[str, Any]]]:
        """Rows of ``members`` at every point of ``todo``, from fresh copies."""
        copies = [subnet_instances(model, shapes[i], ctx, instances) for i in members]
        results = {}
        for point in todo:
            programs = build_within_memory(
                (model_program(subnet, point, ctx) for subnets in copies for subnet in subnets),
                total=len(members) * instances,
                fix=f"lower --validate-instances (now {instances})",
            )
            seconds = getattr(ctx.runtime, "min_round_seconds", 0.0)  # engines: seconds of rounds, as their rows
            stats, check = measure_group(
                programs, sentinels[point], clock, warmup, repeats, tolerance, pause_s, report, seconds
            )
            del programs  # one point's sessions at a time: ONNX Runtime copies every weight
            base = lookup[(point.phase, point.batch, point.context)]
            mine = [stats[slot * instances : (slot + 1) * instances] for slot in range(len(members))]
            raw = [base.raw(shapes[i]) for i in members]
            results[point] = [{**_row(i, shapes[i], point, mine[k], raw[k]), **check} for k, i in enumerate(members)]
        return results

    def save() -> None:
        if out is not None:
            atomic.write_text(out, pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False))

    groups = [list(range(start, min(start + group, len(shapes)))) for start in range(0, len(shapes), group)]
    off_groups = 0
    for members in groups:
        todo = [p for p in points if any((i, p.phase, p.batch, p.context) not in finished for i in members)]
        if todo:
            results = measure_members(members, todo)
            rows.extend(r for new in results.values() for r in new if (r["subnet"], *point_key(r)) not in finished)
            save()
            if any(disturbed(new[0], tolerance) for new in results.values()):
                off_groups += 1
                if report is not None:
                    report(f"{off_groups} group(s) postponed: the host stayed disturbed")
        if progress:
            progress(len(members))

    usual = rebase_sentinel(rows, group)
    second = []
    for members in groups:
        off = sorted({point_key(r) for r in rows if int(r["subnet"]) in members and disturbed(r, tolerance)})
        if off:
            second.append((members, [p for p in points if (p.phase, p.batch, p.context) in off]))
    for number, (members, todo) in enumerate(second, 1):
        if report is not None:
            report(f"postponed group {number}/{len(second)}: second pass")
        again = measure_members(members, todo)
        for point, new in again.items():
            key = (point.phase, point.batch, point.context)
            first = [r for r in rows if int(r["subnet"]) in members and point_key(r) == key]
            rows[:] = [r for r in rows if not (int(r["subnet"]) in members and point_key(r) == key)]
            rows.extend(closer_pass(first, new, usual[key]))
        save()
    rebase_sentinel(rows, group)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return finish_validation(table, frame, n, calibrate, seed)
