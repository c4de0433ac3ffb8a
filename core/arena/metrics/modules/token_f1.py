"""SQuAD-style token F1 over normalised answers, as an evaluate.Metric.

Load with ``evaluate.load("<path>/token_f1.py")``; nothing is fetched from the hub.
"""

from __future__ import annotations

from collections import Counter

import evaluate

from ._text import SQUAD_CITATION, answer_tokens, mean_or_all, string_pair_info

_DESCRIPTION = """\
Token F1 as in SQuAD: both texts are normalised (lowercased, punctuation and the articles a/an/the removed,
whitespace collapsed) and split on whitespace; precision is the share of predicted tokens found in the reference
(counting multiplicity), recall the share of reference tokens found in the prediction, F1 their harmonic mean
(0..1). When either side has no tokens, F1 is 1 if both are empty, else 0. The aggregate is the mean over examples.
"""

_CITATION = SQUAD_CITATION  # the answer normalisation and the metric come from SQuAD v1.1

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): one reference per prediction.
    use_aggregator (bool, default True): the mean over examples; False gives one F1 per example.
Returns:
    token_f1 (float or list of floats).
Examples:
    >>> token_f1 = evaluate.load("core/arena/metrics/modules/token_f1.py")
    >>> token_f1.compute(predictions=["the cat sat on the mat"], references=["a cat lay on a mat"])
    {'token_f1': 0.75}
"""


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalised token multisets of ``prediction`` and ``reference`` (0..1)."""
    predicted = answer_tokens(prediction)
    expected = answer_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(expected)
    return 2 * precision * recall / (precision + recall)


class TokenF1(evaluate.Metric):
    """SQuAD token F1."""

    def _info(self) -> evaluate.MetricInfo:
        return string_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["https://aclanthology.org/D16-1264"])

    def _compute(
        self, predictions: list[str], references: list[str], use_aggregator: bool = True
    ) -> dict[str, float | list[float]]:
        scores = [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]
        return {"token_f1": mean_or_all(scores, use_aggregator)}
