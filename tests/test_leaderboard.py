"""The leaderboard of votes: Bradley-Terry ratings (MM), bootstrap intervals, items by variant and by method, and
metric agreement."""

from __future__ import annotations

import random

import numpy as np
import pytest

from core.arena.leaderboard import PRIOR_TIES, bradley_terry, leaderboard, method_name, metric_agreement
from core.errors import ConfigError


def vote(shown: list[str], winner: str, *, task: str | None = "qa", reference: str | None = None,
         metrics: list[dict] | None = None, answers: list[dict] | None = None) -> dict:
    """A vote record over ``shown`` variants (labels A, B, ... in order); ``winner``: a variant, tie or all_bad."""
    labels = [chr(ord("A") + spot) for spot in range(len(shown))]
    rows = answers or [{"label": label, "variant": name, "strategy": name.partition("@")[0], "answer": name,
                        "metrics": (metrics or [{}] * len(shown))[spot]}
                       for spot, (label, name) in enumerate(zip(labels, shown, strict=True))]
    won = labels[shown.index(winner)] if winner in shown else winner
    return {"id": f"v-{random.getrandbits(48):012x}", "query": "q", "task": task, "reference": reference,
            "answers": rows, "winner": won}


def by_name(board: dict) -> dict[str, dict]:
    return {item["name"]: item for item in board["items"]}


def test_an_item_that_always_wins_ranks_first_with_an_interval_above_the_others():
    rng = random.Random(0)
    votes = []
    for _ in range(60):
        shown = rng.sample(["finetuned", "rag", "zero_shot"], 3)
        if rng.random() < 0.5:
            votes.append(vote(shown, "finetuned"))
        else:  # the other two: the loser of a two-card vote
            others = [name for name in shown if name != "finetuned"]
            votes.append(vote(["finetuned", others[0]], "finetuned"))
            votes.append(vote(others, rng.choice(others)))
    board = leaderboard(votes, samples=300)
    first, *rest = board["items"]
    assert first["name"] == "finetuned" and first["wins"] == first["votes"] == 60
    assert all(first["low"] > item["high"] for item in rest)
    assert all(np.isfinite(item["rating"]) for item in board["items"])
    assert [item["name"] for item in board["items"]][1:] == sorted(
        (item["name"] for item in rest), key=lambda name: -by_name(board)[name]["rating"])


def test_symmetric_votes_and_ties_give_equal_ratings():
    votes = [vote(["a", "b", "c"], "tie") for _ in range(5)]
    votes += [vote(["a", "b"], "a"), vote(["b", "a"], "b"), vote(["c", "a"], "a"), vote(["c", "a"], "c")]
    board = leaderboard(votes, samples=200)
    ratings = {item["name"]: item["rating"] for item in board["items"]}
    assert ratings == pytest.approx({"a": 1000.0, "b": 1000.0, "c": 1000.0}, abs=0.05)
    assert board["ties"] == 5 and board["votes"] == 9


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    rng = random.Random(1)
    strength = {"zero_shot": 1.0, "few_shot": 1.5, "rag": 2.5, "finetuned@r": 4.0}
    votes = []
    for _ in range(150):
        shown = rng.sample(list(strength), 3)
        pick = rng.uniform(0, sum(strength[name] for name in shown))
        for name in shown:
            pick -= strength[name]
            if pick <= 0:
                break
        votes.append(vote(shown, name, task=rng.choice(["qa", "summarization"])))
    board = leaderboard(votes, samples=400, seed=3)
    for item in board["items"]:
        assert item["low"] < item["rating"] < item["high"]
        for row in item["by_task"].values():
            assert row["low"] <= row["rating"] <= row["high"]
    assert [item["name"] for item in board["items"]] == ["finetuned@r", "rag", "few_shot", "zero_shot"]
    assert board == leaderboard(votes, samples=400, seed=3)
    assert board["items"][0]["low"] != leaderboard(votes, samples=400, seed=4)["items"][0]["low"]
    assert leaderboard(list(reversed(votes)), samples=0)["items"] == [
        {**item, "low": None, "high": None, "by_task": {task: {**row, "low": None, "high": None}
                                                        for task, row in item["by_task"].items()}}
        for item in board["items"]]  # the point estimates do not depend on the vote order


