"""`Runtime`, the base every runtime subclasses: it turns a tensor-only module (``blocks.py``) into a
callable ``run(args)`` and says how many threads, weight copies and instances a table is timed with.

The built-in runtimes and the registry that names them are in ``runtimes.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Program = Callable[[tuple], Any]


class Runtime:
    name = "base"
    #: time the Hugging Face model's own forward (with a DynamicCache) end to end, not `blocks.Decoder`
    native_hf = False
    #: the runtime copies a module's weights into memory of its own (so two programs of one module
    #: are two independent allocations); PyTorch runtimes run on the module's own tensors
    copies_weights = False
    #: independently allocated copies timed per validation subnet, per ``--instances`` copy of a block
    #: row: where copies of one program differ by where their weights land, a validation subnet's
    #: reference latency needs more of them than a block row, which its every subnet shares
    validation_copies_factor = 1
    #: ``--instances`` when not given
    default_instances = 3

    def check(self, device: str, dtype: torch.dtype) -> None:
        """Raise `UsageError` if this runtime cannot run on ``device`` in ``dtype``."""

    def default_threads(self) -> int:
        """CPU threads the runtime uses when its user sets none: a table is timed at this count
        unless ``--threads`` says otherwise (for PyTorch, torch's own default in this process)."""
        return torch.get_num_threads()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapt a freshly extracted model in place before its modules are wrapped (default: none)."""
        return model

    def program(self, module: nn.Module, example: tuple) -> Program:
        raise NotImplementedError

    def instances(self, build: Callable[[], nn.Module], count: int) -> list[nn.Module]:
        """``count`` independently allocated copies of the module ``build()`` makes, prepared.

        Where a program's weights land in memory changes its speed (identical ONNX Runtime decode
        sessions on a shared CPU differ by 4-8 %), so a latency is the median over copies. A
        runtime that copies weights gets the one module ``count`` times (each program of it is
        its own allocation); PyTorch runtimes get ``count`` fresh builds.
        """
        first = self.prepare_model(build())
        if self.copies_weights:
            return [first] * count
        return [first, *(self.prepare_model(build()) for _ in range(count - 1))]

    def settings(self) -> dict[str, Any]:
        return {"name": self.name}
