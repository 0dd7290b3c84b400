"""Validate a latency table against end-to-end measurements of real extracted subnets.

Seeded random shapes are extracted (physically sliced, as ``export`` does) and timed whole in
the table's runtime, each as several independently allocated instances (`subnet_instances`).
A seeded random ``calibrate`` of them fit, per grid point, a linear correction
``measured ~ scale * composed + offset`` (least squares on relative error); the other ``n``
are held out and are the only ones the published error counts.
"""

from __future__ import annotations

import random
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
from amoebasearch.profile.accuracy import accuracy
from amoebasearch.profile.blocks import Point, share_embeddings, stack_model
from amoebasearch.profile.memory import build_within_memory
from amoebasearch.profile.predict import build_lookup, calibration_key
from amoebasearch.profile.programs import Context, model_program
from amoebasearch.profile.table import LatencyTable, read_validation, validation_path
from amoebasearch.shape import ModelDims, Shape, ShapeSpace

COLUMNS = (
    "subnet",
    "split",
    "depth",
    "heads",
    "ffn",
    "phase",
    "batch",
    "context",
    "composed_us",
    "predicted_us",
    "measured_us",
    "measured_p10_us",
    "measured_p90_us",
    "error_pct",
    "instances",
    "instance_spread",
    "sentinel_ratio",
    "sentinel_vs_table",
    "attempts",
    "chosen_attempt",
)


def sample_shapes(dims: ModelDims, count: int, seed: int, ffn_step: int = 64) -> list[Shape]:
    space = ShapeSpace(dims, ffn_step=ffn_step)
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(count)]


