"""Evaluate tab: the chosen variants over a whole test set, scored, summarised with 95% intervals and saved.

Layout and wiring only: widget values -> ArenaConfig -> ``engine.evaluate`` (its progress callback feeds the
progress bar) -> the saved ``results.json`` -> the verdict per task, the slice and cost tables, the summary table,
chart, paired comparisons, per-example drill-down and downloads (report.html among them). A past evaluation reopens
into the same views; on first launch the demo evaluation is open. The formatting lives in ui.eval_views and
ui.verdict (pure: dicts in, strings/tables out).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.arena import DEFAULT_VARIANTS, STRATEGIES, ArenaConfig, parse_variants
from core.arena.evals import load_eval
from core.data import Dataset, demo_path, load_examples
from core.engine import Engine
from core.engine.uploads import KINDS, list_uploads
from core.inference import GenerationConfig
from core.text import one_line
from ui.common import DEMO_INDEX, field_default, field_help, index_choices, run_choices
from ui.eval_views import (
    SUMMARY_HEADERS,
    download_paths,
    example_choices,
    examples_table,
    format_interval,
    lead_line,
    render_example,
    servable,
    status_line,
    summary_table,
)
from ui.verdict import CSS as VERDICT_CSS
from ui.verdict import comparisons_html, demo_eval_folder, details_html, verdict_html
from ui.visitors import scoped

logger = logging.getLogger(__name__)

STAGES = {"retrieve": "Retrieving passages", "generate": "Generating answers", "load": "Reading the demo corpus",
          "chunk": "Chunking the demo corpus", "embed": "Embedding the demo corpus", "index": "Building the index",
          "save": "Saving the index"}


# --------------------------------------------------------------------------------------------------------------------
# Test sets
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _load(path: str, stamp: tuple[int, int]) -> Dataset:
    return load_examples(path)


def load_test_set(path: str | Path) -> Dataset:
    """The examples of a test file, cached until the file changes. Raises DataError (a ValueError, one line)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return load_examples(path)  # raises the DataError that names the file
    return _load(str(path), (stat.st_mtime_ns, stat.st_size))


def dataset_choices(engine: Engine) -> list[tuple[str, str]]:
    """(label, path) of the test sets on offer: the demo test split, the forgetting probe, then the uploads."""
    choices = []
    for name, title in (("test.jsonl", "Demo test split"),
                        ("forgetting_probe.jsonl", "Forgetting probe: general knowledge the base model had")):
        path = demo_path(name)
        try:
            rows = f" ({len(load_test_set(path))} rows)"
        except ValueError:
            rows = ""
        choices.append((title + rows, str(path)))
    choices += [(f"Uploaded: {path.name}", str(path))
                for path in list_uploads(engine.workspace.uploads, "datasets")]
    return choices


def describe_test_set(dataset: Dataset) -> str:
    """One Markdown line: rows, tasks with their counts, the detected shape and the file name."""
    tasks = ", ".join(f"{task} {count}" for task, count in sorted(dataset.tasks().items(), key=lambda kv: -kv[1]))
    return f"**{len(dataset)} rows** · tasks: {tasks} · shape `{dataset.shape}` · `{Path(dataset.path).name}`"


def count_plan(rows: int, variants: int, max_new_tokens: int) -> str:
    """What a run will generate, in one Markdown line."""
    return (f"Will generate **{rows * variants} answers** ({rows} rows × {variants} variants), "
            f"at most {max_new_tokens} new tokens each.")


def plan_text(path: str | None, tasks: Sequence[str] | None, limit: float | None, variants: Sequence[str] | None,
              adapters: Sequence[str] | None, max_new_tokens: float) -> str:
    """count_plan for the widgets' values; empty when they do not make a runnable plan yet."""
    try:
        examples = load_test_set(path).examples if path else []
        count = len(parse_variants(variants or [], adapters or []))
    except (ValueError, TypeError):
        return ""
    if tasks:
        examples = [example for example in examples if (example.task or "default") in tasks]
    rows = len(examples) if not limit else min(len(examples), int(limit))
    return count_plan(rows, count, int(max_new_tokens))


