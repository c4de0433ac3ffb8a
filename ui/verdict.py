"""The verdict of a saved evaluation as the app shows it: the cards per task, the slice, cost and comparison tables
(the same HTML as report.html: core.arena.report; the file itself is ``Engine.eval_report``'s), the demo evaluation
shown on first launch, and the Arena's "latest evaluation" line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from core.arena.evals import load_eval
from core.arena.report import comparisons_table, cost_table, slices_table, verdict_card, verdict_cards
from core.engine import DEMO_EVAL, Engine
from core.text import one_line

logger = logging.getLogger(__name__)

MAX_LOOKUPS = 5  # results.json files read to find the Arena's latest verdict for a task

__all__ = ["DEMO_EVAL", "arena_verdict", "comparisons_html", "demo_eval_folder", "details_html", "latest_verdict",
           "latest_verdict_html", "verdict_html"]


def verdict_html(saved: dict[str, Any]) -> str:
    """Every task's verdict card: the sentence (big), the status, the numbers; a line saying there is none for an
    evaluation saved before verdicts."""
    return verdict_cards(saved)


def details_html(saved: dict[str, Any]) -> str:
    """The knowledge vs behaviour slices and the cost per variant, each under a heading; empty when neither."""
    parts = [(title, table) for title, table in (("Knowledge vs behaviour", slices_table(saved)),
                                                 ("Cost per variant", cost_table(saved))) if table]
    return "".join(f"<div class='ta-eval-details'><h4>{title}</h4>{table}</div>" for title, table in parts)


def comparisons_html(saved: dict[str, Any]) -> str:
    """Every paired comparison (difference, 95% CI, p and Holm-adjusted p); a line when there are none."""
    return comparisons_table(saved) or "<p class='ta-why'>No paired comparisons in this evaluation.</p>"


def demo_eval_folder(engine: Engine) -> Path | None:
    """The demo evaluation's folder when there is one (the Evaluate tab opens on it); on a visitor's engine, the
    instance's shared one."""
    folder = engine.workspace.demo_eval
    return folder if (folder / "results.json").is_file() and not folder.is_symlink() else None


def _newest_first(evals: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``engine.list_evals()`` rows by the time their results.json was written, newest first (the folder names sort
    generated ids by time but put ``demo-eval`` above them all)."""
    def written(row: dict[str, Any]) -> float:
        try:
            return (Path(row["folder"]) / "results.json").stat().st_mtime
        except OSError:
            return 0.0

    return sorted(evals, key=written, reverse=True)


def latest_verdict(evals: Sequence[dict[str, Any]], task: str | None,
                   load: Callable[[str], dict[str, Any]] = load_eval) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(evaluation row, its verdict for ``task``) of the first of ``evals`` (newest first) that covers ``task`` and
    has a verdict for it; None when none does. ``load`` reads an evaluation's results.json from its folder."""
    if not task:
        return None
    candidates = [row for row in evals if "error" not in row
                  and any(task in tasks for tasks in (row.get("by_task") or {}).values())]
    for row in candidates[:MAX_LOOKUPS]:
        try:
            verdict = (load(row["folder"]).get("verdict") or {}).get(task)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(verdict, dict):
            return row, verdict
    return None


def latest_verdict_html(found: tuple[dict[str, Any], dict[str, Any]] | None, task: str | None) -> str:
    """``Latest evaluation (name, n rows):`` and the task's verdict card; empty when there is none."""
    if found is None:
        return ""
    row, verdict = found
    name, rows = escape(str(row.get("name") or "")), escape(str(row.get("n") or "?"))
    return (f"<div class='ta-arena-verdict'><p class='ta-arena-verdict-title'>Latest evaluation "
            f"(<b>{name}</b>, {rows} rows) for this task:</p>"
            f"{verdict_card(str(task), verdict)}</div>")


def arena_verdict(engine: Engine, task: str | None) -> str:
    """The Arena's line under the cards: the latest saved evaluation's verdict for ``task`` (HTML), or empty."""
    if not task:
        return ""
    try:
        evals = _newest_first(engine.list_evals())
    except OSError as err:
        logger.warning("could not list the evaluations: %s", one_line(err))
        return ""
    return latest_verdict_html(latest_verdict(evals, task), task)


CSS = """
.ta-verdicts {display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px;}
.ta-verdict {border: 1px solid var(--border-color-primary); border-left: 6px solid #888; border-radius: 10px;
             padding: 10px 14px; background: var(--background-fill-secondary);}
.ta-verdict-win {border-left-color: #2e7d32;} .ta-verdict-tie {border-left-color: #9e9e9e;}
.ta-verdict-thin {border-left-color: #f9a825;} .ta-verdict-single {border-left-color: #90a4ae;}
.ta-verdict-head {display: flex; gap: 10px; align-items: center; font-size: 0.9em; flex-wrap: wrap;}
.ta-verdict-status {font-weight: 600; text-transform: uppercase; letter-spacing: 0.03em; font-size: 0.85em;}
.ta-verdict-n {opacity: 0.7;}
.ta-verdict-sentence {font-size: 1.3em; font-weight: 600; margin: 8px 0; line-height: 1.35;}
.ta-verdict-facts {margin: 0; padding-left: 18px; font-size: 0.92em;}
.ta-verdict-none {font-style: italic; opacity: 0.8;}
.ta-rep-chip {display: inline-block; padding: 1px 8px; border-radius: 999px;
               border: 1px solid var(--border-color-primary);}
.ta-rep-table {border-collapse: collapse; margin: 6px 0; font-size: 0.9em;}
.ta-rep-table th, .ta-rep-table td {border: 1px solid var(--border-color-primary); padding: 4px 8px; text-align: left;}
.ta-rep-notes {font-size: 0.85em; opacity: 0.85;}
.ta-rep-best {color: #2e7d32;}
.ta-arena-verdict {margin-top: 12px;} .ta-arena-verdict-title {margin: 0 0 6px 0; opacity: 0.85;}
"""