def test_ratings_solve_the_bradley_terry_likelihood_equations():
    wins = np.array([[[0, 7, 3], [2, 0, 4.5], [1, 0.5, 0]]], dtype=float)  # (1, 3, 3) with half wins from ties
    strength = bradley_terry(wins)[0]
    games = wins[0] + wins[0].T
    for i in range(3):  # observed wins (and the prior's half wins) = expected wins at the maximum
        expected = sum(games[i, j] * strength[i] / (strength[i] + strength[j]) for j in range(3) if j != i)
        expected += PRIOR_TIES * strength[i] / (strength[i] + 1.0)
        assert wins[0, i].sum() + PRIOR_TIES / 2 == pytest.approx(expected, rel=1e-7)
    assert strength[0] > strength[1] > strength[2]


def test_never_losing_stays_finite_and_uncompared_items_rate_average():
    board = leaderboard([vote(["x", "y"], "x")] * 30 + [vote(["z"], "z"), vote(["w", "x"], "all_bad")], samples=50)
    ratings = {item["name"]: item for item in board["items"]}
    assert np.isfinite(ratings["x"]["rating"]) and ratings["x"]["rating"] > ratings["y"]["rating"]
    assert ratings["z"]["rating"] == pytest.approx(ratings["w"]["rating"])  # no comparison: the prior alone
    assert (ratings["w"]["votes"], ratings["w"]["wins"], ratings["x"]["votes"]) == (1, 0, 31)
    assert board["all_bad"] == 1
    only_all_bad = leaderboard([vote(["a", "b"], "all_bad")], samples=20)["items"]
    assert [(row["rating"], row["low"], row["high"]) for row in only_all_bad] == [(1000.0, 1000.0, 1000.0)] * 2


def test_no_votes_give_an_empty_board():
    board = leaderboard([], samples=10)
    assert (board["votes"], board["items"], board["by_task"], board["agreement"]) == (0, [], {}, {})


def test_items_and_tables_per_task():
    votes = [vote(["a", "b"], "a", task="qa")] * 3 + [vote(["a", "b"], "b", task=None)] * 3
    board = leaderboard(votes, samples=0)
    assert board["by_task"]["qa"]["votes"] == 3 and board["by_task"]["default"]["votes"] == 3
    assert [item["name"] for item in board["by_task"]["qa"]["items"]] == ["a", "b"]
    assert [item["name"] for item in board["by_task"]["default"]["items"]] == ["b", "a"]
    a = by_name(board)["a"]
    assert a["rating"] == pytest.approx(1000.0) and a["by_task"]["qa"]["wins"] == 3
    assert a["by_task"]["qa"]["rating"] > 1000 > a["by_task"]["default"]["rating"]


@pytest.mark.parametrize(("answer", "name"), [
    ({"strategy": "zero_shot"}, "prompting (zero_shot)"),
    ({"strategy": "few_shot"}, "prompting (few_shot)"),
    ({"strategy": "rag"}, "rag"),
    ({"strategy": "finetuned", "run_id": "r", "method": "lora", "objective": "sft"}, "lora"),
    ({"strategy": "finetuned", "run_id": "r", "method": "lora", "objective": "dpo"}, "lora (dpo)"),
    ({"strategy": "finetuned_rag", "run_id": "r", "method": "full", "objective": None}, "full + rag"),
    ({"strategy": "finetuned_few_shot", "run_id": "r", "method": "ia3", "objective": "sft"}, "ia3 + few_shot"),
    ({"strategy": "finetuned", "run_id": "gone", "method": None}, "finetuned (unknown method)"),
    ({"variant": "finetuned@r", "method": "qlora"}, "qlora"),
])
def test_method_names(answer, name):
    assert method_name(answer) == name


