"""Optuna storages by URL: many `find` workers on many machines share one study through them.

``postgresql://…``, ``mysql://…`` and ``sqlite:///…`` are Optuna RDB storages; a path ending in
``.journal`` or ``.log`` (or ``journal:PATH``) is Optuna's journal file, the default embedded store.

In an RDB storage each running trial's worker stamps a heartbeat; a trial whose heartbeat stops
(its worker was killed or lost its machine) is failed when any worker next starts a trial, and
queued again with the same parameters for whichever worker asks next.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from pathlib import Path

import optuna

from amoebasearch.errors import UsageError, first_line

RDB_SCHEMES = ("sqlite:", "postgresql", "postgres:", "mysql", "oracle", "mssql")
# SQLAlchemy before 2.1 reads a PostgreSQL URL without a driver as psycopg2's; the driver we ship is psycopg 3
DEFAULT_DRIVER = {"postgresql://": "postgresql+psycopg://", "postgres://": "postgresql+psycopg://"}
HEARTBEAT_S = 10  # a worker stamps its running trial this often
GRACE_HEARTBEATS = 3  # a trial unstamped for this many heartbeats is a dead worker's: failed and queued again
MAX_RETRY = 2  # a dead worker's trial runs again at most twice: a shape that kills its worker stays failed
OPEN_ATTEMPTS = 5  # workers that open a new database at once race to create its tables: the losers retry


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


def driver_url(url: str) -> str:
    """``url`` with psycopg named as the driver of a plain ``postgresql://`` URL; others as given."""
    for plain, explicit in DEFAULT_DRIVER.items():
        if url.startswith(plain):
            return explicit + url.removeprefix(plain)
    return url


def shown_url(url: str) -> str:
    """``url`` for a message or a report: a database URL's password masked."""
    if not url.startswith(RDB_SCHEMES):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: its error says so
        return url


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a dead worker's trial (queued again with its parameters, attributes and
    ``failed_trial``/``retry_history``), minus the constraints it reported: the rerun reports them
    again, and Optuna warns of, and ignores, a constraint set twice."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith("constraints:")}
        super().__call__(study, trial)


def open_rdb(url: str, heartbeat_s: int = HEARTBEAT_S, max_retry: int = MAX_RETRY) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage whose running trials beat every ``heartbeat_s`` seconds; a trial
    silent for `GRACE_HEARTBEATS` beats is failed and run again, up to ``max_retry`` times."""
    from sqlalchemy import exc

    if heartbeat_s <= 0:
        raise ValueError(f"heartbeat_s must be a positive number of seconds, not {heartbeat_s}")
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    driver_url(url),
                    heartbeat_interval=heartbeat_s,
                    grace_period=GRACE_HEARTBEATS * heartbeat_s,
                    heartbeat_stale_trial_callback=RetryStaleTrial(max_retry),
                )
        except ImportError as err:  # Optuna's own message names no driver
            missing = first_line(err.__cause__ or err)
            raise UsageError(
                f"cannot open Optuna storage {shown_url(url)}: its database driver is missing ({missing}): "
                "install that driver, or for PostgreSQL write postgresql://… (psycopg, which amoebasearch installs)"
            ) from None
        except Exception as err:  # server down, bad URL or credentials: say which
            # Opening writes only Optuna's tables and version row: a clash there is another worker
            # creating them at the same moment, and they are there on the next try.
            racing = isinstance(err, exc.IntegrityError) or (
                isinstance(err, exc.ProgrammingError) and "already exists" in str(err)
            )
            if racing and attempt < OPEN_ATTEMPTS:
                time.sleep(0.25 * attempt)
                attempt += 1
                continue
            reason = first_line(getattr(err, "orig", None) or err)  # the driver's words, without SQLAlchemy's wrapper
            fix = "start the server or correct the URL" if isinstance(err, exc.OperationalError) else "check the URL"
            raise UsageError(f"cannot open Optuna storage {shown_url(url)}: {reason}: {fix}") from None


def open_storage(
    url: str | Path, *, heartbeat_s: int = HEARTBEAT_S, max_retry: int = MAX_RETRY
) -> optuna.storages.BaseStorage:
    """The Optuna storage ``url`` names; ``heartbeat_s`` and ``max_retry`` apply to RDB storages
    (`open_rdb`)."""
    text = str(url)
    if text.startswith(RDB_SCHEMES):
        return open_rdb(text, heartbeat_s, max_retry)
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
