"""Measure a latency table: the recipe that wires blocks, programs, the harness and the table.

For every grid point (phase, batch, context): the fixed blocks (embedding, head and the
per-call overhead, from paired interleaved timings of a reference stack and the same stack run
end to end) and then one decoder block at every (heads, FFN) width, all widths of the point
interleaved round-robin (so drift of a shared machine moves every row alike). Rows already
in the table are skipped and the group being timed keeps its finished rounds beside the table
(`rounds.RoundLog`), which is what makes ``--resume`` work: a kill loses at most ten seconds and one round.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amoebasearch.models import model_signature
from amoebasearch.profile import timing
from amoebasearch.profile.blocks import STACK, Point, stack_model, width_options
from amoebasearch.profile.memory import build_within_memory
from amoebasearch.profile.predict import calibration_key
from amoebasearch.profile.programs import Context, embedding_program, head_program, model_program, stack_program
from amoebasearch.profile.roofline import block_cost
from amoebasearch.profile.rounds import RoundLog, rounds_path
from amoebasearch.profile.table import LatencyTable, table_row
from amoebasearch.shape import ModelDims


def grid(phases: Iterable[str], batches: Iterable[int], contexts: Iterable[int]) -> list[Point]:
    return [Point(p, b, c) for p in phases for b in batches for c in contexts]


def _row(block: str, heads: int, ffn: int, point: Point, stats: timing.Stats, scale: float = 1.0) -> dict[str, Any]:
    return table_row(
        block,
        heads,
        ffn,
        point,
        stats.median_us / scale,
        stats.p10_us / scale,
        stats.p90_us / scale,
        stats.repeats,
        stats.noisy,
        "measured",
    )


def check_layer_independence(model: nn.Module, ctx: Context, point: Point, settings: dict) -> dict[str, Any]:
    """Time one full-width block taken from the first, middle and last layer, interleaved.

    All decoder blocks of a Llama-layout model have identical shapes, so their latency must
    agree within noise; this records the evidence that one representative block suffices.
    """
    dims = ModelDims.from_config(model.config)
    indices = sorted({0, dims.num_layers // 2, dims.num_layers - 1})
    programs = [
        stack_program(stack_model(model, dims.num_heads, dims.ffn, first_layer=i, depth=1), point, ctx) for i in indices
    ]
    stats = timing.measure_interleaved(
        programs, clock=settings["clock"], warmup=settings["warmup"], repeats=settings["repeats"]
    )
    medians = [s.median_us for s in stats]
    deviation = (max(medians) - min(medians)) / statistics.median(medians)
    return {
        "phase": point.phase,
        "layers": indices,
        "median_us": [round(m, 3) for m in medians],
        "max_relative_deviation": round(deviation, 4),
        "independent": deviation <= 0.05,
    }


def fixed_rows(model: nn.Module, ctx: Context, point: Point, settings: dict) -> list[dict[str, Any]]:
    """Embedding, head and overhead at one point.

    Overhead = (reference stack end to end) - embedding - (same stack alone) - head, from
    paired samples of the same round, so it is the glue of one call (rotary tables, masks,
    cache handling, Python) and not a difference of drifting numbers.
    """
    dims = ModelDims.from_config(model.config)
    stack = ctx.runtime.prepare_model(stack_model(model, dims.num_heads, dims.ffn))
    programs = [
        embedding_program(stack, point, ctx),
        head_program(stack, point, ctx),
        stack_program(stack, point, ctx),
        model_program(stack, point, ctx),
    ]
    emb, head, blocks, whole = timing.sample_interleaved(
        programs, clock=settings["clock"], warmup=settings["warmup"], repeats=settings["repeats"]
    )
    overhead = [w - e - h - b for e, h, b, w in zip(emb, head, blocks, whole, strict=True)]
    return [
        _row("embedding", 0, 0, point, timing.summarize(emb)),
        _row("head", 0, 0, point, timing.summarize(head)),
        _row("overhead", 0, 0, point, timing.summarize(overhead)),
    ]


def decoder_rows(
    model: nn.Module,
    ctx: Context,
    point: Point,
    widths: list[tuple[int, int]],
    settings: dict,
    there_and_back: bool = True,
    rounds_file: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per width: a stack of distinct real blocks at that width, timed and divided by its depth.

    Each width is timed as ``settings["instances"]`` independently allocated stacks and the row
    is their median (see `Runtime.instances` for why one allocation is not enough). Widths run
    smallest to largest and back (`by_size`, ``alternate``), so each stack follows one of
    similar size, as inside a subnet; ``there_and_back=False`` runs every
    round one way. With ``rounds_file`` the finished rounds are kept there (`RoundLog`)
    and a killed run's rounds of this same group are resumed from it.
    """
    count = settings["instances"]
    dims = ModelDims.from_config(model.config)
    widths = by_size(dims, widths, point)
    # no list of the stacks themselves: a runtime that copies weights (ONNX Runtime) lets them go
    programs = build_within_memory(
        (
            stack_program(stack, point, ctx)
            for h, f in widths
            for stack in ctx.runtime.instances(lambda h=h, f=f: stack_model(model, h, f), count)
        ),
        total=len(widths) * count,
        fix=f"lower --instances (now {count}); every width is held {count} times while its point is timed",
    )
    log = None
    if rounds_file is not None:
        how = {
            "point": asdict(point),
            "widths": widths,
            "instances": count,
            "alternate": there_and_back,
            "threads": torch.get_num_threads(),
            "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "runtime": ctx.runtime.settings(),
            "device": ctx.device,
            "dtype": str(ctx.dtype),
        }
        key = json.loads(json.dumps(how, default=str))  # as it will read back from the file
        log = RoundLog(rounds_file, key, programs=len(programs), repeats=settings["repeats"])
    done = log.load() if log is not None else None
    try:
        stats = timing.measure_interleaved(
            programs,
            clock=settings["clock"],
            warmup=settings["warmup"],
            repeats=settings["repeats"],
            alternate=there_and_back,
            done=done,
            on_round=log.record if log is not None else None,
        )
    except BaseException:  # Ctrl-C, a crash: keep every complete round for --resume
        if log is not None:
            log.flush()
        raise
    depth = stack_depth(dims)
    return [
        _row("decoder", h, f, point, timing.median_of_instances(stats[i * count : (i + 1) * count]), scale=depth)
        for i, (h, f) in enumerate(widths)
    ]


