"""`amoebasearch profile`: measure (or estimate) a latency table for one device and runtime."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from amoebasearch.cli.common import add_model_argument, non_negative_float, positive_int
from amoebasearch.devices import check_device
from amoebasearch.errors import UsageError

DTYPES = ("float32", "bfloat16", "float16")
QUANTS = ("q4_k_m", "q8_0", "f16", "f32")


def comma_list(kind):
    """A comma-separated grid axis: an empty item is a typo (refused), a repeated one is dropped
    (a point is measured once); no item at all ("" or ",") is an empty list, which `check_grid` names."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",")]
        if not any(items):
            return []
        if "" in items:
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item: write values like 1,8")
        try:
            values = [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
        return list(dict.fromkeys(values))

    return parse


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
    add_model_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument(
        "--runtime",
        help="eager, compile, onnxruntime, or cudagraph on CUDA (default: cudagraph on CUDA, as serving engines "
        "replay decode, eager on CPU); vllm etc. are plug-ins; with --estimate, the runtime whose measured "
        "tables calibrate the estimate (default eager)",
    )
    parser.add_argument("--phases", type=comma_list(str), default=["prefill", "decode"], help="default prefill,decode")
    parser.add_argument("--batch", type=comma_list(int), default=[1], help="batch sizes, e.g. 1,8 (default 1)")
    parser.add_argument("--context", type=comma_list(int), default=[128], help="context lengths (default 128)")
    parser.add_argument("--dtype", choices=DTYPES, help="default float32 on CPU, bfloat16 on GPU")
    parser.add_argument(
        "--quant",
        choices=QUANTS,
        help="--runtime llamacpp: the GGUF weight format timed (default q4_k_m), in place of --dtype",
    )
    parser.add_argument("--out", default="profiles", help="output folder (default profiles/)")
    parser.add_argument("--validate", type=int, default=0, metavar="N", help="validate on N held-out subnets")
    parser.add_argument("--calibrate", type=int, default=16, metavar="K", help="subnets to fit calibration (16)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished rows (and the finished rounds of a group cut short) and measure only the rest",
    )
    parser.add_argument(
        "--estimate",
        metavar="DEVICE",
        help="write an estimated table: a5000, a100, h100, h200, l4, rtx4090, orin (or cpu-t1 to check the estimator)",
    )
    parser.add_argument(
        "--fit-on",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="with --estimate: folders of measured tables to fit the estimate on (default: --out)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads (default: the runtime's own default on this host, for PyTorch torch.get_num_threads()); "
        "recorded in the table's sidecar and, on CPU, in its file name as -t<N>",
    )
    parser.add_argument("--repeats", type=positive_int, default=21, help="timed repeats per program (>= 20)")
    parser.add_argument(
        "--instances",
        type=positive_int,
        help="independently allocated copies timed per block width (and per validation subnet, see "
        "--validate-instances); a latency is their median (default 3; 1 for llamacpp, whose whole models "
        "share their mapped weight file)",
    )
    parser.add_argument(
        "--validate-instances",
        type=positive_int,
        metavar="N",
        help="copies timed per validation subnet (default: --instances, twice that for onnxruntime, whose "
        "sessions of one program differ by 4-8 %%, three times for llamacpp): more copies make the reference "
        "latency steadier",
    )
    parser.add_argument(
        "--pause",
        type=non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="validation: wait this long (doubling) before re-timing a group measured while the host was "
        "disturbed (default 10; 0 retries at once)",
    )
    parser.add_argument("--ffn-step", type=positive_int, default=64, help="FFN width granularity (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs and validation subnets")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build the model from its config.json with seeded random weights (latency depends on shapes "
        "only; for devices the weights cannot be copied to); recorded in the table's settings",
    )
    parser.set_defaults(run=run, measuring_defaults={dest: parser.get_default(dest) for dest in MEASURING_ONLY})


# options that only mean something when timing on this machine; --estimate refuses them rather than ignore them
# (not --runtime: with --estimate it names the runtime whose launch costs the estimate models)
MEASURING_ONLY = (
    "device", "validate", "calibrate", "resume", "threads", "instances", "validate_instances", "pause", "repeats",
    "random_weights", "quant",
)  # fmt: skip


def redrawn(bar):
    """``bar.update`` that always redraws: one group takes minutes, and tqdm's rate limit would hide a
    resumed run's finished rows (counted the instant the bar opens) until the next group ends."""

    def update(count: int) -> None:
        bar.update(count)
        bar.refresh()

    return update


def check_grid(args: argparse.Namespace) -> None:
    from amoebasearch.profile.blocks import PHASES

    if not args.phases or not args.batch or not args.context:
        raise UsageError("empty grid: --phases, --batch and --context each need at least one value")
    bad = [p for p in args.phases if p not in PHASES]
    if bad:
        raise UsageError(f"unknown phase {bad[0]!r}: choose from {', '.join(PHASES)}")
    if min(args.batch) < 1 or min(args.context) < 1:
        raise UsageError("--batch and --context values must be positive")
    if args.repeats < 20:
        raise UsageError(f"--repeats {args.repeats} is too few for stable medians: use at least 20")
    if args.validate < 0 or args.calibrate < 0 or args.pause < 0:
        raise UsageError("--validate, --calibrate and --pause must not be negative")


def run(args: argparse.Namespace) -> int:
    from amoebasearch.devices import default_runtime

    check_grid(args)
    if args.runtime is None:
        args.runtime = "eager" if args.estimate else default_runtime(args.device)
    if args.estimate:
        given = [
            f"--{dest.replace('_', '-')}"
            for dest, default in args.measuring_defaults.items()
            if getattr(args, dest) != default
        ]
        if given:
            raise UsageError(
                f"--estimate times nothing, so {', '.join(given)} would be ignored: drop it or drop --estimate"
            )
        return run_estimate(args)
    if args.fit_on:
        raise UsageError("--fit-on names the tables an estimate is fitted on: use it with --estimate DEVICE")
    from amoebasearch.profile.runtimes import default_threads
    from amoebasearch.profile.timing import measurement_threads

    device = check_device(args.device)
    with measurement_threads(device, args.threads or default_threads(args.runtime)) as pinned:
        return measure(args, device, pinned)


def measure(args: argparse.Namespace, device: str, pinned: list[int] | None) -> int:
    import torch
    from tqdm import tqdm

    from amoebasearch.models import load, load_config, random_weights
    from amoebasearch.profile import profiler
    from amoebasearch.profile.runtimes import get_runtime
    from amoebasearch.profile.timing import COLLECTOR_POLICY, fix_malloc_thresholds

    if args.quant and args.dtype:
        raise UsageError("--quant is the weight format of --runtime llamacpp, --dtype that of the others: give one")
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    runtime = get_runtime(args.runtime, device, dtype, args.quant)
    args.instances = args.instances or runtime.default_instances
    if getattr(runtime, "quant", None):  # the engine runs its own file format, exported from float32
        dtype_name, dtype = runtime.quant, torch.float32
    config = load_config(args.model)
    points = profiler.grid(args.phases, args.batch, args.context)
    malloc = fix_malloc_thresholds()  # before the model and every program allocate
    if args.random_weights:
        loaded = random_weights(args.model, dtype=dtype, seed=args.seed)
    else:
        loaded = load(args.model, dtype=dtype)
    model = loaded.model.to(device)
    settings = {
        "repeats": args.repeats,
        "warmup": 3,
        "ffn_step": args.ffn_step,
        "seed": args.seed,
        "pinned": pinned,
        "instances": args.instances,
        "malloc": malloc,
        "gc": COLLECTOR_POLICY,
        "weights": "random (seeded), from config.json" if args.random_weights else "checkpoint",
    }
    table = profiler.open_table(
        args.out, loaded.name, config, runtime, device, dtype_name, points, settings, args.resume
    )
    threads = "" if device.startswith("cuda") else f", {torch.get_num_threads()} threads"
    print(f"profiling {loaded.name} on {device} ({runtime.name}, {dtype_name}{threads}) -> {table.path}")
    begin = time.perf_counter()
    ctx = profiler.Context(runtime, device, dtype, seed=args.seed)
    with tqdm(total=profiler.steps(loaded.dims, points, args.ffn_step), desc="blocks", unit="row") as bar:
        profiler.profile_model(
            model,
            table,
            ctx,
            points,
            ffn_step=args.ffn_step,
            repeats=args.repeats,
            instances=args.instances,
            progress=redrawn(bar),
        )
    profiler.finish_table(table, device, time.perf_counter() - begin)
    print(f"table: {len(table.rows)} rows in {time.perf_counter() - begin:.0f} s -> {table.path}")
    if args.validate:
        from amoebasearch.profile.validate import validate_table

        with tqdm(total=args.validate + args.calibrate, desc="validate", unit="subnet") as bar:
            _, stats = validate_table(
                model,
                table,
                ctx,
                points,
                args.validate,
                calibrate=args.calibrate,
                seed=args.seed,
                ffn_step=args.ffn_step,
                repeats=args.repeats,
                instances=validation_copies(args, runtime),
                resume=args.resume,
                pause_s=args.pause,
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


def validation_copies(args: argparse.Namespace, runtime) -> int:
    """Copies timed per validation subnet: ``--validate-instances``, else the runtime's share of ``--instances``."""
    return args.validate_instances or args.instances * runtime.validation_copies_factor


def run_estimate(args: argparse.Namespace) -> int:
    from amoebasearch.profile import estimate
    from amoebasearch.profile.runtimes import RUNTIMES

    if args.runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {args.runtime!r}: choose one of {', '.join(RUNTIMES)}")
    missing = [str(folder) for folder in args.fit_on or () if not folder.is_dir()]
    if missing:
        raise UsageError(f"--fit-on folder {missing[0]} does not exist: name folders that hold measured tables")

    path, error = estimate.estimate_to_file(
        args.estimate,
        args.model,
        Path(args.out),
        args.phases,
        args.batch,
        args.context,
        args.dtype,
        args.ffn_step,
        args.runtime,
        args.fit_on,
    )
    print(f"estimated table for {args.estimate} -> {path}")
    if error:
        print(error)
    return 0
