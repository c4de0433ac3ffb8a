"""The verdict of an evaluation: per task, which variant wins, by how much, how sure we are, and at what cost.

Pure functions over an evaluation's rows (one dict per (example, variant), as in results.json: ``id``, ``task``,
``variant``, ``available``, ``metrics``, ``prompt_tokens``, ``latency_s``, ``new_tokens``, ``slice``)::

    comparisons = compare(rows)                          # every pair of variants of each task, paired tests
    cost = cost_table(rows, runs, index_build_s)         # what each variant costs to run and to build
    verdicts = verdict(rows, comparisons, cost)          # task -> winner, margin, status and a sentence
    by_slice = slices(rows)                              # knowledge vs behaviour: scores, pairs and leaders

Rows with ``available`` False are left out everywhere; ``task`` None is "default". Everything returned is
JSON-ready (str, int, float, bool, None, lists and dicts); sentences are built only from the returned numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from core.arena.metrics import CLASSIFICATION_TASK, bootstrap_ci
from core.arena.stats import holm, mcnemar_exact, paired_bootstrap, paired_permutation_p
from core.arena.strategies import STRATEGIES

logger = logging.getLogger(__name__)

PRIMARY_METRIC: dict[str, str] = {CLASSIFICATION_TASK: "accuracy"}  # task -> the metric its verdict is judged on
DEFAULT_METRIC = "rougeL"  # every other task
FALLBACK_METRICS = ("token_f1", "rougeL", "similarity", "contains")  # when a task's rows lack its primary metric
BINARY_METRICS = frozenset({"accuracy", "exact_match", "contains"})  # 0/1 per example: McNemar, not permutation
RUN_COSTS = ("trainable_params", "adapter_bytes", "peak_mem_bytes")  # copied from a run's result.json
ALPHA = 0.05  # a difference is called when its Holm-adjusted p is below this (and its CI excludes 0)
THIN_N = 10  # fewer paired rows than this: "thin", no winner called
SLICE_ORDER = ("knowledge", "behaviour")
SLICE_METRICS = ("rougeL", "token_f1", "accuracy", "contains", "similarity", "bleu")  # compared within each slice
POOLED = "all"  # the ``task`` of a slice's comparisons: every task of the slice pooled (by_task's "all")

Row = Mapping[str, Any]
Scores = dict[str, dict[Any, float]]  # variant -> example id -> score


def _task(row: Row) -> str:
    return row.get("task") or "default"


def _strategy(variant: str) -> str:
    """The strategy part of a variant name: ``finetuned@run-1`` -> ``finetuned``."""
    return variant.split("@", 1)[0]


def _fact(variant: str, name: str) -> bool:
    """A fact of the variant's strategy (core.arena.strategies): uses_adapter, uses_retrieval, generates."""
    strategy = STRATEGIES.get(_strategy(variant))
    return bool(getattr(strategy, name)) if strategy is not None else name == "generates"


def is_baseline(variant: str) -> bool:
    """A strategy that generates nothing (nearest_answer copies a training answer): a reference point, compared and
    reported, never the winner."""
    return not _fact(variant, "generates")


def _available(rows: Iterable[Row]) -> list[Row]:
    return [row for row in rows if row.get("available", True)]