def by_size(dims: ModelDims, widths: list[tuple[int, int]], point: Point) -> list[tuple[int, int]]:
    """Widths ordered by one block's FLOPs at the point (heads and FFN interleaved by cost)."""
    return sorted(widths, key=lambda w: (block_cost(dims, w[0], w[1], point, dtype_bytes=4).flops, w))


def profile_model(
    model: nn.Module,
    table: LatencyTable,
    ctx: Context,
    points: list[Point],
    *,
    ffn_step: int = 64,
    warmup: int = 3,
    repeats: int = 21,
    interleave: int | None = None,
    instances: int = 1,
    progress: Callable[[int], Any] | None = None,
) -> LatencyTable:
    """Fill ``table`` with every missing row of the grid; returns it (saved after each group)."""
    dims = ModelDims.from_config(model.config)
    table.check_model(model_signature(model.config))
    settings = {"clock": timing.clock_for(ctx.device), "warmup": warmup, "repeats": repeats, "instances": instances}
    done = table.done()
    widths = width_options(dims, ffn_step)
    rounds_file = rounds_path(table.path) if table.path is not None else None
    if getattr(ctx.runtime, "engine_level", False):
        profile_engine(model, table, ctx, points, widths, settings, interleave or ENGINE_GROUP, progress)
        return table
    if "layer_index_check" not in table.meta and points:
        table.meta["layer_index_check"] = check_layer_independence(model, ctx, points[0], settings)
    for point in points:
        key = (point.phase, point.batch, point.context)
        if any((block, 0, 0, *key) not in done for block in ("embedding", "head", "overhead")):
            table.append(fixed_rows(model, ctx, point, settings))
        if progress:
            progress(1 + len(widths) - len([w for w in widths if ("decoder", *w, *key) not in done]))
        todo = [(h, f) for h, f in widths if ("decoder", h, f, *key) not in done]
        group = interleave or len(widths)
        for start in range(0, len(todo), group):
            chunk = todo[start : start + group]
            table.append(decoder_rows(model, ctx, point, chunk, settings, rounds_file=rounds_file))
            if rounds_file is not None:
                rounds_file.unlink(missing_ok=True)  # its rows are in the table now
            if progress:
                progress(len(chunk))
    if rounds_file is not None:  # a kill between a group's last append and its unlink left one
        rounds_file.unlink(missing_ok=True)
    return table


