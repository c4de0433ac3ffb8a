"""The engine's benchmarks: lm-evaluation-harness tasks on the base model and on fine-tuned runs of it
(core.benchmarks), saved as ``benchmarks/<id>.json`` in the workspace, and each run's forgetting (its change from the
base on the general tasks) read back for the Runs tab.

A visitor of a shared instance runs the bundled tasks only (no user Python from task folders, no hub downloads),
at most ``VISITOR_LIMIT`` examples per task.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core import distributed
from core.benchmarks import BASE, BenchmarkConfig, BenchmarkModel, list_tasks, run_benchmark
from core.engine.workspace import DEMO_RUN
from core.errors import ConfigError, NameRuleError, RunStateError
from core.inference import is_classification_run, load_classifier
from core.io import write_json
from core.limits import check_name, new_id
from core.methods import METHODS
from core.methods.loading import load_trained_model
from core.models import default_base_model, load_causal_lm, resolve_base_model
from core.runs import Run

logger = logging.getLogger(__name__)

DEMO_BENCHMARK = Path(__file__).resolve().parents[2] / "assets" / "demo" / "benchmark-demo.json"
DEMO_BENCHMARK_ID = "demo-benchmark"  # the shipped one (assets/demo/build_benchmark_demo.py), read in place
VISITOR_LIMIT = 100


class BenchmarksMixin:
    """Benchmarks of an Engine (see core.engine.engine.Engine for its state)."""

    @property
    def benchmarks_dir(self) -> Path:
        """``<workspace>/benchmarks``: one ``<id>.json`` per benchmark."""
        return self.workspace.benchmarks

    def benchmark_tasks(self, include: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
        """The tasks available offline (core.benchmarks.list_tasks): bundled, then ``include``'s."""
        if include and self.instance is not None:
            raise ConfigError("include: task folders cannot be used on a shared instance (they run their own "
                              "Python); use the bundled tasks")
        return list_tasks(include)

    def _benchmark_model(self, adapter: str, base_name: str) -> BenchmarkModel:
        if adapter == DEMO_RUN and self.instance is None:  # the shipped demo adapter, by its name, on a fresh clone
            self.install_demo_run()
        folder = self.checked_run(adapter)
        run = Run(folder)
        if run.state == "running":
            raise RunStateError(f"adapter: {run.run_id} is still training; benchmark it once it has completed or "
                                "stopped")
        config = run.config
        method = config.get("method")
        facts = {"run_dir": str(folder), "method": method, "objective": config.get("objective") or "sft",
                 "base_model": config.get("base_model") or default_base_model()}
        device, dtype = self.models.device, self.models.dtype
        if is_classification_run(folder):  # multiple-choice tasks over its labels; the others are said to not fit
            return BenchmarkModel(run.run_id, lambda: load_classifier(folder, device=device, dtype=dtype), facts,
                                  classifier=True, run_dir=str(folder), base_model=base_name)
        skip = None
        if method in METHODS and METHODS[method].task_routed:
            skip = ("multi-task prompt tuning picks its prompt by the row's task id, and the harness's requests "
                    "carry none; benchmark a single-task run instead")
        elif facts["objective"] != "distillation":
            ours, theirs = resolve_base_model(base_name), resolve_base_model(config.get("base_model"))
            if ours.name != theirs.name and ours.location != theirs.location:
                raise ConfigError(f"adapter: {run.run_id} was trained on {theirs.name}, not on the benchmark's base "
                                  f"model {ours.name}; its deltas would compare different models (pass --model)")
        return BenchmarkModel(run.run_id, lambda: load_trained_model(folder, device=device, dtype=dtype), facts,
                              skip, run_dir=str(folder), base_model=base_name)

    def benchmark(self, tasks: Sequence[str] | str, *, adapters: Sequence[str] = (), model: str | None = None,
                  limit: int | None = None, shots: int | None = None, include: Sequence[str | Path] = (),
                  backend: str = "hf", batch_size: int = 16, chat_template: bool = True,
                  on_progress: Callable[[dict[str, Any]], None] | None = None,
                  stop: threading.Event | None = None) -> dict[str, Any]:
        """Run harness ``tasks`` on the base model (``model``, default the default base) and on each run of
        ``adapters``, save the result as ``benchmarks/<id>.json`` and return it (core.benchmarks.run_benchmark's
        dict + ``id``, ``path``, ``model``, ``created``). ConfigError/DataError (one line) before any model loads
        for an unknown task, a hub task whose data cannot be had, or a run that cannot take part."""
        config = BenchmarkConfig(tasks=list(tasks) if not isinstance(tasks, str) else tasks, limit=limit,
                                 shots=shots, include=[str(folder) for folder in include], backend=backend,
                                 batch_size=batch_size, chat_template=chat_template)
        if self.instance is not None:  # a visitor: the bundled tasks, a bounded run
            if config.include:
                raise ConfigError("include: task folders cannot be used on a shared instance (they run their own "
                                  "Python); use the bundled tasks")
            bundled = {row["name"] for row in list_tasks()}
            outside = [name for name in config.tasks if name not in bundled]
            if outside:
                raise ConfigError(f"tasks: {', '.join(outside)} is not bundled; on a shared instance only the "
                                  "bundled tasks run (run the harness's hub tasks on your own machine)")
            config.limit = min(config.limit or VISITOR_LIMIT, VISITOR_LIMIT)
            if self.quota is not None:
                self.quota.check_disk()
        base_name = model or default_base_model()
        device, dtype = self.models.device, self.models.dtype
        entries = [BenchmarkModel(BASE, lambda: load_causal_lm(base_name, device=device, dtype=dtype),
                                  {"base_model": resolve_base_model(base_name).name}, base_model=base_name)]
        seen = {BASE}
        for adapter in adapters:
            entry = self._benchmark_model(adapter, base_name)
            if entry.label in seen:
                raise ConfigError(f"adapter: {entry.label} is named twice")
            seen.add(entry.label)
            entries.append(entry)
        result = run_benchmark(entries, config, on_progress=on_progress, stop=stop)
        benchmark_id = new_id("-".join(config.tasks), "benchmark")  # core.limits: a plain name, as evals' ids
        path = self.benchmarks_dir / f"{benchmark_id}.json"
        result = {"id": benchmark_id, "path": str(path), "model": resolve_base_model(base_name).name,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}
        if distributed.current().is_main:  # a data-parallel job's other ranks hold no scores: rank 0 saves
            write_json(path, result)
            logger.info("benchmark %s saved: %s", benchmark_id, path)
        return result

    def _benchmark_files(self) -> list[Path]:
        files = sorted((p for p in self.benchmarks_dir.glob("*.json") if not p.name.startswith(".")), reverse=True)
        return files + ([DEMO_BENCHMARK] if DEMO_BENCHMARK.is_file() else [])

    def list_benchmarks(self) -> list[dict[str, Any]]:
        """Saved benchmarks, newest first, then the shipped demo's: ``id``, ``created``, ``model``, ``tasks``,
        ``models`` (labels), ``limit``, ``wall_s``; an unreadable file gives a row with its ``error``."""
        rows = []
        for path in self._benchmark_files():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                rows.append({"id": path.stem, "error": f"unreadable {path.name}: {str(err).splitlines()[0]}"})
                continue
            rows.append({"id": saved.get("id", path.stem), "created": saved.get("created"),
                         "model": saved.get("model"), "tasks": list(saved.get("tasks") or {}),
                         "models": list(saved.get("models") or {}),
                         "limit": (saved.get("config") or {}).get("limit"), "wall_s": saved.get("wall_s")})
        return rows

    def load_benchmark(self, benchmark_id: str) -> dict[str, Any]:
        """A saved benchmark by its id (ConfigError, one line, for one that does not exist or cannot be read)."""
        try:  # the one name rule (core.limits): every id new_id makes, and the demo's, pass it
            check_name(benchmark_id, "benchmark")
        except NameRuleError:
            raise ConfigError(f"benchmark: {benchmark_id!r} is not a benchmark id") from None
        for path in self._benchmark_files():
            if path.stem == benchmark_id or (path == DEMO_BENCHMARK and benchmark_id == DEMO_BENCHMARK_ID):
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as err:
                    raise ConfigError(f"benchmark: {path.name} cannot be read ({str(err).splitlines()[0]})") from None
        raise ConfigError(f"benchmark: no saved benchmark {benchmark_id!r} (see list_benchmarks)")

    def forgetting_index(self) -> dict[str, dict[str, Any]]:
        """Each run's forgetting from the newest saved benchmark that has it: ``{run_id: {"benchmark": id, "deltas":
        {task: delta row}}}``, the top-level tasks only (a group's subtasks left out); each row: metric, base, run,
        delta, low, high, p, n."""
        index: dict[str, dict[str, Any]] = {}
        for path in self._benchmark_files():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            members = {task for tasks in (saved.get("groups") or {}).values() for task in tasks}
            for run_id, deltas in (saved.get("deltas") or {}).items():
                if run_id in index or not isinstance(deltas, dict):
                    continue
                top = {task: row for task, row in deltas.items() if task not in members}
                if top:
                    index[run_id] = {"benchmark": saved.get("id", path.stem), "deltas": top}
        return index

    def forgetting(self, run_id: str) -> dict[str, Any] | None:
        """``run_id``'s entry of ``forgetting_index``, or None when no saved benchmark has the run."""
        return self.forgetting_index().get(run_id)
