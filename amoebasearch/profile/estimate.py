"""Estimated latency tables for devices we cannot touch: spec sheet + roofline + fitted efficiency.

Per building block we count FLOPs and bytes moved per kernel group (each matmul, attention, the
element-wise tail) and the kernels launched (`block_cost`). A device's estimated latency for
that block is

    sum over groups of max(FLOPs / (peak_flops * eff_compute), bytes / (bandwidth * eff_memory))
    + kernels * t_kernel

where peak FLOP/s and bandwidth come from the vendor's spec sheet (sources beside each entry)
and the efficiencies and the per-kernel cost are fitted on measured tables of one runtime
(``fit_efficiency``): eager's t_kernel is the host's dispatch, a CUDA graph's the GPU's gap
between kernels. Prefill is mostly compute-bound, decode memory/launch-bound; the ``max`` picks
per group. Rows carry ``source=estimated``; replace them by running ``profile`` on the real card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.profile.blocks import Point, width_options
from amoebasearch.profile.fingerprint import device_slug
from amoebasearch.profile.table import (
    COLUMNS,
    FORMAT,
    LatencyTable,
    candidate_tables,
    folder_label,
    load_table,
    table_name,
    table_row,
)
from amoebasearch.shape import ModelDims

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class DeviceSpec:
    """Peak dense FLOP/s per dtype (no sparsity) and memory bandwidth, from the vendor's data sheet."""

    name: str
    slug: str
    flops: dict[str, float]  # dtype -> FLOP/s
    bandwidth: float  # bytes/s
    default_dtype: str = "bfloat16"
    source: str = ""
    kind: str = "gpu"  # efficiencies are only transferred between devices of one kind


