"""Hand-made latency tables for tiny models: every row is known, so predictions are hand-checkable."""

from amoebasearch.models import model_signature
from amoebasearch.profile.table import LatencyTable
from amoebasearch.shape import ModelDims, ShapeSpace

BLOCK_US = 1000.0  # a full-width decoder block costs 1 ms (x ``scale``); narrower blocks proportionally less
FIXED_US = {"embedding": 100.0, "head": 300.0, "overhead": 100.0}


def fake_table(config, model_name, path, source="measured", phases=("decode",), scale=1.0, device="test cpu"):
    """A complete table (batch 1, context 128) for ``config``: 0.5 ms fixed + depth x block(heads, ffn).

    Prefill rows cost 4x decode rows, so the two phases are told apart in figures.
    """
    dims = ModelDims.from_config(config)
    space = ShapeSpace(dims)
    rows = []
    for phase in phases:
        factor = scale * (4.0 if phase == "prefill" else 1.0)
        phase_rows = [{"block": b, "heads": 0, "ffn": 0, "median_us": factor * us} for b, us in FIXED_US.items()]
        for heads in space.head_options:
            for ffn in space.ffn_options:
                us = factor * BLOCK_US * (0.4 * heads / dims.num_heads + 0.6 * ffn / dims.ffn)
                phase_rows.append({"block": "decoder", "heads": heads, "ffn": ffn, "median_us": us})
        for row in phase_rows:
            row.update(phase=phase, batch=1, context=128, p10_us=row["median_us"], p90_us=row["median_us"])
            row.update(repeats=21, noisy=False, source=source)
        rows += phase_rows
    meta = {
        "format": 1,
        "source": source,
        "model": {
            "name": model_name,
            "signature": model_signature(config),
            "dims": {k: getattr(dims, k) for k in dims.__dataclass_fields__},
        },
        "device": {"kind": "cpu", "name": device},
        "runtime": {"name": "roofline" if source == "estimated" else "eager"},
        "dtype": "float32",
        "settings": {"ffn_step": 64},
    }
    table = LatencyTable.empty(meta)
    table.append(rows)
    return table.save(path)
