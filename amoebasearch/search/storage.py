"""Optuna storages by URL: many `find` workers on many machines share one study through them.

``postgresql://…``, ``mysql://…`` and ``sqlite:///…`` are Optuna RDB storages; a path ending in
``.journal`` or ``.log`` (or ``journal:PATH``) is Optuna's journal file, the default embedded store.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna

from amoebasearch.errors import UsageError, first_line

RDB_SCHEMES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def ends_in_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"  # one byte read, however long the journal has grown


def drop_partial_record(path: Path) -> None:
    """Cut a journal's last record if it was left without its newline (a crash or a full disk
    mid-write). Optuna skips such a record when reading but appends the next one right after it,
    gluing the two into a line no later run can read; the cut record was never readable anyway.

    Another worker may be writing a record this very moment, so a missing newline is judged
    again under the lock Optuna's writers hold while appending: only then is it a crash's remnant
    (a crashed writer's lock is taken over after Optuna's grace period, 30 s).
    """
    if not path.is_file() or path.stat().st_size == 0 or ends_in_newline(path):
        return
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        if ends_in_newline(path):
            return  # it was a live worker's record, now complete
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            handle.truncate(keep)
    finally:
        lock.release()
    print(f"note: {path} ended in a cut-short record ({len(data) - keep} bytes); dropped it", file=sys.stderr)


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
        drop_partial_record(path)
        try:  # reads the whole log now, not halfway through a search
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
            storage.get_all_studies()
        except ValueError as err:  # json's decode errors and Optuna's "Invalid log format" both are
            raise UsageError(
                f"Optuna journal {path} is damaged ({first_line(err)}): move it aside to start a new one "
                "(its cached qualities are then measured again)"
            ) from None
        return storage
    raise UsageError(
        f"storage {text!r} is not understood: pass postgresql://…, sqlite:///file.db or a .journal file path"
    )
