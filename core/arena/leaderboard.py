"""The leaderboard of people's votes: Bradley-Terry ratings with bootstrap intervals, and how well each automatic
metric agrees with the votes. Pure functions of vote records (core.arena.feedback).

Outcomes. In a vote with a winner, the winner beats every other item shown in it; a ``tie`` is half a win each way
between every two items shown; ``all_bad`` says nothing about the order. An item shown twice in one vote (``by=
"method"``: two LoRA runs side by side) counts once, and never plays itself.

Ratings. Bradley-Terry strengths ``p`` (P(i beats j) = p_i / (p_i + p_j)) by the MM algorithm (Hunter 2004, "MM
algorithms for generalized Bradley-Terry models"), with a prior of one virtual tie of every item against a
reference of strength 1, so an item that never lost stays finite and one never compared rates average. Shown on an
Elo-like scale: ``1000 + 400 * log10(p_i / geometric mean of p)``: 1000 is the average item, +400 is 10:1 odds.
``low``/``high``: the 2.5% and 97.5% percentiles over ``samples`` bootstrap resamples of the votes (seeded).

Items. ``by="variant"``: the variant names as shown (``zero_shot``, ``rag``, ``finetuned@<run>``...).
``by="method"``: approaches (``method_name``): ``prompting (zero_shot)``, ``prompting (few_shot)``, ``rag``,
``nearest_answer``; a fine-tuned answer by its run's method (``lora``, ``full``...), with the objective when it is not
sft (``lora (dpo)``), and ``+ rag`` / ``+ few_shot`` for a run answering with retrieved passages or worked examples.

Metric agreement. On votes with a reference and a real winner: per metric, the share of votes where the answer the
metric scores best is the one people chose; a vote where several answers share the metric's best score (or fewer
than two carry it) is no pick of that metric and is left out of its ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.arena.feedback import ALL_BAD, NO_TASK, TIE
from core.arena.metrics import METRIC_NAMES
from core.errors import ConfigError

BY = ("variant", "method")
"""What a leaderboard ranks: the variants as shown, or the approaches behind them (see ``method_name``)."""
BASE_RATING = 1000.0
SCALE = 400.0  # rating points per factor of 10 in the odds
PRIOR_TIES = 1.0  # virtual ties of every item against a reference of strength 1
MAX_ITERATIONS = 10_000
TOLERANCE = 1e-9  # largest change of a log-strength between two MM steps at convergence
MAX_SAMPLES = 100_000
_CHUNK_CELLS = 4_000_000  # bootstrap resamples at a time: bounds the (resamples, votes) and (resamples, k, k) arrays

PROMPTING_NAMES = {"zero_shot": "prompting (zero_shot)", "few_shot": "prompting (few_shot)", "rag": "rag",
                   "nearest_answer": "nearest_answer"}
FINETUNED_SUFFIXES = {"finetuned": "", "finetuned_rag": " + rag", "finetuned_few_shot": " + few_shot"}


def method_name(answer: dict[str, Any]) -> str:
    """The approach behind one shown answer (``by="method"``; see the module docstring)."""
    strategy = str(answer.get("strategy") or str(answer.get("variant") or "").partition("@")[0])
    if strategy in PROMPTING_NAMES:
        return PROMPTING_NAMES[strategy]
    if strategy in FINETUNED_SUFFIXES or answer.get("run_id"):
        method = answer.get("method")
        objective = answer.get("objective")
        name = str(method) if method else "finetuned (unknown method)"
        if method and objective and objective != "sft":
            name += f" ({objective})"
        return name + FINETUNED_SUFFIXES.get(strategy, "")
    return strategy or "unknown"


def variant_name(answer: dict[str, Any]) -> str:
    """The variant as it was shown (``by="variant"``)."""
    return str(answer.get("variant") or "unknown")


ITEM_NAMES: dict[str, Callable[[dict[str, Any]], str]] = {"variant": variant_name, "method": method_name}


@dataclass(frozen=True)
class VoteOutcomes:
    """One vote as the ratings see it: the items shown (indexes into the item list), the winner's, and the
    ``(i, j, weight)`` wins of i over j it gives."""

    task: str
    items: tuple[int, ...]
    winner: int | None
    wins: tuple[tuple[int, int, float], ...]


def vote_outcomes(vote: dict[str, Any], index: dict[str, int], name: Callable[[dict[str, Any]], str]) -> VoteOutcomes:
    """The outcomes of one vote; new item names are added to ``index`` (name -> position)."""
    label_item: dict[str, int] = {}
    for answer in vote.get("answers") or []:
        label_item[answer.get("label")] = index.setdefault(name(answer), len(index))
    items = tuple(dict.fromkeys(label_item.values()))  # shown order, each item once
    winner = vote.get("winner")
    wins: list[tuple[int, int, float]] = []
    won = label_item.get(winner) if winner not in (TIE, ALL_BAD) else None
    if won is not None:
        wins = [(won, other, 1.0) for other in items if other != won]
    elif winner == TIE:
        wins = [(a, b, 0.5) for a in items for b in items if a != b]
    return VoteOutcomes(str(vote.get("task") or NO_TASK), items, won, tuple(wins))


def bradley_terry(wins: np.ndarray, *, prior: float = PRIOR_TIES) -> np.ndarray:
    """Bradley-Terry strengths by Hunter's MM algorithm, for many win matrices at once.

    ``wins``: (B, k, k), ``wins[b, i, j]`` = (possibly fractional) wins of i over j. Every item also ties ``prior``
    times with a reference of strength 1 (half a win each way per tie). Returns strengths (B, k), > 0; the reference
    fixes their scale.

    Each MM step is followed by the exact best common factor of the k strengths (the comparisons do not change
    with it, only the ties with the reference do: a 1-D concave problem, a few Newton steps). The likelihood still
    never decreases, and the slow mode of plain MM here (the common scale, held only by the prior) is gone: about
    20x fewer steps."""
    wins = np.asarray(wins, dtype=np.float64)
    games = wins + np.swapaxes(wins, 1, 2)  # (B, k, k) comparisons between i and j
    won = wins.sum(axis=2) + prior / 2  # (B, k) wins, the virtual ties' halves included
    k = won.shape[1]
    log_strength = np.zeros(won.shape)  # (B, k)
    for _ in range(MAX_ITERATIONS):
        strength = np.exp(log_strength)
        pair_sums = strength[:, :, None] + strength[:, None, :]  # (B, k, k)
        denominator = (games / pair_sums).sum(axis=2) + prior / (strength + 1.0)  # (B, k)
        updated = np.log(won / denominator)
        shift = np.zeros((won.shape[0], 1))  # (B, 1) log of the common factor: sum_i sigmoid(log p_i) = k / 2
        for _ in range(4):
            sigmoid = 1.0 / (1.0 + np.exp(-(updated + shift)))
            slope = (sigmoid * (1.0 - sigmoid)).sum(axis=1, keepdims=True)
            shift += np.clip((k / 2 - sigmoid.sum(axis=1, keepdims=True)) / np.maximum(slope, 1e-12), -2.0, 2.0)
        updated += shift
        change = np.abs(updated - log_strength).max(initial=0.0)
        log_strength = updated
        if change < TOLERANCE:
            break
    return np.exp(log_strength)


def to_ratings(strength: np.ndarray) -> np.ndarray:
    """Strengths (..., k) -> ratings on the Elo-like scale, relative to the geometric mean of the k items."""
    logs = np.log10(strength)
    return BASE_RATING + SCALE * (logs - logs.mean(axis=-1, keepdims=True))


def _win_matrix(outcomes: Sequence[VoteOutcomes], k: int) -> np.ndarray:
    """(n votes, k * k): each vote's wins, flattened."""
    matrix = np.zeros((len(outcomes), k * k))
    for row, outcome in enumerate(outcomes):
        for i, j, weight in outcome.wins:
            matrix[row, i * k + j] += weight
    return matrix


