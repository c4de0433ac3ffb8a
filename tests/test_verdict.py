"""core.arena.verdict: comparisons, cost table, the per-task verdict and its sentence, slices, on synthetic rows."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from core.arena.verdict import compare, cost_table, format_p, primary_metric, slices, verdict

PROMPT_TOKENS = {"zero_shot": 40, "few_shot": 320, "rag": 510, "finetuned": 40, "finetuned_rag": 510,
                 "finetuned_few_shot": 320, "nearest_answer": 0}


def _rows(task: str | None, table: Mapping[str, list[float | None]], metric: str, *, prefix: str = "",
          slice_of: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (example, variant); ``table`` variant -> one score per example (None: not scored)."""
    rows = []
    for variant, values in table.items():
        for i, value in enumerate(values):
            row = {"id": f"{prefix or task}-{i}", "task": task, "variant": variant, "available": True,
                   "metrics": {metric: value, "bleu": 0.1}, "prompt_tokens": PROMPT_TOKENS.get(variant, 100),
                   "latency_s": 0.5 + PROMPT_TOKENS.get(variant, 100) / 1000, "new_tokens": 12}
            if slice_of is not None:
                row["slice"] = slice_of[i]
            rows.append(row)
    return rows


def _judge(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    comparisons = compare(rows)
    return verdict(rows, comparisons, cost_table(rows, runs or {}, index_build_s=3.5))


def _classification(n: int = 30) -> list[dict[str, Any]]:
    few = [1.0] * 24 + [0.0] * (n - 24)  # 0.80
    tuned = [1.0] * 11 + [0.0] * (n - 11)  # 0.37; right only where few_shot is right: 13 discordant pairs, 0 back
    zero = [1.0] * 9 + [0.0] * (n - 9)  # 0.30
    return _rows("classification", {"zero_shot": zero, "few_shot": few, "finetuned": tuned}, "accuracy")


def _noisy(n: int, means: Mapping[str, float], *, seed: int = 0, sd: float = 0.05) -> dict[str, list[float | None]]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 0.2, size=n)
    return {v: [float(x) for x in np.clip(base + m + rng.normal(0, sd, size=n), 0, 1)] for v, m in means.items()}


# ---------------------------------------------------------------------------------------------------- the sentence


