"""SMoL, the shape-aware mixture of LoRAs (AmoebaLLM §3.3), split the peft way: ``config``,
``gate``, ``layer``, ``model``.

Every attention and MLP projection gets T LoRA pairs (A_t: r×in, B_t: out×r). One gate
``G(shape encoding)`` picks the top-k of them for the running shape, so different shapes train
different adapters and their gradients conflict less. The gate's only input is the shape, which is
the same for every layer, so one gate serves the whole model and its choice is made once per forward.

With ``shared`` (the default) one more LoRA is active for every shape beside its routed ones, as
the shared expert of DeepSeekMoE: what all shapes need (the response format, recovering what
pruning removed in general) is learnt once from every sampled shape's gradient, and the routed
LoRAs keep the shape-specific corrections that conflict. Without it, each routed LoRA learns from
the one or two shapes it serves, which at small batches is the noisier signal: on SmolLM2 (150
steps of 2 x 64 tokens, 3 seeds) it lowered the geometric-mean perplexity of 8 shapes from 27.9
(routed only) to 27.2, where a single LoRA for all shapes reached 29.0.

Inside ``elastic.use_shape`` a projection carries ``amoeba_slice = (rows, cols)``; `SMoLLinear`
slices the base weight *and* its LoRAs with the same indices, which is what makes the merged
export (``W + scale·Σ g_t B_t A_t``, then sliced) equal the elastic forward.
"""

from amoebasearch.train.smol.config import CONFIG_FILE, SMoLConfig, read_adapter_config
from amoebasearch.train.smol.gate import Route, ShapeGate, load_balancing_loss, shape_encoding
from amoebasearch.train.smol.layer import SMoLLinear
from amoebasearch.train.smol.model import SMoLModel

__all__ = [
    "CONFIG_FILE",
    "Route",
    "SMoLConfig",
    "SMoLLinear",
    "SMoLModel",
    "ShapeGate",
    "load_balancing_loss",
    "read_adapter_config",
    "shape_encoding",
]
