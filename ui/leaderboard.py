"""Leaderboard tab: ratings of the variants (or of the approaches: prompting, RAG, each fine-tuning method) from the
votes people cast in the Arena, with 95% intervals, per task and overall; how often each automatic metric agrees
with the people; the votes exported as preference pairs (what the Train tab's "Train from votes" learns from).

Layout and wiring only: ``engine.leaderboard`` (Bradley-Terry, core.arena.leaderboard) and
``engine.export_preferences``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from core.arena.metrics import METRIC_LABELS
from core.engine import Engine
from core.text import one_line
from ui.visitors import scoped

RATING_HEADERS = ["#", "name", "rating", "95% interval", "votes", "wins"]
AGREEMENT_HEADERS = ["metric", "agrees with the vote", "votes with a reference"]
BY_CHOICES = [("each variant (zero_shot, rag, finetuned@run…)", "variant"),
              ("each approach (prompting, RAG, each fine-tuning method)", "method")]


def rating_frame(items: list[dict[str, Any]]) -> pd.DataFrame:
    """Ratings best first: rank, name, rating, its interval, the votes behind it and its wins."""
    rows = [[rank, item["name"], round(item["rating"]),
             f"{item['low']:.0f} – {item['high']:.0f}" if item.get("low") is not None else "–", item["votes"],
             item["wins"] if isinstance(item["wins"], int) else f"{item['wins']:g}"]
            for rank, item in enumerate(sorted(items, key=lambda row: -row["rating"]), start=1)]
    return pd.DataFrame(rows, columns=RATING_HEADERS)


def agreement_frame(agreement: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = [[METRIC_LABELS.get(metric, metric), f"{row['share']:.0%} ({row['agree']} of {row['n']})" if row["n"]
             else "–", row["n"]] for metric, row in agreement.items()]
    return pd.DataFrame(rows, columns=AGREEMENT_HEADERS)


def summary_text(board: dict[str, Any]) -> str:
    votes = board.get("votes", 0)
    if not votes:
        return ("No votes yet. In the Arena, tick **Blind vote**, run a query and pick the best answer: the ratings "
                "appear here.")
    return (f"**{votes} vote{'s' if votes != 1 else ''}** in this workspace · Bradley–Terry ratings (1000 = the "
            "average item; +100 ≈ preferred 64% of the time) with 95% bootstrap intervals over the votes.")


def create_leaderboard_tab(engine: Engine) -> dict[str, Any]:
    instance = engine  # build time only: every handler works with the requesting visitor's engine
    gr.Markdown("Ratings from the votes cast in the Arena. An interval that overlaps another's means the votes so "
                "far cannot tell the two apart.")
    with gr.Row():
        by = gr.Radio(BY_CHOICES, value="variant", label="Rate", elem_id="lb-by", scale=3)
        refresh = gr.Button("Refresh", size="sm", elem_id="lb-refresh", scale=1)
    summary = gr.Markdown(elem_id="lb-summary")
    table = gr.Dataframe(pd.DataFrame(columns=RATING_HEADERS), label="Overall", interactive=False,
                         elem_id="lb-table")
    with gr.Row():
        task = gr.Dropdown([], label="Task", elem_id="lb-task", scale=1)
        task_table = gr.Dataframe(pd.DataFrame(columns=RATING_HEADERS), label="For this task", interactive=False,
                                  elem_id="lb-task-table", scale=3)
    agreement = gr.Dataframe(pd.DataFrame(columns=AGREEMENT_HEADERS), interactive=False, elem_id="lb-agreement",
                             label="How often each automatic metric picks the answer people voted for")
    with gr.Row():
        export = gr.Button("Export the votes as preference pairs", elem_id="lb-export", scale=1)
        pairs = gr.File(label="Preference pairs (JSONL: prompt, chosen, rejected)", interactive=False,
                        elem_id="lb-pairs", scale=2)
    export_status = gr.Markdown(elem_id="lb-export-status")
    board = gr.State(None)

    def on_refresh(rate_by: str, chosen_task: str | None, request: gr.Request | None = None):
        try:
            found = scoped(instance, request).leaderboard(by=rate_by or "variant")
        except ValueError as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        tasks = sorted(found.get("by_task") or {})
        chosen_task = chosen_task if chosen_task in tasks else (tasks[0] if tasks else None)
        per_task = rating_frame(found["by_task"][chosen_task]["items"]) if chosen_task else pd.DataFrame(
            columns=RATING_HEADERS)
        return (summary_text(found), rating_frame(found.get("items") or []),
                gr.update(choices=tasks, value=chosen_task), per_task, agreement_frame(found.get("agreement") or {}),
                found)

    def on_task(chosen_task: str | None, found: dict | None):
        if not found or not chosen_task or chosen_task not in (found.get("by_task") or {}):
            return pd.DataFrame(columns=RATING_HEADERS)
        return rating_frame(found["by_task"][chosen_task]["items"])

    def on_export(request: gr.Request | None = None):
        try:
            exported = scoped(instance, request).export_preferences()
        except ValueError as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        line = (f"{exported['pairs']} pairs from {exported['votes']} votes (ties, all-bad and one-answer votes give "
                f"none: {exported['skipped_votes']} skipped). Train on them in the Train tab: **Train from votes**.")
        return exported["path"], line

    listing = [summary, table, task, task_table, agreement, board]
    refresh.click(on_refresh, [by, task], listing, api_name="leaderboard")
    by.change(on_refresh, [by, task], listing, api_visibility="private")
    task.input(on_task, [task, board], [task_table], queue=False, api_visibility="private")
    export.click(on_export, None, [pairs, export_status], api_name="export_preferences")
    return {"by": by, "refresh": (on_refresh, [by, task], listing), "table": table, "summary": summary,
            "task": task, "task_table": task_table, "agreement": agreement, "export": export, "pairs": pairs}