T = 1e12
SPECS: dict[str, DeviceSpec] = {
    # NVIDIA RTX A5000 data sheet: 27.8 TFLOPS FP32, 222.2 TFLOPS tensor (sparse) -> 111.1 dense, 768 GB/s GDDR6.
    "a5000": DeviceSpec(
        "NVIDIA RTX A5000",
        "nvidia-rtx-a5000",
        {"float32": 27.8 * T, "bfloat16": 111.1 * T, "float16": 111.1 * T},
        768e9,
        source="NVIDIA RTX A5000 data sheet",
    ),
    # NVIDIA A100 data sheet (SXM 80GB): FP32 19.5 TFLOPS, BF16/FP16 tensor 312 TFLOPS dense, 2039 GB/s HBM2e.
    "a100": DeviceSpec(
        "NVIDIA A100-SXM4-80GB",
        "nvidia-a100-sxm4-80gb",
        {"float32": 19.5 * T, "bfloat16": 312 * T, "float16": 312 * T},
        2039e9,
        source="NVIDIA A100 data sheet",
    ),
    # NVIDIA H100 data sheet (SXM): FP32 67 TFLOPS, BF16/FP16 1979 TFLOPS with sparsity -> 989.4 dense, 3.35 TB/s.
    "h100": DeviceSpec(
        "NVIDIA H100 80GB HBM3",
        "nvidia-h100-80gb-hbm3",
        {"float32": 67 * T, "bfloat16": 989.4 * T, "float16": 989.4 * T},
        3.35e12,
        source="NVIDIA H100 data sheet",
    ),
    # NVIDIA H200 data sheet (SXM): same compute as H100 SXM (989 TFLOPS BF16 dense), 4.8 TB/s HBM3e.
    "h200": DeviceSpec(
        "NVIDIA H200",
        "nvidia-h200",
        {"float32": 67 * T, "bfloat16": 989.4 * T, "float16": 989.4 * T},
        4.8e12,
        source="NVIDIA H200 data sheet",
    ),
    # NVIDIA L4 data sheet: FP32 30.3 TFLOPS, BF16/FP16 242 TFLOPS with sparsity -> 121 dense, 300 GB/s.
    "l4": DeviceSpec(
        "NVIDIA L4",
        "nvidia-l4",
        {"float32": 30.3 * T, "bfloat16": 121 * T, "float16": 121 * T},
        300e9,
        source="NVIDIA L4 data sheet",
    ),
    # NVIDIA Ada Lovelace architecture whitepaper, appendix (GeForce RTX 4090): FP32 82.6 TFLOPS,
    # FP16/BF16 tensor with FP32 accumulate 165.2 TFLOPS dense, 1008 GB/s GDDR6X.
    "rtx4090": DeviceSpec(
        "NVIDIA GeForce RTX 4090",
        "nvidia-geforce-rtx-4090",
        {"float32": 82.6 * T, "bfloat16": 165.2 * T, "float16": 165.2 * T},
        1008e9,
        source="NVIDIA Ada whitepaper",
    ),
    # NVIDIA Jetson AGX Orin 64GB technical brief: Ampere GPU 2048 CUDA cores at 1.3 GHz -> 5.3 TFLOPS FP32;
    # 170 sparse INT8 TOPS -> 85 dense INT8 -> 42.5 dense FP16/BF16 tensor TFLOPS; 204.8 GB/s LPDDR5.
    "orin": DeviceSpec(
        "NVIDIA Jetson AGX Orin 64GB",
        "nvidia-jetson-agx-orin-64gb",
        {"float32": 5.3 * T, "bfloat16": 42.5 * T, "float16": 42.5 * T},
        204.8e9,
        source="Jetson AGX Orin brief",
    ),
    # This machine, one thread (what the shipped CPU tables use). AMD EPYC with AVX-512 (Zen 4 class):
    # 2 x 256-bit FMA pipes per core = 32 FP32 FLOP/cycle; at an assumed 3.0 GHz -> 96 GFLOP/s per core.
    # Bandwidth: AMD EPYC 9004 spec, 12 x DDR5-4800 = 460.8 GB/s per socket, shared by 96 cores -> 4.8 GB/s
    # per core. Used only to measure the estimator's own error against this CPU's measured tables.
    "cpu-t1": DeviceSpec(
        "AMD EPYC (1 thread)",
        "cpu-amd-epyc-t1",
        {"float32": 96e9, "bfloat16": 96e9, "float16": 96e9},
        4.8e9,
        default_dtype="float32",
        source="AMD Zen 4 microarchitecture / EPYC 9004 data sheet",
        kind="cpu",
    ),
}
ALIASES = {
    "cpu-1t": "cpu-t1",
    "jetson": "orin",
    "agx-orin": "orin",
    "jetson-agx-orin": "orin",
    "4090": "rtx4090",
    "rtx-a5000": "a5000",
}


def get_spec(name: str) -> DeviceSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SPECS:
        raise UsageError(f"no spec sheet for device {name!r}: choose one of {', '.join(SPECS)}")
    return SPECS[key]


@dataclass(frozen=True)
class Cost:
    """FLOPs, bytes moved and kernels launched per kernel group of a block.

    Each group (one matmul, attention, the element-wise tail) meets its own roof: a decode step's
    small projections are bound by their weight reads while its attention at a long context reads
    the KV cache, and a prefill's projections are compute-bound while its norms are not. One
    ``max`` over the block's summed FLOPs and bytes priced every group at the block's bound (on the
    H200's graphs: block MAPE 7-10 %, held-out subnets up to 15.5 %; per group 3-5 % and
    5.5-11.3 %).
    """

    ops: tuple[tuple[float, float, int], ...]  # (flops, bytes, kernels) per kernel group

    @property
    def flops(self) -> float:
        return sum(op[0] for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op[1] for op in self.ops)

    @property
    def kernels(self) -> int:
        return sum(op[2] for op in self.ops)