# widths timed together by an engine-level runtime: each holds two whole models per loaded copy
ENGINE_GROUP = 8


def profile_engine(
    model: nn.Module,
    table: LatencyTable,
    ctx: Context,
    points: list[Point],
    widths: list[tuple[int, int]],
    settings: dict,
    group: int,
    progress: Callable[[int], Any] | None,
) -> None:
    """Every missing row for an engine-level runtime (`profile.engine`), ``group`` widths at a time:
    each group's models are built (and exported) once and timed at every point that lacks them; a
    point's overhead is set by its first group and kept by the rest."""
    from amoebasearch.profile.engine import engine_models, engine_rows

    def missing(point: Point) -> list[tuple[int, int]]:
        done = table.done()
        return [w for w in widths if ("decoder", *w, point.phase, point.batch, point.context) not in done]

    def overhead(point: Point) -> float | None:
        rows = table.rows
        mine = rows[(rows.block == "overhead") & (rows.phase == point.phase)]
        mine = mine[(mine.batch == point.batch) & (mine.context == point.context)]
        return float(mine["median_us"].iloc[0]) if len(mine) else None

    todo = [w for w in widths if any(w in missing(p) for p in points)]
    reference_width = max(widths)  # every head, the whole FFN: the yardstick timed in every group
    references = table.meta.setdefault("engine_reference", {})  # point -> the first group's times per depth
    if progress:
        progress(sum(len(widths) - len(missing(p)) + (overhead(p) is not None) for p in points))
    for start in range(0, len(todo), group):
        mine = todo[start : start + group]
        models = engine_models(model, mine + [reference_width] * (reference_width not in mine))
        for point in points:
            chunk = set(missing(point))
            if not chunk:
                continue
            fixed = overhead(point)
            key = calibration_key(point.phase, point.batch, point.context)
            timed = [entry for entry in models if entry[0] in chunk or entry[0] == reference_width]
            rows, references[key] = engine_rows(
                timed, ctx.runtime, ctx.generator, point, settings, fixed, (reference_width, references.get(key))
            )
            table.append([row for row in rows if row["block"] not in ("decoder", "tail") or
                          (row["heads"], row["ffn"]) in chunk])  # fmt: skip
            if progress:
                progress(len(chunk & set(mine)) + (fixed is None))


def steps(dims: ModelDims, points: list[Point], ffn_step: int) -> int:
    """Progress-bar total: one fixed group plus every width, per point."""
    return len(points) * (1 + len(width_options(dims, ffn_step)))


def stack_depth(dims: ModelDims) -> int:
    return min(STACK, dims.num_layers)


def table_meta(
    model_name: str, config: Any, runtime, device: str, dtype: str, points: list[Point], settings: dict
) -> dict[str, Any]:
    """The sidecar of a measured table: what, where, with what, how."""
    from amoebasearch.profile.fingerprint import device_fingerprint, library_versions
    from amoebasearch.profile.table import FORMAT

    dims = ModelDims.from_config(config)
    return {
        "format": FORMAT,
        "source": "measured",
        "model": {"name": model_name, "signature": model_signature(config), "dims": asdict(dims)},
        "device": device_fingerprint(device),
        "runtime": runtime.settings(),
        "dtype": dtype,
        "versions": library_versions(),
        "settings": {
            **settings,
            "grid": [asdict(p) for p in points],
            "stack_depth": stack_depth(dims),
            "stack_order": "by FLOPs, there and back",  # absent: tables timed one way, heads then FFN
            "clock": "cuda-events" if device.startswith("cuda") else "perf_counter_ns",
            "threads": torch.get_num_threads(),
        },
    }


