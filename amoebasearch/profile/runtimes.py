"""Runtimes a table can be measured in, and the plug-in point for more.

A runtime turns a tensor-only module (see ``blocks.py``) into a callable ``run(args)``.
Built in: ``eager`` (PyTorch as is), ``compile`` (``torch.compile`` of every decoder block and
the final norm: "regional" compilation with symbolic weight shapes, so a few compiled graphs
serve every block, width and subnet instead of one compile per subnet; CUDA graphs via
``mode="reduce-overhead"`` on GPU), ``onnxruntime`` (each program exported to ONNX and run
by an ORT session, CPU execution provider here, CUDA EP where the installed ORT has it) and, on
CUDA only, ``cudagraph`` (eager kernels, each whole program captured in one CUDA graph).

``llamacpp`` (llama.cpp on GGUF files, `profile.engine`) runs whole models only: its tables are
measured at the engine level, per width from whole models at two depths. The serving engines of
the paper's Figure 1 (MLC-LLM, vLLM, TensorRT-LLM) are registered as `PluginRuntime` entries that
say what to install; they plug in the same way, as subclasses of `engine.EngineRuntime` with an
``engine_program`` (load the model file, return one timed step), put in `RUNTIMES`.
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amoebasearch.devices import cuda_index
from amoebasearch.errors import UsageError

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


class OnnxRuntime(Runtime):
    """Export each program to ONNX (TorchScript exporter, static shapes) and run it with ORT.

    Exports are remembered per (module type, parameters, input shapes) while those parameters
    live, so a second program of the same weights (another independently allocated instance, see
    `Runtime.instances`) costs a session, not an export.
    """

    name = "onnxruntime"
    opset = 17
    copies_weights = True
    # on the 2-core EPYC, two validations of one decode table timing 3 copies per subnet put 94 % and
    # 90 % of held-out subnets within +-5 % (the reference's own noise: benchmarks/validation_noise.py);
    # a fresh table validated on 6 copies, 98 %
    validation_copies_factor = 2

    def __init__(self) -> None:
        self.providers: list[str] = []
        self.device = "cpu"
        self.threads = 1
        self._exported: dict[tuple, tuple[list[weakref.ref], bytes]] = {}

    def check(self, device: str, dtype: torch.dtype) -> None:
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            raise UsageError("runtime onnxruntime is not installed: run `pip install onnx onnxruntime`")
        import onnxruntime as ort

        available = ort.get_available_providers()
        if dtype == torch.bfloat16:
            raise UsageError("runtime onnxruntime takes float32 or float16: pass --dtype float16 (GPU) or float32")
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise UsageError("onnxruntime here has no CUDA execution provider: `pip install onnxruntime-gpu`")
            self.providers = ["CUDAExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.device = device
        self.threads = torch.get_num_threads()

    def program(self, module: nn.Module, example: tuple) -> Program:
        import onnxruntime as ort

        names = [f"input{i}" for i in range(len(example))]
        kept = [i for i, value in enumerate(example) if value is not None]
        onnx = self._exported_bytes(module, example, names, kept)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx, options, providers=self.providers)
        input_names = [names[i] for i in kept]
        if self.device.startswith("cuda"):
            return _cuda_program(session, input_names, kept, self.device)

        def run(args: tuple) -> Any:
            feed = {name: args[i].numpy() for name, i in zip(input_names, kept, strict=True)}
            return session.run(None, feed)

        return run

    def _exported_bytes(self, module: nn.Module, example: tuple, names: list[str], kept: list[int]) -> bytes:
        """The ONNX model of ``module`` on inputs shaped like ``example``, exported once per live weights.

        Keyed by the module type, the identities of its parameters and the input shapes; weak
        references check that the very same parameter objects are still alive (an id can be reused).
        """
        params = list(module.parameters())
        signature = tuple(None if value is None else (tuple(value.shape), value.dtype) for value in example)
        key = (type(module).__name__, tuple(map(id, params)), signature)
        self._exported = {k: v for k, v in self._exported.items() if all(r() is not None for r in v[0])}
        entry = self._exported.get(key)
        if entry is None or any(r() is not p for r, p in zip(entry[0], params, strict=True)):
            entry = ([weakref.ref(p) for p in params], self._export(module, example, names, kept))
            self._exported[key] = entry
        return entry[1]

    def _export(self, module: nn.Module, example: tuple, names: list[str], kept: list[int]) -> bytes:
        with tempfile.TemporaryDirectory(prefix="amoebasearch-onnx-") as tmp:
            path = Path(tmp) / "program.onnx"
            with torch.inference_mode(False), torch.no_grad(), _no_sdpa_gqa(), warnings.catch_warnings():
                # shapes are static per program by design, so the tracer's "treated as constant" is fine
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(
                    _DropNone(module, len(example), kept),
                    tuple(example[i] for i in kept),
                    str(path),
                    input_names=[names[i] for i in kept],
                    output_names=["output"],
                    opset_version=self.opset,
                    dynamo=False,
                )
            return path.read_bytes()

    def settings(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"name": self.name, "providers": self.providers, "opset": self.opset, "ort": ort.__version__}


def _no_sdpa_gqa():
    """The TorchScript ONNX exporter cannot convert SDPA with ``enable_gqa=True``; make Hugging Face
    expand the KV heads explicitly instead (``repeat_kv``), which is the same computation."""
    from unittest import mock

    return mock.patch("transformers.integrations.sdpa_attention.use_gqa_in_sdpa", lambda *a, **k: False)


class _DropNone(nn.Module):
    """ONNX graphs take tensors only: drop the ``None`` arguments (e.g. no past during prefill)."""

    def __init__(self, module: nn.Module, arity: int, kept: list[int]) -> None:
        super().__init__()
        self.module, self.arity, self.kept = module, arity, kept

    def forward(self, *tensors):
        args: list[Any] = [None] * self.arity
        for i, tensor in zip(self.kept, tensors, strict=True):
            args[i] = tensor
        return self.module(*args)


def _cuda_program(session, input_names: list[str], kept: list[int], device: str) -> Program:
    """Run an ORT CUDA session on torch CUDA tensors in place (IO binding, no host copies)."""
    index = cuda_index(device)

    def run(args: tuple) -> Any:
        binding = session.io_binding()
        for name, i in zip(input_names, kept, strict=True):
            tensor = args[i].contiguous()
            binding.bind_input(
                name=name,
                device_type="cuda",
                device_id=index,
                element_type=_numpy_dtype(tensor.dtype),
                shape=tuple(tensor.shape),
                buffer_ptr=tensor.data_ptr(),
            )
        binding.bind_output("output", "cuda", index)
        session.run_with_iobinding(binding)
        return binding

    return run


def _numpy_dtype(dtype: torch.dtype):
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


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
