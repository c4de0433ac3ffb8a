"""Which lm-evaluation-harness tasks exist here: the bundled ones (assets/benchmarks/tasks, offline, over data this
project wrote), a user's own folders of task YAMLs (``include``), and the harness's own catalogue (hub datasets).

Listing and resolving use the harness's ``TaskManager``; the full catalogue (~15,000 names, ~7 s to index) is read
only when a name is not bundled or included.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

logger = logging.getLogger(__name__)

BUNDLED_TASKS = Path(__file__).resolve().parents[2] / "assets" / "benchmarks" / "tasks"
HARNESS_TASKS_URL = "https://github.com/EleutherAI/lm-evaluation-harness/tree/main/lm_eval/tasks"


def check_include(folders: Sequence[str | Path]) -> list[Path]:
    """The ``include`` folders as paths, each an existing folder holding at least one .yaml task file (ConfigError,
    one line naming the folder, otherwise)."""
    checked: list[Path] = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ConfigError(f"include: {folder} is not a folder of task YAML files")
        if not any(path.rglob("*.yaml")) and not any(path.rglob("*.yml")):
            raise ConfigError(f"include: {folder} holds no .yaml task file")
        checked.append(path)
    return checked


def task_manager(include: Sequence[Path] = (), *, defaults: bool = False) -> TaskManager:
    """The harness's TaskManager over the bundled tasks and ``include`` (later folders override earlier names), plus
    the harness's own tasks with ``defaults``."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(BUNDLED_TASKS), *map(str, include)], include_defaults=defaults)


def _source(entry: Any, include: Sequence[Path]) -> str:
    path = getattr(entry, "yaml_path", None)
    if path is None:
        return "harness"
    resolved = Path(path).resolve()
    if resolved.is_relative_to(BUNDLED_TASKS):
        return "bundled"
    return "include" if any(resolved.is_relative_to(folder.resolve()) for folder in include) else "harness"


def list_tasks(include: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """The tasks available offline, bundled first: ``name``, ``kind`` (task, group or tag), ``source`` (bundled or
    include), ``output_type``, ``description`` and, for a group or tag, its ``tasks``. Files are indexed, not run:
    a task's data is read when it is benchmarked."""
    folders = check_include(include)
    manager = task_manager(folders)
    rows: list[dict[str, Any]] = []
    for name in manager.all_tasks:
        entry = manager.task_index[name]
        kind = getattr(entry.kind, "name", str(entry.kind)).lower()
        config = entry.cfg or {}
        metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
        members = config.get("task") if kind == "group" else None
        if kind == "tag":
            members = sorted(other for other, e in manager.task_index.items() if name in (e.tags or ()))
        source = _source(entry, folders)
        if kind == "tag" and members:  # a tag has no file: it comes from where its tasks do
            source = min((_source(manager.task_index[member], folders) for member in members),
                         key=("bundled", "include", "harness").index)
        rows.append({"name": name, "kind": "task" if kind == "py_task" else kind, "source": source,
                     "output_type": config.get("output_type"),
                     "description": str(metadata.get("description") or config.get("description") or "").strip(),
                     **({"tasks": list(members)} if isinstance(members, list) else {})})
    order = {"bundled": 0, "include": 1, "harness": 2}
    return sorted(rows, key=lambda row: (order[row["source"]], row["name"]))


def resolve_tasks(names: Sequence[str], include: Sequence[Path] = ()) -> TaskManager:
    """A TaskManager that knows every name in ``names``: the bundled and included tasks alone when they are enough,
    else the harness's catalogue too. ConfigError (one line, with close matches) for a name no one knows."""
    if not names:
        raise ConfigError("tasks: name at least one task (benchmark --list shows the tasks available offline)")
    manager = task_manager(include)
    if all(name in manager.all_tasks for name in names):
        return manager
    logger.info("indexing the harness's task catalogue for %s", ", ".join(n for n in names
                                                                        if n not in manager.all_tasks))
    manager = task_manager(include, defaults=True)
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"tasks: unknown task {name!r}{hint}; benchmark --list shows the tasks available "
                              f"offline, the harness's catalogue is at {HARNESS_TASKS_URL}")
    return manager