def _numbers_of(value: Any) -> set[str]:
    """Every way a number of the verdict may be written in its sentence."""
    if isinstance(value, Mapping):
        return set().union(*(_numbers_of(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_numbers_of(v) for v in value)) if value else set()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return set()
    if isinstance(value, int):
        return {str(value)}
    return {f"{value:.2f}", f"{value:+.2f}", f"{value:.3f}"}


def assert_sentence_from_data(v: Mapping[str, Any]) -> None:
    sentence = v["sentence"]
    if "p < 0.001" in sentence:
        assert v["p_holm"] < 0.001
        sentence = sentence.replace("p < 0.001", "")
    found = re.findall(r"[+-]?\d+(?:\.\d+)?", sentence)
    assert found or v["status"] == "single"
    missing = [number for number in found if number not in _numbers_of(v)]
    assert not missing, f"{missing} in {v['sentence']!r} are not numbers of the verdict"
    for key in ("winner", "runner_up"):
        if v[key] is not None:
            assert v[key] in sentence


# ---------------------------------------------------------------------------------------------------- verdicts


def test_clear_win_on_classification() -> None:
    rows = _classification()
    comparisons = compare(rows)
    assert [(c["a"], c["b"]) for c in comparisons] == [("few_shot", "finetuned"), ("few_shot", "zero_shot"),
                                                       ("finetuned", "zero_shot")]
    assert {c["test"] for c in comparisons} == {"mcnemar"} and {c["metric"] for c in comparisons} == {"accuracy"}
    head = comparisons[0]
    assert head["n"] == 30 and head["diff"] == pytest.approx(13 / 30) and head["p"] == pytest.approx(2 / 2**13)
    assert head["p_holm"] == pytest.approx(2 * 2 / 2**13)  # the second smallest of three p-values: x2
    assert head["significant"] and not comparisons[2]["significant"]  # 2 discordant pairs: p = 0.5

    v = _judge(rows)["classification"]
    assert (v["status"], v["winner"], v["runner_up"], v["metric"], v["n"]) == ("win", "few_shot", "finetuned",
                                                                               "accuracy", 30)
    assert v["means"] == pytest.approx({"few_shot": 0.8, "finetuned": 11 / 30, "zero_shot": 0.3})
    assert v["margin"] == pytest.approx(13 / 30) and v["ci"][0] > 0
    assert v["vs_zero_shot"]["diff"] == pytest.approx(0.5) and v["vs_zero_shot"]["p_holm"] < 0.05
    assert v["cheapest_equivalent"] == "few_shot" and v["copying"] is None
    assert v["sentence"].startswith("classification: few_shot (0.80) beats finetuned (0.37) by +0.43 [")
    assert "p < 0.001 (Holm), at no training cost; n = 30." in v["sentence"]
    assert_sentence_from_data(v)


def test_tie_names_the_cheapest() -> None:
    rows = _rows("qa", _noisy(30, {"rag": 0.16, "finetuned_rag": 0.15, "zero_shot": 0.02}), "rougeL")
    v = _judge(rows)["qa"]
    assert v["status"] == "tie" and v["winner"] == "rag" and v["runner_up"] == "finetuned_rag"
    assert v["ci"][0] < 0 < v["ci"][1] and v["p_holm"] >= 0.05
    assert v["cheapest_equivalent"] == "rag"
    assert v["sentence"].startswith("qa: no significant difference between rag (")
    assert "; the cheapest of them is rag; n = 30." in v["sentence"]
    assert {c["test"] for c in compare(rows)} == {"permutation"}
    assert_sentence_from_data(v)


def test_thin_data() -> None:
    rows = _rows("qa", {"rag": [0.9, 0.8, 0.7, 0.8], "zero_shot": [0.1, 0.2, 0.1, 0.2]}, "rougeL")
    v = _judge(rows)["qa"]
    assert v["status"] == "thin" and v["n"] == 4
    assert v["sentence"].startswith("qa: only n = 4 rows: rag (0.80) vs zero_shot (0.15): +0.65 [")
    assert "p = 0.12 (Holm)" in v["sentence"]  # 4 positive differences: exact p = 2 / 16 = 0.125
    assert_sentence_from_data(v)


def test_single_variant() -> None:
    rows = _rows("qa", {"rag": [0.5, 0.6, 0.7]}, "rougeL")
    assert compare(rows) == []
    v = _judge(rows)["qa"]
    assert v["status"] == "single" and v["winner"] == "rag" and v["runner_up"] is None
    assert v["margin"] is None and v["ci"] is None and v["p_holm"] is None and v["vs_zero_shot"] is None
    assert v["winner_mean"] == pytest.approx(0.6) and v["n"] == 3
    assert v["sentence"] == "qa: only rag (0.60) was scored, nothing to compare it with; n = 3."
    assert_sentence_from_data(v)


def test_missing_primary_metric_falls_back() -> None:
    rows = _rows("qa", _noisy(12, {"rag": 0.5, "zero_shot": 0.1}), "token_f1")  # no rougeL anywhere
    rows += _rows("classification", _noisy(12, {"few_shot": 0.9, "zero_shot": 0.4}), "contains")  # no accuracy
    for row in rows:
        row["metrics"].pop("bleu")
    assert primary_metric(rows, "qa") == "token_f1" and primary_metric(rows, "classification") == "contains"
    assert primary_metric(rows, "qa", "bleu") == "token_f1"  # an asked-for metric that is absent falls back too
    verdicts = _judge(rows)
    assert verdicts["qa"]["metric"] == "token_f1" and verdicts["classification"]["metric"] == "contains"
    assert verdicts["qa"]["status"] == "win"
    no_metric = [{**row, "metrics": {"bleu": 0.2}} for row in rows if row["task"] == "qa"]
    assert primary_metric(no_metric, "qa") is None
    assert compare(no_metric) == [] and _judge(no_metric) == {}


def test_unavailable_rows_are_left_out() -> None:
    rows = _rows(None, _noisy(20, {"rag": 0.3, "zero_shot": 0.1}), "rougeL")
    rows[0]["available"] = False  # rag's first row: a perfect score it never earned
    rows[0]["metrics"]["rougeL"] = 1.0
    rows += [{"id": f"None-{i}", "task": None, "variant": "finetuned", "available": False, "error": "no run",
              "metrics": {"rougeL": 1.0}, "prompt_tokens": 0, "latency_s": None, "new_tokens": 0} for i in range(20)]
    comparisons = compare(rows)
    assert [(c["a"], c["b"], c["n"]) for c in comparisons] == [("rag", "zero_shot", 19)]
    assert comparisons[0]["mean_a"] == pytest.approx(np.mean([r["metrics"]["rougeL"] for r in rows[1:20]]))
    cost = cost_table(rows, {})
    assert cost["finetuned"]["n"] == 0 and cost["finetuned"]["prompt_tokens"] is None and cost["rag"]["n"] == 19
    v = verdict(rows, comparisons, cost)["default"]
    assert set(v["means"]) == {"rag", "zero_shot"} and v["n"] == 19
    assert_sentence_from_data(v)


def test_cheapest_equivalent_prefers_few_shot_over_a_tied_finetune() -> None:
    table = _noisy(30, {"finetuned": 0.41, "few_shot": 0.40, "rag": 0.40, "zero_shot": 0.05}, sd=0.08)
    rows = _rows("qa", table, "rougeL")
    runs = {"finetuned": {"wall_s": 812.0, "trainable_params": 460800, "adapter_bytes": 1_843_200,
                          "peak_mem_bytes": 2_000_000_000}}
    v = _judge(rows, runs)["qa"]
    assert v["winner"] == "finetuned" and v["status"] == "tie"
    assert v["cheapest_equivalent"] == "few_shot"  # no training, no retrieval; zero_shot is significantly worse
    assert "the cheapest of them is few_shot" in v["sentence"]
    assert_sentence_from_data(v)


def test_a_win_names_a_cheaper_equivalent() -> None:
    tuned = [0.7 + 0.1 * math.sin(i) for i in range(30)]
    rag = [x - 0.1 for x in tuned]  # always 0.10 behind: significantly worse
    few = [tuned[i] - 0.15 + (0.3 if i % 2 else -0.3) for i in range(12)] + [None] * 18  # noisy: not worse
    v = _judge(_rows("qa", {"finetuned": tuned, "rag": rag, "few_shot": few}, "rougeL"))["qa"]
    assert (v["status"], v["winner"], v["runner_up"], v["cheapest_equivalent"]) == ("win", "finetuned", "rag",
                                                                                     "few_shot")
    assert v["sentence"] == ("qa: finetuned (0.70) beats rag (0.60) by +0.10 [0.10, 0.10], p < 0.001 (Holm), at the "
                             "cost of fine-tuning; few_shot is cheaper and not significantly worse; n = 30.")
    assert_sentence_from_data(v)
    # On only 4 shared rows "not significantly worse" says nothing: few_shot no longer counts as equivalent.
    few = [tuned[i] - 0.15 + (0.3 if i % 2 else -0.3) for i in range(4)] + [None] * 26
    v = _judge(_rows("qa", {"finetuned": tuned, "rag": rag, "few_shot": few}, "rougeL"))["qa"]
    assert v["cheapest_equivalent"] == "finetuned" and "cheaper" not in v["sentence"]


def test_nearest_answer_clause() -> None:
    table = _noisy(30, {"nearest_answer": 0.26, "rag": 0.25, "zero_shot": 0.02})  # level: no significant difference
    v = _judge(_rows("qa", table, "rougeL"))["qa"]
    assert v["winner"] == "rag" and v["runner_up"] == "zero_shot"  # copying is a baseline, never the winner
    copying = v["copying"]
    assert (copying["variant"], copying["beaten"], copying["better"]) == ("nearest_answer", False, False)
    assert copying["mean"] == pytest.approx(v["means"]["nearest_answer"]) and copying["n"] == 30
    pair = next(c for c in compare(_rows("qa", table, "rougeL")) if {c["a"], c["b"]} == {"rag", "nearest_answer"})
    assert copying["diff"] == pytest.approx(pair["mean_b" if pair["a"] == "nearest_answer" else "mean_a"]
                                            - pair["mean_a" if pair["a"] == "nearest_answer" else "mean_b"])
    assert copying["p_holm"] == pair["p_holm"] >= 0.05  # winner - copying, with the pair's own Holm p
    assert v["sentence"].endswith(
        f", but rag does not beat copying the nearest training answer ({v['copying']['mean']:.2f}); n = 30.")
    assert_sentence_from_data(v)

    beaten = _judge(_rows("qa", _noisy(30, {"nearest_answer": 0.1, "rag": 0.6, "zero_shot": 0.02}), "rougeL"))["qa"]
    assert beaten["copying"]["beaten"] is True and "copying" not in beaten["sentence"]
    assert beaten["copying"]["diff"] > 0 and beaten["copying"]["ci"][0] > 0


def test_copying_that_does_significantly_better_is_said_so() -> None:
    better = _judge(_rows("qa", _noisy(30, {"nearest_answer": 0.6, "rag": 0.3, "zero_shot": 0.02}), "rougeL"))["qa"]
    copying = better["copying"]
    assert better["winner"] == "rag" and copying["better"] is True and copying["beaten"] is False
    assert copying["diff"] < 0 and copying["ci"][1] < 0 and copying["p_holm"] < 0.05
    assert better["sentence"].endswith(
        f", but copying the nearest training answer does better ({copying['mean']:.2f}); n = 30.")
    assert_sentence_from_data(better)


def test_cost_table() -> None:
    rows = _rows("qa", _noisy(5, {v: 0.3 for v in ("zero_shot", "rag", "finetuned@run-1", "finetuned_rag")}), "rougeL")
    runs = {"finetuned@run-1": {"wall_s": 120.5, "trainable_params": 1000, "adapter_bytes": 4000,
                                "peak_mem_bytes": 10**9, "train_loss": 1.2}}
    cost = cost_table(rows, runs, index_build_s=2.25)
    assert cost["zero_shot"] == {"n": 5, "prompt_tokens": 40.0, "latency_s": pytest.approx(0.54), "new_tokens": 12.0,
                                 "train_wall_s": None, "trainable_params": None, "adapter_bytes": None,
                                 "peak_mem_bytes": None, "index_build_s": None, "training": False, "retrieval": False}
    assert cost["rag"]["retrieval"] and cost["rag"]["index_build_s"] == 2.25 and not cost["rag"]["training"]
    assert cost["rag"]["train_wall_s"] is None
    assert cost_table(rows, {"rag": {"wall_s": 9.0}})["rag"]["train_wall_s"] is None  # only a finetuned* has a run
    assert cost["finetuned@run-1"] | {"latency_s": 0} == {
        "n": 5, "prompt_tokens": 100.0, "latency_s": 0, "new_tokens": 12.0, "training": True, "retrieval": False,
        "train_wall_s": 120.5, "trainable_params": 1000, "adapter_bytes": 4000, "peak_mem_bytes": 10**9,
        "index_build_s": None}
    both = cost["finetuned_rag"]
    assert both["training"] and both["retrieval"] and both["index_build_s"] == 2.25
    assert both["train_wall_s"] is None and both["adapter_bytes"] is None  # no run given for it


def test_everything_is_json_ready() -> None:
    rows = _classification() + _rows("qa", _noisy(30, {"rag": 0.3, "zero_shot": 0.1}), "rougeL")
    comparisons = compare(rows)
    cost = cost_table(rows, {}, None)
    json.dumps({"comparisons": comparisons, "cost": cost, "verdict": verdict(rows, comparisons, cost),
                "slices": slices(rows)}, allow_nan=False)
    assert compare(rows, seed=0) == comparisons  # deterministic


def test_format_p() -> None:
    assert [format_p(p) for p in (0.0002, 0.031, 0.0049, 0.31, 1.0)] == [
        "p < 0.001", "p = 0.031", "p = 0.005", "p = 0.31", "p = 1.00"]


# ---------------------------------------------------------------------------------------------------- slices


def test_slices_split_knowledge_and_behaviour() -> None:
    kinds = ["knowledge"] * 6 + ["behaviour"] * 4
    table = {"rag": [0.9] * 6 + [0.2] * 4, "finetuned": [0.3] * 6 + [0.8] * 4}
    rows = _rows("qa", table, "rougeL", slice_of=kinds)
    rows += _rows("qa", {"rag": [0.5, 0.5]}, "rougeL", prefix="extra")  # no slice: left out
    rows[0]["available"] = False
    result = slices(rows, n_resamples=200)
    assert list(result) == ["knowledge", "behaviour"]
    assert result["knowledge"]["n"] == 6 and result["behaviour"]["n"] == 4
    knowledge = result["knowledge"]["summary"]
    assert knowledge["rag"]["rougeL"] == {"mean": pytest.approx(0.9), "low": pytest.approx(0.9),
                                          "high": pytest.approx(0.9), "n": 5}
    assert knowledge["finetuned"]["rougeL"]["n"] == 6 and knowledge["finetuned"]["bleu"]["mean"] == pytest.approx(0.1)
    assert result["behaviour"]["summary"]["finetuned"]["rougeL"]["mean"] == pytest.approx(0.8)
    assert slices(_rows("qa", table, "rougeL")) == {}


def test_a_slice_leader_is_starred_only_when_it_beats_the_next_best_significantly() -> None:
    """Per slice and metric: every pair of variants on the slice's rows (compare's tests, Holm within the slice), and
    the leader called only when its pair against the next best is significant on THIN_N rows or more."""
    from core.arena.report import slice_leaders, slices_table
    from core.arena.stats import holm

    clear = _noisy(20, {"rag": 0.7, "finetuned": 0.4, "zero_shot": 0.1, "nearest_answer": 0.8})  # copying: a baseline
    tie = _noisy(20, {"finetuned": 0.5, "rag": 0.5, "zero_shot": 0.1}, seed=1)
    thin = {"finetuned": [0.9, 0.8] * 4, "rag": [0.1, 0.2] * 4}  # 8 rows, all one way: p = 2 / 256, still too few
    rows = (_rows("qa", clear, "rougeL", prefix="k", slice_of=["knowledge"] * 20)
            + _rows("summarization", tie, "rougeL", prefix="b", slice_of=["behaviour"] * 20)
            + _rows("classification", thin, "rougeL", prefix="t", slice_of=["thin"] * 8))
    result = slices(rows, n_resamples=50)
    assert list(result) == ["knowledge", "behaviour", "thin"]
    won = result["knowledge"]["leaders"]["rougeL"]
    assert (won["status"], won["variant"], won["runner_up"], won["n"]) == ("win", "rag", "finetuned", 20)
    assert won["diff"] == pytest.approx(0.3, abs=0.05) and won["ci"][0] > 0 and won["p_holm"] < 0.05
    assert won["mean"] == pytest.approx(result["knowledge"]["summary"]["rag"]["rougeL"]["mean"])
    tied = result["behaviour"]["leaders"]["rougeL"]
    assert (tied["status"], tied["n"]) == ("tie", 20) and tied["ci"][0] < 0 < tied["ci"][1]
    few = result["thin"]["leaders"]["rougeL"]
    assert (few["status"], few["variant"], few["n"]) == ("thin", "finetuned", 8) and few["p_holm"] < 0.05
    assert result["knowledge"]["leaders"]["bleu"]["status"] == "tie"  # 0.1 for every variant: an exact tie
    # the pairs: compare's on the slice's rows (its tasks pooled), Holm across that slice's pairs on the metric
    pairs = [c for c in result["knowledge"]["comparisons"] if c["metric"] == "rougeL"]
    assert len(pairs) == 6 and {c["task"] for c in pairs} == {"all"}
    assert [c["p_holm"] for c in pairs] == holm([c["p"] for c in pairs])
    assert pairs == compare([{**row, "task": "all"} for row in rows if row["slice"] == "knowledge"], primary="rougeL")
    # the table: the star on the clear winner only; the tie and the thin slice say so
    saved = {"slices": result}
    assert slice_leaders(saved) == {"knowledge": {"rougeL": "rag"}}
    page = slices_table(saved)
    assert page.count("class='ta-rep-best'") == 1
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert f"knowledge (20 examples): rougeL: ★ rag {won['mean']:.3f}, significantly above finetuned " in text
    assert "behaviour (20 examples): rougeL: no significant difference between " in text
    assert "thin (8 examples): rougeL: too few rows to call: finetuned 0.850 vs rag 0.150 (+0.700 " in text
    json.dumps(result, allow_nan=False)


def test_cost_counts_seconds_per_answer_not_since_the_start_of_the_run():
    """In a batch evaluation a row's latency_s runs from the start of the whole evaluation; the cost of an answer is
    its own generate_s (prefill to last token), and latency_s only where there is none (nearest_answer)."""
    rows = [{"id": "a", "task": "qa", "variant": "zero_shot", "available": True, "metrics": {}, "latency_s": 700.0,
             "generate_s": 2.0},
            {"id": "b", "task": "qa", "variant": "zero_shot", "available": True, "metrics": {}, "latency_s": 900.0,
             "generate_s": 4.0},
            {"id": "a", "task": "qa", "variant": "nearest_answer", "available": True, "metrics": {},
             "latency_s": 0.002, "generate_s": None}]
    cost = cost_table(rows)
    assert cost["zero_shot"]["latency_s"] == 3.0 and cost["nearest_answer"]["latency_s"] == 0.002
