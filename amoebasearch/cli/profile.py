"""`amoebasearch profile`: measure (or estimate) a latency table for one device and runtime."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from amoebasearch.cli.options import add_options, build, given_flags
from amoebasearch.devices import check_device, default_runtime
from amoebasearch.errors import UsageError
from amoebasearch.options import comma_list  # noqa: F401 (benchmarks/ parse their grid axes with it, from here)
from amoebasearch.profile.request import ProfileRequest, Timing, Validation


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "profile",
        help="measure per-device, per-runtime latency tables (or estimate them from specs)",
        description="Measure every building block of the shape space on one device and runtime, write "
        "profiles/<model>-<device>-t<threads>-<runtime>-<dtype>.csv (+ .json sidecar; no -t<N> on GPUs), "
        "optionally validate the predictor on real extracted subnets. With --estimate DEVICE, write a roofline "
        "table instead. The default grid (prefill and decode, batch 1, context 128) takes 6-10 minutes for "
        "eager PyTorch and 11-13 minutes for llama.cpp (whole models at two depths per width) for SmolLM2-135M "
        "on a 2-core AMD EPYC or Intel Xeon VM, plus 20-80 minutes for --validate 50 (longer on a noisy host: "
        "disturbed groups are timed again). On an H100 (eager, bf16) the table took 28 s and 52 validation "
        "subnets 4 minutes.",
    )
    add_options(parser, ProfileRequest)
    parser.set_defaults(run=run)


def redrawn(bar):
    """``bar.update`` that always redraws: one group takes minutes, and tqdm's rate limit would hide a
    resumed run's finished rows (counted the instant the bar opens) until the next group ends."""

    def update(count: int) -> None:
        bar.update(count)
        bar.refresh()

    return update


def check_grid(request: ProfileRequest) -> None:
    from amoebasearch.profile.blocks import PHASES

    if not request.phases or not request.batch or not request.context:
        raise UsageError("empty grid: --phases, --batch and --context each need at least one value")
    bad = [p for p in request.phases if p not in PHASES]
    if bad:
        raise UsageError(f"unknown phase {bad[0]!r}: choose from {', '.join(PHASES)}")
    if min(request.batch) < 1 or min(request.context) < 1:
        raise UsageError("--batch and --context values must be positive")
    if request.repeats < 20:
        raise UsageError(f"--repeats {request.repeats} is too few for stable medians: use at least 20")
    if request.validate < 0 or request.calibrate < 0 or request.pause < 0:
        raise UsageError("--validate, --calibrate and --pause must not be negative")


def request_from(args: argparse.Namespace) -> ProfileRequest:
    """The run the flags ask: the grid checked, the runtime defaulted (eager for an estimate, else the
    device's), and no timing flag given to an estimate, which times nothing."""
    runtime = args.runtime or ("eager" if args.estimate else default_runtime(args.device))
    request = build(ProfileRequest, args, runtime=runtime)
    check_grid(request)
    if request.estimate:
        # not --runtime: with --estimate it names the runtime whose launch costs the estimate models
        given = given_flags(Timing, args) + given_flags(Validation, args)
        if given:
            raise UsageError(
                f"--estimate times nothing, so {', '.join(given)} would be ignored: drop it or drop --estimate"
            )
    elif request.fit_on:
        raise UsageError("--fit-on names the tables an estimate is fitted on: use it with --estimate DEVICE")
    return request


def run(args: argparse.Namespace) -> int:
    request = request_from(args)
    if request.estimate:
        return run_estimate(request)
    from amoebasearch.profile.runtimes import default_threads
    from amoebasearch.profile.timing import measurement_threads

    device = check_device(request.device)
    with measurement_threads(device, request.threads or default_threads(request.runtime)) as pinned:
        return measure(request, device, pinned)


