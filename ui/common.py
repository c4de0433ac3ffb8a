"""Helpers every tab shares: choices for the run / knowledge-base pickers (one-line errors: core.text.one_line)."""

from __future__ import annotations

import dataclasses
from typing import Any

from core.engine import DEMO_INDEX, Engine

__all__ = ["DEMO_INDEX", "field_default", "field_help", "index_choices", "run_choices"]


def _field(cls: type, name: str) -> dataclasses.Field:
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def field_help(cls: type, name: str) -> str:
    """A settings field's help text (``field(metadata={"help": ...})``): the words the CLI's --help shows too."""
    return _field(cls, name).metadata.get("help", "")


def field_default(cls: type, name: str) -> Any:
    """A settings field's default, so a widget starts where the engine's dataclass does."""
    field = _field(cls, name)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


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