def _value(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _scores(rows: Iterable[Row], task: str, metric: str) -> Scores:
    """variant -> {id: score} on ``metric`` for the rows of ``task`` that have a value, in row order."""
    table: Scores = {}
    for row in rows:
        value = _value((row.get("metrics") or {}).get(metric))
        if _task(row) == task and value is not None:
            table.setdefault(row["variant"], {})[row["id"]] = value
    return table


def _ranked(table: Scores) -> list[tuple[str, float]]:
    """(variant, mean) by mean descending, then by name."""
    means = [(variant, float(np.mean(list(scores.values())))) for variant, scores in table.items() if scores]
    return sorted(means, key=lambda item: (-item[1], item[0]))


def primary_metric(rows: Sequence[Row], task: str, primary: str | Mapping[str, str] | None = None) -> str | None:
    """The metric ``task`` is judged on: ``primary`` (one name, or task -> name), else PRIMARY_METRIC's or
    DEFAULT_METRIC; when no available row of the task has it, the first of FALLBACK_METRICS that one has; else None."""
    if isinstance(primary, str):
        wanted = primary
    else:
        wanted = (primary or {}).get(task) or PRIMARY_METRIC.get(task, DEFAULT_METRIC)
    present = {metric for row in _available(rows) if _task(row) == task
               for metric, value in (row.get("metrics") or {}).items() if _value(value) is not None}
    for metric in (wanted, *FALLBACK_METRICS):
        if metric in present:
            if metric != wanted:
                logger.info("task %s: no %s scores, judging it on %s", task, wanted, metric)
            return metric
    return None


def _pair(task: str, metric: str, a: str, b: str, table: Scores, *, alpha: float, seed: int,
          ) -> dict[str, Any] | None:
    """The paired comparison of a and b on the ids both have (p_holm and significant filled in by compare)."""
    ids = [key for key in table[a] if key in table[b]]
    if not ids:
        logger.info("task %s: %s and %s share no scored example; not compared", task, a, b)
        return None
    x, y = [table[a][key] for key in ids], [table[b][key] for key in ids]
    if metric in BINARY_METRICS and all(value in (0.0, 1.0) for value in x + y):
        test, (_, _, p) = "mcnemar", mcnemar_exact(x, y)
    else:
        test, p = "permutation", paired_permutation_p(x, y, seed=seed)
    diff, low, high = paired_bootstrap(x, y, seed=seed, confidence=1.0 - alpha)
    return {"task": task, "metric": metric, "a": a, "b": b, "mean_a": float(np.mean(x)), "mean_b": float(np.mean(y)),
            "diff": diff, "ci": [low, high], "p": p, "p_holm": p, "n": len(ids), "test": test, "significant": False}


def significant(comparison: Mapping[str, Any], alpha: float = ALPHA) -> bool:
    """Whether a comparison (``ci`` and ``p_holm``) calls a difference: p_holm < alpha and the interval excludes 0."""
    low, high = comparison["ci"]
    return comparison["p_holm"] < alpha and (low > 0 or high < 0)


def compare(rows: Sequence[Row], *, primary: str | Mapping[str, str] | None = None, alpha: float = ALPHA,
            seed: int = 0) -> list[dict[str, Any]]:
    """Every pair of variants of every task, on its primary metric and the examples both scored.

    One dict per pair, ``a`` the variant with the higher mean over all its rows: ``{"task", "metric", "a", "b",
    "mean_a", "mean_b" (on the n shared rows), "diff" (mean_a - mean_b), "ci": [low, high] (paired bootstrap,
    confidence 1 - alpha), "p" (McNemar for 0/1 metrics, else sign-flip permutation), "p_holm" (Holm over the
    pairs of the task), "n", "test": "mcnemar" | "permutation", "significant" (p_holm < alpha, ci excludes 0)}``.
    """
    usable = _available(rows)
    comparisons: list[dict[str, Any]] = []
    for task in sorted({_task(row) for row in usable}):
        metric = primary_metric(usable, task, primary)
        if metric is None:
            logger.info("task %s: no metric to judge it on; not compared", task)
            continue
        table = _scores(usable, task, metric)
        ranked = [variant for variant, _ in _ranked(table)]
        pairs = [pair for i, a in enumerate(ranked) for b in ranked[i + 1:]
                 if (pair := _pair(task, metric, a, b, table, alpha=alpha, seed=seed)) is not None]
        for pair, adjusted in zip(pairs, holm([pair["p"] for pair in pairs]), strict=True):
            pair["p_holm"] = adjusted
            pair["significant"] = significant(pair, alpha)
        comparisons.extend(pairs)
    return comparisons


def _mean(values: Iterable[Any]) -> float | None:
    kept = [v for v in (_value(value) for value in values) if v is not None]
    return float(np.mean(kept)) if kept else None


def cost_table(rows: Sequence[Row], runs: Mapping[str, Mapping[str, Any]] | None = None,
               index_build_s: float | None = None) -> dict[str, dict[str, Any]]:
    """variant -> its cost, every key always present: ``{"n" (available rows), "prompt_tokens", "latency_s" (s per
    answer: the row's ``generate_s``, from its own prefill to its last token, where the row has one — a batch
    evaluation's ``latency_s`` counts from the start of the whole run — else its ``latency_s``), "new_tokens"
    (means over its available rows; None when none), "train_wall_s" (s), "trainable_params",
    "adapter_bytes", "peak_mem_bytes" (from ``runs[variant]``, its run's result.json, for a ``finetuned*`` variant;
    else or missing: None), "index_build_s" (s; for rag and finetuned_rag, else None), "training", "retrieval"}``."""
    runs = runs or {}
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row["variant"], [])
        if row.get("available", True):
            grouped[row["variant"]].append(row)
    table: dict[str, dict[str, Any]] = {}
    for variant, done in grouped.items():
        training = _fact(variant, "uses_adapter")
        retrieval = _fact(variant, "uses_retrieval")
        entry: dict[str, Any] = {"n": len(done)}
        entry.update({key: _mean(row.get(key) for row in done) for key in ("prompt_tokens", "new_tokens")})
        entry["latency_s"] = _mean(row["generate_s"] if row.get("generate_s") is not None else row.get("latency_s")
                                   for row in done)
        run = (runs.get(variant) or {}) if training else {}
        entry["train_wall_s"] = run.get("train_wall_s", run.get("wall_s"))
        entry.update({key: run.get(key) for key in RUN_COSTS})
        entry.update(index_build_s=index_build_s if retrieval else None, training=training, retrieval=retrieval)
        table[variant] = entry
    return table