def _ratings(outcomes: Sequence[VoteOutcomes], names: Sequence[str], samples: int,
             rng: np.random.Generator) -> list[dict[str, Any]]:
    """One row per item of ``names`` seen in ``outcomes``: rating, low, high, votes, wins (rating order)."""
    seen = sorted({item for outcome in outcomes for item in outcome.items})
    if not seen:
        return []
    position = {item: spot for spot, item in enumerate(seen)}
    local = [VoteOutcomes(o.task, tuple(position[i] for i in o.items),
                          None if o.winner is None else position[o.winner],
                          tuple((position[i], position[j], w) for i, j, w in o.wins)) for o in outcomes]
    k = len(seen)
    per_vote = _win_matrix(local, k)  # (n, k*k)
    point = to_ratings(bradley_terry(per_vote.sum(axis=0).reshape(1, k, k)))[0]  # (k,)
    low = high = [None] * k
    n = len(local)
    if samples > 0:
        chunk = max(1, min(samples, _CHUNK_CELLS // max(n, k * k)))
        draws = []
        for start in range(0, samples, chunk):
            size = min(chunk, samples - start)
            counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size)  # (size, n): each vote's weight
            resampled = (counts @ per_vote).reshape(size, k, k)
            draws.append(to_ratings(bradley_terry(resampled)))
        drawn = np.concatenate(draws)  # (samples, k)
        low = np.percentile(drawn, 2.5, axis=0).tolist()
        high = np.percentile(drawn, 97.5, axis=0).tolist()
    rows = []
    for spot, item in enumerate(seen):
        rows.append({"name": names[item], "rating": round(float(point[spot]), 1),
                     "low": None if low[spot] is None else round(float(low[spot]), 1),
                     "high": None if high[spot] is None else round(float(high[spot]), 1),
                     "votes": sum(spot in o.items for o in local),
                     "wins": sum(o.winner == spot for o in local)})
    rows.sort(key=lambda row: (-row["rating"], row["name"]))
    return rows


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def metric_agreement(votes: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric the answers carry: ``{"agree", "n", "share", "no_pick"}`` over the votes with a reference and a
    real winner (see the module docstring); ``share`` is None when ``n`` is 0. Metrics in core.arena.metrics
    order, then any others by name."""
    counts: dict[str, list[int]] = {}  # metric -> [agree, n, no_pick]
    for vote in votes:
        if not vote.get("reference") or vote.get("winner") in (TIE, ALL_BAD):
            continue
        answers = vote.get("answers") or []
        metrics = {key for answer in answers for key, value in (answer.get("metrics") or {}).items()
                   if _numeric(value)}
        for metric in metrics:
            scored = [(answer["metrics"][metric], answer.get("label")) for answer in answers
                      if _numeric((answer.get("metrics") or {}).get(metric))]
            tally = counts.setdefault(metric, [0, 0, 0])
            best = max(score for score, _ in scored)
            top = [label for score, label in scored if score == best]
            if len(scored) < 2 or len(top) > 1:
                tally[2] += 1
                continue
            tally[0] += top[0] == vote["winner"]
            tally[1] += 1
    order = {name: spot for spot, name in enumerate(METRIC_NAMES)}
    return {metric: {"agree": agree, "n": n, "share": round(agree / n, 4) if n else None, "no_pick": no_pick}
            for metric, (agree, n, no_pick) in sorted(counts.items(),
                                                     key=lambda item: (order.get(item[0], len(order)), item[0]))}


def check_settings(by: str, samples: int) -> None:
    """ConfigError naming the field unless ``by`` is one of BY and ``samples`` an integer from 0 to MAX_SAMPLES."""
    if by not in ITEM_NAMES:
        raise ConfigError(f"by: must be one of {', '.join(BY)}, got {by!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= MAX_SAMPLES:
        raise ConfigError(f"samples: must be an integer from 0 to {MAX_SAMPLES}, got {samples!r}")


def leaderboard(votes: Sequence[dict[str, Any]], *, by: str = "variant", samples: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """Ratings of the items of ``votes`` (``by``: variant or method) overall and per task, with intervals from
    ``samples`` bootstrap resamples (0: no intervals, ``low``/``high`` None), and metric agreement.

    Returns ``{"by", "votes", "ties", "all_bad", "samples", "items": [{"name", "rating", "low", "high", "votes",
    "wins", "by_task": {task: {"rating", "low", "high", "votes", "wins"}}}], "by_task": {task: {"votes", "items"}},
    "agreement": {metric: {"agree", "n", "share", "no_pick"}}}``, items best first."""
    check_settings(by, samples)
    index: dict[str, int] = {}
    outcomes = [vote_outcomes(vote, index, ITEM_NAMES[by]) for vote in votes]
    names = list(index)
    rng = np.random.default_rng(seed)
    items = _ratings(outcomes, names, samples, rng)
    tasks = sorted({outcome.task for outcome in outcomes})
    by_task: dict[str, dict[str, Any]] = {}
    for task in tasks:
        chosen = [outcome for outcome in outcomes if outcome.task == task]
        by_task[task] = {"votes": len(chosen), "items": _ratings(chosen, names, samples, rng)}
    for item in items:
        item["by_task"] = {task: {key: value for key, value in row.items() if key != "name"}
                           for task in tasks for row in by_task[task]["items"] if row["name"] == item["name"]}
    return {"by": by, "votes": len(outcomes), "ties": sum(vote.get("winner") == TIE for vote in votes),
            "all_bad": sum(vote.get("winner") == ALL_BAD for vote in votes), "samples": samples,
            "items": items, "by_task": by_task, "agreement": metric_agreement(votes)}


__all__ = ["BY", "ITEM_NAMES", "VoteOutcomes", "bradley_terry", "check_settings", "leaderboard", "method_name",
           "metric_agreement", "to_ratings", "variant_name", "vote_outcomes"]
