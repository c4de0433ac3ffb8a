"""Task ids for methods that route each row by its task (multi-task prompt tuning): the task-name -> id map a run
stores in its method settings (``tasks``, in id order) and the ids of rows, for training and for generation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import AdapterError, DataError
from core.methods.registry import METHODS


def routes_tasks(method: str | None) -> bool:
    """Whether rows of ``method`` carry a task id into forward."""
    return method in METHODS and METHODS[method].task_routed


def training_task_ids(method: str, settings: dict[str, Any], examples: Sequence[Any], data_file: str | Path,
                      ) -> list[int] | None:
    """Each example's task id for ``method`` (None when the method does not route tasks).

    ``settings["tasks"] == "auto"`` is resolved here, in place, to the sorted task names of ``examples`` (the
    training rows), so the run's saved settings hold the map and inference routes the same ids. A row without a
    task, or with one the settings do not name, is a DataError naming ``data_file``."""
    if not routes_tasks(method):
        return None
    missing = next((ex for ex in examples if not ex.task), None)
    if missing is not None:
        raise DataError(data_file, f"row {missing.uid or '?'} has no task; {method} needs a task value on every row "
                        "(the task id routes it to its own prompt)")
    if settings.get("tasks", "auto") == "auto":
        settings["tasks"] = sorted({ex.task for ex in examples})
    ids = {name: i for i, name in enumerate(settings["tasks"])}
    unknown = next((ex for ex in examples if ex.task not in ids), None)
    if unknown is not None:
        raise DataError(data_file, f"row {unknown.uid or '?'}: task {unknown.task!r} is not one of the run's tasks "
                        f"({', '.join(ids)})")
    return [ids[ex.task] for ex in examples]


def run_tasks(method: str | None, settings: dict[str, Any] | None) -> tuple[str, ...]:
    """The task names of a saved run, in id order (empty for a method that does not route tasks)."""
    tasks = (settings or {}).get("tasks") if routes_tasks(method) else None
    return tuple(tasks) if isinstance(tasks, list) else ()


def generation_task_ids(key: str, known: Sequence[str], tasks: Sequence[str | None]) -> list[int]:
    """The task id of each row generated with adapter ``key`` trained on tasks ``known``; AdapterError for a row
    without a task or with one the run never trained."""
    ids = {name: i for i, name in enumerate(known)}
    out = []
    for task in tasks:
        if task not in ids:
            what = "a row without a task" if task is None else f"task {task!r}"
            raise AdapterError(f"adapter: {key} routes each row by its task ({', '.join(known)}); got {what}")
        out.append(ids[task])
    return out
