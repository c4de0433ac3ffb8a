"""Benchmarks tab: standard lm-evaluation-harness tasks on the base model and on fine-tuned runs, each run's change
from the base with its 95% interval (what fine-tuning cost or gained outside its own task), saved and reopened.

Layout and wiring only: widget values -> ``engine.benchmark`` (run in a worker thread; its ``on_progress`` events
stream into the status line, Stop sets its stop event) -> the saved result -> the summary and the table
(ui.bench_views: pure). A past benchmark (``engine.list_benchmarks`` / ``load_benchmark``) reopens into the same
views; the newest is open at launch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.benchmarks import BACKENDS, BenchmarkConfig
from core.engine import DEMO_RUN, Engine
from core.text import fmt_duration, one_line
from ui.bench_views import (
    BASE_HEADERS,
    default_tasks,
    download_copy,
    parse_extra,
    past_choices,
    progress_line,
    result_table,
    summary_text,
    task_choices,
)
from ui.common import field_default, field_help, run_choices
from ui.visitors import scoped

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
EXTRA_INFO = "online, or with the dataset cached: mmlu, boolq, hellaswag…"
INTRO = ("Standard benchmarks (EleutherAI's lm-evaluation-harness) on the base model and on your fine-tuned runs: "
         "did fine-tuning cost general knowledge? Each run's **Δ** is its change from the base on the same examples, "
         "with a 95% interval; ↓ / ↑ mark a change the interval says is real.")


def result_views(saved: dict[str, Any]) -> dict[str, Any]:
    """The values the result widgets show for a saved benchmark: summary, table (a DataFrame) and the JSON to
    download (a temp copy)."""
    headers, rows = result_table(saved)
    return {"summary": summary_text(saved), "table": pd.DataFrame(rows, columns=headers),
            "download": download_copy(saved)}


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=BASE_HEADERS)


def _demo_runs(choices: list[tuple[str, str]]) -> list[str]:
    return [value for _, value in choices if Path(value).name == DEMO_RUN]


def _number(value: float | None) -> int | None:
    """A Number widget's value: None for empty or 0 (meaning "all" / "the task's default")."""
    return int(value) if value else None


