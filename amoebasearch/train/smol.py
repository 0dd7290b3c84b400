"""SMoL, the shape-aware mixture of LoRAs (AmoebaLLM §3.3), split the peft way: config, layer, model.

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

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from amoebasearch import atomic
from amoebasearch.elastic import lora_parts, model_logits, slice_linear_weight, use_shape
from amoebasearch.errors import UsageError
from amoebasearch.models import decoder_layers, projections
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape
from amoebasearch.userfiles import read_json_object

CONFIG_FILE = "smol_config.json"
WEIGHTS_FILE = "smol.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"  # a plain LoRA is stored as peft stores it
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's key prefix: the PeftModel's path to the base model
PROJECTION_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"} | {
    role: f"{role}_proj" for role in ("gate", "up", "down")
}


@dataclass(frozen=True)
class SMoLConfig:
    """Adapter hyper-parameters. ``num_loras=1, top_k=1`` is a plain shared LoRA (the --no-smol ablation);
    ``shared=False`` is the paper's routed-only mixture."""

    num_loras: int = 5
    top_k: int = 2
    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.0
    noise: float = 1.0  # scale of the learned gate noise during training (noisy top-k gating)
    prior: float = 2.0  # strength of the size-anchored gate prior (see `ShapeGate`); 0 = none
    balance_coef: float = 0.01  # weight of the load-balancing term
    shared: bool = True  # one more LoRA that every shape uses beside its routed ones
    roles: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        if self.num_loras == 1:  # a single LoRA is already the one every shape shares
            object.__setattr__(self, "shared", False)
        if self.num_loras < 1 or self.rank < 1:
            raise UsageError(f"SMoL needs at least one LoRA of rank >= 1 (got {self.num_loras} of rank {self.rank})")
        if not 1 <= self.top_k <= self.num_loras:
            raise UsageError(f"--top-k {self.top_k} must be between 1 and the number of LoRAs ({self.num_loras})")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"LoRA dropout {self.dropout} must be in [0, 1)")
        if self.noise < 0 or self.prior < 0:
            raise UsageError(f"gate noise ({self.noise}) and gate prior ({self.prior}) must be >= 0")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def plain(self) -> bool:
        """One LoRA for every shape: a standard peft LoRA (`peft_config`), no gate."""
        return self.num_loras == 1

    @property
    def adapter_format(self) -> str:
        return "peft-lora" if self.plain else "amoebasearch-smol"

    @property
    def weights_file(self) -> str:
        """The adapter weights' file in a supernet directory: peft's own name for a plain LoRA."""
        return PEFT_WEIGHTS_FILE if self.plain else WEIGHTS_FILE

    def peft_config(self) -> Any:
        """The `peft.LoraConfig` of a plain LoRA on this config's projections."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=sorted(PROJECTION_NAMES[role] for role in self.roles),
            bias="none",
            task_type="CAUSAL_LM",
        )

    @property
    def slots(self) -> int:
        """LoRA pairs stored per layer: the routed ones, then the shared one if any."""
        return self.num_loras + int(self.shared)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        data["adapter_format"] = self.adapter_format  # read by people and tools; derived, not loaded
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SMoLConfig:
        known = {f.name for f in fields(cls)}
        # adapters saved before the prior and the shared LoRA existed were trained without them
        data = {"prior": 0.0, "shared": False, **data}
        return cls(**{k: v for k, v in data.items() if k in known})


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


class SMoLLinear(nn.Linear):
    """An nn.Linear (same ``weight``/``bias``, so base state-dict keys and export are unchanged)
    plus T LoRA pairs stacked as ``lora_A`` (T, r, in) and ``lora_B`` (T, out, r).

    The forward reads ``amoeba_slice`` (set by ``use_shape``) and the shared `Route`; B starts at
    zero, so a fresh adapter leaves the model's outputs unchanged.
    """

    # No shape set: read from the class, not through nn.Module's slow __getattr__. So hasattr is
    # always true here: whether a shape is set is `"amoeba_slice" in vars(layer)`.
    amoeba_slice: tuple = (None, None)

    def __init__(self, base: nn.Linear, config: SMoLConfig, state: _RouteHolder) -> None:
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


class _RouteHolder:
    """Plain (non-Module) box the gate writes and every SMoL layer reads, so no layer holds the gate."""

    route: Route | None = None


class SMoLModel(nn.Module):
    """A causal LM with SMoL adapters and a shape gate; runs any shape of the plan's shape space.

    The base model's weights are frozen; only the LoRAs and the gate are trainable.
    """

    def __init__(self, base: nn.Module, config: SMoLConfig, ordering: Ordering | None = None) -> None:
        super().__init__()
        self.base = base
        self.config = config
        self.dims = ModelDims.from_config(base.config)
        self.ordering = ordering if ordering is not None else Ordering.identity(self.dims)
        self.holder = _RouteHolder()
        for param in base.parameters():
            param.requires_grad_(False)
        if config.plain:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(config.peft_config(), base)  # peft's LoRA layers, trainable
        for block in decoder_layers(base) if not config.plain else ():
            parents = {"q": block.self_attn, "k": block.self_attn, "v": block.self_attn, "o": block.self_attn}
            parents.update({"gate": block.mlp, "up": block.mlp, "down": block.mlp})
            for role, linear in projections(block).items():
                if role not in config.roles or isinstance(linear, SMoLLinear):
                    continue
                setattr(parents[role], PROJECTION_NAMES[role], SMoLLinear(linear, config, self.holder))
        self.gate = ShapeGate(config.num_loras, config.top_k, config.noise, prior=config.prior)
        self.gate.to(next(base.parameters()).device)

    def smol_layers(self) -> list[tuple[str, SMoLLinear]]:
        return [(name, m) for name, m in self.base.named_modules() if isinstance(m, SMoLLinear)]

    def peft_layers(self) -> list[tuple[str, nn.Module]]:
        """The peft LoRA layers of a plain LoRA (empty for a mixture)."""
        return [(name, m) for name, m in self.base.named_modules() if lora_parts(m, None, None)]

    def route(self, shape: Shape, noisy: bool = False, generator: torch.Generator | None = None) -> Route:
        """The gate's choice for ``shape`` plus the shared LoRA (a single LoRA needs no gate: its weight is 1)."""
        device = self.gate.net[0].weight.device
        if self.config.num_loras == 1:
            return Route(torch.zeros(1, dtype=torch.long, device=device), torch.ones(1, device=device))
        route = self.gate(shape_encoding(shape, self.dims).to(device), noisy=noisy, generator=generator)
        if not self.config.shared:
            return route
        shared = torch.tensor([self.config.num_loras], dtype=torch.long, device=device)
        one = torch.ones(1, dtype=route.weight.dtype, device=device)
        return Route(torch.cat([route.index, shared]), torch.cat([route.weight, one]), shared=True)

    @contextlib.contextmanager
    def shaped(self, shape: Shape, route: Route | None = None) -> Iterator[nn.Module]:
        """Run the base model as ``shape`` with that shape's LoRAs active (deterministic top-k by default)."""
        self.holder.route = route = route if route is not None else self.route(shape)
        try:
            with use_shape(self.base, shape, self.ordering) as model:
                yield model
        finally:
            self.holder.route = None
            route._columns.clear()  # built for this forward's graph: a later forward builds its own

    def forward(
        self,
        shape: Shape,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        route=None,
        position_ids: torch.Tensor | None = None,
    ):
        with self.shaped(shape, route) as model:
            return model_logits(model, input_ids, attention_mask, position_ids)

    # ------------------------------------------------------------ weights I/O (peft-style)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA and gate tensors only (the base model stays a reference, never copied); a plain LoRA's
        under peft's own keys, as ``PeftModel.save_pretrained`` writes them."""
        if self.config.plain:
            from peft import get_peft_model_state_dict

            return {PEFT_PREFIX + k: v.detach() for k, v in get_peft_model_state_dict(self.base).items()}
        state = {}
        for name, layer in self.smol_layers():
            state[f"{name}.lora_A"] = layer.lora_A.detach()
            state[f"{name}.lora_B"] = layer.lora_B.detach()
        for name, tensor in self.gate.state_dict().items():
            state[f"gate.{name}"] = tensor.detach()
        return state

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.adapter_state_dict()
        if set(state) != set(current):
            missing, extra = sorted(set(current) - set(state))[:2], sorted(set(state) - set(current))[:2]
            raise UsageError(f"SMoL weights do not match this model (missing {missing}, unexpected {extra})")
        for key, tensor in state.items():
            if tensor.shape != current[key].shape:
                needed = tuple(current[key].shape)
                raise UsageError(f"SMoL tensor {key} has shape {tuple(tensor.shape)}, model needs {needed}")
        if self.config.plain:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.base, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()})
            return
        layers = dict(self.smol_layers())
        with torch.no_grad():
            for key, tensor in state.items():
                if not key.startswith("gate."):
                    name, param = key.rsplit(".", 1)
                    getattr(layers[name], param).copy_(tensor)
        self.gate.load_state_dict({k.removeprefix("gate."): v for k, v in state.items() if k.startswith("gate.")})

    def save_adapter(self, directory: str | Path) -> Path:
        """Write ``smol_config.json`` and the weights (each atomically): ``smol.safetensors`` for a
        mixture; for a plain LoRA peft's own ``adapter_config.json`` + ``adapter_model.safetensors``,
        which ``PeftModel.from_pretrained(base, directory)`` loads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        name = self.config.weights_file
        tmp = directory / f".{name}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt" if self.config.plain else "amoebasearch-smol"})
        tmp.chmod(0o644)
        tmp.replace(directory / name)
        if self.config.plain:
            peft_config = self.config.peft_config().to_dict()
            peft_config["target_modules"] = sorted(peft_config["target_modules"])
            atomic.write_json(directory / PEFT_CONFIG_FILE, peft_config)
        atomic.write_json(directory / CONFIG_FILE, self.config.to_dict())
        return directory

    @classmethod
    def from_adapter(cls, base: nn.Module, directory: str | Path, ordering: Ordering | None = None) -> SMoLModel:
        directory = Path(directory)
        config = read_adapter_config(directory)
        model = cls(base, config, ordering)
        model.load_adapter_state_dict(
            load_file(str(directory / config.weights_file), device=str(next(base.parameters()).device))
        )
        return model

    # ------------------------------------------------------------ merge for export

    @contextlib.contextmanager
    def merged(self, shape: Shape) -> Iterator[nn.Module]:
        """The base model with ``shape``'s active LoRAs added into its full-size weights, adapters off.

        Slicing commutes with the merge (rows of B, columns of A), so ``export.extract`` on this
        model gives the subnet whose plain forward equals the elastic SMoL forward. Weights are
        restored exactly on exit.
        """
        saved = []
        try:
            with torch.no_grad():
                route = self.route(shape)
                deltas = [(layer, layer.delta(route)) for _, layer in self.smol_layers()]
                deltas += [(layer, layer.get_delta_weight("default")) for _, layer in self.peft_layers()]
                for layer, delta in deltas:
                    saved.append((layer, layer.weight.detach().clone()))
                    layer.weight.add_(delta.to(layer.weight.dtype))
            yield self.base
        finally:
            with torch.no_grad():
                for layer, original in saved:
                    layer.weight.copy_(original)


def read_adapter_config(directory: str | Path) -> SMoLConfig:
    """The adapter settings of a supernet (or checkpoint) directory, once its weights file is there too."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise UsageError(
            f"{directory} has no finished SMoL weights ({CONFIG_FILE}): finish it with `amoebasearch train "
            "--resume`, or train one"
        )
    config = SMoLConfig.from_dict(read_json_object(config_path, "SMoL config", "train the supernet again"))
    if not (directory / config.weights_file).is_file():
        raise UsageError(
            f"{directory} has no finished SMoL weights ({config.weights_file}): "
            "finish it with `amoebasearch train --resume`"
        )
    return config
