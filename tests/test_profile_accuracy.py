"""The accuracy bar: hand-computed scores, what falls short, and the warning `find` prints."""

import pandas as pd
import pytest
import table_helpers

from amoebasearch.models import load_config
from amoebasearch.profile.accuracy import BAR, AccuracyBar, accuracy, validation_warning
from amoebasearch.profile.table import load_table, validation_path


def held_out(errors_pct, phase="decode"):
    """Held-out rows at decode/1/128 measured 1000 us and predicted ``errors_pct`` off, plus
    calibration rows 50 % off that must not count."""
    rows = [
        {"split": "heldout", "phase": phase, "batch": 1, "context": 128,
         "predicted_us": 1000.0 * (1 + e / 100), "measured_us": 1000.0} for e in errors_pct
    ] + [{"split": "calibration", "phase": phase, "batch": 1, "context": 128,
          "predicted_us": 1500.0, "measured_us": 1000.0}] * 3  # fmt: skip
    return pd.DataFrame(rows)


def test_accuracy_of_a_hand_computed_case():
    stats = accuracy(held_out([1.0, -4.0, 7.0, -20.0]).query("split == 'heldout'"))
    assert stats["n"] == 4 and stats["within_5pct"] == 0.5 and stats["within_10pct"] == 0.75
    assert stats["mape_pct"] == pytest.approx(8.0)


def test_the_bar_names_each_shortfall_and_nothing_when_met():
    met = {"n": 50, "within_5pct": 0.96, "within_10pct": 1.0, "mape_pct": 1.5}
    assert BAR.met(met) and BAR.shortfalls(met) == []
    missed = {"n": 38, "within_5pct": 0.87, "within_10pct": 0.98, "mape_pct": 2.69}
    assert BAR.shortfalls(missed) == [
        "38 held-out subnets (bar 50)",
        "87% within +-5% (bar 95%)",
        "98% within +-10% (bar 99%)",
        "MAPE 2.69% (bar 2%)",
    ]
    assert BAR.shortfalls({**met, "within_5pct": 0.949}) == ["94% within +-5% (bar 95%)"]  # never "95% (bar 95%)"
    assert AccuracyBar(min_subnets=30, within_10pct=0.95, mape_pct=3.0).shortfalls(missed) == [
        "87% within +-5% (bar 95%)"
    ]


def test_a_measured_table_warns_where_its_validation_misses_the_bar(tmp_path, tiny_checkpoint):
    config = load_config(str(tiny_checkpoint))
    path = table_helpers.fake_table(config, "tiny", tmp_path / "tiny-cpu-eager-float32.csv")
    table = load_table(path)
    assert validation_warning(table, "decode", 1, 128) is None  # no validation: find's margin line says so
    held_out([1.0] * 50).to_csv(validation_path(path), index=False)
    assert validation_warning(table, "decode", 1, 128) is None  # 50 subnets, all within 1 %
    assert validation_warning(table, "prefill", 1, 128) is None  # nothing validated at that point
    held_out([1.0] * 40 + [6.0] * 10).to_csv(validation_path(path), index=False)
    warning = validation_warning(table, "decode", 1, 128)
    assert "miss the accuracy bar at decode batch 1 context 128" in warning and "80% within +-5%" in warning
    assert "\n" not in warning
    estimated = table_helpers.fake_table(config, "tiny", tmp_path / "tiny-a5000-roofline.csv", source="estimated")
    assert validation_warning(load_table(estimated), "decode", 1, 128) is None  # it warns as an estimate
