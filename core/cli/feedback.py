"""Commands on people's votes: ``feedback export`` (preference pairs for a DPO run) and ``leaderboard`` (ratings
with intervals, per task, and how well each metric agrees with the votes). Both read the workspace's
``feedback/votes.jsonl`` (``$TUNE_ARENA_WORKSPACE``), which the app's Arena fills."""

from __future__ import annotations

import argparse

from core.arena.leaderboard import BY
from core.cli.common import CliError, Command, EngineFactory, Result
from core.text import fmt_percent

FEEDBACK_ACTIONS = ("export",)


def _feedback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=FEEDBACK_ACTIONS,
                        help="export: the votes as preference pairs {prompt, chosen, rejected} for train "
                             "--objective dpo (winner vs each other answer; ties and all-bad votes give none)")
    parser.add_argument("--out", metavar="PATH", help="the .jsonl file to write (default: the workspace's "
                                                      "feedback/preferences.jsonl)")


def cmd_feedback(args: argparse.Namespace, engine: EngineFactory) -> Result:
    return engine().export_preferences(args.out)


def _human_feedback(result: Result) -> None:
    print(f"{result['pairs']} preference pairs from {result['votes']} votes ({result['skipped_votes']} gave none): "
          f"{result['path']}")


def _leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", choices=BY, default="variant",
                        help="rank the variants as shown (zero_shot, rag, finetuned@RUN...), or the approaches behind "
                             "them: prompting (zero_shot), prompting (few_shot), rag, and each fine-tuning method "
                             "(lora, full, lora (dpo)..., + rag) (default: variant)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="bootstrap resamples of the votes for the 95%% intervals; 0: none (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")


def cmd_leaderboard(args: argparse.Namespace, engine: EngineFactory) -> Result:
    board = engine().leaderboard(by=args.by, samples=args.samples, seed=args.seed)
    if not board["votes"]:
        raise CliError(f"votes: none yet in {engine().votes_path}; vote on answers in the Arena first")
    return board


def _interval(row: Result) -> str:
    return "" if row["low"] is None else f"{row['low']:.0f}-{row['high']:.0f}"


def _table(items: list[Result], indent: str = "") -> None:
    width = max([len(row["name"]) for row in items] + [4])
    print(f"{indent}{'#':>2}  {'name':<{width}}  {'rating':>6}  {'95% interval':>12}  {'votes':>5}  {'wins':>4}")
    for rank, row in enumerate(items, start=1):
        print(f"{indent}{rank:>2}  {row['name']:<{width}}  {row['rating']:>6.0f}  {_interval(row):>12}  "
              f"{row['votes']:>5}  {row['wins']:>4}")


def _human_leaderboard(result: Result) -> None:
    print(f"leaderboard by {result['by']}: {result['votes']} votes ({result['ties']} ties, {result['all_bad']} all "
          "bad); rating 1000 = the average, +400 = 10:1 odds")
    _table(result["items"])
    if len(result["by_task"]) > 1:
        for task, board in result["by_task"].items():
            print(f"\ntask {task} ({board['votes']} votes)")
            _table(board["items"], "  ")
    if result["agreement"]:
        print("\nmetric agreement with the votes (votes with a reference and a winner):")
        for metric, row in result["agreement"].items():
            share = "n/a" if row["share"] is None else fmt_percent(100 * row["share"])
            print(f"  {metric:<12} {share:>6}  ({row['agree']} of {row['n']}; {row['no_pick']} without a single best)")


COMMANDS = (
    Command("feedback", "export people's votes from the Arena as preference pairs (for train --objective dpo)",
            _feedback_arguments, cmd_feedback, _human_feedback),
    Command("leaderboard", "Bradley-Terry ratings of variants or methods from people's votes, with 95% intervals, "
            "per task, and how often each metric agrees with the votes", _leaderboard_arguments, cmd_leaderboard,
            _human_leaderboard),
)
