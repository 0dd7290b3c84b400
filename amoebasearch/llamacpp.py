"""llama.cpp as an engine: load a GGUF, decode batches with its real KV cache, read logits.

Through llama-cpp-python's low-level API (the C functions, no Python-side sampling or caching),
so what is timed is llama.cpp's own ``llama_decode``. One `Engine` is one model and one context
(sequence 0): `decode` appends tokens at given positions, `forget` drops cached positions from
a point on (how a timed decode step is undone so every repeat runs at the same context).
`perplexity` and `greedy` are the quality and the answer of a GGUF as llama.cpp computes them.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from amoebasearch.devices import physical_cores
from amoebasearch.errors import UsageError

INSTALL = (
    "llama-cpp-python is not installed: `make install` builds it (portable CPU flags), or "
    "`CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON' pip install llama-cpp-python`"
)


def require() -> None:
    """A one-line error naming the install command when llama-cpp-python is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise UsageError(INSTALL)


_SILENT: list = []


def quiet_logs() -> None:
    """llama.cpp reports every model load on stderr: silence it (failures raise instead)."""
    require()
    import ctypes

    import llama_cpp

    if not _SILENT:
        _SILENT.append(llama_cpp.llama_log_callback(lambda level, text, data: None))  # kept alive here
        llama_cpp.llama_log_set(_SILENT[0], ctypes.c_void_p(0))


def default_threads() -> int:
    """The threads llama.cpp's own tools (llama-cli, llama-server) use when given none: the physical cores."""
    return physical_cores()


def version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


class Engine:
    """One GGUF model loaded by llama.cpp with a context of ``context`` tokens on ``threads`` threads.

    ``batch`` is the most tokens one `decode` call takes (prefill of a whole prompt is one call,
    as llama.cpp's server processes a prompt that fits its batch).
    """

    def __init__(self, path: str | Path, context: int, threads: int, batch: int | None = None) -> None:
        import llama_cpp

        quiet_logs()
        self.path, self.threads = Path(path), threads
        self._lib = llama_cpp
        self._model = self._context = self._batch = None
        params = llama_cpp.llama_model_default_params()
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise UsageError(f"llama.cpp could not load {path}: is it a GGUF file of a supported model?")
        self.capacity = batch or context
        settings = llama_cpp.llama_context_default_params()
        settings.n_ctx = context
        settings.n_batch = settings.n_ubatch = self.capacity
        settings.n_threads = settings.n_threads_batch = threads
        settings.no_perf = True
        self._context = llama_cpp.llama_init_from_model(self._model, settings)
        if not self._context:
            raise UsageError(f"llama.cpp could not create a {context}-token context for {path}")
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        self._batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self._context)

    def decode(self, tokens: Sequence[int], start: int, all_logits: bool = False) -> None:
        """Run ``tokens`` at positions ``start``, ``start + 1``, ... (logits for the last one, or all)."""
        count = len(tokens)
        if not 0 < count <= self.capacity:
            raise ValueError(f"a decode call takes 1 to {self.capacity} tokens, not {count}")
        batch = self._batch
        batch.n_tokens = count
        for i, token in enumerate(tokens):
            batch.token[i] = int(token)
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == count - 1
        status = self._lib.llama_decode(self._context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} on {self.path.name}")

    def logits(self, index: int = -1) -> np.ndarray:
        """Logits of the ``index``-th token of the last batch (-1: its last), as float32."""
        pointer = self._lib.llama_get_logits_ith(self._context, index)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab,)).copy()

    def forget(self, keep: int = 0) -> None:
        """Drop every cached position from ``keep`` on (0: the whole cache)."""
        if keep == 0:
            self._lib.llama_memory_clear(self._memory, True)
        else:
            self._lib.llama_memory_seq_rm(self._memory, 0, keep, -1)

    def close(self) -> None:
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._context:
            lib.llama_free(self._context)
            self._context = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass


def perplexity(engine: Engine, sequences: Sequence[Sequence[int]]) -> float:
    """Perplexity of next-token prediction over ``sequences`` (each decoded from an empty cache,
    every token but the first predicted), as llama.cpp computes the logits."""
    total, count = 0.0, 0
    for sequence in sequences:
        engine.forget()
        for start in range(0, len(sequence), engine.capacity):
            chunk = sequence[start : start + engine.capacity]
            engine.decode(chunk, start, all_logits=True)
            for i in range(len(chunk)):
                target = start + i + 1
                if target >= len(sequence):
                    break
                logits = engine.logits(i).astype(np.float64)
                top = logits.max()
                total += top + math.log(np.exp(logits - top).sum()) - logits[sequence[target]]
                count += 1
    engine.forget()
    return math.exp(total / max(count, 1))


def greedy(engine: Engine, prompt: Sequence[int], max_new: int, stop: Sequence[int] = ()) -> list[int]:
    """Token ids llama.cpp generates after ``prompt`` by always taking the most likely token."""
    engine.forget()
    engine.decode(prompt, 0)
    position, out = len(prompt), []
    for _ in range(max_new):
        token = int(np.argmax(engine.logits()))
        if token in stop:
            break
        out.append(token)
        engine.decode([token], position)
        position += 1
    engine.forget()
    return out
