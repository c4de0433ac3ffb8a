"""What the project's evaluate modules share: answer normalisation (SQuAD v1.1 rules, Unicode punctuation), their
MetricInfo over one reference string per prediction, and the mean-or-per-example result."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from typing import Any

SQUAD_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing",
    year = "2016",
    url = "https://aclanthology.org/D16-1264",
    pages = "2383--2392",
}
"""
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


def string_pair_info(description: str, citation: str, inputs: str, references: Sequence[str],
                     code: Sequence[str] = ()) -> Any:
    """evaluate.MetricInfo of a metric over ``predictions`` and one ``references`` string each (evaluate and datasets
    are imported here: core.arena.metrics imports this module for ``normalize_answer`` without loading them)."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description, citation=citation, inputs_description=inputs,
        features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        codebase_urls=list(code), reference_urls=list(references),
    )


def mean_or_all(values: list[float], use_aggregator: bool) -> float | list[float]:
    """The mean over examples (0.0 for none), or the per-example values when ``use_aggregator`` is False."""
    if not use_aggregator:
        return values
    return sum(values) / len(values) if values else 0.0
