"""Ranking helpers: BM25 over chunk texts, reciprocal-rank fusion and maximal marginal relevance (MMR).

Pure functions over numpy arrays and lists; the KnowledgeBase (retrieval.index) wires them to FAISS.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i if in is it its my of on or the this to was what "
    "when where which who why will with you your".split()
)


def words(text: str) -> list[str]:
    """Lowercase alphanumeric words without common English stopwords."""
    return [word for word in WORD.findall(text.lower()) if word not in STOPWORDS]


@dataclass
class BM25:
    """Okapi BM25 (k1=1.5, b=0.75) over a fixed list of texts; ``scores(query)`` -> one float per text."""

    postings: dict[str, list[tuple[int, int]]]  # word -> [(text index, term frequency)]
    lengths: np.ndarray  # (n,) words per text
    k1: float = 1.5
    b: float = 0.75

    @classmethod
    def build(cls, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> BM25:
        postings: dict[str, list[tuple[int, int]]] = {}
        lengths = np.zeros(len(texts), dtype=np.float32)
        for index, text in enumerate(texts):
            counts = Counter(words(text))
            lengths[index] = sum(counts.values())
            for word, count in counts.items():
                postings.setdefault(word, []).append((index, count))
        return cls(postings, lengths, k1, b)

    def scores(self, query: str) -> np.ndarray:
        n = len(self.lengths)
        out = np.zeros(n, dtype=np.float32)
        if n == 0:
            return out
        average = float(self.lengths.mean()) or 1.0
        for word in set(words(query)):
            posting = self.postings.get(word)
            if not posting:
                continue
            idf = math.log(1.0 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            index = np.fromiter((i for i, _ in posting), dtype=np.int64, count=len(posting))
            tf = np.fromiter((c for _, c in posting), dtype=np.float32, count=len(posting))
            norm = self.k1 * (1.0 - self.b + self.b * self.lengths[index] / average)
            out[index] += idf * tf * (self.k1 + 1.0) / (tf + norm)
        return out


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = 60) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = sum over lists of 1 / (k + rank), rank from 1. Best first."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, lambda_: float = 0.5) -> list[int]:
    """Maximal marginal relevance: pick ``k`` rows of ``candidates`` (n, d) balancing relevance to ``query`` (d,)
    against similarity to rows already picked. ``lambda_`` = 1 is plain relevance order. Returns row indices."""
    if len(candidates) == 0 or k <= 0:
        return []
    relevance = candidates @ query  # (n,)
    similarity = candidates @ candidates.T  # (n, n)
    chosen: list[int] = []
    remaining = list(range(len(candidates)))
    while remaining and len(chosen) < k:
        if chosen:
            redundancy = similarity[np.ix_(remaining, chosen)].max(axis=1)
        else:
            redundancy = np.zeros(len(remaining), dtype=np.float32)
        values = lambda_ * relevance[remaining] - (1.0 - lambda_) * redundancy
        best = remaining[int(np.argmax(values))]
        chosen.append(best)
        remaining.remove(best)
    return chosen
