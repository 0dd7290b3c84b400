"""The shape gate: which of the T LoRAs a shape uses (`ShapeGate` -> `Route`), from the shape's
encoding alone, and the load-balancing term that keeps every LoRA in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from amoebasearch.shape import ModelDims, Shape


def shape_encoding(shape: Shape, dims: ModelDims) -> torch.Tensor:
    """The gate's input: depth, head and FFN ratios of the shape to the full model."""
    return torch.tensor(
        [shape.depth / dims.num_layers, shape.heads / dims.num_heads, shape.ffn / dims.ffn], dtype=torch.float32
    )


@dataclass
class Route:
    """Which LoRAs the running shape uses and with what weights (set by `SMoLModel`, read by the layers).

    The gate's top-k come first (weights summing to 1); with a shared LoRA its slot follows, weight 1.
    """

    index: torch.Tensor  # (k,) or (k + 1,) long
    weight: torch.Tensor  # same length, float
    shared: bool = False
    _columns: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def routed(self) -> torch.Tensor:
        """The LoRAs the gate chose (what load balancing counts)."""
        return self.index[:-1] if self.shared else self.index

    def column_weights(self, rank: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
        """scale·w_j repeated ``rank`` times: one factor per column of the stacked (k·r) LoRA
        activations. Every layer of a forward shares the route, so this is built once per forward
        (and, in backward, the gate's gradient flows through one node instead of one per layer)."""
        key = (rank, scale, dtype)
        if key not in self._columns:
            self._columns[key] = (self.weight * scale).repeat_interleave(rank).to(dtype)
        return self._columns[key]


class ShapeGate(nn.Module):
    """G(shape encoding) -> sparse weights over T LoRAs: noisy top-k in training, plain top-k at inference.

    The noise follows Shazeer et al. (2017): logits + N(0,1)·softplus(W_noise·e), so exploration
    is learnable and vanishes where the gate is confident.

    ``prior`` > 0 adds a fixed size-anchored term: LoRA t is anchored at size (t+1)/T, and a shape
    of size s (the mean of its three ratios) gets ``-prior·((s - anchor_t)·T)²/2``. A randomly
    initialised gate routes shapes arbitrarily, so early in training each LoRA sees an unrelated
    mix of shapes; the prior makes neighbouring shapes share LoRAs from the first step, and the
    learned part can still move the boundaries.
    """

    def __init__(self, num_loras: int, top_k: int, noise: float = 1.0, hidden: int = 16, prior: float = 0.0) -> None:
        super().__init__()
        self.num_loras, self.top_k, self.noise, self.prior = num_loras, top_k, noise, prior
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, num_loras))
        self.noise_proj = nn.Linear(3, num_loras)
        anchors = torch.arange(1, num_loras + 1, dtype=torch.float32) / num_loras
        self.register_buffer("anchors", anchors, persistent=False)

    def clean_logits(self, encoding: torch.Tensor) -> torch.Tensor:
        logits = self.net(encoding)
        if self.prior:
            size = encoding.mean(-1, keepdim=True)
            logits = logits - self.prior * ((size - self.anchors) * self.num_loras).square() / 2
        return logits

    def logits(self, encoding: torch.Tensor, noisy: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        clean = self.clean_logits(encoding)
        if not noisy or self.noise == 0:
            return clean
        eps = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        return clean + self.noise * eps * F.softplus(self.noise_proj(encoding))

    def forward(self, encoding: torch.Tensor, noisy: bool = False, generator: torch.Generator | None = None) -> Route:
        logits = self.logits(encoding, noisy, generator)
        top, index = logits.topk(self.top_k)
        return Route(index=index, weight=top.softmax(-1))

    def probabilities(self, encodings: torch.Tensor) -> torch.Tensor:
        return self.clean_logits(encodings).softmax(-1)


def load_balancing_loss(probabilities: torch.Tensor, chosen: torch.Tensor, num_loras: int) -> torch.Tensor:
    """Switch-Transformer balance term T·Σ_t f_t·P_t over a batch of shapes.

    ``probabilities``: (S, T) clean gate probabilities (with grad); ``chosen``: (S, k) selected
    LoRA ids. f_t is the fraction of selections that went to LoRA t (no grad), P_t the mean
    probability; the product is smallest when every LoRA gets an equal share.
    """
    counts = torch.bincount(chosen.reshape(-1), minlength=num_loras).to(probabilities.dtype)
    fraction = counts / counts.sum()
    return num_loras * (fraction * probabilities.mean(0)).sum()