# settings a resumed run must share with the table's rows (flag names for the message)
RESUMED_SETTINGS = {
    "ffn_step": "--ffn-step",
    "repeats": "--repeats",
    "instances": "--instances",
    "seed": "--seed",
    "weights": "--random-weights",
}


def open_table(
    out_dir,
    model_name: str,
    config: Any,
    runtime,
    device: str,
    dtype: str,
    points: list[Point],
    settings: dict,
    resume: bool,
) -> LatencyTable:
    """A new table at its canonical path, or (``resume``) the finished part of an earlier run
    (with the finished rounds of the group it was killed in, `RoundLog`)."""
    from amoebasearch.errors import UsageError
    from amoebasearch.profile.fingerprint import device_slug
    from amoebasearch.profile.table import load_table, table_name, validation_path

    meta = table_meta(model_name, config, runtime, device, dtype, points, settings)
    threads = None if device.startswith("cuda") else meta["settings"]["threads"]
    path = Path(out_dir) / f"{table_name(model_name, device_slug(meta['device']), runtime.name, dtype, threads)}.csv"
    if resume and path.is_file():
        table = load_table(path, meta["model"]["signature"], model_name)
        old = table.meta
        old_settings = old.setdefault("settings", {})
        from amoebasearch.profile.fingerprint import same_cpu

        if meta["device"].get("kind") == "cpu":
            same_device = same_cpu(old["device"], meta["device"])
        else:
            same_device = old["device"].get("name") == meta["device"].get("name")
        if not same_device or old.get("runtime", {}).get("name") != runtime.name:
            raise UsageError(f"{path} was measured on another device or runtime: remove it or drop --resume")
        was, now = old_settings.get("malloc"), settings.get("malloc")
        if was and now and was != now:
            raise UsageError(
                f"{path} was measured with allocation policy '{was}', this run has '{now}': "
                "start it with the same GLIBC_TUNABLES, or drop --resume"
            )
        for key, flag in RESUMED_SETTINGS.items():
            was, now = old_settings.get(key), settings.get(key)
            if was is not None and now is not None and was != now:
                raise UsageError(
                    f"{path} was measured with {flag} {was}, this run has {now}: "
                    f"resume with the same {flag}, or drop --resume"
                )
        # keep the earlier measurement context; extend the grid if more points were asked for
        known = old_settings.get("grid", [])
        old_settings["grid"] = known + [g for g in meta["settings"]["grid"] if g not in known]
        return table
    table = LatencyTable.empty(meta, path)
    table.save(path)
    rounds_path(path).unlink(missing_ok=True)  # an earlier run's rounds belong to its table, not this one
    validation_path(path).unlink(missing_ok=True)  # so is its validation: `find --margin auto` would read it
    return table


def finish_table(table: LatencyTable, device: str, seconds: float) -> None:
    """Record the run's duration (and on NVIDIA the clocks/throttling seen at the end)."""
    table.meta.setdefault("settings", {})["profile_seconds"] = round(
        seconds + table.meta["settings"].get("profile_seconds", 0), 1
    )
    if device.startswith("cuda") and "state_before" in table.meta["device"]:
        from amoebasearch.devices import cuda_index
        from amoebasearch.profile.fingerprint import nvml_state

        try:
            import pynvml

            pynvml.nvmlInit()
            table.meta["device"]["state_after"] = nvml_state(cuda_index(device))
            pynvml.nvmlShutdown()
        except Exception as err:  # NVML vanished mid-run: keep the table, note why
            table.meta["device"]["state_after_error"] = str(err)
    if table.path is not None:
        table.save(table.path)