def block_cost(dims: ModelDims, heads: int, ffn: int, point: Point, dtype_bytes: int) -> Cost:
    """FLOPs, bytes moved and kernel launches of one decoder block at width (heads, ffn), per kernel group.

    Matmuls (q, k, v, o, gate, up, down; one kernel each): 2 FLOPs per multiply-add over the new
    tokens; bytes are the weights once plus the activations in and out. Attention (rotary, cache
    append, SDPA and the reshapes around it: 12 kernels): scores and values over the keys seen (a
    causal prefill sees half of its own tokens on average), reading the KV cache once. The
    element-wise tail (two RMS norms, SiLU x up, two residual adds: 16 kernels) only moves
    activations. 35 kernels in all, as counted in a PyTorch eager Llama block.
    """
    h, kv, d, hidden = heads, dims.num_kv_heads, dims.head_dim, dims.hidden
    tokens = point.batch * point.new_tokens
    keys = point.past + (point.new_tokens + 1) / 2

    def matmul(inputs: int, outputs: int) -> tuple[float, float, int]:
        return 2.0 * tokens * inputs * outputs, dtype_bytes * (inputs * outputs + tokens * (inputs + outputs)), 1

    projections = [(hidden, h * d), (hidden, kv * d), (hidden, kv * d), (h * d, hidden)]
    mlp = [(hidden, ffn), (hidden, ffn), (ffn, hidden)]
    cache = 2 * point.batch * kv * d * (point.past + point.new_tokens)
    attention = (4.0 * tokens * h * d * keys, dtype_bytes * (cache + 2 * tokens * h * d), 12)
    elementwise = (0.0, dtype_bytes * tokens * (8 * hidden + 3 * ffn + 2 * h * d), 16)
    return Cost((*(matmul(i, o) for i, o in projections + mlp), attention, elementwise))


def embedding_cost(dims: ModelDims, point: Point, dtype_bytes: int) -> Cost:
    tokens = point.batch * point.new_tokens
    return Cost(((0.0, dtype_bytes * 2 * tokens * dims.hidden, 1),))


def head_cost(dims: ModelDims, vocab: int, point: Point, dtype_bytes: int) -> Cost:
    tokens = point.batch * point.new_tokens
    flops = 2 * point.batch * dims.hidden * vocab
    moved = dtype_bytes * (dims.hidden * vocab + 2 * tokens * dims.hidden + point.batch * vocab)
    return Cost(((flops, moved, 7),))


@dataclass(frozen=True)
class Efficiency:
    """Fraction of peak compute and bandwidth reached, and the cost of one kernel launch.

    ``overlap`` says whether launches overlap the device's work: a GPU runtime that launches from
    the host asynchronously (eager, compile) pays per kernel group the larger of its launches and
    its work; a CPU does both itself, and a replayed CUDA graph's ``kernel_us`` is the GPU's own
    gap between kernels, so there the two add up.
    """

    compute: float
    memory: float
    kernel_us: float
    overlap: bool = False


def overlaps_launches(kind: str, runtime: str) -> bool:
    """Whether ``runtime`` on a device of ``kind`` launches kernels asynchronously from the host."""
    return kind == "gpu" and runtime != "cudagraph"


# Used for a device kind with no measured table yet, and as the prior of a fit on measured ones.
# Typical values for small-batch LLM inference in PyTorch eager on NVIDIA GPUs: large reads reach
# ~80 % of peak bandwidth, GEMMs of this size ~50 % of dense tensor peak, and each op costs ~8 us of
# host dispatch + launch. They are assumptions, recorded in the sidecar; a measured table of the
# kind replaces them by a fit (on an H100: ~18.6 us per kernel, efficiencies left at these).
DEFAULT_EFFICIENCY = {"gpu": Efficiency(compute=0.5, memory=0.8, kernel_us=8.0, overlap=True)}


