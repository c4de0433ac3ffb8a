"""Normalised exact match (SQuAD rules), 0 or 1 per example, as an evaluate.Metric.

Load with ``evaluate.load("<path>/exact_match.py")``; nothing is fetched from the hub.
"""

from __future__ import annotations

import evaluate

from ._text import SQUAD_CITATION, mean_or_all, normalize_answer, string_pair_info

_DESCRIPTION = """\
Exact match after normalisation: both texts are lowercased, punctuation (ASCII and Unicode) and the articles
a/an/the are removed and whitespace is collapsed (the SQuAD v1.1 answer normalisation); an example scores 1 when the
normalised texts are equal, else 0. The aggregate is the fraction of examples that match (0..1).
"""

_CITATION = SQUAD_CITATION  # the answer normalisation and the metric come from SQuAD v1.1

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): one reference per prediction.
    use_aggregator (bool, default True): the mean over examples; False gives 0.0/1.0 per example.
Returns:
    exact_match (float or list of floats).
Examples:
    >>> exact_match = evaluate.load("core/arena/metrics/modules/exact_match.py")
    >>> exact_match.compute(predictions=["The Cat, sat!"], references=["cat sat"])
    {'exact_match': 1.0}
"""


class ExactMatch(evaluate.Metric):
    """Normalised exact match."""

    def _info(self) -> evaluate.MetricInfo:
        return string_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["https://aclanthology.org/D16-1264"])

    def _compute(
        self, predictions: list[str], references: list[str], use_aggregator: bool = True
    ) -> dict[str, float | list[float]]:
        matches = [
            float(normalize_answer(prediction) == normalize_answer(reference))
            for prediction, reference in zip(predictions, references, strict=True)
        ]
        return {"exact_match": mean_or_all(matches, use_aggregator)}