def past_choices(engine: Engine) -> list[tuple[str, str]]:
    """(label, folder) of the saved evaluations, newest first."""
    choices = []
    for row in engine.list_evals():
        if "error" in row:
            choices.append((f"{row['name']} (unreadable)", row["folder"]))
            continue
        data = Path(str(row.get("data") or "?")).name
        choices.append((f"{row['name']} · {data} · {row.get('n')} rows · {', '.join(row.get('variants') or [])}",
                        row["folder"]))
    return choices


def build_config(variants: Sequence[str] | None, adapters: Sequence[str] | None, index: str | None, few_shot_k: float,
                 rag_k: float, max_new_tokens: float) -> ArenaConfig:
    """Widget values -> ArenaConfig (greedy decoding). Raises ValueError naming the field."""
    if not variants:
        raise ValueError("variants: choose at least one variant")
    return ArenaConfig(variants=list(variants), adapters=list(adapters or []), index=index or None,
                       few_shot_k=int(few_shot_k), rag_k=int(rag_k),
                       generation=GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=0.0))


def result_views(engine: Engine, saved: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """The values the result widgets show for a saved evaluation: status, verdict cards, slice and cost tables,
    summary and overview (DataFrames), chart, downloads, comparisons, example choices, the first example's drill-down
    and report.html (``engine.eval_report``: rendered into ``folder`` first when missing; None when it cannot be)."""
    headers, rows = summary_table(saved)
    example_headers, example_rows = examples_table(saved)
    choices = example_choices(saved.get("rows", []))
    first = choices[0][1] if choices else None
    chart_path = Path(folder) / "chart.png"
    report = engine.eval_report(folder, saved)
    roots = (engine.workspace.root, engine.workspace.demo_root)  # the app's allowed_paths hold both
    return {"status": status_line(saved, folder), "verdict": verdict_html(saved), "details": details_html(saved),
            "summary": pd.DataFrame(rows, columns=headers),
            "chart": servable(chart_path, roots) if chart_path.is_file() else None,
            "downloads": download_paths(folder, roots),
            "report": servable(report, roots) if report is not None else None, "comparisons": comparisons_html(saved),
            "overview": pd.DataFrame(example_rows, columns=example_headers), "choices": choices, "pick": first,
            "drill": render_example(saved.get("rows", []), first)}


# --------------------------------------------------------------------------------------------------------------------
# The tab
# --------------------------------------------------------------------------------------------------------------------


def create_evaluate_tab(engine: Engine) -> dict[str, Any]:
    instance = engine  # build time only: every handler works with the requesting visitor's engine
    data_choices = dataset_choices(engine)
    default_data = str(demo_path("test.jsonl"))
    runs = run_choices(engine)
    indexes = index_choices(engine)
    try:
        default_info = describe_test_set(load_test_set(default_data))
        default_tasks = sorted(load_test_set(default_data).tasks())
    except ValueError as err:
        default_info, default_tasks = one_line(err), []
    default_variants = [name for name in DEFAULT_VARIANTS if runs or not STRATEGIES[name].uses_adapter]

    with gr.Row():
        with gr.Column(scale=3):
            data = gr.Dropdown(data_choices, value=default_data, label="Test set", allow_custom_value=True,
                               elem_id="eval-data")
            data_info = gr.Markdown(default_info, elem_id="eval-data-info")
            upload = gr.File(label="…or upload a test set (.jsonl, .json, .csv, .tsv with reference answers)",
                             file_types=list(KINDS["datasets"]), type="filepath", height=150,
                             elem_id="eval-upload")
            tasks = gr.CheckboxGroup(default_tasks, value=[], label="Tasks (none ticked = all)", elem_id="eval-tasks")
            limit = gr.Number(20, precision=0, minimum=1, label="Rows to evaluate (first N after the task filter; "
                              "empty = all)", elem_id="eval-limit")
        with gr.Column(scale=2):
            variants = gr.CheckboxGroup(list(STRATEGIES), value=default_variants, label="Variants",
                                        info=" · ".join(f"{s.name}: {s.description}" for s in STRATEGIES.values()),
                                        elem_id="eval-variants")
            adapter = gr.Dropdown(runs, value=[runs[0][1]] if runs else [], label="Fine-tuned run(s)",
                                  multiselect=True, elem_id="eval-adapter")
            # allow_custom_value: an API caller may name an index folder that is not listed
            index = gr.Dropdown(indexes, value=_demo_choice(indexes), label="Knowledge base", allow_custom_value=True,
                                elem_id="eval-index")
            refresh_lists = gr.Button("Refresh test sets, runs and knowledge bases", size="sm",
                                      elem_id="eval-refresh")
            with gr.Accordion("Settings", open=False):
                shots = gr.Slider(0, 8, value=field_default(ArenaConfig, "few_shot_k"), step=1,
                                  label="Few-shot examples (k)", info=field_help(ArenaConfig, "few_shot_k"))
                rag_k = gr.Slider(1, 8, value=field_default(ArenaConfig, "rag_k"), step=1,
                                  label="Retrieved passages (k)", info=field_help(ArenaConfig, "rag_k"))
                max_new_tokens = gr.Slider(8, 512, value=64, step=8, label="Max new tokens (greedy decoding)",
                                           info=field_help(GenerationConfig, "max_new_tokens"))
            plan = gr.Markdown(plan_text(default_data, [], 20, default_variants, [runs[0][1]] if runs else [], 64),
                               elem_id="eval-plan")
            run = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
    opened = demo_eval_folder(engine)  # first launch: the shipped evaluation, verdict and all, without a click
    try:
        first_saved = load_eval(opened) if opened else None
    except (ValueError, OSError) as err:
        logger.warning("could not open the demo evaluation: %s", one_line(err))
        first_saved = None
    start = result_views(engine, first_saved, opened) if first_saved is not None and opened else {}
    with gr.Row():
        past = gr.Dropdown(past_choices(engine), value=str(opened) if start else None,
                           label="Past evaluations (pick one to reopen)", allow_custom_value=True, scale=4,
                           elem_id="eval-past")
        refresh_past = gr.Button("Refresh", size="sm", scale=0, elem_id="eval-past-refresh")
    with gr.Row(equal_height=True):
        status = gr.Markdown(start.get("status", ""), elem_id="eval-status")
        report = gr.DownloadButton("Download the report (HTML)", value=start.get("report"), size="sm", scale=0,
                                   min_width=220, interactive=start.get("report") is not None, elem_id="eval-report")
    verdict = gr.HTML(start.get("verdict", ""), elem_id="eval-verdict")
    details = gr.HTML(start.get("details", ""), elem_id="eval-details")
    summary = gr.Dataframe(start.get("summary", pd.DataFrame(columns=SUMMARY_HEADERS)), interactive=False, wrap=True,
                           pinned_columns=2, elem_id="eval-summary",
                           label="Summary: mean [95% bootstrap interval] per task and variant (n = answers scored)")
    with gr.Row():
        chart = gr.Image(start.get("chart"), label="Scores by variant (all tasks)", type="filepath",
                         interactive=False, scale=3, elem_id="eval-chart")
        downloads = gr.File(start.get("downloads"), label="Downloads", file_count="multiple", interactive=False,
                            scale=2, elem_id="eval-downloads")
    with gr.Accordion("Paired comparisons: difference, 95% interval, p and Holm-adjusted p", open=False):
        comparisons = gr.HTML(start.get("comparisons", ""), elem_id="eval-comparisons")
    with gr.Accordion("All examples: each variant's headline score (select a row to open it)", open=False):
        overview = gr.Dataframe(start.get("overview", pd.DataFrame(columns=["id", "task", "score", "instruction"])),
                                interactive=False, wrap=True, elem_id="eval-examples")
    pick = gr.Dropdown(start.get("choices", []), value=start.get("pick"), elem_id="eval-pick",
                       label="Example: every variant's answer beside the reference")
    drill = gr.HTML(start.get("drill", render_example([], None)), elem_id="eval-drill")
    shown = gr.State(first_saved if start else None)  # the results.json on display

    def views(engine: Engine, saved: dict[str, Any], folder: str | Path) -> tuple:
        found = result_views(engine, saved, folder)
        return (found["status"], gr.update(value=found["report"], interactive=found["report"] is not None),
                found["verdict"], found["details"], found["summary"], found["chart"], found["downloads"],
                found["comparisons"], found["overview"], gr.update(choices=found["choices"], value=found["pick"]),
                found["drill"], saved)

    def on_data(path: str | None, request: gr.Request | None = None):
        if path and path not in {value for _, value in dataset_choices(scoped(instance, request))}:
            return "✗ not one of the test sets offered here: upload it first", gr.update(choices=[], value=[])
        try:
            dataset = load_test_set(path) if path else None
        except ValueError as err:
            gr.Warning(one_line(err))
            return one_line(err), gr.update(choices=[], value=[])
        if dataset is None:
            return "", gr.update(choices=[], value=[])
        return describe_test_set(dataset), gr.update(choices=sorted(dataset.tasks()), value=[])

    def on_upload(file: str | None, request: gr.Request | None = None):
        if not file:
            return gr.update(), None
        engine = scoped(instance, request)
        try:
            stored = engine.store_dataset(file, "test")
        except ValueError as err:
            gr.Warning(one_line(err))
            return gr.update(), None
        gr.Info(f"Stored {stored.name}")
        return gr.update(choices=dataset_choices(engine), value=str(stored)), None

    def refresh(request: gr.Request | None = None):
        engine = scoped(instance, request)
        return (gr.update(choices=dataset_choices(engine)), gr.update(choices=run_choices(engine)),
                gr.update(choices=index_choices(engine)))

    def past_refresh(request: gr.Request | None = None):
        return gr.update(choices=past_choices(scoped(instance, request)))

    def refresh_all(request: gr.Request | None = None):
        return *refresh(request), past_refresh(request)

    def on_run(data_path, tasks_chosen, limit_rows, variants_chosen, adapters, knowledge_base, few_shot_k, rag_k,
               max_new_tokens, progress=gr.Progress(), request: gr.Request | None = None):
        engine = scoped(instance, request)
        if not variants_chosen:
            raise gr.Error("Choose at least one variant.", print_exception=False)
        if data_path not in {value for _, value in dataset_choices(engine)}:
            raise gr.Error(f"Test set {Path(str(data_path)).name!r} is not on offer; upload it or pick one from the "
                           "list.", print_exception=False)
        try:
            config = build_config(variants_chosen, adapters, knowledge_base, few_shot_k, rag_k, max_new_tokens)
        except ValueError as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        report = _progress_reporter(progress)
        try:
            all_tasks = load_test_set(data_path).tasks()  # a file gone bad since it was listed: one line naming it
            needs_index = any(STRATEGIES[spec.strategy].uses_retrieval for spec in config.specs())
            if needs_index and knowledge_base == DEMO_INDEX:
                progress(0, desc="Indexing the demo corpus (once, ~15 s)…")
                engine.ensure_demo_index(on_progress=report)
            progress(0, desc="Loading the model and metrics…")
            task_filter = list(tasks_chosen) if tasks_chosen and set(tasks_chosen) != set(all_tasks) else None
            result = engine.evaluate(data_path, config, limit=int(limit_rows) if limit_rows else None,
                                     tasks=task_filter, on_progress=report)
            saved = load_eval(result.eval_dir)
        except (ValueError, KeyError, OSError) as err:  # bad input: one line for the user
            logger.warning("evaluation refused: %s", one_line(err))
            raise gr.Error(one_line(err), print_exception=False) from None
        except Exception as err:  # a failure: one line for the user, the traceback in the server log
            logger.exception("evaluation failed")
            raise gr.Error(one_line(err), print_exception=False) from None
        return *views(engine, saved, result.eval_dir), gr.update(choices=past_choices(engine), value=result.eval_dir)

    def on_open(folder: str | None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        if not folder:
            raise gr.Error("Pick a past evaluation.", print_exception=False)
        if folder not in {value for _, value in past_choices(engine)}:
            raise gr.Error(f"No saved evaluation {Path(str(folder)).name!r} in this workspace.", print_exception=False)
        try:
            saved = load_eval(folder)
        except (ValueError, OSError) as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        return views(engine, saved, folder)

    def on_pick(uid: str | None, saved: dict[str, Any] | None) -> str:
        return render_example((saved or {}).get("rows", []), uid)

    def on_select(saved: dict[str, Any] | None, evt: gr.SelectData):
        choices = example_choices((saved or {}).get("rows", []))
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(choices):
            return gr.update()
        return choices[row][1]

    outputs = [status, report, verdict, details, summary, chart, downloads, comparisons, overview, pick, drill, shown]
    data.change(on_data, [data], [data_info, tasks], queue=False)
    upload.upload(on_upload, [upload], [data, upload], api_name="eval_upload")
    plan_inputs = [data, tasks, limit, variants, adapter, max_new_tokens]
    def on_plan(path, tasks_chosen, limit_rows, variants_chosen, adapters, max_new_tokens,
                request: gr.Request | None = None) -> str:
        if path and path not in {value for _, value in dataset_choices(scoped(instance, request))}:
            return ""  # only what this visitor is offered is read
        return plan_text(path, tasks_chosen, limit_rows, variants_chosen, adapters, max_new_tokens)

    for component in plan_inputs:
        component.change(on_plan, plan_inputs, [plan], queue=False, api_visibility="private")
    refresh_lists.click(refresh, None, [data, adapter, index], queue=False)
    run.click(on_run, [data, tasks, limit, variants, adapter, index, shots, rag_k, max_new_tokens],
              [*outputs, past], api_name="evaluate", concurrency_limit=1)
    past.input(on_open, [past], outputs, api_name="open_eval")
    refresh_past.click(past_refresh, None, [past], queue=False)
    pick.change(on_pick, [pick, shown], [drill], queue=False, api_visibility="private")
    overview.select(on_select, [shown], [pick], queue=False, api_visibility="private")
    return {"data": data, "upload": upload, "tasks": tasks, "limit": limit, "variants": variants, "adapter": adapter,
            "index": index, "run": run, "status": status, "verdict": verdict, "details": details, "report": report,
            "summary": summary, "chart": chart, "comparisons": comparisons, "pick": pick, "drill": drill,
            "downloads": downloads, "past": past, "refresh": (refresh_all, None, [data, adapter, index, past])}


def _demo_choice(choices: Sequence[tuple[str, str]]) -> str | None:
    """The demo knowledge base's value among ``choices``: ``"demo"`` before it is built, its folder afterwards."""
    return next((value for _, value in choices if value == DEMO_INDEX or Path(value).name == DEMO_INDEX),
                choices[0][1] if choices else None)


def _progress_reporter(progress: gr.Progress) -> Callable[[str, int, int], None]:
    """An engine ``on_progress(stage, done, total)`` that moves the progress bar; once every answer is generated
    it says scoring has begun (scoring reports nothing of its own)."""

    def report(stage: str, done: int, total: int) -> None:
        if stage == "generate" and total and done >= total:
            progress(1.0, desc="Scoring the answers (ROUGE, BLEU, F1, similarity)…")
            return
        progress((done, total), desc=STAGES.get(stage, stage), unit="answers" if stage == "generate" else "steps")

    return report


CSS = """
.ta-eval-table {width: 100%; border-collapse: collapse;}
.ta-eval-table th, .ta-eval-table td {padding: 6px 8px; border-top: 1px solid var(--border-color-primary);
                                      vertical-align: top; text-align: left;}
.ta-eval-table td:first-child {white-space: nowrap;}
.ta-eval-text {white-space: pre-wrap;}
.ta-eval-reference {font-weight: 600;}
.ta-eval-meta {font-size: 0.85em; opacity: 0.8;}
.ta-eval-details {display: inline-block; vertical-align: top; margin-right: 24px;}
.ta-eval-details h4 {margin: 8px 0 2px 0;}
""" + VERDICT_CSS

__all__ = ["CSS", "build_config", "count_plan", "create_evaluate_tab", "dataset_choices", "describe_test_set",
           "download_paths", "example_choices", "examples_table", "format_interval", "lead_line", "past_choices",
           "plan_text", "render_example", "result_views", "status_line", "summary_table"]