def roofline_us(cost: Cost, spec: DeviceSpec, dtype: str, eff: Efficiency) -> float:
    """Each kernel group at its own roof (compute or memory), and its launches (see `Efficiency`)."""
    compute, memory = spec.flops[dtype] * eff.compute, spec.bandwidth * eff.memory
    work = [max(flops / compute, moved / memory) * 1e6 for flops, moved, _ in cost.ops]
    launches = [kernels * eff.kernel_us for _, _, kernels in cost.ops]
    if eff.overlap:
        return sum(max(w, k) for w, k in zip(work, launches, strict=True))
    return sum(work) + sum(launches)


def _decoder_frame(table: LatencyTable) -> pd.DataFrame:
    rows = table.rows
    return rows[rows["block"] == "decoder"]


# Weight of the prior per decoder row, on squared log distance of each efficiency from its prior.
# A table measured where launches dominate (a GPU at batch 1, short context: ~18 us per kernel on an
# H100's host, roofline terms a few us) barely constrains the efficiencies, and an unanchored
# fit drove them to 1 % and 3 % of peak, which then priced a batch-8, 2048-token prefill block 18x
# dearer (17 ms, not 1 ms).
# At 0.001 a move from 0.5 to 0.01 costs ~0.015 per row, far more than such data gains (rows within
# a few % either way); rows whose roofline terms matter still pull the efficiencies where they belong.
PRIOR_WEIGHT = 0.001


def fit_efficiency(
    tables: list[LatencyTable],
    specs: list[DeviceSpec],
    prior: Efficiency | None = None,
    overlap: bool = False,
    work: Efficiency | None = None,
) -> Efficiency:
    """Efficiencies and kernel cost minimising squared log error over the tables' decoder rows.

    With a ``prior`` (the default efficiencies of the device kind), compute and memory efficiency
    are also pulled towards it (`PRIOR_WEIGHT`), so rows that cannot tell them apart leave them at
    the prior instead of anywhere. With ``work`` (efficiencies fitted where the device's own work
    shows, e.g. a CUDA-graph table of the same kind), those two are taken as they are and only the
    launch cost is fitted. A coarse-to-fine grid search: cheap, robust, no solver dependency.
    """
    work_at_peak, launches, measured = [], [], []  # per decoder row and kernel group
    for table, spec in zip(tables, specs, strict=True):
        dims = ModelDims(**table.meta["model"]["dims"])
        dtype = table.meta["dtype"]
        for r in _decoder_frame(table).itertuples():
            point = Point(r.phase, int(r.batch), int(r.context))
            cost = block_cost(dims, int(r.heads), int(r.ffn), point, BYTES[dtype])
            work_at_peak.append([(f / spec.flops[dtype], b / spec.bandwidth) for f, b, _ in cost.ops])
            launches.append([k for _, _, k in cost.ops])
            measured.append(r.median_us)
    if not measured:
        raise UsageError("no measured decoder rows to fit efficiencies on: profile a device first")
    at_peak = np.asarray(work_at_peak) * 1e6  # (rows, groups, 2): us at 100 % of peak
    kernels, log_measured = np.asarray(launches, float), np.log(np.asarray(measured, float))

    def losses(compute: np.ndarray, memory: np.ndarray, kernel_us: np.ndarray) -> np.ndarray:
        """Loss of every candidate (1-D arrays of equal length), all rows at once."""
        flops_us, bytes_us = at_peak[None, :, :, 0], at_peak[None, :, :, 1]
        busy = np.maximum(flops_us / compute[:, None, None], bytes_us / memory[:, None, None])
        launch = kernels[None, :, :] * kernel_us[:, None, None]
        predicted = (np.maximum(busy, launch) if overlap else busy + launch).sum(axis=2)
        fit = ((np.log(predicted) - log_measured[None, :]) ** 2).sum(axis=1)
        if prior is None or work is not None:
            return fit
        anchor = np.log(compute / prior.compute) ** 2 + np.log(memory / prior.memory) ** 2
        return fit + PRIOR_WEIGHT * len(measured) * anchor

    best = Efficiency(0.5, 0.5, 1.0)
    ranges = {"compute": (1e-3, 4.0), "memory": (1e-3, 8.0), "kernel_us": (0.01, 200.0)}
    points = {"compute": 13, "memory": 13, "kernel_us": 13}
    if work is not None:  # one value each: only the launch cost is searched
        ranges |= {"compute": (work.compute, work.compute), "memory": (work.memory, work.memory)}
        points |= {"compute": 1, "memory": 1}
    for _ in range(12):
        grids = {k: np.geomspace(*ranges[k], points[k]) for k in ranges}
        memory, kernel_us = (g.ravel() for g in np.meshgrid(grids["memory"], grids["kernel_us"], indexing="ij"))
        best_loss = np.inf
        for compute in grids["compute"]:  # one compute value at a time keeps the (candidates, rows, groups) array small
            scores = losses(np.full_like(memory, compute), memory, kernel_us)
            i = int(np.argmin(scores))
            if scores[i] < best_loss:
                best_loss = scores[i]
                best = Efficiency(float(compute), float(memory[i]), float(kernel_us[i]), overlap)
        # next round: two grid steps either side of the best value (one step trapped the search in
        # the valley where launch cost trades against memory efficiency, short of the optimum)
        ranges = {
            k: (getattr(best, k) / (hi / lo) ** (2 / 12), getattr(best, k) * (hi / lo) ** (2 / 12))
            for k, (lo, hi) in ranges.items()
        }
    return best


