"""The chosen subnet where it will run: measured in its table's engine, and its quality there.

`verify` times a subnet end to end in the table's runtime, device, dtype (or GGUF quantisation)
and threads, with the profiler's own harness; for llama.cpp it times the very GGUF file that the
export delivers. `gguf_perplexity` is the held-out perplexity of that file as llama.cpp computes
it, beside the float one the search used: quantisation moves quality, and a quantised deployment
should see by how much.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from amoebasearch.errors import UsageError
from amoebasearch.profile.table import LatencyTable


def table_quant(table: LatencyTable) -> str | None:
    """The GGUF quantisation an engine table was timed at (None for tables of other runtimes)."""
    return table.meta.get("runtime", {}).get("quant")


def verify(
    table: LatencyTable,
    subnet: Any,
    predicted_ms: float,
    point: Any,
    device: str,
    repeats: int = 41,
    rounds: int = 3,
    agree: float = 0.03,
    gguf: Path | None = None,
) -> dict[str, Any]:
    """Measure ``subnet`` end to end in the table's runtime, device, dtype and threads, at the
    table point the budget is for, with the profiler's own harness; compare with the prediction.
    For a llama.cpp table, ``gguf`` is the exported file to time (else the subnet is exported to a
    temporary one at the table's quantisation).

    A shared machine can slow one whole round down (another process on the pinned core), so the
    subnet is measured in up to ``rounds`` rounds of ``repeats`` calls, stopping once two round
    medians agree within ``agree``; the reported figure is the lowest round median, the machine's
    undisturbed speed, which is how the table's rows were measured too. Every round is reported.

    The process takes the table's allocation policy first (`timing.same_malloc_policy`), so the
    subnet is measured as the table's rows were (where weights land changes a program's speed).
    """
    import torch

    from amoebasearch.profile import timing
    from amoebasearch.profile.programs import Context, model_program
    from amoebasearch.profile.runtimes import get_runtime

    meta = table.meta
    if meta.get("device", {}).get("kind") == "cpu":
        device = "cpu"
    elif not device.startswith("cuda"):
        raise UsageError(f"--verify: {table.path} is a GPU table; pass --device cuda:N to measure on that GPU")
    quant = table_quant(table)
    dtype = torch.float32 if quant else getattr(torch, meta.get("dtype", "float32"))
    threads = int(meta.get("settings", {}).get("threads") or torch.get_num_threads())
    measured_rounds = []
    malloc = timing.same_malloc_policy(meta.get("settings", {}).get("malloc"))
    with timing.measurement_threads(device, threads), tempfile.TemporaryDirectory(prefix="amoebasearch-") as tmp:
        runtime = get_runtime(meta["runtime"]["name"], device, dtype, quant)
        context = Context(runtime, device, dtype, seed=0)
        if quant:
            from amoebasearch.export_gguf import write_gguf
            from amoebasearch.profile.engine import gguf_program

            if gguf is None:
                gguf = write_gguf(subnet, None, Path(tmp) / "subnet.gguf", quant, threads=threads)
            program = gguf_program(gguf, point, context.generator, threads)
        else:
            model = runtime.prepare_model(subnet.to(device=device, dtype=dtype).eval())
            program = model_program(model, point, context)
        for _ in range(rounds):
            clock, seconds = timing.clock_for(device), 2.0 if quant else 0.0  # llama.cpp steps: seconds per round
            measured_rounds.append(timing.measure(*program, clock=clock, repeats=repeats, min_seconds=seconds))
            medians = sorted(r.median_us for r in measured_rounds)
            if len(medians) > 1 and medians[1] <= medians[0] * (1 + agree):
                break
    stats = min(measured_rounds, key=lambda r: r.median_us)
    measured = stats.median_us / 1000.0
    return {
        "measured_ms": round(measured, 4),
        "predicted_ms": round(predicted_ms, 4),
        "error_pct": round((predicted_ms - measured) / measured * 100.0, 2),
        "p10_ms": round(stats.p10_us / 1000.0, 4),
        "p90_ms": round(stats.p90_us / 1000.0, 4),
        "repeats": stats.repeats,
        "round_medians_ms": [round(r.median_us / 1000.0, 4) for r in measured_rounds],
        "threads": threads if device == "cpu" else None,
        "malloc": malloc,
        **({"runtime": "llamacpp", "quant": quant, "gguf": str(gguf)} if quant else {}),
    }


def deploy(request: Any, table: LatencyTable, quality: Any, best: Any, report: dict, scratch: Path) -> Path | None:
    """``--export`` and ``--verify`` of the chosen subnet (into ``report``); the GGUF file deployed
    in llama.cpp (exported, or written only to be timed) where the table is llama.cpp's, else None."""
    from amoebasearch.profile.blocks import Point

    quant = table_quant(table)
    if request.export:
        fmt = request.export_format
        export_quant = (request.quant or quant) if fmt == "gguf" else None
        if quant and fmt == "gguf" and export_quant != quant:
            raise UsageError(f"--quant {export_quant}: the table was timed at {quant}; export what it priced")
        report["export"] = str(quality.export(best.shape, request.export, fmt, export_quant))
    gguf = Path(report["export"]) if request.export and request.export_format == "gguf" else None
    if request.verify or (quant and request.metric == "ppl"):
        if request.export and gguf is None:  # measure exactly what was written, reloaded with plain transformers
            from transformers import AutoModelForCausalLM

            subnet = AutoModelForCausalLM.from_pretrained(request.export)
        else:
            subnet = quality.subnet(best.shape)
        if quant and gguf is None:  # the file llama.cpp runs, for --verify and the quality it serves
            from amoebasearch.export_gguf import write_gguf

            gguf = write_gguf(subnet, None, scratch / "subnet.gguf", quant)  # ids in, ids out: no vocabulary needed
        if request.verify:
            point = Point(request.phase, request.batch, request.context)
            measured = verify(table, subnet, best.latency_ms, point, request.device, gguf=gguf if quant else None)
            report["verify"] = {**measured, "within_budget": measured["measured_ms"] <= request.budget_ms}
    return gguf if quant else None


def gguf_perplexity(gguf: Path, held_out: Any, threads: int) -> float:
    """Held-out perplexity of a GGUF file in llama.cpp, on the token chunks the search scored
    (``held_out``: a 2-d tensor of token ids, one chunk per row)."""
    from amoebasearch.llamacpp import Engine, perplexity

    sequences = [row.tolist() for row in held_out]
    engine = Engine(gguf, context=max(len(s) for s in sequences), threads=threads)
    try:
        return perplexity(engine, sequences)
    finally:
        engine.close()
