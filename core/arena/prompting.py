"""Prompt builders for the arena's strategies: pure functions from an example (+ shots or passages) to chat messages.

The fine-tuned strategies reuse the zero-shot and RAG messages, so an adapter sees the same layout it was trained
on (``core.data.build_messages``). Rendering to a string goes through the model's chat template
(``core.data.render_prompt``); ``fit_passages`` drops the lowest-ranked passages until the prompt fits a budget.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from core.data import Example, build_messages
from core.errors import ConfigError, PromptTooLongError

Messages = list[dict[str, str]]
T = TypeVar("T")

RAG_INSTRUCTION = (
    "Answer the question using the numbered passages below. If they do not contain the answer, say so. "
    "Be brief."
)
SHOT_SELECTIONS = ("similar", "fixed", "random")
_LABELS = re.compile(r"categor(?:y|ies)\s*:\s*([^.\n]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk as the prompt shows it."""

    text: str
    source: str
    score: float
    title: str = ""
    headings: tuple[str, ...] = ()


def query_example(query: str, *, task: str | None = None, system: str | None = None) -> Example:
    """A free-text arena query as an Example (the whole query is the user turn)."""
    if not query or not query.strip():
        raise ConfigError("query: is empty; type a question")
    return Example(instruction=query.strip(), task=task, system=system, uid="query")


def zero_shot_messages(example: Example, system: str | None = None) -> Messages:
    """The instruction and input only (the layout training uses)."""
    return build_messages(example, system)


def few_shot_messages(example: Example, shots: Sequence[Example], system: str | None = None) -> Messages:
    """Worked examples as earlier user/assistant turns, then the query."""
    messages: Messages = []
    system = example.system or system
    if system:
        messages.append({"role": "system", "content": system})
    for shot in shots:
        if shot.output is None:
            raise ConfigError(f"few-shot example {shot.uid or shot.instruction[:40]!r} has no answer")
        messages += [{"role": "user", "content": shot.user_text}, {"role": "assistant", "content": shot.output}]
    rest = build_messages(example)
    return messages + (rest[1:] if rest and rest[0]["role"] == "system" else rest)


def format_passages(passages: Sequence[Passage]) -> str:
    """``[1] (source: file.md) text`` blocks separated by blank lines."""
    return "\n\n".join(f"[{number}] (source: {passage.source.rsplit('/', 1)[-1]}) {' '.join(passage.text.split())}"
                       for number, passage in enumerate(passages, start=1))


def rag_messages(example: Example, passages: Sequence[Passage], system: str | None = None) -> Messages:
    """The query with the retrieved passages in front of it in the user turn."""
    if not passages:
        return zero_shot_messages(example, system)
    context = f"{RAG_INSTRUCTION}\n\nPassages:\n{format_passages(passages)}\n\nQuestion: {example.user_text}"
    messages = build_messages(example, system)
    messages[-1] = {"role": "user", "content": context}
    return messages


def fit_passages(build: Callable[[Sequence[T]], int], passages: Sequence[T], budget: int) -> list[T]:
    """The longest prefix of ``passages`` (best first) whose prompt, ``build(kept) -> tokens``, fits ``budget``.

    Passages (or any context items, e.g. few-shot examples) are dropped from the lowest-ranked end.
    PromptTooLongError if even no passage does not fit.
    """
    kept = list(passages)
    while True:
        tokens = build(kept)
        if tokens <= budget:
            return kept
        if not kept:
            raise PromptTooLongError(f"the query is {tokens} tokens, over the {budget} tokens the model's context "
                                     "window leaves after the answer; shorten it or lower max_new_tokens")
        kept.pop()


# --------------------------------------------------------------------------------------------------------------------
# Choosing few-shot examples
# --------------------------------------------------------------------------------------------------------------------


