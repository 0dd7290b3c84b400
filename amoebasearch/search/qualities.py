"""The qualities CSV: one row per evaluated shape (``selection, depth, heads, ffn, layers, quality,
metric, model, signature``), the plain file `find` writes from its quality cache and `fronts` prices
on every latency table of the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from amoebasearch import atomic
from amoebasearch.errors import UsageError
from amoebasearch.quality import HIGHER_IS_BETTER
from amoebasearch.search.cache import shape_from_key
from amoebasearch.shape import Shape
from amoebasearch.userfiles import require_file

if TYPE_CHECKING:
    from amoebasearch.search.find import FindRequest, QualityIdentity

COLUMNS = ("selection", "depth", "heads", "ffn", "layers", "quality", "metric", "model", "signature")


def qualities_frame(
    records: Iterable[tuple[Shape, float]], selection: str, metric: str, model: str, signature: str
) -> pd.DataFrame:
    """Rows in the qualities CSV layout for ``(shape, quality)`` pairs of one selection."""
    rows = [
        {
            "selection": selection,
            "depth": shape.depth,
            "heads": shape.heads,
            "ffn": shape.ffn,
            "layers": " ".join(str(i) for i in shape.layers),
            "quality": float(quality),
            "metric": metric,
            "model": model,
            "signature": signature,
        }
        for shape, quality in records
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_qualities(frame: pd.DataFrame, path: str | Path) -> Path:
    return atomic.write_text(path, frame.to_csv(index=False))


def read_qualities(path: str | Path) -> pd.DataFrame:
    """Load a qualities CSV; a missing file, missing columns or mixed models are one-line errors."""
    path = Path(path)
    require_file(path, "qualities file", "`amoebasearch find` writes one (qualities.csv in its --out)")
    try:
        # signatures are hex digests: "0123..." or "1e50..." must not turn into numbers
        frame = pd.read_csv(path, dtype={"layers": str, "selection": str, "signature": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"qualities file {path} is not a readable CSV ({err})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(f"qualities file {path} lacks column(s) {missing}: expected {', '.join(COLUMNS)}")
    if frame.empty:
        raise UsageError(f"qualities file {path} has no rows: evaluate some shapes first (`amoebasearch find`)")
    for column in ("signature", "metric"):
        if frame[column].nunique() > 1:
            raise UsageError(f"qualities file {path} mixes several {column}s: keep one model and one metric per file")
    if frame["metric"].iloc[0] not in HIGHER_IS_BETTER:
        raise UsageError(f"qualities file {path} has unknown metric {frame['metric'].iloc[0]!r}")
    bad = [c for c in ("quality", "heads", "ffn") if pd.to_numeric(frame[c], errors="coerce").isna().any()]
    if bad or not frame["layers"].astype(str).str.fullmatch(r"\d+( \d+)*").all():
        column = bad[0] if bad else "layers"
        raise UsageError(
            f"qualities file {path}: column {column} holds values that are not numbers "
            "(layers: layer indices separated by spaces): write it with `amoebasearch find`"
        )
    frame.attrs["path"] = str(path)  # so a shape the priced table's model cannot have names its file
    return frame


def shape_of(row: pd.Series) -> Shape:
    layers = tuple(int(i) for i in str(row["layers"]).split())
    return Shape(layers, int(row["heads"]), int(row["ffn"]))


def known_qualities(request: FindRequest, identity: QualityIdentity | None = None) -> pd.DataFrame:
    """Every shape the request's quality cache holds, as qualities rows (what `plot fronts` and the
    notebooks price on every device); ``identity``: the request's `quality_identity`, when the caller
    has it already. `find` is imported here, so reading the file stays light."""
    from amoebasearch.search.find import open_quality_cache, quality_identity

    identity = identity or quality_identity(request)
    settings = identity.quality.eval_settings
    _, cache = open_quality_cache(request, identity.source, settings)
    plan = identity.plan
    selection = f"{plan.depth_method}+{plan.width_method}" + ("+smol" if request.supernet else "")
    records = [(shape_from_key(key), quality) for key, quality in cache.items()]
    return qualities_frame(records, selection, settings["metric"], identity.name, identity.signature)
