"""A saved benchmark (``benchmarks/<id>.json`` as a dict: core.engine.benchmarks) as the Benchmarks tab shows it,
and a run's forgetting as the Runs tab shows it. Pure: dicts in, strings and tables out.

Shapes read here: ``saved["tasks"] = {task: {label: {<metric>: value, "stderr", "metric", "n", ...}}}`` (a group
then its subtasks), ``saved["deltas"] = {run label: {task: {"metric", "base", "run", "delta", "low", "high", "p",
"n"}}}``, ``saved["groups"] = {group: [tasks]}``, ``saved["models"] = {label: {..., "skipped"?}}``; label ``base``
is the base model, the others are run ids. A forgetting entry (a catalogue row's ``forgetting``) is ``{"benchmark":
id, "deltas": {task: delta row}}``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.benchmarks import BASE
from core.text import fmt_duration

NONE = "—"
PREFIX = "tune_arena_"  # the bundled tasks' common prefix, left out where space is short
SUBTASK = "\u00a0\u00a0· "  # a group's subtask, indented under it (non-breaking: a table cell keeps the spaces)
BETTER, WORSE = "↑", "↓"
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"})
BASE_HEADERS = ["task", "metric", "n", "base"]
STAGES = {"loading": "loading the model", "loglikelihood": "scoring answer options",
          "generate_until": "generating answers", "loglikelihood_rolling": "scoring texts", "done": "done"}
TASK_TITLES = {"tune_arena_probe": "Forgetting probe, generated answers",
               "tune_arena_probe_mc": "Forgetting probe, multiple choice",
               "tune_arena_knowledge": "General knowledge, 10 subjects",
               "tune_arena_tickets": "Demo tickets, 6 labels"}
DEFAULT_TASKS = ("tune_arena_probe", "tune_arena_knowledge", "tune_arena_tickets")


# --------------------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------------------


def signed(value: float, digits: int = 3, *, zero_sign: bool = True) -> str:
    """``-0.146`` -> ``−0.146`` (a real minus), ``0.1`` -> ``+0.100``; zero as ``+0.000`` (``0.000`` without
    ``zero_sign``)."""
    value = round(float(value), digits) + 0.0  # -0.0 -> 0.0
    if value == 0:
        return f"{'+' if zero_sign else ''}{0:.{digits}f}"
    return f"{value:+.{digits}f}".replace("-", "−")


def value_cell(row: dict[str, Any] | None, digits: int = 3) -> str:
    """One model's score on a task: ``0.417 ± 0.072`` (the harness's standard error); a dash when not scored."""
    if not row or not isinstance(row.get(row.get("metric")), int | float):
        return NONE
    text = f"{row[row['metric']]:.{digits}f}"
    stderr = row.get("stderr")
    return f"{text} ± {stderr:.{digits}f}" if isinstance(stderr, int | float) else text


def direction(delta: dict[str, Any] | None) -> str | None:
    """``better`` or ``worse`` when the delta's 95% interval excludes 0 (lower is better for perplexities), else
    None."""
    if not delta or delta.get("low") is None or delta.get("high") is None:
        return None
    if delta["low"] > 0:
        up = True
    elif delta["high"] < 0:
        up = False
    else:
        return None
    lower_better = str(delta.get("metric") or "").split(" (")[0] in LOWER_IS_BETTER
    return "better" if up != lower_better else "worse"


def _mark(delta: dict[str, Any] | None) -> str:
    found = direction(delta)
    return {"better": f" {BETTER}", "worse": f" {WORSE}"}.get(found or "", "")


def delta_cell(delta: dict[str, Any] | None, digits: int = 3) -> str:
    """A run's change from the base with its 95% interval: ``−0.146 [−0.312, +0.000]``, then ↓ (worse) or ↑
    (better) when the interval excludes 0; a dash when there is none."""
    if not delta or delta.get("delta") is None:
        return NONE
    text = signed(delta["delta"], digits)
    if delta.get("low") is not None and delta.get("high") is not None:
        text += f" [{signed(delta['low'], digits)}, {signed(delta['high'], digits)}]"
    return text + _mark(delta)


def short_task(name: str) -> str:
    """``tune_arena_probe`` -> ``probe``; other names as they are."""
    return name.removeprefix(PREFIX) or name


# --------------------------------------------------------------------------------------------------------------------
# Task choices
# --------------------------------------------------------------------------------------------------------------------


def task_choices(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, name) of the bundled top-level tasks of ``engine.benchmark_tasks()``: tasks and groups that are no
    group's member (tags left out), each labelled ``Title (name)``."""
    members = {member for row in rows if row.get("kind") == "group" for member in row.get("tasks") or ()}
    choices = []
    for row in rows:
        if row.get("source") != "bundled" or row.get("kind") not in ("task", "group") or row["name"] in members:
            continue
        title = TASK_TITLES.get(row["name"]) or (row.get("description") or "").split(":")[0].strip().capitalize()
        choices.append((f"{title} ({row['name']})" if title else row["name"], row["name"]))
    return choices


