"""Data parallelism for `train`: one process per device, started by ``torchrun`` or ``accelerate launch``.

Both launchers set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; `Workers.from_environment` joins
the process group they describe (NCCL on GPUs, Gloo on CPU). Every process samples the same
shapes (they are seeded by the step), trains on its own slice of each step's sequences, and the
adapter's gradients are averaged before the optimizer step, so W processes with ``--grad-accum A``
take exactly the step one process takes with ``--grad-accum A*W``. Only rank 0 writes files.
Only the SMoL adapter and gate are trained, so gradients are averaged by hand (one flat
all-reduce per step) instead of wrapping the frozen base model in DistributedDataParallel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from amoebasearch.errors import UsageError


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel processes (rank 0 of 1 when not launched)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str) -> tuple[Workers, str]:
        """Join the launcher's process group, if any; returns the workers and this process's device."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(), device
        import torch.distributed as dist

        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise UsageError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) here")
            torch.cuda.set_device(local)
            device, backend = f"cuda:{local}", "nccl"
        else:
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size()), device

    @staticmethod
    def launched_main() -> bool:
        """Whether this process is the launcher's rank 0 (or not launched): the one that prints."""
        return int(os.environ.get("RANK", "0")) == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the workers (missing ones count as zeros)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            count = p.grad.numel()
            p.grad.copy_(flat[offset : offset + count].view_as(p.grad))
            offset += count

    def average(self, values: list[float], device) -> list[float]:
        """Per-slot losses averaged over the workers (what a single process would have logged)."""
        return [v / self.world for v in self.sum(values, device)] if self.world > 1 else values

    def sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()


SINGLE = Workers()  # one process, no process group
