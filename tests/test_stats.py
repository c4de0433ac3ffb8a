"""core.arena.stats: paired bootstrap, sign-flip permutation, exact McNemar and Holm, against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from core.arena.stats import holm, mcnemar_exact, paired_bootstrap, paired_permutation_p

# ---------------------------------------------------------------------------------------------------- McNemar


def _outcomes(n11: int, n10: int, n01: int, n00: int) -> tuple[list[int], list[int]]:
    """Paired 0/1 outcomes with the given 2x2 table (n10: a right, b wrong; n01: a wrong, b right)."""
    a = [1] * n11 + [1] * n10 + [0] * n01 + [0] * n00
    b = [1] * n11 + [0] * n10 + [1] * n01 + [0] * n00
    return a, b


def test_mcnemar_textbook_example() -> None:
    # 7 discordant pairs one way, 1 the other: X ~ Binomial(8, 1/2),
    # P(X <= 1) = (C(8,0) + C(8,1)) / 2^8 = (1 + 8) / 256, two-sided p = 2 * 9 / 256 = 18 / 256 = 0.0703125.
    a, b = _outcomes(n11=20, n10=7, n01=1, n00=12)
    assert mcnemar_exact(a, b) == (7, 1, pytest.approx(18 / 256))
    # Swapping the sides swaps the counts, not the p-value.
    assert mcnemar_exact(b, a) == (1, 7, pytest.approx(18 / 256))


def test_mcnemar_second_example() -> None:
    # n10 = 10, n01 = 2: P(X <= 2) for Binomial(12, 1/2) = (1 + 12 + 66) / 4096 = 79 / 4096; p = 158 / 4096.
    a, b = _outcomes(n11=5, n10=10, n01=2, n00=3)
    assert mcnemar_exact(a, b) == (10, 2, pytest.approx(158 / 4096))


def test_mcnemar_caps_at_one_and_no_discordant_pairs() -> None:
    # n10 = n01 = 3: 2 * (1 + 6 + 15 + 20) / 64 = 84 / 64 > 1 -> 1.0.
    assert mcnemar_exact(*_outcomes(4, 3, 3, 4)) == (3, 3, 1.0)
    assert mcnemar_exact(*_outcomes(5, 0, 0, 5)) == (0, 0, 1.0)
    assert mcnemar_exact([], []) == (0, 0, 1.0)


def test_mcnemar_accepts_floats_and_rejects_non_binary() -> None:
    assert mcnemar_exact([1.0, 1.0, 0.0], [0.0, 0.0, 0.0])[:2] == (2, 0)
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar_exact([0.5, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([1, 0], [1])


def test_mcnemar_large_n_does_not_overflow() -> None:
    p = mcnemar_exact(*_outcomes(0, 600, 400, 0))[2]
    assert 0.0 <= p < 1e-8


# ---------------------------------------------------------------------------------------------------- permutation


def test_permutation_enumerated_by_hand() -> None:
    # d = a - b = [1, 2, -1, 3], observed |sum| = 5. Flipping a subset S of the |d| = {1, 2, 1, 3} (total 7) gives
    # sum 7 - 2 * sum(S). The 16 subset sums are 0,1,2,1,3,3,2,4,3,5,4,4,6,5,6,7 -> sums 7,5,3,5,1,1,3,-1,1,-3,-1,
    # -1,-5,-3,-5,-7; |sum| >= 5 for 6 of them (7, 5, 5, -5, -5, -7): p = 6 / 16 = 0.375.
    a, b = [2, 3, 0, 4], [1, 1, 1, 1]
    assert paired_permutation_p(a, b) == pytest.approx(6 / 16)
    assert paired_permutation_p(b, a) == pytest.approx(6 / 16)  # two-sided


def test_permutation_all_same_sign_small_n() -> None:
    # Five positive differences: only the all-plus and all-minus patterns reach |sum|: p = 2 / 32.
    assert paired_permutation_p([1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == pytest.approx(2 / 32)


def test_permutation_degenerate() -> None:
    assert paired_permutation_p([0.3, 0.5, 0.7], [0.3, 0.5, 0.7]) == 1.0
    assert paired_permutation_p([0.9], [0.1]) == 1.0  # one pair: both signs reach the observed |d|
    with pytest.raises(ValueError, match="empty"):
        paired_permutation_p([], [])
    with pytest.raises(ValueError, match="length"):
        paired_permutation_p([1.0, 2.0], [1.0])


def test_permutation_float_ties_count() -> None:
    # d = [0.1, 0.9, 0.6, -1.0], observed sum 0.6; flipping a subset S gives 0.6 - 2 * sum(S), which reaches
    # |0.6| when sum(S) <= 0 or sum(S) >= 0.6. Of the 16 subsets only {0.1} (0.1) and {0.9, 0.6, -1.0} (0.5) fail:
    # p = 14 / 16. In floats {0.1, 0.9, -1.0} and {0.6} miss the observed sum by rounding; they must still count.
    assert paired_permutation_p([0.1, 0.9, 0.6, -1.0], [0.0] * 4) == pytest.approx(14 / 16)


def test_permutation_monte_carlo_matches_enumeration() -> None:
    rng = np.random.default_rng(1)
    d = np.round(rng.normal(0.15, 1.0, size=17), 3)  # n = 17: sampled; enumerate the 2^17 patterns here to check
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))  # (131072, 17)
    exact = float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-9))
    sampled = paired_permutation_p(d, np.zeros_like(d), n_resamples=20000, seed=3)
    assert sampled == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-4)
    assert paired_permutation_p(d, np.zeros_like(d), n_resamples=20000, seed=3) == sampled  # deterministic


def test_permutation_monte_carlo_plus_one_correction() -> None:
    # 40 positive differences: no random pattern reaches the observed sum, so p = (0 + 1) / (n_resamples + 1).
    p = paired_permutation_p([1.0] * 40, [0.0] * 40, n_resamples=999)
    assert p == pytest.approx(1 / 1000)


# ---------------------------------------------------------------------------------------------------- Holm


def test_holm_known_list() -> None:
    # Sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> raised to 0.06 to stay
    # monotone). Back in the given order: [0.03, 0.06, 0.06, 0.02].
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_edges() -> None:
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 2 x 0.5 = 1.0; 0.6 raised to 1.0
    assert holm([0.02]) == [0.02]
    assert holm([]) == []
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


# ---------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_contains_the_true_difference() -> None:
    rng = np.random.default_rng(0)
    b = rng.uniform(0.2, 0.6, size=200)
    a = b + 0.1 + rng.normal(0.0, 0.05, size=200)  # true difference 0.1
    diff, low, high = paired_bootstrap(a, b, seed=0)
    assert diff == pytest.approx(float(np.mean(a - b)))
    assert low < 0.1 < high
    assert low < diff < high
    # Width close to the normal approximation 2 * 1.96 * sd / sqrt(n).
    expected = 2 * 1.96 * float(np.std(a - b, ddof=1)) / math.sqrt(200)
    assert high - low == pytest.approx(expected, rel=0.15)
    assert paired_bootstrap(a, b, seed=0) == (diff, low, high)  # deterministic for a seed
    assert paired_bootstrap(b, a, seed=0)[0] == pytest.approx(-diff)


def test_bootstrap_degenerate() -> None:
    assert paired_bootstrap([0.7], [0.2]) == pytest.approx((0.5, 0.5, 0.5))  # n = 1
    assert paired_bootstrap([0.4, 0.4, 0.4], [0.4, 0.4, 0.4]) == (0.0, 0.0, 0.0)  # all equal
    assert paired_bootstrap([0.5, 0.6], [0.3, 0.4]) == pytest.approx((0.2, 0.2, 0.2))  # constant difference
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([float("nan")], [0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [0.0], confidence=1.5)
