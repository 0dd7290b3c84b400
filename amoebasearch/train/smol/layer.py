"""`SMoLLinear`: a projection with T stacked LoRA pairs, sliced with the base weight to the running
shape and weighted by the route the gate chose for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from amoebasearch.elastic import slice_linear_weight
from amoebasearch.train.smol.config import SMoLConfig
from amoebasearch.train.smol.gate import Route


class RouteHolder:
    """Plain (non-Module) box the gate writes and every SMoL layer reads, so no layer holds the gate."""

    route: Route | None = None


class SMoLLinear(nn.Linear):
    """An nn.Linear (same ``weight``/``bias``, so base state-dict keys and export are unchanged)
    plus T LoRA pairs stacked as ``lora_A`` (T, r, in) and ``lora_B`` (T, out, r).

    The forward reads ``amoeba_slice`` (set by ``use_shape``) and the shared `Route`; B starts at
    zero, so a fresh adapter leaves the model's outputs unchanged.
    """

    # No shape set: read from the class, not through nn.Module's slow __getattr__. So hasattr is
    # always true here: whether a shape is set is `"amoeba_slice" in vars(layer)`.
    amoeba_slice: tuple = (None, None)

    def __init__(self, base: nn.Linear, config: SMoLConfig, state: RouteHolder) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        t, r = config.slots, config.rank
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(t, r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(t, self.out_features, r, device=device, dtype=dtype))
        for a in self.lora_A:  # peft's default init: Kaiming-uniform A, zero B
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.route_holder = state

    def delta(self, route: Route, out_index: torch.Tensor | None = None, in_index: torch.Tensor | None = None):
        """scale·Σ_j w_j B_j A_j restricted to the given rows/columns (the weight a merge adds)."""
        a, b = self._sliced_loras(route, out_index, in_index)
        return self.scale * torch.einsum("k,kor,kri->oi", route.weight.to(a.dtype), b, a)

    def _sliced_loras(self, route: Route, out_index, in_index):
        index = route.index.to(self.lora_A.device)
        a = self.lora_A.index_select(0, index)
        b = self.lora_B.index_select(0, index)
        if in_index is not None:
            a = a.index_select(2, in_index.to(a.device))
        if out_index is not None:
            b = b.index_select(1, out_index.to(b.device))
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_index, in_index = self.amoeba_slice
        weight, bias = slice_linear_weight(self, out_index, in_index)
        y = F.linear(x, weight, bias)
        route = self.route_holder.route
        if route is None:
            return y
        # Σ_j w_j B_j A_j x as two plain matmuls over the k LoRAs stacked rank-wise: (k·r, in) and
        # (out, k·r). At batch-1-like sizes a training step is bound by dispatching ops, not by
        # FLOPs (an H100 ran 1.2 s steps of ~7 TFLOP), and this is fewer ops than two einsums.
        a, b = self._sliced_loras(route, out_index, in_index)
        k, rank = a.shape[0], a.shape[1]
        h = F.linear(self.dropout(x), a.reshape(k * rank, a.shape[2]).to(x.dtype))
        h = h * route.column_weights(rank, self.scale, h.dtype)
        return y + F.linear(h, b.transpose(0, 1).reshape(b.shape[1], k * rank).to(h.dtype))

    def extra_repr(self) -> str:
        t, r, _ = self.lora_A.shape
        return f"{super().extra_repr()}, loras={t}, rank={r}"