def _cheapness(variant: str, cost: Mapping[str, Mapping[str, Any]]) -> tuple[bool, float, bool, float, float]:
    """Sort key, cheapest first: (needs training, training wall s, needs retrieval, prompt tokens, latency s);
    an unknown number counts as dearest."""
    entry = cost.get(variant) or {}
    training = bool(entry.get("training", _fact(variant, "uses_adapter")))
    retrieval = bool(entry.get("retrieval", _fact(variant, "uses_retrieval")))

    def known(key: str) -> float:
        value = _value(entry.get(key))
        return math.inf if value is None else value

    return training, known("train_wall_s") if training else 0.0, retrieval, known("prompt_tokens"), known("latency_s")


def _find(comparisons: Sequence[Mapping[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """The comparison of a with b, turned so that ``a`` is a (diff and ci negated when it was stored as b vs a)."""
    for c in comparisons:
        if (c["a"], c["b"]) == (a, b):
            return dict(c)
        if (c["a"], c["b"]) == (b, a):
            low, high = c["ci"]
            return {**c, "a": a, "b": b, "mean_a": c["mean_b"], "mean_b": c["mean_a"], "diff": -c["diff"] + 0.0,
                    "ci": [-high + 0.0, -low + 0.0]}  # + 0.0: a zero stays 0.0, never -0.0 ("-0.00")
    return None


def format_p(p: float) -> str:
    """``p < 0.001``, ``p = 0.031``, ``p = 0.31``."""
    return "p < 0.001" if p < 0.001 else (f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}")


def _sentence(task: str, v: Mapping[str, Any], cost: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence from the numbers of a task's verdict ``v`` (2 decimals; n as an integer)."""
    w, r, n = v["winner"], v["runner_up"], v["n"]
    copying = v["copying"]
    copy = ""
    if copying is not None and copying.get("better"):
        copy = f", but copying the nearest training answer does better ({copying['mean']:.2f})"
    elif copying is not None and not copying["beaten"]:
        copy = f", but {w} does not beat copying the nearest training answer ({copying['mean']:.2f})"
    if v["status"] == "single":
        return f"{task}: only {w} ({v['winner_mean']:.2f}) was scored, nothing to compare it with{copy}; n = {n}."
    pair = f"{w} ({v['winner_mean']:.2f})", f"{r} ({v['runner_up_mean']:.2f})"
    if v["margin"] is None:
        return f"{task}: only n = {n} rows: {pair[0]} and {pair[1]} share no scored example{copy}."
    low, high = v["ci"]
    numbers = f"{v['margin']:+.2f} [{low:.2f}, {high:.2f}], {format_p(v['p_holm'])} (Holm)"
    if v["status"] == "thin":
        return f"{task}: only n = {n} rows: {pair[0]} vs {pair[1]}: {numbers}, too few to call{copy}."
    if v["status"] == "tie":
        return (f"{task}: no significant difference between {pair[0]} and {pair[1]}: {numbers}; "
                f"the cheapest of them is {v['cheapest_equivalent']}{copy}; n = {n}.")
    training = bool((cost.get(w) or {}).get("training", _fact(w, "uses_adapter")))
    price = "at the cost of fine-tuning" if training else "at no training cost"
    cheaper = (f"; {v['cheapest_equivalent']} is cheaper and not significantly worse"
               if v["cheapest_equivalent"] != w else "")
    return f"{task}: {pair[0]} beats {pair[1]} by {numbers}, {price}{cheaper}{copy}; n = {n}."


def _copying(near: str, means: Mapping[str, float], versus: Mapping[str, Any] | None, alpha: float,
             ) -> dict[str, Any]:
    """The copying baseline against the winner: its mean, and ``diff`` (winner - copying), ``ci``, ``p_holm`` on the
    rows both scored (None when they share none); ``beaten``: the winner is significantly better, ``better``:
    copying is significantly better."""
    called = versus is not None and significant(versus, alpha)
    return {"variant": near, "mean": means[near], "beaten": called and versus["diff"] > 0,
            "better": called and versus["diff"] < 0, "diff": versus["diff"] if versus else None,
            "ci": versus["ci"] if versus else None, "p_holm": versus["p_holm"] if versus else None,
            "n": versus["n"] if versus else None}


def _leader(table: Scores, pairs: Sequence[Mapping[str, Any]], alpha: float,
            ) -> tuple[dict[str, float], list[str], Mapping[str, Any] | None, str]:
    """Who leads ``table`` and how firmly: (means by variant, best first; the contenders in that order, baselines
    aside unless only baselines scored; the leader's pair against the runner-up in ``pairs`` (None without one);
    status: "single" (one contender), "thin" (no pair, or fewer than THIN_N paired rows), "win" (the pair is
    significant after Holm and the leader is ahead) or "tie")."""
    ranked = _ranked(table)
    contenders = [variant for variant, _ in ranked if not is_baseline(variant)] or [variant for variant, _ in ranked]
    head = _find(pairs, contenders[0], contenders[1]) if len(contenders) > 1 else None
    if len(contenders) == 1:
        status = "single"
    elif head is None or head["n"] < THIN_N:
        status = "thin"
    else:
        status = "win" if significant(head, alpha) and head["diff"] > 0 else "tie"
    return dict(ranked), contenders, head, status


def _task_verdict(task: str, metric: str, table: Scores, comparisons: Sequence[Mapping[str, Any]],
                  cost: Mapping[str, Mapping[str, Any]], alpha: float) -> dict[str, Any]:
    means, contenders, head, status = _leader(table, comparisons, alpha)
    winner, runner_up = contenders[0], contenders[1] if len(contenders) > 1 else None
    enough = min(THIN_N, head["n"]) if head else 0  # "not significantly worse" on 3 rows says nothing
    equivalent = [winner] + [v for v in contenders[1:] if (c := _find(comparisons, winner, v)) is not None
                             and c["n"] >= enough and not (significant(c, alpha) and c["diff"] > 0)]
    order = {variant: i for i, variant in enumerate(contenders)}
    zero = _find(comparisons, winner, "zero_shot") if winner != "zero_shot" else None
    near = next((variant for variant in means if is_baseline(variant) and variant != winner), None)
    near_vs = _find(comparisons, winner, near) if near is not None else None
    n = head["n"] if head else len(table[winner]) if runner_up is None else 0
    result: dict[str, Any] = {
        "metric": metric, "n": n, "means": means, "winner": winner,
        "winner_mean": head["mean_a"] if head else means[winner], "runner_up": runner_up,
        "runner_up_mean": head["mean_b"] if head else means.get(runner_up) if runner_up else None,
        "margin": head["diff"] if head else None, "ci": head["ci"] if head else None,
        "p": head["p"] if head else None, "p_holm": head["p_holm"] if head else None,
        "vs_zero_shot": ({"diff": zero["diff"], "ci": zero["ci"], "p_holm": zero["p_holm"]} if zero else None),
        "cheapest_equivalent": min(equivalent, key=lambda v: (_cheapness(v, cost), order[v])),
        "copying": _copying(near, means, near_vs, alpha) if near is not None else None,
        "status": status,
    }
    result["sentence"] = _sentence(task, result, cost)
    return result


def verdict(rows: Sequence[Row], comparisons: Sequence[Mapping[str, Any]], cost: Mapping[str, Mapping[str, Any]],
            *, alpha: float = ALPHA, primary: str | Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """task -> ``{"metric", "n", "means": {variant: mean}, "winner", "winner_mean", "runner_up", "runner_up_mean",
    "margin", "ci", "p", "p_holm", "vs_zero_shot": {"diff", "ci", "p_holm"} | None, "cheapest_equivalent",
    "copying": {"variant", "mean", "beaten", "better", "diff", "ci", "p_holm", "n"} | None, "status": "single" |
    "thin" | "tie" | "win", "sentence"}``.

    The winner is the non-baseline variant with the highest mean; margin/ci/p compare it with the runner-up on the
    ``n`` rows both scored (winner_mean and runner_up_mean are on those rows too; ``means`` on all of each one's).
    ``comparisons`` and ``cost`` are what :func:`compare` and :func:`cost_table` returned.
    """
    usable = _available(rows)
    verdicts: dict[str, dict[str, Any]] = {}
    for task in sorted({_task(row) for row in usable}):
        pairs = [c for c in comparisons if c["task"] == task]
        metric = pairs[0]["metric"] if pairs else primary_metric(usable, task, primary)
        table = _scores(usable, task, metric) if metric is not None else {}
        if not table:
            logger.info("task %s: nothing scored; no verdict", task)
            continue
        verdicts[task] = _task_verdict(task, metric, table, pairs, cost, alpha)
    return verdicts


def _slice_leader(table: Scores, pairs: Sequence[Mapping[str, Any]], alpha: float) -> dict[str, Any]:
    """The best variant of a slice on one metric against the next best, judged as a verdict's winner is (baselines
    aside): ``{"variant", "mean", "runner_up", "runner_up_mean" (means on all their rows), "diff", "ci", "p_holm",
    "n" (the pair's, on the rows both scored; None without a pair), "status"}``; status "win" only when the
    Holm-adjusted pair is significant on THIN_N rows or more, else "tie", "thin" or "single"."""
    means, contenders, head, status = _leader(table, pairs, alpha)
    leader, runner_up = contenders[0], contenders[1] if len(contenders) > 1 else None
    return {"variant": leader, "mean": means[leader], "runner_up": runner_up,
            "runner_up_mean": means[runner_up] if runner_up is not None else None,
            **{key: head[key] if head else None for key in ("diff", "ci", "p_holm", "n")}, "status": status}


def _slice_pairs(rows: Sequence[Row], metrics: Iterable[str], *, alpha: float, seed: int,
                 ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(comparisons, leaders) of one slice's rows: per metric of SLICE_METRICS that it has, every pair of variants on
    the slice's examples (every task pooled, ``task`` POOLED) as :func:`compare` makes them, Holm across the pairs of
    that slice and metric, and the metric's leader (:func:`_slice_leader`)."""
    pooled = [{**row, "task": POOLED} for row in _available(rows)]
    comparisons: list[dict[str, Any]] = []
    leaders: dict[str, dict[str, Any]] = {}
    for metric in (name for name in SLICE_METRICS if name in metrics):
        table = _scores(pooled, POOLED, metric)
        if not table:
            continue
        pairs = compare(pooled, primary=metric, alpha=alpha, seed=seed)
        comparisons.extend(pairs)
        leaders[metric] = _slice_leader(table, pairs, alpha)
    return comparisons, leaders


def slices(rows: Sequence[Row], *, n_resamples: int = 1000, seed: int = 0, alpha: float = ALPHA,
           ) -> dict[str, dict[str, Any]]:
    """slice -> ``{"n": examples, "summary": {variant: {metric: {"mean", "low", "high", "n"}}}, "comparisons":
    [pairs as compare returns them, "task": POOLED], "leaders": {metric: leader}}`` for the slices that occur in the
    rows' ``slice`` field (knowledge, behaviour, then any other by name); rows without one are left out. Intervals
    are :func:`core.arena.metrics.bootstrap_ci`'s. Comparisons and leaders cover the SLICE_METRICS the slice has:
    every pair of variants on the slice's examples (its tasks pooled), the same tests as :func:`compare`, Holm
    within the slice (across its pairs on that metric); a leader is called ("status" "win") only when it is
    significantly better than the next best variant (:func:`_slice_leader`)."""
    examples: dict[str, set[Any]] = {}
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in rows:
        name = row.get("slice")
        if not name:
            continue
        examples.setdefault(name, set()).add(row["id"])
        if not row.get("available", True):
            continue
        metrics = grouped.setdefault(name, {}).setdefault(row["variant"], {})
        for metric, value in (row.get("metrics") or {}).items():
            if (number := _value(value)) is not None:
                metrics.setdefault(metric, []).append(number)
    result: dict[str, dict[str, Any]] = {}
    for name in sorted(examples, key=lambda s: (SLICE_ORDER.index(s) if s in SLICE_ORDER else len(SLICE_ORDER), s)):
        summary: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for variant, metrics in grouped.get(name, {}).items():
            for metric, values in metrics.items():
                mean, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
                summary.setdefault(variant, {})[metric] = {"mean": mean, "low": low, "high": high, "n": len(values)}
        chosen = [row for row in rows if row.get("slice") == name]
        comparisons, leaders = _slice_pairs(chosen, {m for stats in summary.values() for m in stats}, alpha=alpha,
                                            seed=seed)
        result[name] = {"n": len(examples[name]), "summary": summary, "comparisons": comparisons, "leaders": leaders}
    return result


__all__ = ["ALPHA", "is_baseline", "DEFAULT_METRIC", "FALLBACK_METRICS", "POOLED", "PRIMARY_METRIC", "SLICE_METRICS",
           "THIN_N", "compare", "cost_table", "format_p", "primary_metric", "significant", "slices", "verdict"]
