"""Reading the text and JSON files users name on the command line, with one-line errors.

Every such file can be the wrong thing (a binary, a truncated write, a file of another tool);
the reader names the file, what is wrong with it and the fix, instead of a decoder's traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amoebasearch.errors import UsageError


def require_file(path: Path, what: str, fix: str) -> None:
    """Refuse a missing ``path``, or a folder where a file is expected (an easy slip: the folder a
    command wrote instead of the file in it), saying which; ``fix`` says how to make the file."""
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file: pass the file itself")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist: {fix}")


def read_text(path: Path, what: str, fix: str) -> str:
    """``path`` as UTF-8 text; ``what`` names the file's role ("plan file"), ``fix`` the remedy."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {err.start}): {fix}") from None


def read_json(path: Path, what: str, fix: str) -> Any:
    """``path`` parsed as JSON, or a one-line error naming the file, the fault and ``fix``."""
    text = read_text(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} {path} is not valid JSON ({json_fault(err)}): {fix}") from None


def read_json_object(path: Path, what: str, fix: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """An existing JSON file holding an object with (at least) ``keys``, or a one-line error: for
    the files a command wrote and reads back, which a hand edit or a truncated copy can break."""
    require_file(path, what, fix)
    data = read_json(path, what, fix)
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} holds a JSON {type(data).__name__}, not an object: {fix}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise UsageError(f"{what} {path} lacks {', '.join(missing)}: {fix}")
    return data


def json_fault(err: json.JSONDecodeError) -> str:
    """Where the decoder stopped, worded once ("Expecting value, line 3 column 5")."""
    return f"{err.msg}, line {err.lineno} column {err.colno}"


def check_output_path(path: Path, flag: str, folder: bool = False) -> None:
    """Refuse an output path under an existing file (or, for a ``folder``, a file itself; for a
    file, a folder itself) before hours of work, not when their results are written."""
    if not folder and path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: pass a file path such as {path / 'out.json'}")
    for parent in [path, *path.parents] if folder else path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {path}: {parent} is a file, so nothing can be written under it")
            return
