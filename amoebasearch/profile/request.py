"""What `profile` is asked, in groups: the grid of points, the table, how this machine times it,
the validation, or an estimate instead. Each field declares its `profile` flag (`option`).

`ProfileRequest` is the groups in one flat dataclass (``request.repeats``); `Timing` and
`Validation` are what ``--estimate`` refuses, as an estimate times nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amoebasearch.models import DEFAULT_MODEL, MODEL_HELP
from amoebasearch.options import comma_list, non_negative_float, option, positive_int

DTYPES = ("float32", "bfloat16", "float16")
QUANTS = ("q4_k_m", "q8_0", "f16", "f32")  # the GGUF weight formats llama.cpp is timed (and deployed) at


@dataclass(kw_only=True)
class Grid:
    """The points every block is timed at: phases x batch sizes x context lengths."""

    phases: list[str] = option(
        default_factory=lambda: ["prefill", "decode"], type=comma_list(str), help="default prefill,decode"
    )
    batch: list[int] = option(
        default_factory=lambda: [1], type=comma_list(int), help="batch sizes, e.g. 1,8 (default 1)"
    )
    context: list[int] = option(
        default_factory=lambda: [128], type=comma_list(int), help="context lengths (default 128)"
    )


@dataclass(kw_only=True)
class TableSettings:
    """The table: which model, runtime and weights, and where it goes."""

    model: str = option(DEFAULT_MODEL, help=MODEL_HELP)
    runtime: str = option(  # the CLI defaults it for the device (or, with --estimate, to eager)
        "eager",
        unset=True,
        help="eager, compile, onnxruntime, or cudagraph on CUDA (default: cudagraph on CUDA, as serving engines "
        "replay decode, eager on CPU); vllm etc. are plug-ins; with --estimate, the runtime whose measured "
        "tables calibrate the estimate (default eager)",
    )
    dtype: str | None = option(None, choices=DTYPES, help="default float32 on CPU, bfloat16 on GPU")
    out: Path = option(Path("profiles"), type=Path, help="output folder (default profiles/)")
    ffn_step: int = option(64, type=positive_int, help="FFN width granularity (default 64)")
    seed: int = option(0, type=int, help="seed for inputs and validation subnets")


@dataclass(kw_only=True)
class Timing:
    """Timing on this machine."""

    device: str = option("cpu", help="cpu or cuda:N (default cpu)")
    quant: str | None = option(
        None,
        choices=QUANTS,
        help="--runtime llamacpp: the GGUF weight format timed (default q4_k_m), in place of --dtype",
    )
    threads: int | None = option(
        None,
        type=positive_int,
        help="CPU threads (default: the runtime's own default on this host, for PyTorch torch.get_num_threads()); "
        "recorded in the table's sidecar and, on CPU, in its file name as -t<N>",
    )
    repeats: int = option(21, type=positive_int, help="timed repeats per program (>= 20)")
    instances: int | None = option(  # None: the runtime's default
        None,
        type=positive_int,
        help="independently allocated copies timed per block width (and per validation subnet, see "
        "--validate-instances); a latency is their median (default 3; 1 for llamacpp, whose whole models "
        "share their mapped weight file)",
    )
    resume: bool = option(
        False, help="keep finished rows (and the finished rounds of a group cut short) and measure only the rest"
    )
    random_weights: bool = option(
        False,
        help="build the model from its config.json with seeded random weights (latency depends on shapes "
        "only; for devices the weights cannot be copied to); recorded in the table's settings",
    )


@dataclass(kw_only=True)
class Validation:
    """Validation: the predictor checked on whole subnets timed end to end."""

    validate: int = option(0, type=int, metavar="N", help="validate on N held-out subnets")
    calibrate: int = option(16, type=int, metavar="K", help="subnets to fit calibration (16)")
    validate_instances: int | None = option(  # None: --instances times the runtime's factor
        None,
        type=positive_int,
        metavar="N",
        help="copies timed per validation subnet (default: --instances, twice that for onnxruntime, whose "
        "sessions of one program differ by 4-8 %%, three times for llamacpp): more copies make the reference "
        "latency steadier",
    )
    pause: float = option(
        10.0,
        type=non_negative_float,
        metavar="SECONDS",
        help="validation: wait this long (doubling) before re-timing a group measured while the host was "
        "disturbed (default 10; 0 retries at once)",
    )


@dataclass(kw_only=True)
class Estimate:
    """Estimating instead: a roofline table for a device out of reach."""

    estimate: str | None = option(
        None,
        metavar="DEVICE",
        help="write an estimated table: a5000, a100, h100, h200, l4, rtx4090, orin (or cpu-t1 to check the estimator)",
    )
    fit_on: list[Path] | None = option(
        None,
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="with --estimate: folders of measured tables to fit the estimate on (default: --out)",
    )


@dataclass(kw_only=True)
class ProfileRequest(Estimate, Validation, Timing, Grid, TableSettings):
    """One `profile` run: measure a table on this machine, or (``estimate``) estimate one."""