def default_tasks(choices: Sequence[tuple[str, str]]) -> list[str]:
    """The tasks ticked at first: probe, knowledge and tickets, those of them on offer."""
    offered = {name for _, name in choices}
    return [name for name in DEFAULT_TASKS if name in offered]


def parse_extra(text: str | None) -> list[str]:
    """``"mmlu, boolq hellaswag"`` -> ``["mmlu", "boolq", "hellaswag"]`` (commas or spaces, duplicates once)."""
    names = (text or "").replace(",", " ").split()
    return list(dict.fromkeys(names))


def progress_line(event: dict[str, Any]) -> str:
    """An ``on_progress`` event as the status line: ``Model 2 of 3 (demo-quick-lora) · generating answers ·
    12/48``."""
    head = f"Model {int(event.get('index', 0)) + 1} of {event.get('models', '?')} ({event.get('model', '?')})"
    stage = event.get("stage") or ""
    text = f"{head} · {STAGES.get(stage, stage)}"
    done, total = event.get("done"), event.get("total")
    if stage not in ("loading", "done") and isinstance(total, int) and total > 0:
        text += f" · {done}/{total}"
    return text


# --------------------------------------------------------------------------------------------------------------------
# A saved benchmark
# --------------------------------------------------------------------------------------------------------------------


def subtasks(saved: dict[str, Any]) -> set[str]:
    """The tasks shown under a group of the benchmark (members of a group that was run)."""
    tasks = saved.get("tasks") or {}
    return {task for group, members in (saved.get("groups") or {}).items() if group in tasks for task in members}


def skipped_runs(saved: dict[str, Any]) -> dict[str, str]:
    """{label: why} of the models that could not take the tasks."""
    return {label: str(facts["skipped"]) for label, facts in (saved.get("models") or {}).items()
            if isinstance(facts, dict) and facts.get("skipped")}


def run_labels(saved: dict[str, Any]) -> list[str]:
    """The runs with scores, in the order they ran (the base and skipped runs left out)."""
    skipped = skipped_runs(saved)
    order = list(saved.get("models") or {})
    order += [label for rows in (saved.get("tasks") or {}).values() for label in rows if label not in order]
    return [label for label in order if label != BASE and label not in skipped]


