"""SMoL's settings (`SMoLConfig`) and the files an adapter is stored in: ``smol_config.json`` with
``smol.safetensors`` for a mixture, peft's ``adapter_config.json`` + ``adapter_model.safetensors``
for a plain LoRA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from amoebasearch.errors import UsageError
from amoebasearch.options import non_negative_float, option, positive_float, positive_int
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
    """SMoL adapters: a mixture of LoRAs per linear layer and the shape gate that picks them.

    ``num_loras=1, top_k=1`` is a plain shared LoRA (the --no-smol ablation); ``shared=False`` is the
    paper's routed-only mixture. The fields with an `option` are `train`'s flags."""

    num_loras: int = option(
        5, name="--loras", unset=True, type=positive_int, help="LoRAs per linear layer, T (default 5)"
    )
    top_k: int = option(2, unset=True, type=positive_int, help="LoRAs the gate picks per shape (default 2)")
    rank: int = option(64, type=positive_int, help="LoRA rank (default 64)")
    alpha: float = option(128.0, unset=True, type=positive_float, help="LoRA alpha (default 2 x rank)")
    dropout: float = option(0.0, type=non_negative_float, help="LoRA dropout (default 0)")
    noise: float = option(  # scale of the learned gate noise during training (noisy top-k gating)
        1.0,
        name="--gate-noise",
        type=non_negative_float,
        help="scale of the gate's learned noise in training (default 1)",
    )
    prior: float = option(  # strength of the size-anchored gate prior (see `ShapeGate`); 0 = none
        2.0,
        name="--gate-prior",
        type=non_negative_float,
        help="strength of the size-anchored gate prior: neighbouring shapes share LoRAs (default 2, 0 = off)",
    )
    balance_coef: float = 0.01  # weight of the load-balancing term
    shared: bool = option(  # one more LoRA that every shape uses beside its routed ones
        True,
        name="--no-shared-lora",
        help="the paper's routed-only mixture: no LoRA that every shape uses beside its top-k",
    )
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
