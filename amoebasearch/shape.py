"""`Shape`, the one type every stage speaks, and `ShapeSpace`, the set of shapes a supernet allows.

A shape says which decoder layers run (by index into the full model), how many query heads each
kept layer keeps (the same number in every KV group, so grouped-query attention stays valid) and
how many FFN channels each kept layer keeps. *Which* heads and channels is decided by an
`Ordering` (see ``ordering.py``); a shape only carries the counts, so shapes stay small, hashable
and comparable across plans.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amoebasearch.dims import ModelDims
from amoebasearch.errors import UsageError
from amoebasearch.userfiles import read_json, require_file

if TYPE_CHECKING:
    from amoebasearch.ordering import Ordering


@dataclass(frozen=True, order=True)
class Shape:
    """A subnet: kept layer indices (ascending), query heads per layer, FFN channels per layer."""

    layers: tuple[int, ...]
    heads: int
    ffn: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    @property
    def depth(self) -> int:
        return len(self.layers)

    @classmethod
    def full(cls, dims: ModelDims) -> Shape:
        return cls(tuple(range(dims.num_layers)), dims.num_heads, dims.ffn)

    def validate(self, dims: ModelDims) -> Shape:
        """Return self if the shape fits the model, else raise `UsageError` naming the violation."""
        if not self.layers:
            raise UsageError("shape keeps no layers: keep at least one decoder layer")
        if list(self.layers) != sorted(set(self.layers)):
            raise UsageError(f"shape layers {list(self.layers)} must be unique and ascending")
        bad = [i for i in self.layers if not 0 <= i < dims.num_layers]
        if bad:
            raise UsageError(
                f"shape layer index {bad[0]} is out of range: the model has layers 0..{dims.num_layers - 1}"
            )
        if not 1 <= self.heads <= dims.num_heads:
            raise UsageError(f"shape heads={self.heads} must be between 1 and the model's {dims.num_heads}")
        if self.heads % dims.num_kv_heads:
            options = ", ".join(str(dims.num_kv_heads * k) for k in range(1, dims.heads_per_group + 1))
            raise UsageError(
                f"shape heads={self.heads} does not divide evenly over the model's {dims.num_kv_heads} "
                f"KV groups: choose one of {options}"
            )
        if not 1 <= self.ffn <= dims.ffn:
            raise UsageError(f"shape ffn={self.ffn} must be between 1 and the model's FFN size {dims.ffn}")
        return self

    def heads_per_group(self, dims: ModelDims) -> int:
        return self.heads // dims.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "heads": self.heads, "ffn": self.ffn}

    @classmethod
    def from_dict(cls, data: Any) -> Shape:
        if not isinstance(data, dict):
            raise UsageError("a shape must be a JSON object with keys layers, heads, ffn")
        missing = {"layers", "heads", "ffn"} - data.keys()
        if missing:
            raise UsageError(f"shape JSON lacks key(s) {sorted(missing)}: it needs layers, heads, ffn")
        layers, heads, ffn = data["layers"], data["heads"], data["ffn"]
        if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
            raise UsageError("shape 'layers' must be a list of integer layer indices")
        if not isinstance(heads, int) or not isinstance(ffn, int):
            raise UsageError("shape 'heads' and 'ffn' must be integers")
        return cls(tuple(layers), heads, ffn)

    @classmethod
    def load(cls, path: str | Path) -> Shape:
        path = Path(path)
        require_file(path, "shape file", "pass a JSON file with layers, heads, ffn")
        return cls.from_dict(read_json(path, "shape file", "pass a JSON object with layers, heads, ffn"))

    def __str__(self) -> str:
        return f"depth={self.depth} heads={self.heads} ffn={self.ffn}"


def width_options(total: int, step: int) -> tuple[int, ...]:
    """Channel counts step, 2*step, ... up to total (total always included)."""
    options = list(range(step, total, step))
    return tuple(options + [total])


def saved_ffn_step(step: Any, dims: ModelDims) -> int:
    """An FFN step read back from a table's or supernet's settings. Files written before
    `ShapeSpace` refused steps wider than the FFN meant "keep the FFN whole" by them; they
    still load as that."""
    return min(int(step), dims.ffn)


class ShapeSpace:
    """The discrete set of shapes a supernet serves: depth 1..L (layer sets from an ordering),
    query-head counts that keep every KV group equal, and FFN widths in multiples of ``ffn_step``.
    """

    def __init__(
        self,
        dims: ModelDims,
        ordering: Ordering | None = None,
        ffn_step: int = 64,
        min_depth: int = 1,
    ) -> None:
        from amoebasearch.ordering import Ordering

        if ffn_step < 1:
            raise UsageError(f"ffn step {ffn_step} must be a positive number of channels")
        if ffn_step > dims.ffn:
            raise UsageError(
                f"--ffn-step {ffn_step} is wider than the model's FFN ({dims.ffn} channels): "
                f"pick at most {dims.ffn} (that step keeps the FFN whole)"
            )
        self.dims = dims
        self.ordering = ordering if ordering is not None else Ordering.identity(dims)
        self.ffn_step = ffn_step
        self.depths = tuple(d for d in range(min_depth, dims.num_layers + 1) if self.ordering.has_depth(d))
        self.head_options = tuple(dims.num_kv_heads * k for k in range(1, dims.heads_per_group + 1))
        self.ffn_options = width_options(dims.ffn, ffn_step)

    def __len__(self) -> int:
        return len(self.depths) * len(self.head_options) * len(self.ffn_options)

    def shape(self, depth: int, heads: int, ffn: int) -> Shape:
        if depth not in self.depths:
            raise UsageError(f"depth {depth} is not in this shape space: choose {self.depths[0]}..{self.depths[-1]}")
        return Shape(self.ordering.layers_for_depth(depth), heads, ffn).validate(self.dims)

    def __iter__(self) -> Iterator[Shape]:
        for depth in self.depths:
            for heads in self.head_options:
                for ffn in self.ffn_options:
                    yield self.shape(depth, heads, ffn)

    def largest(self) -> Shape:
        return self.shape(self.depths[-1], self.head_options[-1], self.ffn_options[-1])

    def smallest(self) -> Shape:
        return self.shape(self.depths[0], self.head_options[0], self.ffn_options[0])

    def sample(self, rng: random.Random) -> Shape:
        """A uniformly random shape; pass a seeded `random.Random` for reproducibility."""
        return self.shape(rng.choice(self.depths), rng.choice(self.head_options), rng.choice(self.ffn_options))

    def __contains__(self, shape: Shape) -> bool:
        return (
            shape.depth in self.depths
            and shape.layers == self.ordering.layers_for_depth(shape.depth)
            and shape.heads in self.head_options
            and shape.ffn in self.ffn_options
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "depths": list(self.depths),
            "head_options": list(self.head_options),
            "ffn_options": list(self.ffn_options),
            "ffn_step": self.ffn_step,
        }
