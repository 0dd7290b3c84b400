"""Atomic file writes (temp file + rename), so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amoebasearch.errors import UsageError


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: readers see the old file or the new one, never half."""
    return write_bytes(path, text.encode())


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (a GGUF writer, a
    quantiser); renamed onto ``path`` when the block ends cleanly, deleted when it does not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=1) + "\n")


def check_replaceable(path: str | Path) -> Path:
    """``path`` resolved, if `directory` may replace it: not the working directory, nor one holding it."""
    path = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise UsageError(f"{path} is the current directory or holds it: write into a new subdirectory instead")
    return path


def recover_directory(path: Path) -> None:
    """Put back a directory that `directory` had moved aside when the process died before the
    new one took its place (two renames apart): without this, a resumed run would find no
    checkpoint and start over although the last one is intact beside it."""
    if path.exists():
        return
    aside = sorted(path.parent.glob(f".{path.name}-old-*/{path.name}"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.replace(aside[-1], path)
        shutil.rmtree(aside[-1].parent, ignore_errors=True)


@contextlib.contextmanager
def directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` in one rename.

    An existing ``path`` is moved aside before the rename and deleted only after it, so a failed
    rename leaves it as it was. ``path`` may not be the working directory or hold it (``--out .``):
    replacing it would delete what the user is standing in.
    """
    path = check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old / path.name, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