def _overhead_for(overhead_us: dict[tuple[str, int, int], float], point: Point) -> float:
    """The measured host overhead at this point, else at the closest measured point of the phase."""
    key = (point.phase, point.batch, point.context)
    if key in overhead_us:
        return overhead_us[key]
    same = [
        (abs(b - point.batch) + abs(c - point.context), us) for (p, b, c), us in overhead_us.items() if p == point.phase
    ]
    return min(same)[1] if same else 0.0


def estimate_table(
    spec: DeviceSpec,
    dims: ModelDims,
    vocab: int,
    model_meta: dict[str, Any],
    points: list[Point],
    dtype: str,
    eff: Efficiency,
    overhead_us: dict[tuple[str, int, int], float],
    ffn_step: int = 64,
    calibrated_on: list[str] | None = None,
    runtime: str = "eager",
) -> LatencyTable:
    """An estimated table over the full width grid; overhead (host-side glue) comes from a measured table."""
    size = BYTES[dtype]
    rows = []

    def add(block, heads, ffn, point, us):
        rows.append(table_row(block, heads, ffn, point, us, us, us, repeats=0, noisy=False, source="estimated"))

    for point in points:
        add("embedding", 0, 0, point, roofline_us(embedding_cost(dims, point, size), spec, dtype, eff))
        add("head", 0, 0, point, roofline_us(head_cost(dims, vocab, point, size), spec, dtype, eff))
        add("overhead", 0, 0, point, _overhead_for(overhead_us, point))
        for h, f in width_options(dims, ffn_step):
            add("decoder", h, f, point, roofline_us(block_cost(dims, h, f, point, size), spec, dtype, eff))
    meta = {
        "format": FORMAT,
        "source": "estimated",
        "model": model_meta,
        "device": {"kind": "spec-sheet", "name": spec.name, "spec": asdict(spec)},
        "runtime": {"name": estimate_label(runtime), "models": runtime},
        "dtype": dtype,
        "settings": {"grid": [asdict(p) for p in points], "ffn_step": ffn_step},
        "efficiency": asdict(eff),
        "calibrated_on": calibrated_on or [],
    }
    return LatencyTable(pd.DataFrame(rows, columns=list(COLUMNS)), meta)


def measured_tables(folders: Sequence[Path], signature: str, runtime: str = "eager") -> list[LatencyTable]:
    """Measured ``runtime`` tables for this model in ``folders`` (the calibration set of the estimator)."""
    paths = [path for folder in folders for path in candidate_tables(folder, signature)]
    tables = [load_table(path, signature) for path in paths]
    return [t for t in tables if t.meta.get("source") == "measured" and t.meta["runtime"].get("name") == runtime]


