"""Optuna storages by URL: many `find` workers on many machines share one study through them.

``postgresql://…``, ``mysql://…`` and ``sqlite:///…`` are Optuna RDB storages; a path ending in
``.journal`` or ``.log`` (or ``journal:PATH``) is Optuna's journal file, the default embedded store.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from amoebasearch.errors import UsageError, first_line

RDB_SCHEMES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def open_storage(url: str | Path) -> optuna.storages.BaseStorage:
    text = str(url)
    if text.startswith(RDB_SCHEMES):
        try:
            return optuna.storages.RDBStorage(text)
        except Exception as err:  # driver missing, server down: say which
            raise UsageError(f"cannot open Optuna storage {text}: {first_line(err)}") from None
    if text.startswith("journal:") and not text.removeprefix("journal:").strip():
        raise UsageError("--storage journal: names no file: write journal:PATH, e.g. journal:runs/find/study.journal")
    path = Path(text.removeprefix("journal:"))
    if text.startswith("journal:") or path.suffix in (".journal", ".log"):
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    raise UsageError(
        f"storage {text!r} is not understood: pass postgresql://…, sqlite:///file.db or a .journal file path"
    )
