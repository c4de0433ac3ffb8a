"""The votes leaderboard (core.arena.leaderboard): how long the Bradley-Terry fit with bootstrap intervals takes, and
whether it finds ratings it was given.

    python -m bench.leaderboard [--smoke] [--votes 100,400,1600] [--samples 1000] [--repeats 3]

Votes are drawn from known strengths: five variants whose true ratings are spread on the leaderboard's own scale
(1000 = the geometric mean, +100 = preferred 64% of the time); each vote shows two or three of them, and the
winner is drawn by the Plackett-Luce rule (each shown item wins with probability proportional to its strength),
with a few ties and all-bad votes. For each vote count: the fit's wall time (best of ``--repeats``), the rank
correlation of the fitted ratings with the true ones, the largest rating error, and how many true ratings fall inside
their 95% interval (after the fitted ratings are shifted to the true ones' mean, since only differences are
identified). Writes bench/results/leaderboard.json (smoke: bench/results/smoke/leaderboard.json).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from typing import Any

from bench.common import print_table, write_result
from core.arena.leaderboard import leaderboard

TRUE_RATINGS = {"finetuned_rag": 1150.0, "rag": 1080.0, "finetuned": 1000.0, "few_shot": 940.0, "zero_shot": 830.0}
SCALE = 400 / math.log(10)  # Elo: a difference of d points -> odds 10^(d/400); the leaderboard's scale


def synthetic_votes(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` vote records as core.arena.feedback stores them, drawn from ``TRUE_RATINGS``."""
    rng = random.Random(seed)
    names = list(TRUE_RATINGS)
    votes = []
    for number in range(count):
        shown = rng.sample(names, rng.choice((2, 3)))
        labels = [chr(ord("A") + spot) for spot in range(len(shown))]
        answers = [{"label": label, "variant": name, "strategy": name, "answer": f"answer of {name}", "metrics": {}}
                   for label, name in zip(labels, shown, strict=True)]
        draw = rng.random()
        if draw < 0.05:
            winner = "tie"
        elif draw < 0.08:
            winner = "all_bad"
        else:
            weights = [math.exp(TRUE_RATINGS[name] / SCALE) for name in shown]
            winner = rng.choices(labels, weights=weights)[0]
        votes.append({"id": f"v-{number:06d}", "query": f"q{number}", "task": "qa", "reference": None,
                      "answers": answers, "winner": winner})
    return votes


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values: list[float]) -> list[int]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0] * len(values)
        for rank, spot in enumerate(order):
            out[spot] = rank
        return out

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


def measure(count: int, samples: int, repeats: int, seed: int) -> dict[str, Any]:
    votes = synthetic_votes(count, seed)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        board = leaderboard(votes, samples=samples, seed=seed)
        times.append(time.perf_counter() - began)
    items = {item["name"]: item for item in board["items"]}
    names = [name for name in TRUE_RATINGS if name in items]
    shift = sum(TRUE_RATINGS[n] for n in names) / len(names) - sum(items[n]["rating"] for n in names) / len(names)
    covered = sum(1 for n in names if items[n]["low"] is not None
                  and items[n]["low"] + shift <= TRUE_RATINGS[n] <= items[n]["high"] + shift)
    return {"votes": count, "samples": samples, "fit_s": round(min(times), 3),
            "spearman": round(spearman([TRUE_RATINGS[n] for n in names], [items[n]["rating"] for n in names]), 3),
            "max_error": round(max(abs(items[n]["rating"] + shift - TRUE_RATINGS[n]) for n in names), 1),
            "true_in_interval": f"{covered}/{len(names)}",
            "mean_interval_width": round(sum(items[n]["high"] - items[n]["low"] for n in names) / len(names), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="60 votes, 50 resamples, one repeat")
    parser.add_argument("--votes", default="100,400,1600")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples (the product's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        args.votes, args.samples, args.repeats = "60", 50, 1
    began = time.perf_counter()
    rows = [measure(int(count), args.samples, args.repeats, args.seed) for count in args.votes.split(",")]
    print_table(rows)
    payload = {"true_ratings": TRUE_RATINGS, "rows": rows,  # write_result adds the machine and cpu_during_run
               "bench_wall_s": round(time.perf_counter() - began, 1)}
    path = write_result("leaderboard", payload, smoke=args.smoke)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
