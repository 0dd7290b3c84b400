"""Engine-level runtimes: engines that run whole models, timed as whole models.

llama.cpp (and the serving engines of the paper's Figure 1) load a model file and run it end to
end; a decoder block cannot be timed alone inside them. So an engine-level table is measured per
width from whole models at two depths, ``lo`` and ``hi`` (`engine_depths`): the decoder row is
the slope ``(t_hi - t_lo) / (hi - lo)``, and what is left at depth 0 (embedding, output head,
the engine's own per-call work, and, in llama.cpp's prefill, the last block's feed-forward run
for the output token only) is the intercept. Intercepts of all widths are one point's ``overhead``
row (their median) plus a per-width ``tail`` row (the difference), so the table prices every
width's line exactly through both depths it measured; the row format and `predict_latency` are
those of every table (``tail`` rows are absent, i.e. zero, in block-level tables).

`LlamaCppRuntime` exports each timed model (random or real weights: latency depends on shapes)
to a GGUF at the table's quantisation and runs it with llama.cpp at the table's thread count.
To plug in another engine, subclass `EngineRuntime` and implement ``engine_program``.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amoebasearch.errors import UsageError
from amoebasearch.profile import timing
from amoebasearch.profile.blocks import Point, stack_model
from amoebasearch.profile.runtime_base import Runtime
from amoebasearch.profile.table import table_row
from amoebasearch.shape import ModelDims


def engine_depths(dims: ModelDims) -> tuple[int, int]:
    """The two depths every width is timed at: an eighth of the model and all of it. Whole models
    in llama.cpp are close to linear in depth (on SmolLM2-135M, a line through 3 and 30 layers
    priced 7 and 15 within 2.2 %), and the deep end reads its weights as a full subnet does."""
    return max(1, dims.num_layers // 8), dims.num_layers


class EngineRuntime(Runtime):
    """A runtime that runs whole models only (see the module docstring)."""

    engine_level = True
    copies_weights = True  # each program loads the engine's own copy of a model file
    # loads of one file share its mapped weights: one per width row (each row already fits a line
    # through two whole models); a validation subnet, the reference, is the median of three loads
    default_instances = 1
    validation_copies_factor = 3
    # a whole-model decode step takes milliseconds: time every group for seconds, not 21 steps
    min_round_seconds = 8.0

    def engine_program(self, model: nn.Module, point: Point, generator: torch.Generator):
        """A ``(run, make_input, reset)`` program: one step of ``model`` at ``point`` in the engine."""
        raise NotImplementedError


class LlamaCppRuntime(EngineRuntime):
    """llama.cpp through llama-cpp-python: GGUF at ``quant``, llama.cpp's default batch sizes and
    attention, ``threads`` threads (CPU)."""

    name = "llamacpp"

    def __init__(self, quant: str = "q4_k_m") -> None:
        self.quant = quant
        self.threads = 1
        self._folder: tempfile.TemporaryDirectory | None = None
        self._exported: dict[int, tuple[list[weakref.ref], Path]] = {}
        self._names = itertools.count()

    def check(self, device: str, dtype: torch.dtype) -> None:
        from amoebasearch import llamacpp
        from amoebasearch.export_gguf import check_quant

        llamacpp.require()
        check_quant(self.quant)
        if device != "cpu":
            raise UsageError("runtime llamacpp is built for the CPU here: pass --device cpu")
        self.threads = torch.get_num_threads()

    def default_threads(self) -> int:
        from amoebasearch import llamacpp

        return llamacpp.default_threads()

    def settings(self) -> dict[str, Any]:
        from amoebasearch import llamacpp

        return {
            "name": self.name,
            "quant": self.quant,
            "threads": self.threads,
            "llama_cpp_python": llamacpp.version(),
            "context_params": "llama.cpp defaults (n_batch 2048, n_ubatch 512, flash attention auto, mmap)",
        }

    def gguf(self, model: nn.Module) -> Path:
        """``model`` exported at this runtime's quantisation, once per live set of weights."""
        from amoebasearch.export_gguf import write_gguf

        params = list(model.parameters())
        for key, (refs, path) in list(self._exported.items()):
            if any(r() is None for r in refs):  # its model is gone: so is its file (engines keep their mapping)
                path.unlink(missing_ok=True)
                del self._exported[key]
        key = hash(tuple(map(id, params)))
        entry = self._exported.get(key)
        if entry is not None and all(r() is p for r, p in zip(entry[0], params, strict=True)):
            return entry[1]
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="amoebasearch-llamacpp-")
        path = Path(self._folder.name) / f"{next(self._names)}.gguf"
        # the tokenizer does not change a step's latency: a placeholder vocabulary of the right size
        write_gguf(model, None, path, self.quant, threads=self.threads)
        self._exported[key] = ([weakref.ref(p) for p in params], path)
        return path

    def engine_program(self, model: nn.Module, point: Point, generator: torch.Generator):
        return gguf_program(self.gguf(model), point, generator, self.threads)


