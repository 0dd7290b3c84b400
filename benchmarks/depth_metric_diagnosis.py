"""Which calibration metric and size rank layer removals the way unseen text does? (issue #4)

For every single-layer removal of SmolLM2-135M (and a few 2- and 3-layer sets), the per-chunk
negative log-likelihood and KL(full model || subnet) on a *pool* of calibration-like chunks, and
the perplexity on a *validation* set. Calibration sets of 1,024 .. 8,192 tokens are disjoint
draws from the pool; each is scored by how well its ranking of the removal sets matches the
validation perplexity (Spearman over all single layers and over the 10 best, whether its argmin
is the validation argmin, and the validation perplexity lost by trusting it: "regret").

Pool and validation are the *last* 64 chunks of the seeded chunk permutation that
`calibration_split` uses, while `depth_selection.py` takes its calibration and held-out chunks
from the front of it: this diagnosis never sees the benchmark's held-out text.

Writes benchmarks/results/depth_metric_diagnosis{,_chunks}.csv and .json (machine, settings).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fingerprint import machine  # noqa: E402

from amoebasearch.data import chunk_tokens, read_documents, token_stream  # noqa: E402
from amoebasearch.models import load  # noqa: E402
from amoebasearch.plan.layerwise import LayerRunner  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PAIR_LAYERS = (12, 13, 14, 16, 17)  # the layers the DP and baselines remove first (depth_selection.csv)


def removal_sets(num_layers: int) -> list[tuple[int, ...]]:
    singles = [(i,) for i in range(num_layers)]
    return singles + list(itertools.combinations(PAIR_LAYERS, 2)) + list(itertools.combinations(PAIR_LAYERS, 3))


@torch.no_grad()
def chunk_losses(model, chunks: torch.Tensor, sets, with_kl: bool, batch_size: int) -> pd.DataFrame:
    """Per removal set and chunk: summed NLL and (optionally) summed KL(full || subnet)."""
    runner = LayerRunner(model, chunks, batch_size)
    state = runner.initial_state()
    full_states = [state]
    for layer in range(runner.num_layers):
        state = runner.extend([state], layer)[0]
        full_states.append(state)
    targets = chunks[:, 1:]
    reference = None
    if with_kl:  # full-model log-probabilities, float16 to halve memory
        reference = torch.cat(
            [
                F.log_softmax(runner.logits(full_states[-1][rows])[:, :-1].float(), -1).half()
                for rows in runner._batches(len(chunks))
            ]
        )
    rows_out = []
    for removed in sets:
        first = min(removed)
        kept = [i for i in range(first, runner.num_layers) if i not in removed]
        for rows in runner._batches(len(chunks)):
            hidden = runner.run_layers(full_states[first][rows], kept)
            logp = F.log_softmax(runner.logits(hidden)[:, :-1].float(), -1)
            nll = -logp.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1).sum(1)
            kl = None
            if reference is not None:
                ref = reference[rows].float()
                kl = (ref.exp() * (ref - logp)).sum(dim=(1, 2))
            for j, chunk in enumerate(range(rows.start, rows.stop)):
                rows_out.append(
                    {
                        "removed": " ".join(map(str, removed)),
                        "size": len(removed),
                        "chunk": chunk,
                        "nll": float(nll[j]),
                        "kl": float(kl[j]) if kl is not None else math.nan,
                        "tokens": targets.shape[1],
                    }
                )
    return pd.DataFrame(rows_out)


def spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank()))


def analyse(pool: pd.DataFrame, validation: pd.DataFrame, chunks_per_token: int) -> pd.DataFrame:
    """Score every (metric, calibration size, draw) by how it ranks removal sets against validation ppl."""
    truth = validation.groupby("removed").apply(lambda g: math.exp(g.nll.sum() / g.tokens.sum()), include_groups=False)
    sizes = pool.groupby("removed")["size"].first()
    n_chunks = pool.chunk.nunique()
    out = []
    for calib_chunks in (4, 8, 16, 32):
        for draw in range(n_chunks // calib_chunks):
            chosen = pool[pool.chunk // calib_chunks == draw]
            grouped = chosen.groupby("removed")
            values = {
                "perplexity": grouped.apply(lambda g: math.exp(g.nll.sum() / g.tokens.sum()), include_groups=False),
                "kl": grouped.apply(lambda g: g.kl.sum() / g.tokens.sum(), include_groups=False),
            }
            for metric, value in values.items():
                for k in (1, 2, 3):
                    names = sizes.index[sizes == k]
                    calib, real = value[names], truth[names]
                    top = real.nsmallest(10).index
                    pick = calib.idxmin()
                    out.append(
                        {
                            "metric": metric,
                            "calib_tokens": calib_chunks * chunks_per_token,
                            "draw": draw,
                            "removed_count": k,
                            "candidates": len(names),
                            "spearman": spearman(calib, real),
                            "spearman_top10": spearman(calib[top], real[top]),
                            "calib_argmin": pick,
                            "valid_argmin": real.idxmin(),
                            "argmin_match": pick == real.idxmin(),
                            "valid_ppl_of_pick": real[pick],
                            "regret": real[pick] - real.min(),
                        }
                    )
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--pool-chunks", type=int, default=32)
    parser.add_argument("--valid-chunks", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="the permutation seed of calibration_split")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--analyse-only", action="store_true", help="reuse the per-chunk CSV")
    args = parser.parse_args()
    torch.set_num_threads(2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    chunk_csv = RESULTS / "depth_metric_diagnosis_chunks.csv"

    if not args.analyse_only:
        loaded = load()
        chunks = chunk_tokens(token_stream(read_documents(None), loaded.tokenizer), args.seq_len)
        order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(args.seed))
        tail = order[len(order) - args.pool_chunks - args.valid_chunks :]
        pool, valid = chunks[tail[: args.pool_chunks]], chunks[tail[args.pool_chunks :]]
        sets = removal_sets(loaded.dims.num_layers)
        start = time.perf_counter()
        frames = []
        for name, data, with_kl in (("pool", pool, True), ("validation", valid, False)):
            frame = chunk_losses(loaded.model, data, sets, with_kl, args.batch_size)
            frame.insert(0, "split", name)
            frames.append(frame)
            print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        pd.concat(frames).to_csv(chunk_csv, index=False)
        settings = {
            "seq_len": args.seq_len,
            "pool_chunks": args.pool_chunks,
            "valid_chunks": args.valid_chunks,
            "permutation_positions": f"last {args.pool_chunks + args.valid_chunks} of {len(order)}",
            "seed": args.seed,
            "wall_s": round(time.perf_counter() - start, 1),
        }
        (RESULTS / "depth_metric_diagnosis.json").write_text(
            json.dumps({"settings": settings, "machine": machine()}, indent=1) + "\n"
        )

    frame = pd.read_csv(chunk_csv, keep_default_na=False, na_values=[""], dtype={"removed": str})
    result = analyse(frame[frame.split == "pool"], frame[frame.split == "validation"], args.seq_len)
    result.to_csv(RESULTS / "depth_metric_diagnosis.csv", index=False)
    summary = result.groupby(["removed_count", "metric", "calib_tokens"]).agg(
        draws=("draw", "count"),
        spearman=("spearman", "mean"),
        spearman_top10=("spearman_top10", "mean"),
        argmin_match=("argmin_match", "mean"),
        regret=("regret", "mean"),
        worst_regret=("regret", "max"),
    )
    pd.set_option("display.width", 160)
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
