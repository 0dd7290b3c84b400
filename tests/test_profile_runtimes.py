"""Runtimes and measured programs on a tiny model: equal outputs, plug-ins refuse, CUDA paths skip."""

import platform
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from amoebasearch.errors import UsageError
from amoebasearch.export import extract
from amoebasearch.profile.blocks import Decoder, Point
from amoebasearch.profile.fingerprint import cpu_fingerprint, device_fingerprint, device_slug, library_versions
from amoebasearch.profile.programs import Context, model_program, stack_program
from amoebasearch.profile.runtimes import get_runtime
from amoebasearch.shape import Shape


def test_decoder_module_matches_the_hugging_face_forward():
    model = extract(tiny_model("llama"), Shape((0, 2), 2, 64))
    ids = torch.randint(1, 97, (2, 7))
    with torch.no_grad():
        expected = model(ids).logits[:, -1:]
        got = Decoder(model)(ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_decoder_module_decode_step_matches_cached_forward():
    from transformers import DynamicCache

    model = tiny_model("llama")
    ids = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(ids[:, :5], cache=cache, use_cache=True)
        keys = torch.stack([layer.keys for layer in cache.layers])
        values = torch.stack([layer.values for layer in cache.layers])
        expected = model(ids[:, 5:], cache=cache, use_cache=True).logits
        got = Decoder(model)(ids[:, 5:], keys, values)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["eager", "onnxruntime"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_runtime_programs_run(name, phase):
    model = tiny_model("llama")
    runtime = get_runtime(name, "cpu", torch.float32)
    ctx = Context(runtime, "cpu", torch.float32)
    point = Point(phase, 2, 8)
    for run, make, reset in (model_program(model, point, ctx), stack_program(model, point, ctx)):
        for _ in range(2):
            run(make())
            if reset:
                reset()


def test_onnxruntime_output_equals_eager():
    model = extract(tiny_model("llama"), Shape((1, 3), 4, 96))
    runtime = get_runtime("onnxruntime", "cpu", torch.float32)
    ids = torch.randint(1, 97, (1, 5))
    run = runtime.program(Decoder(model), (ids, None, None))
    with torch.no_grad():
        expected = Decoder(model)(ids)
    torch.testing.assert_close(torch.from_numpy(run((ids, None, None))[0]), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vllm", "tensorrt-llm", "mlc-llm"])
def test_serving_engines_say_not_installed(name):
    with pytest.raises(UsageError, match=f"runtime {name} is not installed"):
        get_runtime(name, "cpu", torch.float32)


def test_unknown_runtime_names_the_known_ones():
    with pytest.raises(UsageError, match="unknown runtime 'tvm': choose one of eager, compile, onnxruntime"):
        get_runtime("tvm", "cpu", torch.float32)


def test_cpu_fingerprint_and_slug():
    fingerprint = device_fingerprint("cpu")
    assert fingerprint == cpu_fingerprint()
    assert fingerprint["threads_used"] == torch.get_num_threads()
    assert isinstance(fingerprint["isa"], list)  # vector extensions the kernels can use (may be empty)
    if Path("/proc/cpuinfo").is_file() and platform.machine() == "x86_64":
        assert fingerprint["family"] and fingerprint["model"]  # tells apart CPUs sharing a marketing name
    assert device_slug({"kind": "cpu", "name": "AMD EPYC 9654 96-Core"}) == "cpu-amd-epyc-9654-96-core"
    assert device_slug({"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert device_slug({"kind": "cpu", "name": "Intel(R) Xeon(R) Processor"}) == "cpu-intel-xeon-processor"
    assert library_versions()["torch"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and NVML")
def test_nvidia_fingerprint_has_nvml_fields():
    fingerprint = device_fingerprint("cuda:0")
    for key in ("name", "uuid", "memory_bytes", "driver", "cuda_driver", "power_limit_w", "state_before"):
        assert key in fingerprint
    assert "throttle_reasons" in fingerprint["state_before"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_programs_run():
    model = tiny_model("llama").to("cuda")
    ctx = Context(get_runtime("eager", "cuda:0", torch.float32), "cuda:0", torch.float32)
    run, make, reset = model_program(model, Point("decode", 1, 8), ctx)
    run(make())


DEVICES = ["cpu", pytest.param("cuda:0", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_compile_runtime_matches_eager_on_a_stack(device):
    """Extracted stacks (as the profiler times them) compiled per block equal eager, on CPU and,
    where present, on CUDA with CUDA graphs (where each block replays one graph)."""
    from amoebasearch.profile.blocks import BlockStack, stack_model

    model = tiny_model("llama").to(device)
    runtime = get_runtime("compile", device, torch.float32)
    eager_stack = stack_model(model, 2, 64)
    compiled_stack = runtime.prepare_model(stack_model(model, 2, 64))
    ctx = Context(runtime, device, torch.float32)
    for point in (Point("prefill", 1, 8), Point("decode", 1, 8)):
        run, make, _ = stack_program(compiled_stack, point, ctx)
        for _ in range(3):  # repeated calls: graph replays must not clobber each other's outputs
            args = make()
            with torch.no_grad():
                expected = BlockStack(eager_stack.model.layers)(*args)
            torch.testing.assert_close(run(args), expected, rtol=1e-4, atol=1e-4)


def test_cudagraph_runtime_needs_cuda():
    with pytest.raises(UsageError, match="runtime cudagraph replays CUDA graphs: pass --device cuda:N"):
        get_runtime("cudagraph", "cpu", torch.float32)


def test_cudagraph_refuses_a_rope_that_grows_on_the_host():
    """A dynamic RoPE decides on the host, from a tensor, whether to grow its tables: no graph can
    hold that, so the runtime says so before it touches CUDA (this part runs on any machine)."""
    from amoebasearch.profile.runtimes import CudaGraphRuntime

    model = tiny_model("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UsageError, match="cannot capture a dynamic RoPE model: use --runtime eager or compile"):
        CudaGraphRuntime().program(Decoder(model), ())


class _RecomputingGraph:
    """Stands in for a captured CUDA graph on a CPU: a replay recomputes the module from the very
    buffers the capture read and writes into the captured output, as the GPU's kernels would."""

    def __init__(self, replay_of) -> None:
        self.replay_of = replay_of

    def replay(self) -> None:
        with torch.inference_mode():
            self.replay_of.output.copy_(self.replay_of.module(*self.replay_of.inputs))


def test_graph_replay_feeds_each_call_its_own_inputs_on_any_machine(monkeypatch):
    """GraphReplay's own part, without CUDA: later calls copy fresh inputs into the captured
    buffers (so a replay computes them, not the first call's), tensors passed again as
    themselves (a KV cache) are not copied, and a different shape is refused, not broadcast."""
    from amoebasearch.profile.torch_runtimes import GraphReplay

    def capture(self, args):
        self.inputs = tuple(args)
        with torch.inference_mode():
            self.output = self.module(*self.inputs).clone()
        self.graph = _RecomputingGraph(self)

    monkeypatch.setattr(GraphReplay, "_capture", capture)
    from amoebasearch.profile.blocks import random_past
    from amoebasearch.shape import ModelDims

    model = extract(tiny_model("llama"), Shape((0, 2), 2, 64))
    dims = ModelDims.from_config(model.config)
    past_k, past_v = random_past(dims, 2, Point("decode", 1, 8), torch.Generator().manual_seed(0), torch.float32, "cpu")
    decoder = Decoder(model)
    replay = GraphReplay(decoder)
    first = (torch.randint(1, 97, (1, 1)), past_k, past_v)
    replay(first)
    captured_k = replay.inputs[1]
    for _ in range(3):
        ids = torch.randint(1, 97, (1, 1))
        with torch.inference_mode():
            expected = decoder(ids, past_k, past_v)
        torch.testing.assert_close(replay((ids, past_k, past_v)), expected)
    assert replay.inputs[1] is captured_k and replay.inputs[0] is first[0]  # buffers stay the captured ones
    with pytest.raises(ValueError, match=r"a captured program got shape \(1, 2\), not \(1, 1\)"):
        replay((torch.randint(1, 97, (1, 2)), past_k, past_v))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cudagraph_replays_equal_eager_for_new_inputs():
    """Captured once, replayed with fresh inputs each call: every replay computes that call's
    inputs (not the first call's), for a block stack and a whole subnet, prefill and decode."""
    from amoebasearch.profile.blocks import BlockStack, stack_model

    model = tiny_model("llama").to("cuda")
    runtime = get_runtime("cudagraph", "cuda:0", torch.float32)
    ctx = Context(runtime, "cuda:0", torch.float32)
    stack = stack_model(model, 2, 64)
    subnet = extract(model, Shape((0, 2), 2, 64))
    for point in (Point("prefill", 1, 8), Point("decode", 1, 8)):
        pairs = [
            (BlockStack(stack.model.layers), stack_program(stack, point, ctx)),
            (Decoder(subnet), model_program(subnet, point, ctx)),
        ]
        # interleaved, as the harness replays them; the second point drops the first point's graphs
        # (H200: with one pool shared by all graphs, the next capture then hit an allocator assert)
        for _ in range(3):
            for module, (run, make, _) in pairs:
                args = make()
                with torch.inference_mode():
                    expected = module(*args).clone()
                # read at once: an output is valid until its graph's next replay
                torch.testing.assert_close(run(args).clone(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["eager", "compile", "cudagraph"])
def test_cuda_subnet_programs_run(name):
    """What validation times on a GPU: an extracted subnet, whole, in each runtime."""
    from amoebasearch.export import extract
    from amoebasearch.profile.blocks import share_embeddings
    from amoebasearch.shape import Shape

    model = tiny_model("llama").to("cuda")
    runtime = get_runtime(name, "cuda:0", torch.float32)
    subnet = runtime.prepare_model(share_embeddings(extract(model, Shape((0, 1), 2, 64)), model))
    ctx = Context(runtime, "cuda:0", torch.float32)
    for point in (Point("prefill", 1, 8), Point("decode", 1, 8)):
        run, make, reset = model_program(subnet, point, ctx)
        for _ in range(3):
            out = run(make())
            if reset:
                reset()
        assert torch.isfinite(torch.as_tensor(out if isinstance(out, torch.Tensor) else out[0])).all()


def test_onnxruntime_exports_once_per_live_weights(monkeypatch):
    """A second program of the same module is a new session of the same export; other weights
    (even of the same shapes) are exported anew, and a dead module's export is dropped."""
    runtime = get_runtime("onnxruntime", "cpu", torch.float32)
    exports = []
    original = runtime._export
    monkeypatch.setattr(runtime, "_export", lambda *a: exports.append(a[0]) or original(*a))
    ids = torch.randint(1, 97, (1, 5))
    model = extract(tiny_model("llama"), Shape((1, 3), 4, 96))
    first = runtime.program(Decoder(model), (ids, None, None))
    second = runtime.program(Decoder(model), (ids, None, None))
    assert len(exports) == 1
    outputs = [torch.from_numpy(run((ids, None, None))[0]) for run in (first, second)]
    torch.testing.assert_close(*outputs)
    twin = extract(tiny_model("llama"), Shape((1, 3), 4, 96))
    runtime.program(Decoder(twin), (ids, None, None))
    assert len(exports) == 2
    runtime.program(Decoder(model), (torch.randint(1, 97, (1, 7)), None, None))  # other input shapes
    assert len(exports) == 3
    del model, twin, exports[:]
    import gc

    gc.collect()
    runtime.program(Decoder(extract(tiny_model("llama"), Shape((0,), 2, 64))), (ids, None, None))
    assert len(runtime._exported) == 1  # entries of freed weights were dropped
