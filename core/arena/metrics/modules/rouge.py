"""ROUGE-1/2/L/Lsum F-measure through Google's ``rouge_score`` package, as an evaluate.Metric.

Load with ``evaluate.load("<path>/rouge.py")``; nothing is fetched from the hub.
"""

from __future__ import annotations

from typing import Any

import evaluate
from rouge_score import rouge_scorer

from ._text import mean_or_all, string_pair_info

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_DESCRIPTION = """\
ROUGE (Recall-Oriented Understudy for Gisting Evaluation) compares a generated text with a reference by overlapping
units: ROUGE-1 and ROUGE-2 count unigrams and bigrams, ROUGE-L uses the longest common subsequence over the whole
text, and ROUGE-Lsum the union LCS over sentences, where sentences are the text's lines (split on "\\n").
This module reports the F-measure (0..1) of each type, computed by the `rouge_score` package with Porter stemming
(words longer than 3 characters). Its tokenizer lowercases and keeps only [a-z0-9] runs, so text in scripts other
than Latin scores 0 against itself. The aggregate is the plain mean over examples (no bootstrap).
"""

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/W04-1013",
    pages = "74--81",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): one reference per prediction.
    rouge_types (list of str, optional): a subset of rouge1, rouge2, rougeL, rougeLsum (default: all four).
    use_aggregator (bool, default True): return the mean over examples; False returns one value per example.
    use_stemmer (bool, default True): Porter-stem words longer than 3 characters before matching.
Returns:
    dict: rouge type -> F-measure in 0..1 (a float, or a list of floats with use_aggregator=False).
Examples:
    >>> rouge = evaluate.load("core/arena/metrics/modules/rouge.py")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat down"])["rouge1"]
    0.857142...
"""


class Rouge(evaluate.Metric):
    """ROUGE F-measures; a scorer is built once per (types, stemmer) and kept on the instance."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scorers: dict[tuple[tuple[str, ...], bool], rouge_scorer.RougeScorer] = {}

    def _info(self) -> evaluate.MetricInfo:
        return string_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["https://aclanthology.org/W04-1013"],
                                code=["https://github.com/google-research/google-research/tree/master/rouge"])

    def _scorer(self, rouge_types: tuple[str, ...], use_stemmer: bool) -> rouge_scorer.RougeScorer:
        key = (rouge_types, use_stemmer)
        if key not in self._scorers:
            self._scorers[key] = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
        return self._scorers[key]

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        rouge_types: list[str] | None = None,
        use_aggregator: bool = True,
        use_stemmer: bool = True,
    ) -> dict[str, float | list[float]]:
        types = tuple(rouge_types or ROUGE_TYPES)
        unknown = [name for name in types if name not in ROUGE_TYPES]
        if unknown:
            raise ValueError(f"rouge_types: unknown {unknown}; choose from {list(ROUGE_TYPES)}")
        scorer = self._scorer(types, use_stemmer)
        per_example: dict[str, list[float]] = {name: [] for name in types}
        for prediction, reference in zip(predictions, references, strict=True):
            scores = scorer.score(target=reference, prediction=prediction)
            for name in types:
                per_example[name].append(float(scores[name].fmeasure))
        return {name: mean_or_all(values, use_aggregator) for name, values in per_example.items()}