def select_shots(
    pool: Sequence[Example],
    example: Example,
    k: int,
    *,
    selection: str = "similar",
    seed: int = 0,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    pool_vectors: np.ndarray | None = None,
) -> list[Example]:
    """``k`` examples with answers from ``pool``, never the example itself, preferring its task when it has one.

    ``fixed``: the first k; ``random``: a seeded draw (the same for every query with the same seed);
    ``similar``: the nearest by embedding cosine (``embed`` texts -> unit vectors; ``pool_vectors`` caches the
    pool's, one row per pool example).
    """
    if selection not in SHOT_SELECTIONS:
        raise ConfigError(f"few_shot_selection: must be one of {', '.join(SHOT_SELECTIONS)}, got {selection!r}")
    if k <= 0:
        return []
    candidates = _candidates(pool, example)
    if not candidates:
        return []
    if selection == "fixed" or (selection == "random" and len(candidates) <= k):
        chosen = candidates[:k]
    elif selection == "random":
        chosen = sorted(random.Random(seed).sample(candidates, k))
    else:
        if embed is None:
            raise ConfigError("few_shot_selection: 'similar' needs an embedding model")
        vectors = pool_vectors if pool_vectors is not None else embed([pool[i].user_text for i in range(len(pool))])
        query = embed([example.user_text])[0]  # (d,)
        scores = vectors[candidates] @ query  # (len(candidates),)
        order = np.argsort(-scores, kind="stable")[:k]
        chosen = [candidates[i] for i in order][::-1]  # most similar last, right before the query
    return [pool[index] for index in chosen]


@dataclass(frozen=True)
class Neighbour:
    """The pool example most like a query. ``score``: cosine in [-1, 1] (word counts: [0, 1]); ``by``: how it was
    measured, ``"embedding"`` or ``"word overlap"``."""

    example: Example
    score: float
    by: str


def nearest_example(
    pool: Sequence[Example],
    example: Example,
    *,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    pool_vectors: np.ndarray | None = None,
) -> Neighbour | None:
    """The most similar example with an answer from ``pool`` (never the example itself, its task first, the earliest
    on ties), by embedding cosine when ``embed`` is given (``pool_vectors``: the pool's unit vectors, (n, d), as
    ``select_shots`` takes them), else by the cosine of word counts. None when the pool has no candidate."""
    candidates = _candidates(pool, example)
    if not candidates:
        return None
    if embed is not None:
        vectors = pool_vectors if pool_vectors is not None else embed([pool[i].user_text for i in range(len(pool))])
        scores = vectors[candidates] @ embed([example.user_text])[0]  # (len(candidates),)
        by = "embedding"
    else:
        query = _word_counts(example.user_text)
        scores = np.array([_cosine(query, _word_counts(pool[index].user_text)) for index in candidates])
        by = "word overlap"
    best = int(np.argmax(scores))  # the first of equal scores
    return Neighbour(pool[candidates[best]], float(scores[best]), by)


def _word_counts(text: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", text.lower()))


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[word] for word, count in a.items())
    norms = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norms if norms else 0.0


def _candidates(pool: Sequence[Example], example: Example) -> list[int]:
    """Indices of the pool examples with answers, never ``example`` itself; only those of its task when it has one
    and the pool has any."""
    candidates = [index for index, shot in enumerate(pool)
                  if shot.output is not None and not _same_example(shot, example)]
    if example.task:
        same_task = [index for index in candidates if pool[index].task == example.task]
        candidates = same_task or candidates
    return candidates


def _same_example(a: Example, b: Example) -> bool:
    return (bool(a.uid) and a.uid == b.uid) or (a.instruction == b.instruction and a.input == b.input)


def label_set(example: Example, known: Sequence[str] | None = None) -> list[str] | None:
    """Labels for a classification example: ``known`` (e.g. every label of its test set) or the ones its
    instruction lists after ``category:``."""
    if known:
        return list(known)
    match = _LABELS.search(example.instruction)
    if not match:
        return None
    labels = [label.strip(" .'\"") for label in re.split(r",|\bor\b", match.group(1))]
    return [label for label in labels if label] or None
