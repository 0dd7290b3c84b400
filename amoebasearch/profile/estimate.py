"""Estimated latency tables for devices we cannot touch: spec sheet + roofline + fitted efficiency.

Per building block we count FLOPs, bytes moved and kernels launched (`block_cost`). A device's
estimated latency for that block is

    max(FLOPs / (peak_flops * eff_compute), bytes / (bandwidth * eff_memory)) + kernels * t_kernel

where peak FLOP/s and bandwidth come from the vendor's spec sheet (sources beside each entry)
and the efficiencies and the per-kernel cost are fitted on measured tables (``fit_efficiency``).
Prefill is mostly compute-bound, decode memory/launch-bound; the roofline's ``max`` picks per
block. Rows carry ``source=estimated``; replace them by running ``profile`` on the real card.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.profile.blocks import Point, width_options
from amoebasearch.profile.table import (
    COLUMNS,
    FORMAT,
    LatencyTable,
    candidate_tables,
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
    "cpu-1t": DeviceSpec(
        "AMD EPYC (1 thread)",
        "cpu-amd-epyc-1t",
        {"float32": 96e9, "bfloat16": 96e9, "float16": 96e9},
        4.8e9,
        default_dtype="float32",
        source="AMD Zen 4 microarchitecture / EPYC 9004 data sheet",
        kind="cpu",
    ),
}
ALIASES = {"jetson": "orin", "agx-orin": "orin", "jetson-agx-orin": "orin", "4090": "rtx4090", "rtx-a5000": "a5000"}


def get_spec(name: str) -> DeviceSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SPECS:
        raise UsageError(f"no spec sheet for device {name!r}: choose one of {', '.join(SPECS)}")
    return SPECS[key]


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float
    kernels: int


def block_cost(dims: ModelDims, heads: int, ffn: int, point: Point, dtype_bytes: int) -> Cost:
    """FLOPs, bytes moved and kernel launches of one decoder block at width (heads, ffn).

    Matmuls: 2 FLOPs per multiply-add over new tokens; attention scores and values over the
    keys seen (a causal prefill sees half of its own tokens on average). Bytes: all weights
    once, the KV cache read once, activations in and out of each matmul.
    """
    h, kv, d, hidden = heads, dims.num_kv_heads, dims.head_dim, dims.hidden
    tokens = point.batch * point.new_tokens
    keys = point.past + (point.new_tokens + 1) / 2
    weights = hidden * (h * d) * 2 + hidden * (kv * d) * 2 + hidden * ffn * 3
    flops = 2 * tokens * weights + 4 * tokens * h * d * keys
    cache = 2 * point.batch * kv * d * (point.past + point.new_tokens)
    activations = tokens * (6 * hidden + 2 * h * d + 2 * kv * d + 4 * ffn)
    return Cost(flops, dtype_bytes * (weights + cache + activations), kernels=35)


def embedding_cost(dims: ModelDims, point: Point, dtype_bytes: int) -> Cost:
    tokens = point.batch * point.new_tokens
    return Cost(0.0, dtype_bytes * 2 * tokens * dims.hidden, kernels=1)


def head_cost(dims: ModelDims, vocab: int, point: Point, dtype_bytes: int) -> Cost:
    tokens = point.batch * point.new_tokens
    flops = 2 * point.batch * dims.hidden * vocab
    return Cost(flops, dtype_bytes * (dims.hidden * vocab + 2 * tokens * dims.hidden + point.batch * vocab), kernels=7)


@dataclass(frozen=True)
class Efficiency:
    """Fraction of peak compute and bandwidth reached, and the cost of one kernel launch (host side)."""

    compute: float
    memory: float
    kernel_us: float


# Used for a device kind with no measured table yet, and as the prior of a fit on measured ones.
# Typical values for small-batch LLM inference in PyTorch eager on NVIDIA GPUs: large reads reach
# ~80 % of peak bandwidth, GEMMs of this size ~50 % of dense tensor peak, and each op costs ~8 us of
# host dispatch + launch. They are assumptions, recorded in the sidecar; a measured table of the
# kind replaces them by a fit (on the lent H100: ~18.6 us per kernel, efficiencies left at these).
DEFAULT_EFFICIENCY = {"gpu": Efficiency(compute=0.5, memory=0.8, kernel_us=8.0)}


def roofline_us(cost: Cost, spec: DeviceSpec, dtype: str, eff: Efficiency) -> float:
    compute = cost.flops / (spec.flops[dtype] * eff.compute)
    memory = cost.bytes / (spec.bandwidth * eff.memory)
    return max(compute, memory) * 1e6 + cost.kernels * eff.kernel_us


def _decoder_frame(table: LatencyTable) -> pd.DataFrame:
    rows = table.rows
    return rows[rows["block"] == "decoder"]


# Weight of the prior per decoder row, on squared log distance of each efficiency from its prior.
# A table measured where launches dominate (a GPU at batch 1, short context: ~18 us per kernel on the
# lent H100's host, roofline terms a few us) barely constrains the efficiencies, and an unanchored
# fit drove them to 1 % and 3 % of peak, which then priced a batch-8, 2048-token prefill block 18x
# dearer (17 ms, not 1 ms).
# At 0.001 a move from 0.5 to 0.01 costs ~0.015 per row, far more than such data gains (rows within
# a few % either way); rows whose roofline terms matter still pull the efficiencies where they belong.
PRIOR_WEIGHT = 0.001


def fit_efficiency(tables: list[LatencyTable], specs: list[DeviceSpec], prior: Efficiency | None = None) -> Efficiency:
    """Efficiencies and kernel cost minimising squared log error over the tables' decoder rows.

    With a ``prior`` (the default efficiencies of the device kind), compute and memory efficiency
    are also pulled towards it (`PRIOR_WEIGHT`), so rows that cannot tell them apart leave them at
    the prior instead of anywhere. A coarse-to-fine grid search over three parameters: cheap,
    robust, and no solver dependency.
    """
    samples = []
    for table, spec in zip(tables, specs, strict=True):
        dims = ModelDims(**table.meta["model"]["dims"])
        size = BYTES[table.meta["dtype"]]
        for r in _decoder_frame(table).itertuples():
            point = Point(r.phase, int(r.batch), int(r.context))
            samples.append(
                (block_cost(dims, int(r.heads), int(r.ffn), point, size), spec, table.meta["dtype"], r.median_us)
            )
    if not samples:
        raise UsageError("no measured decoder rows to fit efficiencies on: profile a device first")

    def loss(eff: Efficiency) -> float:
        fit = sum(math.log(roofline_us(c, s, d, eff) / m) ** 2 for c, s, d, m in samples)
        if prior is None:
            return fit
        anchor = math.log(eff.compute / prior.compute) ** 2 + math.log(eff.memory / prior.memory) ** 2
        return fit + PRIOR_WEIGHT * len(samples) * anchor

    best = Efficiency(0.5, 0.5, 1.0)
    ranges = {"compute": (1e-3, 4.0), "memory": (1e-3, 8.0), "kernel_us": (0.01, 200.0)}
    for _ in range(6):
        grids = {k: [lo * (hi / lo) ** (i / 12) for i in range(13)] for k, (lo, hi) in ranges.items()}
        candidates = [
            Efficiency(c, m, k) for c in grids["compute"] for m in grids["memory"] for k in grids["kernel_us"]
        ]
        best = min(candidates, key=loss)
        # next round: one grid step either side of the best value
        ranges = {
            k: (getattr(best, k) / (hi / lo) ** (1 / 12), getattr(best, k) * (hi / lo) ** (1 / 12))
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
        "runtime": {"name": "roofline"},
        "dtype": dtype,
        "settings": {"grid": [asdict(p) for p in points], "ffn_step": ffn_step},
        "efficiency": asdict(eff),
        "calibrated_on": calibrated_on or [],
    }
    return LatencyTable(pd.DataFrame(rows, columns=list(COLUMNS)), meta)


def measured_tables(folder: Path, signature: str) -> list[LatencyTable]:
    """Measured eager tables for this model in ``folder`` (the calibration set of the estimator)."""
    tables = [load_table(path, signature) for path in candidate_tables(folder, signature)]
    return [t for t in tables if t.meta.get("source") == "measured" and t.meta["runtime"].get("name") == "eager"]


def table_kind(table: LatencyTable) -> str:
    return "cpu" if table.meta["device"].get("kind") == "cpu" else "gpu"


def spec_for_table(table: LatencyTable) -> DeviceSpec:
    """The spec entry of a measured table's device (only this CPU has one so far)."""
    device = table.meta["device"]
    if device.get("kind") == "cpu" and device.get("threads_used") == 1:
        return SPECS["cpu-1t"]
    for spec in SPECS.values():
        if spec.name.lower() in str(device.get("name", "")).lower():
            return spec
    raise UsageError(f"no spec sheet matches measured device {device.get('name')!r}: add one to estimate.SPECS")