def result_table(saved: dict[str, Any], digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per task (a group's subtasks indented ``  · `` under it): task, metric, n, the base's
    ``value ± stderr``, then per run its ``value ± stderr`` and ``Δ <run>``: the change from the base with its 95%
    interval, marked ↓/↑ when the interval excludes 0."""
    runs = run_labels(saved)
    headers = [*BASE_HEADERS, *(column for label in runs for column in (label, f"Δ {label}"))]
    under = subtasks(saved)
    deltas = saved.get("deltas") or {}
    rows = []
    for task, by_label in (saved.get("tasks") or {}).items():
        first = by_label.get(BASE) or next(iter(by_label.values()), {})
        n = first.get("n")
        row = [f"{SUBTASK}{task}" if task in under else task, str(first.get("metric") or NONE),
               NONE if n is None else str(n), value_cell(by_label.get(BASE), digits)]
        for label in runs:
            row += [value_cell(by_label.get(label), digits), delta_cell((deltas.get(label) or {}).get(task), digits)]
        rows.append(row)
    return headers, rows


def delta_words(delta: dict[str, Any], digits: int = 2) -> str:
    """``−0.15 [−0.31, 0.00] (not significant)`` (or ``(worse)``, ``(better)``: the interval excludes 0)."""
    if delta.get("delta") is None:
        return "no paired scores"
    text = signed(delta["delta"], digits, zero_sign=False)
    if delta.get("low") is not None and delta.get("high") is not None:
        text += f" [{signed(delta['low'], digits, zero_sign=False)}, {signed(delta['high'], digits, zero_sign=False)}]"
    return f"{text} ({direction(delta) or 'not significant'})"


def forgetting_sentence(label: str, deltas: dict[str, dict[str, Any]], skip: set[str] | frozenset = frozenset()) -> str:
    """``demo-quick-lora: tune_arena_probe −0.15 [−0.31, 0.00] (not significant); ...``: a run's change from the
    base on each task not in ``skip``."""
    parts = [f"{task} {delta_words(delta)}" for task, delta in deltas.items() if task not in skip]
    return f"{label}: {'; '.join(parts) if parts else 'no task scored on both'}"


def summary_text(saved: dict[str, Any]) -> str:
    """Markdown above the table: id, model, examples per task, wall time (per model), skipped runs with their reason,
    then one sentence per run on its change from the base (the top-level tasks)."""
    config = saved.get("config") or {}
    limit = config.get("limit")
    facts = [f"**{saved.get('id', '?')}**", f"model `{saved.get('model') or '?'}`",
             f"at most {limit} examples per task" if limit else "every example of each task"]
    if config.get("shots") is not None:
        facts.append(f"{config['shots']}-shot")
    wall = saved.get("wall_s")
    if isinstance(wall, int | float):
        per_model = saved.get("per_model_s") or {}
        each = ", ".join(f"{label} {fmt_duration(seconds)}" for label, seconds in per_model.items())
        facts.append(f"{fmt_duration(wall)}" + (f" ({each})" if each else ""))
    if saved.get("created"):
        facts.append(str(saved["created"]).replace("T", " "))
    lines = [" · ".join(facts)]
    for label, why in skipped_runs(saved).items():
        lines.append(f"Skipped **{label}**: {why}")
    under = subtasks(saved)
    runs = run_labels(saved)
    for label in runs:
        lines.append(forgetting_sentence(label, (saved.get("deltas") or {}).get(label) or {}, under))
    if runs:
        lines.append(f"Δ = run − base over the same examples, with its 95% bootstrap interval; {WORSE} worse / "
                     f"{BETTER} better where the interval excludes 0.")
    elif not skipped_runs(saved):
        lines.append("The base model alone: choose fine-tuned runs to see what each changed.")
    return "  \n".join(lines)


def past_label(row: dict[str, Any]) -> str:
    """A ``list_benchmarks`` row as a choice: ``created · tasks · models``."""
    if "error" in row:
        return f"{row.get('id', '?')} (unreadable)"
    created = str(row.get("created") or row.get("id") or "?").replace("T", " ")
    tasks = ", ".join(short_task(task) for task in row.get("tasks") or []) or "no tasks"
    return f"{created} · {tasks} · {', '.join(row.get('models') or []) or 'no models'}"


def past_choices(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, id) of every saved benchmark, in ``list_benchmarks`` order (newest first)."""
    return [(past_label(row), str(row["id"])) for row in rows if row.get("id")]


def download_copy(saved: dict[str, Any]) -> str:
    """The result JSON written to a temp folder named by its content (never a workspace path: a visitor is served
    the copy), for the download widget."""
    text = json.dumps(saved, indent=2, ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / f"tune-arena-benchmark-{digest}"
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(saved.get("id") or "benchmark"))
    path = folder / f"{name}.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------------------------------------------------
# Forgetting in the Runs tab
# --------------------------------------------------------------------------------------------------------------------


def forgetting_cell(forgetting: dict[str, Any] | None) -> str:
    """A run's forgetting in the runs table: ``probe −0.15 ↓ · knowledge −0.02 · tickets +0.10`` (↓/↑: the interval
    excludes 0); a dash when no benchmark has the run."""
    deltas = (forgetting or {}).get("deltas") or {}
    parts = [f"{short_task(task)} {signed(delta['delta'], 2)}{_mark(delta)}" for task, delta in deltas.items()
             if isinstance(delta, dict) and delta.get("delta") is not None]
    return " · ".join(parts) if parts else NONE


def forgetting_line(forgetting: dict[str, Any] | None) -> str:
    """The run overview's line: the benchmark and each task's change from the base with its interval."""
    if not forgetting:
        return "Forgetting: not benchmarked yet (Benchmarks tab: choose this run)."
    deltas = forgetting.get("deltas") or {}
    parts = [f"{task} {delta_cell(delta)}" for task, delta in deltas.items() if isinstance(delta, dict)]
    return f"Forgetting (benchmark `{forgetting.get('benchmark')}`, Δ vs base [95%]): " + (
        " · ".join(parts) if parts else NONE)


__all__ = ["BASE_HEADERS", "NONE", "SUBTASK", "default_tasks", "delta_cell", "delta_words", "direction",
           "download_copy", "forgetting_cell", "forgetting_line", "forgetting_sentence", "parse_extra", "past_choices",
           "past_label", "progress_line", "result_table", "run_labels", "short_task", "signed", "skipped_runs",
           "subtasks", "summary_text", "task_choices", "value_cell"]
