"""Scoring for the arena and batch evaluation: ROUGE, BLEU, exact match, token F1, contains, similarity, accuracy.

The text metrics are the project's own evaluate.Metric modules in ``core/arena/metrics/modules/``
(``evaluate.load("rouge")`` would fetch a script from the hub, which fails offline). A :class:`Scorer` loads them
lazily, once, on first use, and computes each module once per batch::

    scorer = Scorer()
    scorer.score("the cat sat", "the cat sat down")["rouge1"]        # 0.857...
    rows = scorer.score_batch(predictions, references, tasks)         # one dict per example
    mean, low, high = bootstrap_ci([row["rouge1"] for row in rows])

Every value is a float in 0..1, or None when it cannot be computed ("n/a"): no reference, or no embedder for
``similarity``. ``bleu`` here is sentence BLEU with effective order (see ``modules/bleu.py``); corpus BLEU over a test
set is ``scorer.module("bleu").compute(...)["bleu"]``. ``import core.metrics`` does not import evaluate.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core.arena.metrics.modules._text import normalize_answer
from core.errors import ConfigError

if TYPE_CHECKING:
    from evaluate import EvaluationModule

logger = logging.getLogger(__name__)

MODULES_DIR = Path(__file__).resolve().parent / "modules"
CLASSIFICATION_TASK = "classification"


@dataclass(frozen=True)
class MetricModule:
    """One evaluate module of the registry.

    The module is loaded with ``evaluate.load(str(path))`` and computed with ``use_aggregator=False``, so it must
    return one value per example under each key of ``outputs``; ``outputs`` maps those keys to metric names.
    """

    name: str
    path: Path
    outputs: tuple[tuple[str, str], ...]


EVALUATE_MODULES: tuple[MetricModule, ...] = (
    MetricModule(
        "rouge",
        MODULES_DIR / "rouge.py",
        (("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rougeL", "rougeL"), ("rougeLsum", "rougeLsum")),
    ),
    MetricModule("bleu", MODULES_DIR / "bleu.py", (("sentence_bleu", "bleu"),)),
    MetricModule("exact_match", MODULES_DIR / "exact_match.py", (("exact_match", "exact_match"),)),
    MetricModule("token_f1", MODULES_DIR / "token_f1.py", (("token_f1", "token_f1"),)),
)
REFERENCE_METRICS: tuple[str, ...] = (
    *(metric for module in EVALUATE_MODULES for _, metric in module.outputs),
    "contains",
    "similarity",
)
METRIC_NAMES: tuple[str, ...] = (*REFERENCE_METRICS, "accuracy")
METRIC_LABELS: dict[str, str] = {
    "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum", "bleu": "BLEU",
    "exact_match": "exact match", "token_f1": "token F1", "contains": "contains", "similarity": "similarity",
    "accuracy": "accuracy",
}
"""How tables and charts name each metric (one source for the app's tabs)."""

_SEPARATORS = re.compile(r"[\s_\-]+")


class Embedder(Protocol):
    """What ``similarity`` needs: a sentence-transformers-like ``encode`` returning an (n, dim) array."""

    def encode(self, sentences: list[str], *, normalize_embeddings: bool = ...) -> Any: ...


def has_reference(reference: str | None) -> bool:
    """True when ``reference`` holds something to score against (not None, not only whitespace)."""
    return reference is not None and bool(reference.strip())


def _label_pattern(label: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive pattern of ``label``; spaces, ``_`` and ``-`` inside it match each other."""
    parts = [re.escape(part) for part in _SEPARATORS.split(label.strip()) if part]
    return re.compile(r"(?<!\w)" + r"[\s_\-]+".join(parts) + r"(?!\w)", re.IGNORECASE)


def predict_label(prediction: str, label_set: Sequence[str]) -> str | None:
    """The label of ``label_set`` that occurs first in ``prediction`` (whole word, any case), or None.

    "First" is by position in the prediction ("billing, not shipping" -> billing); at the same position the
    longer label wins ("order status" over "order").
    """
    best: tuple[int, int, str] | None = None
    for label in label_set:
        if not label or not label.strip():
            continue
        match = _label_pattern(label).search(prediction)
        if match is not None:
            candidate = (match.start(), -len(label), label)
            if best is None or candidate < best:
                best = candidate
    return None if best is None else best[2]


def classification_accuracy(prediction: str, reference: str, label_set: Sequence[str] | None = None) -> float:
    """1.0 when the predicted label equals ``reference`` (normalised), else 0.0.

    With ``label_set`` the predicted label is :func:`predict_label`; without one it is the prediction's first
    non-empty line.
    """
    if label_set:
        predicted = predict_label(prediction, label_set)
        if predicted is None:
            return 0.0
    else:
        predicted = next((line for line in prediction.splitlines() if line.strip()), "")
    return float(normalize_answer(predicted) == normalize_answer(reference))


NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12"}


def _with_digits(text: str) -> str:
    return " ".join(NUMBER_WORDS.get(word, word) for word in normalize_answer(text).split())


def contains_answer(prediction: str, reference: str) -> float:
    """1.0 when the normalised reference appears in the normalised prediction as whole words (short-answer QA:
    "Paris" in "The capital of France is Paris."), else 0.0. Number words up to twelve count as digits."""
    wanted = _with_digits(reference)
    return float(bool(wanted) and f" {wanted} " in f" {_with_digits(prediction)} ")


def _cosine_similarities(embedder: Embedder, predictions: list[str], references: list[str]) -> list[float]:
    """Cosine similarity per pair; one ``encode`` call for all texts (2n x dim), re-normalised for safety."""
    vectors = np.asarray(embedder.encode(predictions + references, normalize_embeddings=True), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (2n, 1)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    n = len(predictions)
    cosines = np.sum(vectors[:n] * vectors[n:], axis=1)  # (n,)
    return [float(value) for value in np.clip(cosines, -1.0, 1.0)]


def _check_length(name: str, values: Sequence[Any] | None, n: int) -> None:
    if values is not None and len(values) != n:
        raise ValueError(f"{name}: {len(values)} items for {n} predictions")


class Scorer:
    """Scores predictions against references with the evaluate modules of ``modules``.

    The modules are loaded on first use (or by :meth:`load`) and kept for the life of the object; computing is
    serialised by a lock, since an evaluate module keeps per-call state. One Scorer per process (the engine's).
    """

    def __init__(self, modules: Sequence[MetricModule] = EVALUATE_MODULES) -> None:
        self.modules: tuple[MetricModule, ...] = tuple(modules)
        self.load_seconds: dict[str, float] = {}
        self._loaded: dict[str, EvaluationModule] = {}
        self._lock = threading.RLock()
        names = [metric for module in self.modules for _, metric in module.outputs]
        self.metric_names: tuple[str, ...] = (*names, "contains", "similarity")

    def module(self, name: str) -> EvaluationModule:
        """The loaded evaluate module ``name`` (loading it now if needed)."""
        spec = next((module for module in self.modules if module.name == name), None)
        if spec is None:
            raise KeyError(f"no metric module {name!r}; known: {[module.name for module in self.modules]}")
        with self._lock:
            if name not in self._loaded:
                import evaluate

                start = time.perf_counter()
                self._loaded[name] = evaluate.load(str(spec.path), keep_in_memory=True)
                self.load_seconds[name] = time.perf_counter() - start
                logger.info("loaded metric module %s in %.3f s", name, self.load_seconds[name])
            return self._loaded[name]

    def load(self) -> dict[str, float]:
        """Load every module now (a warm-up); returns the seconds each load took."""
        for spec in self.modules:
            self.module(spec.name)
        return dict(self.load_seconds)

    def score(
        self,
        prediction: str,
        reference: str | None,
        *,
        task: str | None = None,
        label_set: Sequence[str] | None = None,
        embedder: Embedder | None = None,
    ) -> dict[str, float | None]:
        """Every metric for one prediction; all None when there is no reference. ``accuracy`` for classification."""
        return self.score_batch([prediction], [reference], [task], label_sets=[label_set], embedder=embedder)[0]

    def score_batch(
        self,
        predictions: Sequence[str],
        references: Sequence[str | None],
        tasks: Sequence[str | None] | None = None,
        *,
        label_sets: Sequence[Sequence[str] | None] | None = None,
        embedder: Embedder | None = None,
    ) -> list[dict[str, float | None]]:
        """One dict per example, as :meth:`score` gives; each module and the embedder run once for the batch.

        ``tasks`` and ``label_sets`` are per example (None: no task / no label set).
        """
        n = len(predictions)
        _check_length("references", references, n)
        _check_length("tasks", tasks, n)
        _check_length("label_sets", label_sets, n)
        task_of = list(tasks) if tasks is not None else [None] * n
        labels_of = list(label_sets) if label_sets is not None else [None] * n
        rows: list[dict[str, float | None]] = []
        for task in task_of:
            row: dict[str, float | None] = dict.fromkeys(self.metric_names)
            if task == CLASSIFICATION_TASK:
                row["accuracy"] = None
            rows.append(row)

        scored = [i for i, reference in enumerate(references) if has_reference(reference)]
        if not scored:
            return rows
        preds = [predictions[i] or "" for i in scored]
        refs = [str(references[i]) for i in scored]
        start = time.perf_counter()
        with self._lock:
            for spec in self.modules:
                output = self.module(spec.name).compute(predictions=preds, references=refs, use_aggregator=False)
                for key, metric in spec.outputs:
                    for i, value in zip(scored, output[key], strict=True):
                        rows[i][metric] = float(value)
        for i, prediction, reference in zip(scored, preds, refs, strict=True):
            rows[i]["contains"] = contains_answer(prediction, reference)
        if embedder is not None:
            for i, value in zip(scored, _cosine_similarities(embedder, preds, refs), strict=True):
                rows[i]["similarity"] = value
        for i, prediction, reference in zip(scored, preds, refs, strict=True):
            if task_of[i] == CLASSIFICATION_TASK:
                rows[i]["accuracy"] = classification_accuracy(prediction, reference, labels_of[i])
        logger.debug("scored %d of %d examples in %.3f s", len(scored), n, time.perf_counter() - start)
        return rows


def score(
    prediction: str,
    reference: str | None,
    *,
    task: str | None = None,
    label_set: Sequence[str] | None = None,
    embedder: Embedder | None = None,
    scorer: Scorer | None = None,
) -> dict[str, float | None]:
    """:meth:`Scorer.score` with ``scorer`` (pass the engine's; without one a new Scorer loads the modules)."""
    return (scorer or Scorer()).score(prediction, reference, task=task, label_set=label_set, embedder=embedder)


def score_batch(
    predictions: Sequence[str],
    references: Sequence[str | None],
    tasks: Sequence[str | None] | None = None,
    *,
    label_sets: Sequence[Sequence[str] | None] | None = None,
    embedder: Embedder | None = None,
    scorer: Scorer | None = None,
) -> list[dict[str, float | None]]:
    """:meth:`Scorer.score_batch` with ``scorer`` (pass the engine's; without one a new Scorer loads the modules)."""
    return (scorer or Scorer()).score_batch(predictions, references, tasks, label_sets=label_sets, embedder=embedder)


def bootstrap_ci(
    values: Sequence[float | None],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the mean and its percentile-bootstrap interval; None and NaN values are ignored.

    Deterministic for a ``seed``. No values gives (None, None, None); one value or constant values a zero-width
    interval. The interval always contains the mean.
    """
    if n_resamples < 1:
        raise ConfigError(f"n_resamples: must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence: must be in (0, 1), got {confidence}")
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)  # (n,)
    if data.size == 0:
        return None, None, None
    mean = float(data.mean())
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // data.size)  # bound the (chunk, n) index array to ~8 MB
    means = np.concatenate(
        [
            data[rng.integers(0, data.size, size=(min(chunk, n_resamples - done), data.size))].mean(axis=1)
            for done in range(0, n_resamples, chunk)
        ]
    )  # (n_resamples,)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, min(float(low), mean), max(float(high), mean)


__all__ = [
    "CLASSIFICATION_TASK",
    "EVALUATE_MODULES",
    "METRIC_NAMES",
    "MODULES_DIR",
    "REFERENCE_METRICS",
    "Embedder",
    "MetricModule",
    "Scorer",
    "bootstrap_ci",
    "classification_accuracy",
    "contains_answer",
    "has_reference",
    "predict_label",
    "score",
    "score_batch",
]
