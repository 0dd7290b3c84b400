"""Helpers for the plan/data/quality tests: a character-level tokenizer, a tiny checkpoint that ships
it, and a fake LM whose log-probabilities are known in closed form."""

from __future__ import annotations

import string

CHARS = ["<unk>", "</s>"] + list(string.ascii_letters + string.digits + " .,;:'\"!?-\n()")

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered the rightful property of some one or other of "
    "their daughters."
)


def char_tokenizer():
    """A Hugging Face fast tokenizer with one token per character (77 ids, fits the tiny vocab of 97)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(CHARS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def tiny_checkpoint_with_tokenizer(path, layers: int = 4):
    from conftest import tiny_model

    model = tiny_model("llama", num_hidden_layers=layers)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def counting_logits(vocab: int, high: float = 5.0):
    """A fake `LogitsFn` that expects token t+1 after token t (logit ``high``, every other 0): the
    expected token's log-probability is ``high - log(e**high + vocab - 1)``, any other's
    ``-log(e**high + vocab - 1)``."""
    import torch

    def logits_fn(shape, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, vocab)
        logits.scatter_(-1, ((input_ids + 1) % vocab).unsqueeze(-1), high)
        return logits

    return logits_fn