def modelled_runtime(table: LatencyTable) -> str:
    """The runtime an estimated table prices (older estimated tables priced eager only)."""
    return table.meta["runtime"].get("models", "eager")


def estimate_label(runtime: str) -> str:
    """The runtime part of an estimated table's name: ``roofline`` for eager (the names shipped
    from the start), ``roofline-<runtime>`` for another runtime's launch costs."""
    return "roofline" if runtime == "eager" else f"roofline-{runtime}"


def describes(spec: DeviceSpec, device: dict[str, Any]) -> bool:
    """Whether a measured table's device is the one ``spec`` describes (CPU sheets are per core:
    ``cpu-amd-epyc-t1`` describes any AMD EPYC table timed at one thread)."""
    slug = device_slug(device)
    if spec.kind == "cpu":
        one_thread = device.get("threads_used") == 1
        return device.get("kind") == "cpu" and one_thread and slug.startswith(spec.slug.removesuffix("-t1"))
    return device.get("kind") == "cuda" and slug == spec.slug


def table_kind(table: LatencyTable) -> str:
    return "cpu" if table.meta["device"].get("kind") == "cpu" else "gpu"


def spec_for_table(table: LatencyTable) -> DeviceSpec:
    """The spec entry of a measured table's device (only this CPU has one so far)."""
    device = table.meta["device"]
    if device.get("kind") == "cpu" and device.get("threads_used") == 1:
        return SPECS["cpu-t1"]
    for spec in SPECS.values():
        if spec.name.lower() in str(device.get("name", "")).lower():
            return spec
    raise UsageError(f"no spec sheet matches measured device {device.get('name')!r}: add one to estimate.SPECS")


def graph_work(graphs: list[LatencyTable], prior: Efficiency | None) -> Efficiency:
    """Compute and memory efficiency of GPU work, fitted on CUDA-graph tables.

    A replayed graph's rows show the GPU's own work (plus ~3 us between kernels); an eager table
    at batch 1 shows the host launching kernels, whose ~19 us each hide the work and let a fit
    put the efficiencies anywhere (on an H100: 12 % of peak bandwidth, pricing an eager batch-8,
    2048-token prefill of SmolLM2 on an H100 at 77 ms where the H200's graphs measured 25 ms).
    So eager estimates take these two from the graphs and fit only the launch cost.
    """
    return fit_efficiency(graphs, [spec_for_table(t) for t in graphs], prior)


