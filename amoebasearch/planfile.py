"""The plan file: the JSON that stage 1 writes and every later verb reads (``--plan``).

It binds an `Ordering` (layer set per depth, head/channel rankings per layer) to the model it
was computed for (by signature), with the method and calibration settings that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amoebasearch import atomic
from amoebasearch.errors import UsageError
from amoebasearch.models import model_signature
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims
from amoebasearch.userfiles import read_json, require_file

PLAN_FORMAT = 1
PLAN_HELP = "plan JSON from `amoebasearch plan` (default: identity ordering)"  # the --plan flag


@dataclass
class Plan:
    model_signature: str
    ordering: Ordering
    depth_method: str = "identity"
    width_method: str = "identity"
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, config: Any) -> Plan:
        """The plan before stage 1 ran: first layers, heads and channels."""
        return cls(model_signature(config), Ordering.identity(ModelDims.from_config(config)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "model_signature": self.model_signature,
            "depth_method": self.depth_method,
            "width_method": self.width_method,
            "calibration": self.calibration,
            "metrics": self.metrics,
            "ordering": self.ordering.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        return atomic.write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict) or "ordering" not in data or "model_signature" not in data:
            raise UsageError(
                "not an amoebasearch plan (no ordering/model_signature): make one with `amoebasearch plan`"
            )
        return cls(
            model_signature=data["model_signature"],
            ordering=Ordering.from_dict(data["ordering"]),
            depth_method=data.get("depth_method", "identity"),
            width_method=data.get("width_method", "identity"),
            calibration=data.get("calibration", {}),
            metrics=data.get("metrics", {}),
        )

    @classmethod
    def load(cls, path: str | Path, config: Any | None = None) -> Plan:
        """Read a plan; with ``config``, refuse it unless it was made for that model."""
        path = Path(path)
        require_file(path, "plan file", f"make one with `amoebasearch plan --out {path}`")
        plan = cls.from_dict(read_json(path, "plan file", f"make one with `amoebasearch plan --out {path}`"))
        if config is not None:
            expected = model_signature(config)
            if plan.model_signature != expected:
                raise UsageError(
                    f"plan {path} was made for model signature {plan.model_signature}, not this model's "
                    f"{expected}: run `amoebasearch plan` for this model"
                )
            plan.ordering.validate(ModelDims.from_config(config))
        return plan