def fit_calibration(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per point, scale and offset minimising sum(((scale*c + offset - m) / m)^2) over the rows.

    Weighted least squares with weights 1/m^2: solve the 2x2 normal equations in closed form.
    Fewer than three rows (or a degenerate spread) fit a scale only.
    """
    fits: dict[str, dict[str, float]] = {}
    for (phase, batch, context), group in rows.groupby(["phase", "batch", "context"]):
        c = group["composed_us"].to_numpy(dtype=float)
        m = group["measured_us"].to_numpy(dtype=float)
        w = 1.0 / m**2
        swcc, swc, sw = (w * c * c).sum(), (w * c).sum(), w.sum()
        swcm, swm = (w * c * m).sum(), (w * m).sum()
        det = swcc * sw - swc * swc
        if len(c) >= 3 and det > 1e-12 * swcc * sw:
            scale = (swcm * sw - swc * swm) / det
            offset = (swcc * swm - swc * swcm) / det
        else:
            scale, offset = swcm / swcc, 0.0
        fit = {"scale": float(scale), "offset_us": float(offset), "fitted_on": len(c)}
        fits[calibration_key(phase, batch, context)] = fit
    return fits


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Share within +-5 % and +-10 % and MAPE per point, over the held-out rows (and the MAPE of
    the plain composition before calibration, to show what calibration buys, and how many copies
    of each subnet were timed and the median spread between them, to show what one allocation
    alone can move)."""
    held = rows[rows["split"] == "heldout"]
    out = []
    for (phase, batch, context), group in held.groupby(["phase", "batch", "context"]):
        out.append(
            {
                "phase": phase,
                "batch": int(batch),
                "context": int(context),
                **accuracy(group),
                "uncalibrated_mape_pct": accuracy(group.assign(predicted_us=group["composed_us"]))["mape_pct"],
                # how many independently allocated copies of each subnet were timed, and how far apart they ran
                "copies_per_subnet": float(group.get("instances", pd.Series([1.0])).fillna(1.0).median()),
                "instance_spread_median": float(group.get("instance_spread", pd.Series([1.0])).fillna(1.0).median()),
                # subnets timed while the host stayed off (rerun `--resume` on a calm host to redo them)
                "disturbed": int(sum(disturbed(r) for r in group.to_dict("records"))),
            }
        )
    return pd.DataFrame(out)


def apply_calibration(rows: pd.DataFrame, table: LatencyTable) -> pd.DataFrame:
    lookup = build_lookup(table)
    rows = rows.copy()
    predicted = []
    for r in rows.itertuples():
        pm = lookup[(r.phase, int(r.batch), int(r.context))]
        predicted.append(pm.scale * r.composed_us + pm.offset_us)
    rows["predicted_us"] = [round(p, 3) for p in predicted]
    rows["error_pct"] = ((rows["predicted_us"] - rows["measured_us"]) / rows["measured_us"] * 100).round(3)
    return rows


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


MAX_ATTEMPTS = 5
# subnets timed together, round-robin, with one sentinel: drift hits a group's members alike
GROUP_SIZE = 4


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


def point_key(row: dict[str, Any]) -> tuple[str, int, int]:
    return (row["phase"], int(row["batch"]), int(row["context"]))


def group_sentinels(rows: list[dict[str, Any]], group: int) -> dict[tuple[str, int, int], dict[int, float]]:
    """Each group's sentinel (``sentinel_vs_table``, one value per group) per grid point."""
    per_point: dict[tuple[str, int, int], dict[int, float]] = {}
    for r in rows:
        value = r.get("sentinel_vs_table")
        if value is not None and pd.notna(value):
            per_point.setdefault(point_key(r), {}).setdefault(int(r["subnet"]) // group, float(value))
    return per_point


def rebase_sentinel(rows: list[dict[str, Any]], group: int) -> dict[tuple[str, int, int], float]:
    """Re-express every row's ``sentinel_ratio`` against the run's usual sentinel value: per grid
    point, the median over groups of each group's sentinel (`group_sentinels`). Returns that usual
    value per point.

    During the run a group is judged against the groups before it, so a run that starts while
    the host is slow would judge every later, undisturbed group as off; against the median of
    all groups, the slow start is what stands out, and it is measured again (`validate_table`).
    """
    usual = {key: statistics.median(groups.values()) for key, groups in group_sentinels(rows, group).items()}
    for r in rows:
        value = r.get("sentinel_vs_table")
        if value is not None and pd.notna(value):
            r["sentinel_ratio"] = round(float(value) / usual[point_key(r)], 4)
    return usual


def disturbed(check: dict[str, Any], tolerance: float = 0.02) -> bool:
    """Whether a group's (or a row's) sentinel stayed more than ``tolerance`` off its usual value."""
    ratio = check.get("sentinel_ratio")
    return ratio is not None and pd.notna(ratio) and abs(float(ratio) - 1) > tolerance


def closer_pass(first: list[dict[str, Any]], second: list[dict[str, Any]], usual: float) -> list[dict[str, Any]]:
    """Of a group's two passes at one point (its rows), the one whose sentinel was closer to the
    run's ``usual`` value, its ratio against it; attempts are numbered across both passes (a chosen
    attempt above `MAX_ATTEMPTS` is the second)."""
    before = first[0]["attempts"]
    attempts = before + second[0]["attempts"]
    ratios = [abs(rows[0]["sentinel_vs_table"] / usual - 1) for rows in (first, second)]
    if ratios[1] < ratios[0]:
        return [{**r, "attempts": attempts, "chosen_attempt": before + r["chosen_attempt"]} for r in second]
    return [{**r, "attempts": attempts} for r in first]


def restore_sentinel_history(rows: list[dict[str, Any]], sentinels: dict, group: int) -> None:
    """On resume, rebuild each point's sentinel history from the rows already measured.

    Every row keeps its group's sentinel as a ratio to the table's composition
    (``sentinel_vs_table``); one value per group goes back into the history, so the resumed run
    checks new groups against the same usual value instead of letting its first group (perhaps
    a disturbed one) set it.
    """
    per_point = group_sentinels(rows, group)
    for point, (_, history, table_us) in sentinels.items():
        groups = per_point.get((point.phase, point.batch, point.context), {})
        history.extend(value * table_us for value in groups.values())


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


def calibration_subnets(total: int, calibrate: int, seed: int) -> set[int]:
    """A seeded random choice of the calibration subnets among all ``total``.

    Random, not the first ones: groups are timed at different moments, and a calibration set
    drawn from every group cannot inherit one group's machine state.
    """
    return set(random.Random(seed + 1).sample(range(total), min(calibrate, total)))


def finish_validation(
    table: LatencyTable, frame: pd.DataFrame, n: int, calibrate: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split, fit the calibration on the calibration split, score the held-out split, save both files."""
    chosen = calibration_subnets(calibrate + n, calibrate, seed)
    frame = frame.copy()
    frame["split"] = ["calibration" if i in chosen else "heldout" for i in frame["subnet"]]
    calib = frame[frame["split"] == "calibration"]
    table.meta["calibration"] = fit_calibration(calib) if len(calib) else {}
    table._lookup = None
    frame = apply_calibration(frame, table)
    stats = summary(frame)
    table.meta["validation"] = {
        "heldout": n,
        "calibration": calibrate,
        "seed": seed,
        "calibration_subnets": sorted(chosen),
        "summary": stats.to_dict("records"),
    }
    if table.path is not None:
        atomic.write_text(validation_path(table.path), frame.to_csv(index=False))
        table.save(table.path)
    return frame, stats


def validation_file(table_path: Path) -> Path:
    return validation_path(table_path)
