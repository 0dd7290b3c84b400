"""The records of a data file: a JSON list (or an object holding one), or JSON Lines, read with
one-line errors that name the file, the line and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amoebasearch.errors import UsageError
from amoebasearch.userfiles import json_fault, read_text, require_file


def load_records(path: Path) -> list[Any]:
    """JSON records from a .json file (a list, or an object holding one list) or a .jsonl file."""
    text = read_text(path, "data file", "pass UTF-8 JSON records")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UsageError(
                        f"{path} line {number} is not valid JSON ({json_fault(err)}): fix that line "
                        "(JSONL holds one JSON object per line)"
                    ) from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({json_fault(err)}): fix it, or pass plain text as .txt") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise UsageError(f"{path} must hold a JSON list of records (or an object with exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise UsageError(f"{path} must hold a JSON list of records")
    return data


def check_nonempty(path: Path) -> None:
    require_file(path, "data file", "pass a .txt, .jsonl or .json file")
    if not path.read_text(encoding="utf-8", errors="replace").strip():
        raise UsageError(f"data file {path} is empty: give it real text")
