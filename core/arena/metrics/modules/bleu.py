"""Corpus BLEU and per-example sentence BLEU through ``sacrebleu``, on a 0..1 scale, as an evaluate.Metric.

Load with ``evaluate.load("<path>/bleu.py")``; nothing is fetched from the hub.
"""

from __future__ import annotations

from typing import Any

import evaluate
from sacrebleu.metrics import BLEU

from ._text import mean_or_all, string_pair_info

_DESCRIPTION = """\
BLEU (Bilingual Evaluation Understudy) is the geometric mean of modified 1- to 4-gram precisions of a generated text
against a reference, times a brevity penalty for texts shorter than the reference. Computed with `sacrebleu`
(13a tokenizer, case-sensitive by default) and reported on a 0..1 scale (sacrebleu's value / 100) to match ROUGE.
`bleu` is corpus BLEU: n-gram statistics are summed over all examples first, then combined (with sacrebleu's
'exp' smoothing, no effective order), which is BLEU's intended use. `sentence_bleu` is BLEU per example with
'exp' smoothing and effective order (n-gram orders longer than the shorter text are left out), so a short answer
identical to its reference scores 1.0 instead of 0. Its aggregate is the mean over examples, which differs from
corpus BLEU.
"""

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu,
    title = "{B}leu: a Method for Automatic Evaluation of Machine Translation",
    author = "Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing",
    booktitle = "Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics",
    year = "2002",
    url = "https://aclanthology.org/P02-1040",
    pages = "311--318",
}
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    url = "https://aclanthology.org/W18-6319",
    pages = "186--191",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): one reference per prediction.
    use_aggregator (bool, default True): `sentence_bleu` as the mean over examples; False gives one per example.
    lowercase (bool, default False): lowercase both sides first.
    tokenize (str, default "13a"): a sacrebleu tokenizer name ("13a", "intl", "char", "none", ...).
Returns:
    bleu (float): corpus BLEU in 0..1.
    precisions (list of 4 floats): corpus 1..4-gram precisions in 0..1.
    brevity_penalty (float), length_ratio (float), translation_length (int), reference_length (int).
    sentence_bleu (float or list of floats): sentence BLEU in 0..1 (mean, or per example).
Examples:
    >>> bleu = evaluate.load("core/arena/metrics/modules/bleu.py")
    >>> bleu.compute(predictions=["the cat sat"], references=["the cat sat"])["sentence_bleu"]
    1.0
"""


class Bleu(evaluate.Metric):
    """Corpus and sentence BLEU (0..1); the sacrebleu scorers are built once per setting and kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scorers: dict[tuple[bool, str, bool], BLEU] = {}

    def _info(self) -> evaluate.MetricInfo:
        return string_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["https://aclanthology.org/P02-1040", "https://aclanthology.org/W18-6319"],
                                code=["https://github.com/mjpost/sacrebleu"])

    def _scorer(self, lowercase: bool, tokenize: str, effective_order: bool) -> BLEU:
        key = (lowercase, tokenize, effective_order)
        if key not in self._scorers:
            self._scorers[key] = BLEU(
                lowercase=lowercase, tokenize=tokenize, smooth_method="exp", effective_order=effective_order
            )
        return self._scorers[key]

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        use_aggregator: bool = True,
        lowercase: bool = False,
        tokenize: str = "13a",
    ) -> dict[str, Any]:
        corpus = self._scorer(lowercase, tokenize, effective_order=False).corpus_score(predictions, [references])
        sentence_scorer = self._scorer(lowercase, tokenize, effective_order=True)
        sentence = [
            sentence_scorer.sentence_score(prediction, [reference]).score / 100.0
            for prediction, reference in zip(predictions, references, strict=True)
        ]
        return {
            "bleu": corpus.score / 100.0,
            "precisions": [precision / 100.0 for precision in corpus.precisions],
            "brevity_penalty": corpus.bp,
            "length_ratio": corpus.ratio,
            "translation_length": corpus.sys_len,
            "reference_length": corpus.ref_len,
            "sentence_bleu": mean_or_all(sentence, use_aggregator),
        }
