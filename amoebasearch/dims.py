"""`ModelDims`: the few config numbers that shapes and orderings are checked against.

Below both `shape` and `ordering`, which each need them (and a shape space needs an ordering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelDims:
    """The few config numbers a shape is validated against (read from any Llama-layout config)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn: int
    hidden: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            ffn=config.intermediate_size,
            hidden=config.hidden_size,
            head_dim=head_dim,
        )

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads
