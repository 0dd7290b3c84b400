"""Latency tables on disk: a CSV of rows (pandas) plus a JSON sidecar saying what was measured.

One row per building block x width option x phase x batch x context. ``block`` is one of
``embedding``, ``decoder`` (with its ``heads``/``ffn`` width), ``head`` (final norm + LM head),
``overhead`` (the fixed per-call glue) or, in tables of engines timed on whole models, ``tail``
(a width's own share of what one call costs beside its blocks, see `profile.engine`); embedding,
head and overhead rows carry heads = ffn = 0. ``source`` is
``measured`` or ``estimated``. The sidecar holds the device fingerprint, library versions, the
model signature, runtime, dtype, the grid and harness settings, and the predictor calibration.

The CSV is rewritten atomically after every finished group of rows, so a killed run leaves a
valid table of everything finished so far and ``--resume`` measures only what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from amoebasearch import atomic
from amoebasearch.errors import UsageError, first_line
from amoebasearch.shape import ModelDims
from amoebasearch.userfiles import read_json, require_file

COLUMNS = (
    "block",
    "heads",
    "ffn",
    "phase",
    "batch",
    "context",
    "median_us",
    "p10_us",
    "p90_us",
    "repeats",
    "noisy",
    "source",
)
KEY = ("block", "heads", "ffn", "phase", "batch", "context")
FORMAT = 1


def table_name(model: str, device_slug: str, runtime: str, dtype: str, threads: int | None = None) -> str:
    """``<model>-<device>[-t<threads>]-<runtime>-<dtype>``: a CPU table names the thread count it
    was timed at (latency on a CPU depends on it as much as on the chip); a GPU table does not."""
    thread_part = f"-t{threads}" if threads else ""
    return f"{model}-{device_slug}{thread_part}-{runtime}-{dtype}"


def sidecar_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".json")


def validation_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".validation.csv")


# what `find --margin auto` reads from a validation file (`profile --resume` needs all its columns)
VALIDATION_NEEDS = ("split", "phase", "batch", "context", "predicted_us", "measured_us")


def read_validation(path: Path, needs: Iterable[str] = VALIDATION_NEEDS) -> pd.DataFrame:
    """A table's ``.validation.csv``, or a one-line error naming what is wrong with it (an
    empty, truncated or foreign file beside a table must not end `find` in a traceback)."""
    fix = "delete it and validate again with `amoebasearch profile --validate N --resume`"
    try:
        frame = pd.read_csv(path)
    except ValueError as err:  # pandas' parser and empty-data errors, undecodable bytes
        raise UsageError(f"validation file {path} is not a CSV ({first_line(err)}): {fix}") from None
    missing = [column for column in needs if column not in frame.columns]
    if missing:
        raise UsageError(f"validation file {path} lacks column(s) {', '.join(missing)}: {fix}")
    for column in ("batch", "context", "predicted_us", "measured_us"):
        if pd.to_numeric(frame[column], errors="coerce").isna().any():
            raise UsageError(f"validation file {path}: column {column} holds non-numbers: {fix}")
    return frame


def table_row(
    block: str,
    heads: int,
    ffn: int,
    point: Any,
    median_us: float,
    p10_us: float,
    p90_us: float,
    repeats: int,
    noisy: bool,
    source: str,
) -> dict[str, Any]:
    """One row in the table's layout (``point`` has phase, batch, context); times rounded to ns."""
    return {
        "block": block,
        "heads": heads,
        "ffn": ffn,
        "phase": point.phase,
        "batch": point.batch,
        "context": point.context,
        "median_us": round(median_us, 3),
        "p10_us": round(p10_us, 3),
        "p90_us": round(p90_us, 3),
        "repeats": repeats,
        "noisy": bool(noisy),
        "source": source,
    }


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in KEY)


@dataclass
class LatencyTable:
    """Rows and metadata of one table; ``path`` is the CSV (None while in memory only)."""

    rows: pd.DataFrame
    meta: dict[str, Any]
    path: Path | None = None
    _lookup: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, meta: dict[str, Any], path: Path | None = None) -> LatencyTable:
        return cls(pd.DataFrame(columns=list(COLUMNS)), meta, path)

    @property
    def signature(self) -> str:
        return self.meta["model"]["signature"]

    @property
    def estimated(self) -> bool:
        return self.meta.get("source") == "estimated"

    @property
    def threads(self) -> int | None:
        """CPU threads the table was timed at (None for a GPU or spec-sheet table)."""
        device = self.meta.get("device", {})
        if device.get("kind") != "cpu":
            return None
        threads = self.meta.get("settings", {}).get("threads") or device.get("threads_used")
        return int(threads) if threads else None

    def warning(self) -> str | None:
        """What `find` (or any user of the table) should print before trusting it, if anything."""
        if self.estimated:
            device = self.meta.get("device", {}).get("name", "this device")
            return (
                f"warning: {self.path or 'the latency table'} is ESTIMATED from {device}'s spec sheet "
                "(roofline), not measured; run `amoebasearch profile` on the real device to replace it"
            )
        return None

    def done(self) -> set[tuple]:
        return {row_key(r) for r in self.rows.to_dict("records")}

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Add finished rows and (if the table has a path) rewrite CSV + sidecar atomically."""
        new = pd.DataFrame(rows, columns=list(COLUMNS))
        self.rows = new if self.rows.empty else pd.concat([self.rows, new], ignore_index=True)
        self._lookup = None
        if self.path is not None:
            self.save(self.path)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.path = path
        atomic.write_json(sidecar_path(path), self.meta)
        atomic.write_text(path, self.rows.to_csv(index=False))
        return path

    def check_model(self, signature: str, name: str = "this model") -> LatencyTable:
        """Refuse to price shapes of a model the table was not measured for."""
        if signature != self.signature:
            where = f"{self.path}" if self.path else "the table"
            raise UsageError(
                f"{where} was profiled for {self.meta['model'].get('name')} (signature {self.signature}), "
                f"not {name} (signature {signature}): run `amoebasearch profile` for this model"
            )
        return self


def folder_label(folder: Path) -> str:
    """``folder/`` for messages, saying so when it does not exist (a mistyped --profiles, or a run
    from another directory than the one holding profiles/)."""
    return f"{folder}/" if folder.is_dir() else f"{folder}/ (no such folder)"


def candidate_tables(folder: Path, signature: str) -> list[Path]:
    """Table CSVs in ``folder`` whose sidecar names this model signature (other files are skipped)."""
    found = []
    for sidecar in sorted(folder.glob("*.json")):
        csv = sidecar.with_suffix(".csv")
        if not csv.is_file():
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if (
            isinstance(meta, dict)
            and isinstance(meta.get("model"), dict)
            and meta["model"].get("signature") == signature
        ):
            found.append(csv)
    return found


# what every reader of a sidecar relies on: `check_model`, `find`'s table choice, the runtimes
REQUIRED_META = {"model": dict, "device": dict, "runtime": dict, "settings": dict}
NUMERIC_COLUMNS = ("heads", "ffn", "batch", "context", "median_us", "p10_us", "p90_us")


def check_meta(meta: Any, side: Path) -> None:
    """Refuse a sidecar that is not this format's JSON object, in one line naming what is wrong."""
    fix = "re-run `amoebasearch profile` for this table"
    if not isinstance(meta, dict):
        raise UsageError(f"{side} holds a JSON {type(meta).__name__}, not a table sidecar object: {fix}")
    if meta.get("format") != FORMAT:
        raise UsageError(f"{side} has table format {meta.get('format')}, this amoebasearch reads {FORMAT}: {fix}")
    wrong = [key for key, kind in REQUIRED_META.items() if not isinstance(meta.get(key), kind)]
    wrong += [f"model.{key}" for key in ("name", "signature") if "model" not in wrong and key not in meta["model"]]
    if wrong:
        raise UsageError(f"{side} lacks {', '.join(wrong)}: {fix}")
    check_meta_values(meta, side, fix)


def whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_meta_values(meta: dict, side: Path, fix: str) -> None:
    """The sidecar values the predictor computes with: the model's dims (the shape space a table
    prices), the FFN step, and every calibration's scale and offset."""
    names = {f.name for f in fields(ModelDims)}
    dims = meta["model"].get("dims")
    if not isinstance(dims, dict) or set(dims) != names or not all(whole(v) for v in dims.values()):
        raise UsageError(f"{side}: model.dims must give {', '.join(sorted(names))} as positive integers: {fix}")
    if not whole(meta["settings"].get("ffn_step", 64)):
        raise UsageError(f"{side}: settings.ffn_step must be a positive integer: {fix}")
    calibration = meta.get("calibration", {})
    bad = [
        key
        for key, fit in (calibration.items() if isinstance(calibration, dict) else [("calibration", None)])
        if not isinstance(fit, dict) or not all(number(fit.get(k, 0.0)) for k in ("scale", "offset_us"))
    ]
    if bad:
        raise UsageError(f"{side}: calibration {', '.join(bad)} must hold a numeric scale and offset_us: {fix}")


def load_table(path: str | Path, signature: str | None = None, model_name: str = "this model") -> LatencyTable:
    """Read a table and its sidecar; with ``signature``, refuse a table of another model."""
    path = Path(path)
    require_file(path, "latency table", "create it with `amoebasearch profile`")
    if path.suffix == ".json":
        raise UsageError(f"{path} is a table's sidecar: pass the table itself, {path.with_suffix('.csv')}")
    side = sidecar_path(path)
    if not side.is_file():
        raise UsageError(f"latency table {path} has no sidecar {side.name}: re-run `amoebasearch profile`")
    meta = read_json(side, "latency table sidecar", "re-run `amoebasearch profile`")
    check_meta(meta, side)
    try:
        rows = pd.read_csv(path) if path.stat().st_size else pd.DataFrame(columns=list(COLUMNS))
    except (ValueError, pd.errors.ParserError) as err:
        raise UsageError(f"{path} is not a CSV table ({first_line(err)}): re-run `amoebasearch profile`") from None
    missing = set(COLUMNS) - set(rows.columns)
    if missing:
        raise UsageError(f"{path} lacks column(s) {sorted(missing)}: it is not an amoebasearch latency table")
    for column in NUMERIC_COLUMNS:
        if not rows.empty and pd.to_numeric(rows[column], errors="coerce").isna().any():
            raise UsageError(f"{path}: column {column} holds non-numbers: re-run `amoebasearch profile` for this table")
    # overhead and tail rows are fitted remainders and may be negative; a decoder block cannot take no time,
    # and the embedding and head take none only where an engine-level table folds them into the overhead
    medians = pd.to_numeric(rows["median_us"]) if not rows.empty else pd.Series(dtype=float)
    if (medians[rows.block == "decoder"] <= 0).any() or (medians[rows.block.isin(("embedding", "head"))] < 0).any():
        raise UsageError(f"{path}: a block row has a latency <= 0: re-run `amoebasearch profile` for this table")
    table = LatencyTable(rows[list(COLUMNS)], meta, path)
    if signature is not None:
        table.check_model(signature, model_name)
    return table