def estimate_to_file(
    device,
    model,
    out_dir: Path,
    phases,
    batches,
    contexts,
    dtype,
    ffn_step,
    runtime: str = "eager",
    fit_on: Sequence[Path] | None = None,
) -> tuple[Path, str]:
    """`amoebasearch profile --estimate DEVICE [--runtime R] [--fit-on FOLDER ...]`: fit on the measured R
    tables in ``fit_on`` (default: ``out_dir``), write the estimate to ``out_dir``.

    ``fit_on`` lets an estimate keep learning from a measurement that is not shipped beside it
    (a table whose validation missed the bar, kept under benchmarks/results/).

    The efficiencies and per-kernel cost are a runtime's as much as a device's: eager pays the
    host's dispatch per kernel (~19 us on an H100), a replayed CUDA graph only the GPU's own
    gap between kernels (~3 us on the H200). Eager falls back on assumed GPU efficiencies when no
    table of the kind is measured; another runtime needs one measured table of its own.
    """
    from amoebasearch.models import load_config, model_signature, resolve

    spec = get_spec(device)
    config = load_config(model)
    name, _ = resolve(model)
    signature = model_signature(config)
    dims = ModelDims.from_config(config)
    dtype = dtype or spec.default_dtype
    fit_dirs = [Path(folder) for folder in fit_on] if fit_on else [Path(out_dir)]
    where = ", ".join(folder_label(folder) for folder in fit_dirs)
    calibration = [t for t in measured_tables(fit_dirs, signature, runtime) if table_kind(t) == spec.kind]
    if spec.kind == "cpu":  # a CPU sheet is one core of a chip: its one-thread tables first, else any CPU's
        one_thread = [t for t in calibration if t.threads == 1]
        calibration = [t for t in one_thread if describes(spec, t.meta["device"])] or one_thread
    if not calibration and runtime != "eager":
        raise UsageError(
            f"no measured {runtime} table of a {spec.kind} for {name} in {where}: run "
            f"`amoebasearch profile --runtime {runtime}` on one first, or drop --runtime to estimate eager"
        )
    overlap = overlaps_launches(spec.kind, runtime)
    graphs = measured_tables(fit_dirs, signature, "cudagraph") if overlap else []
    work = graph_work(graphs, DEFAULT_EFFICIENCY.get(spec.kind)) if graphs else None
    if calibration:
        specs = [spec_for_table(t) for t in calibration]
        eff = fit_efficiency(calibration, specs, DEFAULT_EFFICIENCY.get(spec.kind), overlap, work)
        note = estimate_error_note(calibration, eff)
    elif spec.kind in DEFAULT_EFFICIENCY:
        eff = DEFAULT_EFFICIENCY[spec.kind]
        if work is not None:
            eff = Efficiency(work.compute, work.memory, eff.kernel_us, overlap)
        note = f"no measured {spec.kind} table for {name} in {where}: default {spec.kind} launch cost used"
    else:
        raise UsageError(
            f"no measured {spec.kind} table for {name} in {where}: run `amoebasearch profile` first, "
            "or name a folder of measured tables with --fit-on"
        )
    # the per-call overhead is host-side Python glue: take it from any measured table of this model
    hosts = calibration or measured_tables(fit_dirs, signature, runtime)
    if not hosts:
        raise UsageError(f"no measured table for {name} in {where}: run `amoebasearch profile` once on this host")
    overhead = {}
    for r in hosts[0].rows[hosts[0].rows["block"] == "overhead"].itertuples():
        overhead[(r.phase, int(r.batch), int(r.context))] = float(r.median_us)
    points = [Point(p, b, c) for p in phases for b in batches for c in contexts]
    model_meta = {"name": name, "signature": signature, "dims": asdict(dims)}
    table = estimate_table(
        spec,
        dims,
        config.vocab_size,
        model_meta,
        points,
        dtype,
        eff,
        overhead,
        ffn_step,
        calibrated_on=[str(t.path) for t in calibration],
        runtime=runtime,
    )
    table.meta["efficiency_source"] = "fitted" if calibration else "default"
    if work is not None:
        table.meta["work_efficiency_from"] = [str(t.path) for t in graphs]
    table.meta["overhead_from"] = str(hosts[0].path)
    path = Path(out_dir) / f"{table_name(name, spec.slug, estimate_label(runtime), dtype)}.csv"
    table.save(path)
    return path, note


def estimate_error_note(calibration: list[LatencyTable], eff: Efficiency) -> str:
    """MAPE of the estimate against the measured decoder rows it was fitted on (per phase)."""
    parts = []
    for table in calibration:
        spec = spec_for_table(table)
        dims = ModelDims(**table.meta["model"]["dims"])
        frame = _decoder_frame(table)
        for phase, group in frame.groupby("phase"):
            errors = []
            for r in group.itertuples():
                point = Point(r.phase, int(r.batch), int(r.context))
                cost = block_cost(dims, int(r.heads), int(r.ffn), point, BYTES[table.meta["dtype"]])
                errors.append(abs(roofline_us(cost, spec, table.meta["dtype"], eff) / r.median_us - 1) * 100)
            parts.append(f"{spec.slug} {phase}: block MAPE {sum(errors) / len(errors):.1f}%")
    return "estimate vs measured (fit set): " + "; ".join(parts)
