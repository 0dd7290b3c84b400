"""The roofline cost model of a decoder block: FLOPs, bytes moved and kernel launches per kernel
group (`block_cost`), priced on a device's spec sheet at a runtime's efficiencies (`roofline_us`):

    sum over groups of max(FLOPs / (peak_flops * eff_compute), bytes / (bandwidth * eff_memory))
    + kernels * t_kernel

where peak FLOP/s and bandwidth come from the vendor's spec sheet (``specs.py``). Prefill is mostly
compute-bound, decode memory/launch-bound; the ``max`` picks per group.
"""

from __future__ import annotations

from dataclasses import dataclass

from amoebasearch.profile.blocks import Point
from amoebasearch.profile.specs import DeviceSpec
from amoebasearch.shape import ModelDims

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


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
