"""Multiple-choice items: read from JSONL files in the common layouts (HellaSwag, ARC, ...), or a
seeded cloze task made from real text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amoebasearch.data.records import load_records
from amoebasearch.errors import UsageError
from amoebasearch.userfiles import require_file

CONTEXT_KEYS = ("context", "question", "ctx")
ENDING_KEYS = ("endings", "choices")
GOLD_KEYS = ("label", "answer", "gold", "answerKey")
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice item: which of ``endings`` continues ``context``; ``gold`` is the right one."""

    context: str
    endings: tuple[str, ...]
    gold: int


def _field(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((record[key] for key in keys if key in record), None)


def _choice_item(record: Any, path: Path, line: int) -> ChoiceItem:
    where = f"{path} item {line}"
    if not isinstance(record, dict):
        raise UsageError(f"{where} is a {type(record).__name__}: each line must be a JSON object")
    context, endings, gold = (_field(record, keys) for keys in (CONTEXT_KEYS, ENDING_KEYS, GOLD_KEYS))
    if not isinstance(context, str) or not context.strip():
        raise UsageError(f"{where} has no context: give it a non-empty string field {' / '.join(CONTEXT_KEYS)}")
    letters: list[str] | None = None
    if isinstance(endings, dict):  # ARC layout: {"text": [...], "label": ["A", "B", ...]}
        letters = [str(label) for label in endings.get("label", [])] or None
        endings = endings.get("text")
    if not isinstance(endings, list) or not all(isinstance(e, str) and e.strip() for e in endings):
        raise UsageError(
            f"{where} has no endings: give {' / '.join(ENDING_KEYS)} as a list of non-empty strings "
            '(or ARC-style {"text": [...], "label": [...]})'
        )
    if len(endings) < 2:
        raise UsageError(f"{where} has {len(endings)} ending: a multiple-choice item needs at least 2")
    given = gold
    if isinstance(gold, str):  # a label of the ARC layout, a letter A.., or an index written as text
        text = gold.strip()
        if letters is not None and text in letters:
            gold = letters.index(text)
        elif text.isdigit():
            gold = int(text)
        elif len(text) == 1 and text in LETTERS:
            gold = LETTERS.index(text)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(endings):
        raise UsageError(
            f"{where} has gold answer {given!r} for {len(endings)} endings: give {' / '.join(GOLD_KEYS)} "
            f"as an index 0..{len(endings) - 1} or a letter {LETTERS[0]}..{LETTERS[len(endings) - 1]}"
        )
    return ChoiceItem(context=context, endings=tuple(endings), gold=gold)


def read_choice_items(path: str | Path) -> list[ChoiceItem]:
    """Multiple-choice items from a JSONL file, one object per line, in the common layouts:
    context ``context``/``question``/``ctx``; endings ``endings``/``choices`` (a list, or ARC's
    ``{"text": [...], "label": [...]}``); gold ``label``/``answer``/``gold`` (index or letter).
    """
    path = Path(path)
    require_file(path, "multiple-choice data", "pass a .jsonl file with one item per line")
    if path.suffix != ".jsonl":
        raise UsageError(f"multiple-choice data {path} is not a .jsonl file: pass a .jsonl file with one item per line")
    records = load_records(path)
    if not records:
        raise UsageError(f"multiple-choice data {path} is empty: give it one JSON item per line")
    return [_choice_item(record, path, line) for line, record in enumerate(records, start=1)]


def cloze_items(
    docs: list[str],
    n_items: int = 200,
    context_words: int = 48,
    ending_words: int = 12,
    choices: int = 4,
    seed: int = 0,
) -> list[ChoiceItem]:
    """A seeded cloze task from real text: the context is ``context_words`` consecutive words of a
    document (about 64 SmolLM2 tokens at the default), the gold ending the true next
    ``ending_words`` words (about 16 tokens), the distractors equally long spans drawn from other
    documents. Every ending is real, fluent text of the same length, so only the fit to the
    context separates them: chance is 1/``choices`` (25 % at the default) and a model scores above
    it only by using the context. Pass held-out documents (`held_out_documents`).
    """
    import random

    words = [doc.split() for doc in docs]
    eligible = [i for i, w in enumerate(words) if len(w) >= context_words + ending_words]
    if len(eligible) < choices:
        raise UsageError(
            f"the cloze task needs {choices} documents of at least {context_words + ending_words} words, "
            f"the data has {len(eligible)}: give more text"
        )
    rng = random.Random(seed)
    order = rng.sample(eligible, len(eligible))
    items = []
    for number in range(n_items):
        doc = order[number % len(order)]
        position = rng.randint(context_words, len(words[doc]) - ending_words)
        context = " ".join(words[doc][position - context_words : position])
        gold_ending = " ".join(words[doc][position : position + ending_words])
        endings = [gold_ending]
        while len(endings) < choices:  # distinct spans of other documents (resample exact repeats)
            other = rng.choice(eligible)
            start = rng.randint(0, len(words[other]) - ending_words)
            ending = " ".join(words[other][start : start + ending_words])
            if other != doc and ending not in endings:
                endings.append(ending)
        gold = rng.randrange(choices)
        endings[0], endings[gold] = endings[gold], endings[0]
        items.append(ChoiceItem(context=context, endings=tuple(endings), gold=gold))
    return items
