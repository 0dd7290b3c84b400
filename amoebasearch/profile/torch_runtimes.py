"""The PyTorch runtimes: ``eager`` (as is), ``compile`` (``torch.compile`` of every decoder block and
the final norm) and ``cudagraph`` (eager kernels, each whole program captured in one CUDA graph).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from amoebasearch.errors import UsageError
from amoebasearch.profile.runtime_base import Program, Runtime


class EagerRuntime(Runtime):
    name = "eager"
    native_hf = True

    def program(self, module: nn.Module, example: tuple) -> Program:
        def run(args: tuple) -> Any:
            with torch.inference_mode():
                return module(*args)

        return run


class CompileRuntime(EagerRuntime):
    """``torch.compile`` per block (dynamic shapes), reused across blocks, widths and subnets."""

    name = "compile"
    native_hf = False

    def __init__(self) -> None:
        self.mode: str | None = None

    def check(self, device: str, dtype: torch.dtype) -> None:
        import torch._dynamo

        # One graph per (phase, dtype) is the goal, but guard failures on new widths must never
        # silently fall back to eager because a small recompile limit was reached.
        config = torch._dynamo.config
        config.cache_size_limit = max(config.cache_size_limit, 512)
        if hasattr(config, "recompile_limit"):
            config.recompile_limit = max(config.recompile_limit, 512)
        # Widths change weight shapes and the heads-per-KV-group integer: keep both symbolic so a
        # new width reuses the compiled graph instead of compiling again.
        config.force_parameter_static_shapes = False
        config.force_nn_module_property_static_shapes = False
        config.allow_unspec_int_on_nn_module = True
        self.mode = "reduce-overhead" if device.startswith("cuda") else None

    @property
    def cuda_graphs(self) -> bool:
        """Whether blocks are compiled into CUDA graphs (``reduce-overhead``, chosen on CUDA)."""
        return self.mode == "reduce-overhead"

    def program(self, module: nn.Module, example: tuple) -> Program:
        graphs = self.cuda_graphs

        # no_grad, not inference_mode: inference tensors would differ in dispatch keys from the
        # inputs of other programs and force needless recompiles.
        def run(args: tuple) -> Any:
            if graphs:  # each call is a new step: earlier outputs may be overwritten from here on
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():
                return module(*args)

        return run

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from amoebasearch.models import decoder_layers

        layers = decoder_layers(model)
        for index, layer in enumerate(layers):
            layer.compile(dynamic=True, mode=self.mode)
            if self.cuda_graphs:
                layers[index] = GraphOutputCopy(layer)
        # The embedding and LM head are single torch ops (dynamo leaves torch.nn internals to eager).
        model.model.norm.compile(dynamic=True, mode=self.mode)
        return model

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode or "default", "dynamic": True, "regional": True}


class GraphOutputCopy(nn.Module):
    """Runs a block compiled with CUDA graphs and copies its output out of the graph's memory.

    The blocks of a subnet share one compiled function, and a CUDA-graph replay may reuse the
    memory of an earlier replay's output, which is the very hidden state the next block reads. On
    an H100, without the copy, one-block stacks ran and the first four-block stack failed
    with "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"
    (the copy is what that message advises; not yet re-run on a GPU). The copy (one small device-to-device kernel
    per block) is what any per-block CUDA-graph deployment pays too, so it is timed.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        return out.clone() if isinstance(out, torch.Tensor) else type(out)(t.clone() for t in out)


class CudaGraphRuntime(Runtime):
    """PyTorch's eager kernels, each program captured whole in one CUDA graph and replayed (CUDA only).

    At batch 1 a 135M model's eager step is bound by the host launching kernels (an H100 spent
    ~660 us per block, each block's own GPU work a few us), so its latency is the host's and
    swings with it. A graph launches a whole program (a block stack, or a subnet's full step) in
    one call, as serving engines run decode, and what is timed is the GPU's work plus one launch
    (the floor the fixed ``overhead`` row and the calibration carry). Per-block
    ``mode="reduce-overhead"`` (the ``compile`` runtime) does not get there: blocks share one
    compiled function whose parameters are static graph inputs, so every block is its own
    recording, found by checking invariants on every call (on an H100: no faster than eager).
    """

    name = "cudagraph"

    def check(self, device: str, dtype: torch.dtype) -> None:
        if not device.startswith("cuda"):
            raise UsageError(
                "runtime cudagraph replays CUDA graphs: pass --device cuda:N (on a CPU: eager, compile or onnxruntime)"
            )

    def program(self, module: nn.Module, example: tuple) -> Program:
        rope = str(getattr(getattr(module, "rotary", None), "rope_type", "default"))
        if "dynamic" in rope or rope == "longrope":
            # their rotary tables grow with the sequence, decided by a tensor comparison on the host
            raise UsageError(f"runtime cudagraph cannot capture a {rope} RoPE model: use --runtime eager or compile")
        return GraphReplay(module)


class GraphReplay:
    """A module's call captured in a CUDA graph on first use, then replayed.

    The graph reads its inputs where the first call's arguments live, so each later call copies
    new inputs there (device-to-device; skipped for the very tensors of the first call, e.g. the
    KV cache and rotary tables a program passes every time) and replays. The copy is what any
    graph-serving engine pays per step, so it is timed. The first call also warms the module up
    on a side stream, as capture requires.

    Each graph keeps its own private memory pool (torch's default). One pool shared by every graph
    of a run failed on an H200 (torch 2.11): once the graphs of one set of programs were
    dropped, the shared pool's use count fell to zero and the next capture into it hit the caching
    allocator's internal assert. A private pool holds only the program's intermediates and output
    (kilobytes to tens of megabytes at these sizes; weights, inputs and KV caches live outside it)
    and goes with its graph.
    """

    def __init__(self, module: nn.Module, warmup: int = 2) -> None:
        self.module, self.warmup = module, warmup
        self.graph: Any = None
        self.inputs: tuple = ()
        self.output: Any = None

    def __call__(self, args: tuple) -> Any:
        if self.graph is None:
            self._capture(args)
        for buffer, value in zip(self.inputs, args, strict=True):
            if buffer is not None and value is not None and value.data_ptr() != buffer.data_ptr():
                if value.shape != buffer.shape:  # copy_ would broadcast silently
                    raise ValueError(f"a captured program got shape {tuple(value.shape)}, not {tuple(buffer.shape)}")
                buffer.copy_(value)
        self.graph.replay()
        return self.output  # valid until this graph's next replay

    def _capture(self, args: tuple) -> None:
        self.inputs = tuple(args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(self.warmup):
                self.module(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self.output = self.module(*self.inputs)
        self.graph = graph