def estimate_to_file(device, model, out_dir: Path, phases, batches, contexts, dtype, ffn_step) -> tuple[Path, str]:
    """`amoebasearch profile --estimate DEVICE`: fit on measured eager tables, write the estimate."""
    from amoebasearch.models import load_config, model_signature, resolve

    spec = get_spec(device)
    config = load_config(model)
    name, _ = resolve(model)
    signature = model_signature(config)
    dims = ModelDims.from_config(config)
    dtype = dtype or spec.default_dtype
    calibration = [t for t in measured_tables(out_dir, signature) if table_kind(t) == spec.kind]
    if calibration:
        eff = fit_efficiency(calibration, [spec_for_table(t) for t in calibration], DEFAULT_EFFICIENCY.get(spec.kind))
        note = estimate_error_note(calibration, eff)
    elif spec.kind in DEFAULT_EFFICIENCY:
        eff = DEFAULT_EFFICIENCY[spec.kind]
        note = f"no measured {spec.kind} table for {name} in {out_dir}: default {spec.kind} efficiencies used"
    else:
        raise UsageError(f"no measured {spec.kind} table for {name} in {out_dir}: run `amoebasearch profile` first")
    # the per-call overhead is host-side Python glue: take it from any measured table of this model
    hosts = calibration or measured_tables(out_dir, signature)
    if not hosts:
        raise UsageError(f"no measured table for {name} in {out_dir}: run `amoebasearch profile` once on this host")
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
    )
    table.meta["efficiency_source"] = "fitted" if calibration else "default"
    table.meta["overhead_from"] = str(hosts[0].path)
    path = Path(out_dir) / f"{table_name(name, spec.slug, 'roofline', dtype)}.csv"
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
