"""Runtimes a table can be measured in, and the plug-in point for more.

A runtime (`runtime_base.Runtime`) turns a tensor-only module (see ``blocks.py``) into a callable
``run(args)``. Built in (``torch_runtimes.py``, ``onnx_runtime.py``): ``eager`` (PyTorch as is),
``compile`` (``torch.compile`` of every decoder block and the final norm: "regional" compilation
with symbolic weight shapes, so a few compiled graphs serve every block, width and subnet instead
of one compile per subnet; CUDA graphs via ``mode="reduce-overhead"`` on GPU), ``onnxruntime``
(each program exported to ONNX and run by an ORT session, CPU execution provider here, CUDA EP
where the installed ORT has it) and, on CUDA only, ``cudagraph`` (eager kernels, each whole
program captured in one CUDA graph).

``llamacpp`` (llama.cpp on GGUF files, `profile.engine`) runs whole models only: its tables are
measured at the engine level, per width from whole models at two depths. The serving engines of
the paper's Figure 1 (MLC-LLM, vLLM, TensorRT-LLM) are registered as `PluginRuntime` entries that
say what to install; they plug in the same way, as subclasses of `engine.EngineRuntime` with an
``engine_program`` (load the model file, return one timed step), put in `RUNTIMES`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from amoebasearch.errors import UsageError
from amoebasearch.profile.onnx_runtime import OnnxRuntime
from amoebasearch.profile.runtime_base import Program, Runtime
from amoebasearch.profile.torch_runtimes import CompileRuntime, CudaGraphRuntime, EagerRuntime

__all__ = [
    "RUNTIMES",
    "CompileRuntime",
    "CudaGraphRuntime",
    "EagerRuntime",
    "OnnxRuntime",
    "PluginRuntime",
    "Program",
    "Runtime",
    "default_threads",
    "get_runtime",
]


class PluginRuntime(Runtime):
    """A serving engine we do not drive yet: checking it explains what is missing."""

    def __init__(self, name: str, module: str, install: str) -> None:
        self.name, self.module, self.install = name, module, install

    def check(self, device: str, dtype: torch.dtype) -> None:
        if importlib.util.find_spec(self.module) is None:
            raise UsageError(
                f"runtime {self.name} is not installed (`{self.install}`); it plugs in as an engine-level runtime "
                "(subclass profile.engine.EngineRuntime, as llamacpp does)"
            )
        raise UsageError(
            f"runtime {self.name} is installed but has no amoebasearch adapter yet: "
            "subclass profile.engine.EngineRuntime (whole-model timing, as llamacpp) and register it in RUNTIMES"
        )


RUNTIMES: dict[str, Runtime | Callable[[], Runtime]] = {
    "eager": EagerRuntime,
    "compile": CompileRuntime,
    "onnxruntime": OnnxRuntime,
    "cudagraph": CudaGraphRuntime,
    "llamacpp": lambda: _llamacpp(),
    "mlc-llm": lambda: PluginRuntime("mlc-llm", "mlc_llm", "pip install mlc-llm (see llm.mlc.ai)"),
    "vllm": lambda: PluginRuntime("vllm", "vllm", "pip install vllm (CUDA only)"),
    "tensorrt-llm": lambda: PluginRuntime("tensorrt-llm", "tensorrt_llm", "pip install tensorrt-llm (CUDA only)"),
}


def _llamacpp() -> Runtime:
    from amoebasearch.profile.engine import LlamaCppRuntime

    return LlamaCppRuntime()


def default_threads(name: str) -> int:
    """The thread count runtime ``name`` starts with on this host (see `Runtime.default_threads`)."""
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}")
    factory = RUNTIMES[name]
    return (factory() if callable(factory) else factory).default_threads()


def get_runtime(name: str, device: str, dtype: torch.dtype, quant: str | None = None) -> Runtime:
    """A checked runtime instance, or `UsageError` naming the known ones. ``quant`` is the weight
    format of a runtime that quantises its own model files (llamacpp: q8_0, q4_k_m, f16, f32)."""
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}")
    factory = RUNTIMES[name]
    runtime = factory() if callable(factory) else factory
    if quant is not None:
        if not hasattr(runtime, "quant"):
            raise UsageError(f"--quant sets the weight format of --runtime llamacpp; runtime {name} runs --dtype")
        runtime.quant = quant
    runtime.check(device, dtype)
    return runtime
