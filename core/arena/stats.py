"""Paired significance tests for comparing two variants scored on the same examples (numpy only).

Every function takes two equal-length score sequences ``a`` and ``b`` (one value per example, the same example at
the same position) and asks whether ``a`` and ``b`` differ::

    diff, low, high = paired_bootstrap(a, b)      # mean of a - b and its 95% percentile interval
    p = paired_permutation_p(a, b)                # two-sided sign-flip test of mean(a - b) = 0
    n10, n01, p = mcnemar_exact(a, b)             # 0/1 outcomes: exact McNemar
    adjusted = holm([p1, p2, p3])                 # Holm-Bonferroni across several comparisons

All are deterministic for a ``seed``. They raise ValueError on empty or mismatched input, never return NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EXACT_PERMUTATION_MAX_N = 16  # 2**16 = 65536 sign patterns: enumerated, not sampled
_MAX_CELLS = 1_000_000  # bound every (resamples, n) array to ~8 MB


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """a - b as a float array of shape (n,); ValueError on mismatched lengths, no pairs or NaN."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("paired samples are empty")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (n,)
    if np.isnan(d).any():
        raise ValueError("paired samples hold NaN (leave out examples without a score first)")
    return d


def _chunks(total: int, n: int) -> list[int]:
    """Sizes of the resample blocks so that a (block, n) array stays under _MAX_CELLS."""
    block = max(1, _MAX_CELLS // max(n, 1))
    return [min(block, total - done) for done in range(0, total, block)]


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(diff, low, high): the mean of a - b and its percentile-bootstrap interval from resampling the pairs.

    Units are those of the scores. One pair or identical differences give a zero-width interval; the interval
    always contains ``diff``.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples: must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    d = _differences(a, b)
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [d[rng.integers(0, d.size, size=(size, d.size))].mean(axis=1) for size in _chunks(n_resamples, d.size)]
    )  # (n_resamples,)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return diff, min(float(low), diff), max(float(high), diff)


def paired_permutation_p(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided p-value of mean(a - b) = 0 by flipping the sign of each difference at random.

    With n <= 16 pairs every one of the 2**n sign patterns is enumerated (exact p = share of patterns whose
    |sum| reaches the observed one); above, ``n_resamples`` random patterns with the +1 correction,
    (hits + 1) / (n_resamples + 1), so p is never 0. All differences 0 gives 1.0.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples: must be >= 1, got {n_resamples}")
    d = _differences(a, b)
    if not np.any(d):
        return 1.0
    observed = abs(float(d.sum()))
    tolerance = 1e-9 * float(np.abs(d).sum())  # sums equal up to rounding count as reaching the observed one
    if d.size <= EXACT_PERMUTATION_MAX_N:
        patterns = np.arange(2**d.size, dtype=np.int64)[:, None]  # (2**n, 1)
        signs = 1.0 - 2.0 * ((patterns >> np.arange(d.size)) & 1)  # (2**n, n) of +1/-1
        hits = int(np.count_nonzero(np.abs(signs @ d) >= observed - tolerance))
        return hits / 2**d.size
    rng = np.random.default_rng(seed)
    total = float(d.sum())
    hits = 0
    for size in _chunks(n_resamples, d.size):
        packed = rng.integers(0, 256, size=(size, (d.size + 7) // 8), dtype=np.uint8)  # 8 random signs a byte
        flips = np.unpackbits(packed, axis=1)[:, : d.size].astype(np.float64)  # (size, n), 1 = sign flipped
        sums = total - 2.0 * (flips @ d)  # (size,)
        hits += int(np.count_nonzero(np.abs(sums) >= observed - tolerance))
    return (hits + 1) / (n_resamples + 1)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """(n10, n01, p) for paired 0/1 outcomes: n10 = a right and b wrong, n01 = a wrong and b right, and the exact
    two-sided McNemar p-value, 2 * P(X <= min(n10, n01)) for X ~ Binomial(n10 + n01, 1/2), capped at 1.

    Only the discordant pairs count. n10 + n01 = 0 gives p = 1.0. ValueError when a value is not 0 or 1.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("mcnemar_exact: outcomes must be 0 or 1")
    n10 = int(np.count_nonzero((x == 1.0) & (y == 0.0)))
    n01 = int(np.count_nonzero((x == 0.0) & (y == 1.0)))
    n = n10 + n01
    if n == 0:
        return n10, n01, 1.0
    tail = sum(math.comb(n, k) for k in range(min(n10, n01) + 1))  # exact integers, any n
    return n10, n01, min(1.0, 2 * tail / 2**n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the i-th smallest p times (m - i + 1), made
    non-decreasing along the sorted order and capped at 1. An empty list gives []."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = float(p_values[i])
        if math.isnan(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"holm: p-values must be in [0, 1], got {p_values[i]!r}")
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


__all__ = ["EXACT_PERMUTATION_MAX_N", "holm", "mcnemar_exact", "paired_bootstrap", "paired_permutation_p"]
