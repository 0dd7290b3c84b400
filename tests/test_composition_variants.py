"""benchmarks/composition_variants.py: smoothing keeps rows that are already smooth, and only
true repeats (same subnets and compositions, new measurements) are paired."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from composition_variants import SMOOTHERS, repeat_rows, smoothed  # noqa: E402


def test_smoothing_leaves_rows_its_design_describes_unchanged():
    blocks = {(h, f): 10.0 + 2.0 * h + 0.01 * f + 0.001 * h * f for h in (3, 6, 9) for f in range(64, 1600, 64)}
    for name in ("bilinear", "heads-linear"):
        out = smoothed(blocks, SMOOTHERS[name])
        assert np.allclose([out[w] for w in blocks], list(blocks.values()))
    noisy = {w: us * (1.05 if w == (3, 640) else 1.0) for w, us in blocks.items()}
    assert smoothed(noisy, SMOOTHERS["bilinear"])[(3, 640)] < noisy[(3, 640)]


def validation(path: Path, measured: np.ndarray) -> Path:
    subnets = np.arange(len(measured))
    frame = pd.DataFrame(
        {"subnet": subnets, "phase": "decode", "batch": 1, "context": 128, "composed_us": 100.0 + subnets}
    )
    frame["measured_us"] = measured
    frame["error_pct"] = (frame["composed_us"] - measured) / measured * 100
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def test_repeats_pair_new_measurements_of_the_same_subnets_only(tmp_path):
    rng = np.random.default_rng(0)
    bias = rng.normal(0, 3, 24)  # what each subnet's composition misses, in both runs
    first = validation(tmp_path / "a" / "t.validation.csv", (100.0 + np.arange(24)) * (1 + bias / 100))
    second = validation(tmp_path / "b" / "t.validation.csv", (100.0 + np.arange(24)) * (1.02 + bias / 100))
    copy = validation(tmp_path / "c" / "t.validation.csv", pd.read_csv(first)["measured_us"].to_numpy())
    rows = repeat_rows([first, second, copy])
    assert len(rows) == 2  # a-b and b-c, never a with its own copy
    assert (rows["residual_corr"] > 0.99).all()


def test_composed_scores_price_the_group_with_the_given_blocks():
    """Each composition is scored on its own prices (not the validation file's predictions): a
    block table the measurements follow exactly scores 0 % MAPE, one that is off at one width does not."""
    from composition_variants import composed_scores

    widths = [(3, 64), (6, 128), (9, 192)] * 8
    blocks = {(3, 64): 10.0, (6, 128): 20.0, (9, 192): 30.0}
    group = pd.DataFrame(
        {
            "split": ["calibration"] * 6 + ["heldout"] * 18,
            "depth": [1 + i % 5 for i in range(24)],
            "heads": [w[0] for w in widths],
            "ffn": [w[1] for w in widths],
        }
    )
    group["measured_us"] = 50.0 + group["depth"] * [blocks[w] for w in widths]
    group["predicted_us"] = 999.0  # a stale column the scores must ignore
    assert composed_scores(group, 50.0, blocks) == {"within_5pct": 1.0, "within_10pct": 1.0, "mape_pct": 0.0}
    off = composed_scores(group, 50.0, {**blocks, (9, 192): 45.0})
    assert off["mape_pct"] > 1.0 and off["within_5pct"] < 1.0
