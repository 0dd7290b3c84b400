"""`SMoLModel`: a base causal LM with SMoL layers on its projections and one shape gate; routes a
shape, runs it (``shaped``), saves and loads the adapter, and merges a shape's LoRAs for export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from amoebasearch import atomic
from amoebasearch.elastic import lora_parts, model_logits, use_shape
from amoebasearch.errors import UsageError
from amoebasearch.models import decoder_layers, projections
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape
from amoebasearch.train.smol.config import (
    CONFIG_FILE,
    PEFT_CONFIG_FILE,
    PEFT_PREFIX,
    PROJECTION_NAMES,
    SMoLConfig,
    read_adapter_config,
)
from amoebasearch.train.smol.gate import Route, ShapeGate, shape_encoding
from amoebasearch.train.smol.layer import RouteHolder, SMoLLinear


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
        self.holder = RouteHolder()
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