def gguf_program(path: Path, point: Point, generator: torch.Generator, threads: int):
    """The timed program of a GGUF file in llama.cpp: prefill of ``point.context`` tokens from an
    empty cache, or one decode step at that context (the cache cut back after every step).

    Each timed step follows an untimed one-token step of the same model (in ``make_input``), so
    its caches hold its own weights as in a decode loop or a server's next request, whatever
    ran before: on SmolLM2-135M a decode step after a 30-layer model's took 12-17 % longer than
    after its own.
    """
    from amoebasearch.llamacpp import Engine

    if point.batch != 1:
        raise UsageError("runtime llamacpp times batch 1 (one sequence): pass --batch 1")
    engine = Engine(path, context=point.context + 1, threads=threads)
    start = point.context if point.phase == "decode" else 0  # where the timed step's tokens go

    def ids(count: int) -> list[int]:  # non-zero ids: 0 is often padding
        return torch.randint(1, engine.vocab, (count,), generator=generator).tolist()

    def warmed(count: int) -> list[int]:
        tokens = ids(count)
        engine.decode(tokens[:1], start)
        engine.forget(start)
        return tokens

    def step(tokens: list[int]) -> None:
        engine.decode(tokens, start)

    if point.phase == "decode":
        engine.decode(ids(point.context), 0)
    return step, lambda: warmed(point.new_tokens), lambda: engine.forget(start)


def time_gguf(path: Path, point: Point, threads: int, repeats: int = 41) -> timing.Stats:
    """One GGUF file's latency in llama.cpp at ``point`` on ``threads`` threads (the demo's and
    `benchmarks/deploy_check.py`'s measurement of an exported file)."""
    with timing.measurement_threads("cpu", threads):
        program = gguf_program(path, point, torch.Generator().manual_seed(0), threads)
        return timing.measure(*program, clock=timing.Clock(), repeats=repeats)


def engine_models(model: nn.Module, widths: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int, nn.Module]]:
    """(width, depth, model) for every width at both `engine_depths`: the first layers of ``model``
    cut to that width (real weights; the engine exports each once, whatever the points)."""
    lo, hi = engine_depths(ModelDims.from_config(model.config))
    return [(w, depth, stack_model(model, *w, depth=depth)) for w in widths for depth in (lo, hi)]


def engine_rows(
    models: list[tuple[tuple[int, int], int, nn.Module]],
    runtime: EngineRuntime,
    generator: torch.Generator,
    point: Point,
    settings: dict,
    overhead_us: float | None,
    reference: tuple[tuple[int, int], dict[str, float] | None],
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Decoder and tail rows of the widths of ``models`` (`engine_models`) at ``point``, plus the
    point's overhead, embedding and head rows when ``overhead_us`` is None (its first group): every
    model timed round-robin, ``settings["instances"]`` loaded copies of each.

    A host drifts by several per cent between groups minutes apart, and a group holds neighbouring
    widths, so without a common yardstick that drift would become a false trend across widths.
    ``reference`` is ``(width, times)``: ``models`` hold that width at both depths in every group,
    and every model's times are scaled by how much the reference at its depth sped up or slowed
    down since ``times`` (its microseconds per depth in the point's first group; None in that
    group, which sets them). Returns the rows and the reference times.
    """
    from amoebasearch.profile.memory import build_within_memory

    count = settings["instances"]
    models = sorted(models, key=lambda entry: _cost(entry, point))  # run there and back: each follows its like
    programs = build_within_memory(
        (runtime.engine_program(stack, point, generator) for _, _, stack in models for _ in range(count)),
        total=len(models) * count,
        fix=f"lower --instances (now {count})",
    )
    stats = timing.measure_interleaved(
        programs,
        clock=timing.Clock(),
        warmup=settings["warmup"],
        repeats=settings["repeats"],
        alternate=True,
        min_seconds=runtime.min_round_seconds,
    )
    del programs
    per_model = {
        (width, depth): timing.median_of_instances(stats[i * count : (i + 1) * count])
        for i, (width, depth, _) in enumerate(models)
    }
    reference_width, first = reference
    now = {str(depth): stat.median_us for (width, depth), stat in per_model.items() if width == reference_width}
    first = first or now
    per_model = {
        (width, depth): scaled(stat, first[str(depth)] / now[str(depth)]) for (width, depth), stat in per_model.items()
    }
    lines = {}
    lo, hi = min(depth for _, depth, _ in models), max(depth for _, depth, _ in models)
    for width in dict.fromkeys(width for width, _, _ in models):
        low, high = per_model[(width, lo)], per_model[(width, hi)]
        slopes = sorted((getattr(high, q) - getattr(low, q)) / (hi - lo) for q in ("p10_us", "median_us", "p90_us"))
        lines[width] = (slopes, low.median_us - lo * slopes[1], low.repeats + high.repeats, low.noisy or high.noisy)
    rows = []
    if overhead_us is None:
        overhead_us = statistics.median(line[1] for line in lines.values())
        rows += [_row(block, 0, 0, point, [0.0] * 3, 0, False) for block in ("embedding", "head")]
        rows.append(_row("overhead", 0, 0, point, [overhead_us] * 3, 0, False))
    for (heads, ffn), (slopes, intercept, repeats, noisy) in lines.items():
        rows.append(_row("decoder", heads, ffn, point, slopes, repeats, noisy))
        rows.append(_row("tail", heads, ffn, point, [intercept - overhead_us] * 3, repeats, noisy))
    return rows, first


def scaled(stat: timing.Stats, factor: float) -> timing.Stats:
    return timing.Stats(stat.median_us * factor, stat.p10_us * factor, stat.p90_us * factor, stat.repeats)


def _cost(entry: tuple[tuple[int, int], int, nn.Module], point: Point) -> float:
    """FLOPs of one step of an `engine_models` entry's blocks (what orders a group by size)."""
    from amoebasearch.profile.roofline import block_cost

    (heads, ffn), depth, stack = entry
    return depth * block_cost(ModelDims.from_config(stack.config), heads, ffn, point, dtype_bytes=1).flops


def _row(block: str, heads: int, ffn: int, point: Point, us: list[float], repeats: int, noisy: bool):
    """A row from (p10, median, p90) microseconds."""
    return table_row(block, heads, ffn, point, us[1], us[0], us[2], repeats, noisy, "measured")
