"""Answer normalisation shared by the exact_match and token_f1 modules (SQuAD v1.1 rules, Unicode punctuation)."""

from __future__ import annotations

import re
import string
import unicodedata

ARTICLES = re.compile(r"\b(a|an|the)\b")
ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(char: str) -> bool:
    return char in ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (ASCII and Unicode), drop the articles a/an/the, collapse whitespace.

    The order is SQuAD's: punctuation goes before articles, so ``"The-cat"`` becomes ``"thecat"``.
    """
    text = "".join(char for char in text.lower() if not _is_punctuation(char))
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Whitespace tokens of the normalised answer."""
    return normalize_answer(text).split()
