"""Retrieval quality: hit@k and MRR of a knowledge base over {question, source} rows.

A row is a hit at rank r when the r-th retrieved chunk comes from the row's source document. Sources match by path
suffix, so a row naming ``error-codes.md`` matches a chunk from ``assets/demo/corpus/error-codes.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError, TuneArenaError
from core.io import JsonTextError, parse_json
from retrieval.index import KnowledgeBase

QUESTION_FIELDS = ("question", "query", "instruction")


@dataclass(frozen=True)
class RetrievalCase:
    question: str
    source: str
    id: str = ""


@dataclass
class RetrievalReport:
    """hit@1..k (share of questions whose source is in the top i), MRR@k and each question's rank (None = miss)."""

    k: int
    n: int
    hit_at: dict[int, float]
    mrr: float
    ranks: list[int | None] = field(default_factory=list)
    cases: list[RetrievalCase] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, per_question: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k, "n": self.n, "mrr": round(self.mrr, 4),
                               "hit_at": {str(i): round(v, 4) for i, v in self.hit_at.items()},
                               f"hit@{self.k}": round(self.hit_at[self.k], 4), "settings": self.settings}
        if per_question:
            out["questions"] = [{"id": case.id, "question": case.question, "source": case.source, "rank": rank}
                                for case, rank in zip(self.cases, self.ranks, strict=True)]
        return out


def source_matches(chunk_source: str, wanted: str) -> bool:
    """True if ``chunk_source`` is ``wanted`` or ends with it as whole path components. The chunk's ``#row`` is
    ignored unless ``wanted`` names a row too (``faq.jsonl#4``): then only that row matches."""
    chunk_path, _, chunk_row = chunk_source.partition("#")
    wanted, has_row, wanted_row = wanted.partition("#")
    if has_row and chunk_row != wanted_row:
        return False
    chunk_path = chunk_path.replace("\\", "/").strip("/")
    wanted = wanted.replace("\\", "/").strip("/")
    return chunk_path == wanted or chunk_path.endswith("/" + wanted)


def load_cases(path: str | Path) -> list[RetrievalCase]:
    """Rows with a question (``question``/``query``/``instruction``, plus ``input`` if any) and a ``source``.

    Rows without a source (e.g. classification rows of a mixed test split) are left out. ValueError names the line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TuneArenaError(f"{path}: no such file")
    cases = []
    with open(path, "rb") as handle:  # bytes: a line that is not UTF-8 is named, not a UnicodeDecodeError
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise TuneArenaError(f"{path} line {number}: not valid UTF-8 (byte 0x{raw[err.start]:02x})") from None
            if not line.strip():
                continue
            try:
                row = parse_json(line)
            except JsonTextError as err:
                raise TuneArenaError(f"{path} line {number}: invalid JSON ({err.reason})") from None
            if not isinstance(row, dict):
                raise TuneArenaError(f"{path} line {number}: expected a JSON object")
            source = row.get("source")
            if not source:
                continue
            if not isinstance(source, str):
                raise TuneArenaError(f"{path} line {number}: field 'source' must be a string")
            question = next((row[name] for name in QUESTION_FIELDS if isinstance(row.get(name), str)), None)
            if not question or not question.strip():
                raise TuneArenaError(f"{path} line {number}: no question (fields: {', '.join(QUESTION_FIELDS)})")
            if isinstance(row.get("input"), str) and row["input"].strip():
                question = f"{question}\n{row['input']}"
            cases.append(RetrievalCase(question=question, source=source, id=str(row.get("id", number))))
    if not cases:
        raise TuneArenaError(f"{path}: no rows with a 'source' field to evaluate retrieval on")
    return cases


def evaluate_retrieval(kb: KnowledgeBase, cases: Sequence[RetrievalCase], *, k: int = 3,
                       mmr_lambda: float | None = None, hybrid: bool = True,
                       on_progress: Callable[[int, int], None] | None = None) -> RetrievalReport:
    """hit@1..k and MRR@k of ``kb`` over ``cases`` with the given search settings."""
    if k < 1:
        raise ConfigError(f"k: must be at least 1, got {k}")
    ranks: list[int | None] = []
    for number, case in enumerate(cases, start=1):
        hits = kb.search(case.question, k, mmr_lambda=mmr_lambda, hybrid=hybrid)
        rank = next((hit.rank for hit in hits if source_matches(hit.chunk.source, case.source)), None)
        ranks.append(rank)
        if on_progress:
            on_progress(number, len(cases))
    n = len(cases)
    hit_at = {i: sum(1 for rank in ranks if rank is not None and rank <= i) / n for i in range(1, k + 1)}
    mrr = sum(1.0 / rank for rank in ranks if rank is not None) / n
    return RetrievalReport(k=k, n=n, hit_at=hit_at, mrr=mrr, ranks=ranks, cases=list(cases),
                           settings={"mmr_lambda": mmr_lambda, "hybrid": hybrid})