def test_by_method_counts_two_runs_of_one_method_once_and_never_against_themselves():
    answers = [{"label": "A", "variant": "finetuned@one", "strategy": "finetuned", "run_id": "one", "method": "lora"},
               {"label": "B", "variant": "finetuned@two", "strategy": "finetuned", "run_id": "two", "method": "lora"},
               {"label": "C", "variant": "zero_shot", "strategy": "zero_shot"}]
    votes = [{"query": "q", "answers": answers, "winner": "A"} for _ in range(4)]
    board = leaderboard(votes, by="method", samples=0)
    lora, prompting = board["items"]
    assert (lora["name"], lora["votes"], lora["wins"]) == ("lora", 4, 4)
    assert (prompting["name"], prompting["votes"], prompting["wins"]) == ("prompting (zero_shot)", 4, 0)
    variants = leaderboard(votes, samples=0)
    assert [item["name"] for item in variants["items"]][0] == "finetuned@one"
    # lora beat zero_shot 4 times (not 8): the same ratings as four two-card votes
    two_card = [vote(["l", "z"], "l") for _ in range(4)]
    assert lora["rating"] == pytest.approx(leaderboard(two_card, samples=0)["items"][0]["rating"])


def test_metric_agreement_counts_the_votes_where_the_metrics_best_is_the_voted_one():
    scores = [{"rougeL": 0.9, "bleu": 0.2}, {"rougeL": 0.1, "bleu": 0.2}, {"rougeL": 0.5, "bleu": None}]
    votes = [
        vote(["a", "b", "c"], "a", reference="ref", metrics=scores),  # rougeL agrees; bleu: a shared best
        vote(["a", "b", "c"], "c", reference="ref", metrics=scores),  # rougeL disagrees
        vote(["a", "b", "c"], "a", reference="ref",
             metrics=[{"rougeL": 0.9, "bleu": 0.5}, {"rougeL": 0.1, "bleu": 0.1}, {}]),  # both agree
        vote(["a", "b", "c"], "b", reference=None, metrics=scores),  # no reference: left out
        vote(["a", "b", "c"], "tie", reference="ref", metrics=scores),  # no winner: left out
        vote(["a", "b", "c"], "all_bad", reference="ref", metrics=scores),
    ]
    agreement = metric_agreement(votes)
    assert list(agreement) == ["rougeL", "bleu"]  # core.arena.metrics order
    assert agreement["rougeL"] == {"agree": 2, "n": 3, "share": round(2 / 3, 4), "no_pick": 0}
    assert agreement["bleu"] == {"agree": 1, "n": 1, "share": 1.0, "no_pick": 2}
    assert leaderboard(votes, samples=0)["agreement"] == agreement
    assert metric_agreement([vote(["a", "b"], "a", reference="ref")]) == {}


@pytest.mark.parametrize(("kwargs", "needle"), [({"by": "run"}, "by: must be one of variant, method"),
                                                ({"samples": -1}, "samples: must be an integer"),
                                                ({"samples": 1.5}, "samples: must be an integer")])
def test_bad_settings_name_the_field(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        leaderboard([vote(["a", "b"], "a")], **kwargs)


def test_every_metric_the_agreement_may_compare_has_one_label():
    """core.arena.metrics.METRIC_LABELS names each metric once for every tab (the Leaderboard imports it)."""
    from core.arena.metrics import METRIC_LABELS, METRIC_NAMES

    assert list(METRIC_LABELS) == list(METRIC_NAMES)
    assert (METRIC_LABELS["rougeL"], METRIC_LABELS["token_f1"]) == ("ROUGE-L", "token F1")
    assert len(set(METRIC_LABELS.values())) == len(METRIC_LABELS)
