"""Cold (GGUF dequantise + convert) vs warm (safetensors cache) load time of the embedded model.

Prints a table and writes benchmarks/results/load_time.csv. Cold runs use a fresh temporary
cache each time; warm runs reuse one filled cache. Figures are medians over repeats.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
from fingerprint import machine

from amoebasearch import models

RESULTS = Path(__file__).resolve().parent / "results"


def timed_load(cache: str) -> float:
    import os

    os.environ["AMOEBASEARCH_CACHE"] = cache
    start = time.perf_counter()
    models.load(models.DEFAULT_MODEL)
    return time.perf_counter() - start


def main(repeats: int = 3) -> None:
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(timed_load(cache))
            warm.extend(timed_load(cache) for _ in range(2))
    rows = [
        {"load": "cold (GGUF conversion)", "median_s": statistics.median(cold), "runs": len(cold)},
        {"load": "warm (safetensors cache)", "median_s": statistics.median(warm), "runs": len(warm)},
    ]
    table = pd.DataFrame(rows)
    table["speedup_vs_cold"] = table["median_s"].iloc[0] / table["median_s"]
    for key, value in machine().items():
        table[key] = value
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "load_time.csv", index=False)
    print(table[["load", "median_s", "runs", "speedup_vs_cold"]].to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
