"""Helpers every tab shares: choices for the run / knowledge-base pickers (one-line errors: core.text.one_line)."""

from __future__ import annotations

from core.engine import DEMO_INDEX, Engine

__all__ = ["DEMO_INDEX", "index_choices", "run_choices"]


def run_choices(engine: Engine, *, with_weights: bool = True) -> list[tuple[str, str]]:
    """(label, run folder) of the workspace's runs (only those with saved weights by default), newest first."""
    choices = []
    for run in engine.runs.list():
        if with_weights and run.weights_dir is None:
            continue
        result = run.result or {}
        loss = result.get("final_val_loss")
        label = f"{run.run_id} ({run.config.get('method')}" + (f", val loss {loss:.2f})" if loss else ")")
        choices.append((label, str(run.path)))
    return choices


def index_choices(engine: Engine, *, with_demo: bool = True) -> list[tuple[str, str]]:
    """(label, folder) of the workspace's knowledge bases; the demo corpus is offered even before it is built."""
    rows, demo = [], None
    for row in engine.list_indexes():
        if "error" in row:
            continue
        if row["name"] == DEMO_INDEX:  # always offered under its name, built or not, so a chosen value stays valid
            demo = (f"demo corpus ({row.get('chunks', '?')} chunks)", DEMO_INDEX)
        else:
            rows.append((f"{row['name']} ({row.get('chunks', '?')} chunks)", row["folder"]))
    if with_demo:
        rows.insert(0, demo or ("demo corpus (indexed on first use, ~15 s)", DEMO_INDEX))
    elif demo:
        rows.insert(0, demo)
    return rows