def create_benchmarks_tab(engine: Engine) -> dict[str, Any]:
    """Tasks, runs and settings; Run / Stop with streamed progress; summary, table, download; past results.
    ``refresh`` in the returned parts: (fn, inputs, outputs) refilling the run picker and the past results."""
    instance = engine  # build time only: every handler works with the requesting visitor's engine
    shared = engine.visitors is not None
    try:
        choices = task_choices(engine.benchmark_tasks())
    except ValueError as err:  # the bundled task folder unreadable: the tab says so, the app still builds
        logger.warning("benchmark tasks not listed: %s", one_line(err))
        choices = []
    runs_offered = run_choices(engine)
    past_rows = engine.list_benchmarks()
    opened, start = None, {}
    for row in past_rows:  # the newest readable benchmark is open at launch
        if "error" in row:
            continue
        try:
            start = result_views(engine.load_benchmark(row["id"]))
            opened = row["id"]
        except (ValueError, OSError) as err:
            logger.warning("could not open benchmark %s: %s", row["id"], one_line(err))
        break

    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=3):
            tasks = gr.CheckboxGroup(choices, value=default_tasks(choices), label="Tasks (bundled, offline)",
                                     info="Each task on the base model, then on every chosen run.",
                                     elem_id="bench-tasks")
            extra = gr.Textbox(label="Other harness tasks (comma separated)", info=EXTRA_INFO, placeholder="boolq",
                               visible=not shared, elem_id="bench-extra")
        with gr.Column(scale=2):
            runs = gr.Dropdown(runs_offered, value=_demo_runs(runs_offered), multiselect=True,
                               label="Fine-tuned runs (compared with the base)", elem_id="bench-runs")
            limit = gr.Number(DEFAULT_LIMIT, precision=0, minimum=0, elem_id="bench-limit",
                              label="Examples per task (empty or 0: all)",
                              info="the first N of each task; the same ones for the base and every run")
            with gr.Accordion("Settings", open=False):
                shots = gr.Number(field_default(BenchmarkConfig, "shots"), precision=0, minimum=0,
                                  label="Few-shot examples (empty: each task's default)",
                                  info=field_help(BenchmarkConfig, "shots"), elem_id="bench-shots")
                batch_size = gr.Number(field_default(BenchmarkConfig, "batch_size"), precision=0, minimum=1,
                                       maximum=512, label="Batch size", info=field_help(BenchmarkConfig, "batch_size"),
                                       elem_id="bench-batch")
                chat_template = gr.Checkbox(field_default(BenchmarkConfig, "chat_template"), label="Chat template",
                                            info=field_help(BenchmarkConfig, "chat_template"), elem_id="bench-chat")
                backend = gr.Radio(list(BACKENDS), value=field_default(BenchmarkConfig, "backend"), label="Backend",
                                   info=field_help(BenchmarkConfig, "backend"), elem_id="bench-backend")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="bench-run")
                stop = gr.Button("Stop", variant="stop", elem_id="bench-stop")
    status = gr.Markdown(elem_id="bench-status")
    with gr.Row():
        past = gr.Dropdown(past_choices(past_rows), value=opened, label="Past results (pick one to reopen)",
                           scale=4, elem_id="bench-past")
        refresh_past = gr.Button("Refresh", size="sm", scale=0, elem_id="bench-past-refresh")
    summary = gr.Markdown(start.get("summary", ""), elem_id="bench-summary")
    table = gr.Dataframe(start.get("table", empty_table()), interactive=False, wrap=True, pinned_columns=1,
                         label="Per task: score ± standard error; Δ vs base [95% interval]", elem_id="bench-table")
    download = gr.File(start.get("download"), label="Result (JSON)", interactive=False, elem_id="bench-download")
    stops: dict[str, threading.Event] = {}  # the running benchmark's stop event, by browser session

    def session(request: gr.Request | None) -> str:
        return str(getattr(request, "session_hash", None) or "")

    def views(saved: dict[str, Any]) -> tuple:
        found = result_views(saved)
        return found["summary"], found["table"], found["download"]

    def on_run(chosen, extra_text, adapters, limit_value, shots_value, batch, template, backend_name,
               request: gr.Request | None = None) -> Iterator[tuple]:
        engine = scoped(instance, request)
        names = [*(chosen or []), *parse_extra(extra_text)]
        if not names:
            raise gr.Error("Choose at least one task.", print_exception=False)
        stop_event = threading.Event()
        key = session(request)
        stops[key] = stop_event
        events: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = engine.benchmark(
                    names, adapters=list(adapters or []), limit=_number(limit_value), shots=(
                        None if shots_value is None or shots_value == "" else int(shots_value)),
                    backend=backend_name or "hf", batch_size=int(batch or 16), chat_template=bool(template),
                    on_progress=events.put, stop=stop_event)
            except Exception as err:  # reported below as one line
                outcome["error"] = err
            events.put(None)

        keep = gr.update()
        worker = threading.Thread(target=work, name="benchmark", daemon=True)
        worker.start()
        try:
            yield "Checking the tasks and runs…", keep, keep, keep, keep
            while True:
                event = events.get()
                finished = event is None
                while not finished:  # only the newest of a burst of events is shown
                    try:
                        newer = events.get_nowait()
                    except queue.Empty:
                        break
                    finished = newer is None
                    event = event if finished else newer
                if event is not None:
                    text = "Stopping after the current batch…" if stop_event.is_set() else progress_line(event)
                    yield text, keep, keep, keep, keep
                if finished:
                    break
            worker.join()
        finally:
            if worker.is_alive():  # the browser went away: let the worker stop too
                stop_event.set()
            if stops.get(key) is stop_event:
                del stops[key]
        if "error" in outcome:
            err = outcome["error"]
            if stop_event.is_set():
                yield "**Stopped**: nothing saved.", keep, keep, keep, keep
                return
            if isinstance(err, ValueError):  # TuneArenaError: a refusal in one line
                logger.warning("benchmark refused: %s", one_line(err))
            else:
                logger.error("benchmark failed", exc_info=err)
            raise gr.Error(one_line(err), print_exception=False)
        saved = outcome["result"]
        line = f"**Done** in {fmt_duration(saved.get('wall_s'))}: saved as `{saved['id']}`."
        yield (line, *views(saved), gr.update(choices=past_choices(engine.list_benchmarks()), value=saved["id"]))

    def on_stop(request: gr.Request | None = None) -> str:
        event = stops.get(session(request))
        if event is None:
            return "No benchmark running."
        event.set()
        return "Stopping after the current batch…"

    def on_open(benchmark_id: str | None, request: gr.Request | None = None):
        if not benchmark_id:
            raise gr.Error("Pick a past result.", print_exception=False)
        try:
            saved = scoped(instance, request).load_benchmark(benchmark_id)
        except (ValueError, OSError) as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        return views(saved)

    def refresh(chosen_runs: list[str] | None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        offered = run_choices(engine)
        values = {value for _, value in offered}
        kept = [value for value in chosen_runs or [] if value in values]
        return gr.update(choices=offered, value=kept), gr.update(choices=past_choices(engine.list_benchmarks()))

    def past_refresh(request: gr.Request | None = None):
        return gr.update(choices=past_choices(scoped(instance, request).list_benchmarks()))

    run.click(on_run, [tasks, extra, runs, limit, shots, batch_size, chat_template, backend],
              [status, summary, table, download, past], api_name="benchmark", concurrency_limit=1)
    stop.click(on_stop, None, [status], queue=False, api_name="benchmark_stop")
    past.input(on_open, [past], [summary, table, download], api_name="open_benchmark")
    refresh_past.click(past_refresh, None, [past], queue=False, api_visibility="private")
    return {"tasks": tasks, "extra": extra, "runs": runs, "limit": limit, "shots": shots, "batch_size": batch_size,
            "chat_template": chat_template, "backend": backend, "run": run, "stop": stop, "status": status,
            "past": past, "summary": summary, "table": table, "download": download,
            "refresh": (refresh, [runs], [runs, past])}


__all__ = ["create_benchmarks_tab", "empty_table", "result_views"]
