"""Real text in, fixed-length token chunks out: calibration and held-out sets (``corpus``),
instruction data (``instructions``) and multiple-choice items (``choices``), over the readers of
data files (``records``) and of tokens (``tokens``).
"""

from amoebasearch.data.choices import ChoiceItem, cloze_items, read_choice_items
from amoebasearch.data.corpus import (
    DEFAULT_CORPUS,
    TextSplit,
    calibration_split,
    default_corpus_path,
    held_out_documents,
    plan_split,
    read_documents,
    split_chunks,
)
from amoebasearch.data.instructions import (
    ALPACA_TEMPLATE,
    IGNORE_INDEX,
    InstructionExample,
    alpaca_example,
    encode_instruction,
    prompt_ids,
    read_instructions,
)
from amoebasearch.data.tokens import chunk_tokens, encode_text, pad_token, token_stream

__all__ = [
    "ALPACA_TEMPLATE",
    "DEFAULT_CORPUS",
    "IGNORE_INDEX",
    "ChoiceItem",
    "InstructionExample",
    "TextSplit",
    "alpaca_example",
    "calibration_split",
    "chunk_tokens",
    "cloze_items",
    "default_corpus_path",
    "encode_instruction",
    "encode_text",
    "held_out_documents",
    "pad_token",
    "plan_split",
    "prompt_ids",
    "read_choice_items",
    "read_documents",
    "read_instructions",
    "split_chunks",
    "token_stream",
]
