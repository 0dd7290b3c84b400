"""Device names as users write them (``cpu``, ``cuda``, ``cuda:N``), checked against this machine,
and this machine's physical cores (the thread count llama.cpp starts with).

Shared by `profile` and `train` (their CLIs and `train_supernet`), so a bad ``--device`` gets the
same one-line error wherever it enters.
"""

from __future__ import annotations

import os

from amoebasearch.errors import UsageError


def cuda_index(device: str) -> int:
    """The N of ``cuda:N`` (``cuda`` alone is device 0); callers pass names `check_device` accepted."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def check_device_name(device: str) -> str:
    """``device`` if it is spelt ``cpu``, ``cuda`` or ``cuda:N``, whether or not this machine has it
    (`find` may search a GPU's table on a laptop); otherwise a one-line error."""
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if ":" in device and not device.split(":", 1)[1].isdigit():
            raise UsageError(f"--device {device}: write cuda:N with a number N")
        return device
    raise UsageError(f"unknown device {device!r}: use cpu or cuda:N")


def check_device(device: str, instead: str | None = None) -> str:
    """``--device`` as torch spells it (``cpu`` or ``cuda:N``), or a one-line error saying what exists
    here and what to do ``instead`` (default: use the CPU)."""
    import torch

    if check_device_name(device) == "cpu":
        return device
    index = cuda_index(device)
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device} but CUDA is not available here: {instead or 'use --device cpu'}")
    if index >= torch.cuda.device_count():
        present = torch.cuda.device_count()
        raise UsageError(
            f"--device {device}: only {present} CUDA device(s) present (cuda:0 to cuda:{present - 1})"
            + (f"; or {instead}" if instead else "")
        )
    return f"cuda:{index}"


def default_runtime(device: str) -> str:
    """The runtime a table is measured in unless ``--runtime`` says otherwise: on CUDA the one serving
    engines use for decode (each step replayed as a CUDA graph), elsewhere PyTorch eager."""
    return "cudagraph" if device.startswith("cuda") else "eager"


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core counted once): the thread
    count llama.cpp and most BLAS libraries start with."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, current = set(), {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in [*handle, ""]:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("processor", "physical id", "core id"):
                    current[key] = value.strip()
                elif not line.strip() and current:
                    if int(current.get("processor", -1)) in allowed:
                        cores.add((current.get("physical id"), current.get("core id", current.get("processor"))))
                    current = {}
    except (OSError, ValueError):
        pass
    return len(cores) or len(allowed) or 1