def measure(request: ProfileRequest, device: str, pinned: list[int] | None) -> int:
    import torch
    from tqdm import tqdm

    from amoebasearch.models import load, load_config, random_weights
    from amoebasearch.profile import profiler
    from amoebasearch.profile.runtimes import get_runtime
    from amoebasearch.profile.timing import COLLECTOR_POLICY, fix_malloc_thresholds

    if request.quant and request.dtype:
        raise UsageError("--quant is the weight format of --runtime llamacpp, --dtype that of the others: give one")
    dtype_name = request.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    runtime = get_runtime(request.runtime, device, dtype, request.quant)
    request = replace(request, instances=request.instances or runtime.default_instances)
    if getattr(runtime, "quant", None):  # the engine runs its own file format, exported from float32
        dtype_name, dtype = runtime.quant, torch.float32
    config = load_config(request.model)
    points = profiler.grid(request.phases, request.batch, request.context)
    malloc = fix_malloc_thresholds()  # before the model and every program allocate
    if request.random_weights:
        loaded = random_weights(request.model, dtype=dtype, seed=request.seed)
    else:
        loaded = load(request.model, dtype=dtype)
    model = loaded.model.to(device)
    settings = {
        "repeats": request.repeats,
        "warmup": 3,
        "ffn_step": request.ffn_step,
        "seed": request.seed,
        "pinned": pinned,
        "instances": request.instances,
        "malloc": malloc,
        "gc": COLLECTOR_POLICY,
        "weights": "random (seeded), from config.json" if request.random_weights else "checkpoint",
    }
    table = profiler.open_table(
        request.out, loaded.name, config, runtime, device, dtype_name, points, settings, request.resume
    )
    threads = "" if device.startswith("cuda") else f", {torch.get_num_threads()} threads"
    print(f"profiling {loaded.name} on {device} ({runtime.name}, {dtype_name}{threads}) -> {table.path}")
    begin = time.perf_counter()
    ctx = profiler.Context(runtime, device, dtype, seed=request.seed)
    with tqdm(total=profiler.steps(loaded.dims, points, request.ffn_step), desc="blocks", unit="row") as bar:
        profiler.profile_model(
            model,
            table,
            ctx,
            points,
            ffn_step=request.ffn_step,
            repeats=request.repeats,
            instances=request.instances,
            progress=redrawn(bar),
        )
    profiler.finish_table(table, device, time.perf_counter() - begin)
    print(f"table: {len(table.rows)} rows in {time.perf_counter() - begin:.0f} s -> {table.path}")
    if request.validate:
        from amoebasearch.profile.validation_run import validate_table

        with tqdm(total=request.validate + request.calibrate, desc="validate", unit="subnet") as bar:
            _, stats = validate_table(
                model,
                table,
                ctx,
                points,
                request.validate,
                calibrate=request.calibrate,
                seed=request.seed,
                ffn_step=request.ffn_step,
                repeats=request.repeats,
                instances=validation_copies(request, runtime),
                resume=request.resume,
                pause_s=request.pause,
                progress=redrawn(bar),
                report=bar.set_postfix_str,
            )
        from amoebasearch.profile.accuracy import BAR

        for r in stats.to_dict("records"):
            shortfalls = BAR.shortfalls(r)
            verdict = f"misses the bar: {'; '.join(shortfalls)}" if shortfalls else "meets the bar"
            print(
                f"{r['phase']:>7} batch {r['batch']} context {r['context']}: n={r['n']} "
                f"within 5% {r['within_5pct']:.0%}, within 10% {r['within_10pct']:.0%}, MAPE {r['mape_pct']:.2f}% "
                f"({verdict})"
            )
    return 0


def validation_copies(request: ProfileRequest, runtime) -> int:
    """Copies timed per validation subnet: ``--validate-instances``, else the runtime's share of ``--instances``."""
    return request.validate_instances or request.instances * runtime.validation_copies_factor


def run_estimate(request: ProfileRequest) -> int:
    from amoebasearch.profile import estimate
    from amoebasearch.profile.runtimes import RUNTIMES

    if request.runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {request.runtime!r}: choose one of {', '.join(RUNTIMES)}")
    missing = [str(folder) for folder in request.fit_on or () if not folder.is_dir()]
    if missing:
        raise UsageError(f"--fit-on folder {missing[0]} does not exist: name folders that hold measured tables")

    path, error = estimate.estimate_to_file(request)
    print(f"estimated table for {request.estimate} -> {path}")
    if error:
        print(error)
    return 0
