"""Evaluate tab: the chosen variants over a whole test set, scored, summarised with 95% intervals and saved.

Layout and wiring only: widget values -> ArenaConfig -> ``engine.evaluate`` (its progress callback feeds the
progress bar) -> the saved ``results.json`` -> summary table, chart, per-example drill-down and downloads.
A past evaluation reopens into the same views. The formatting functions are pure (dicts in, strings/tables out).
"""

from __future__ import annotations

import functools
import html
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.arena import DEFAULT_VARIANTS, STRATEGIES, ArenaConfig, parse_variants
from core.arena.evals import ALL_TASKS, HEADLINE, load_eval
from core.arena.metrics import CLASSIFICATION_TASK
from core.data import Dataset, demo_path, load_examples
from core.engine import Engine
from core.engine.uploads import KINDS, list_uploads
from core.inference import GenerationConfig
from core.text import one_line
from ui.common import DEMO_INDEX, field_default, field_help, index_choices, run_choices

logger = logging.getLogger(__name__)

DOWNLOADS = ("examples.csv", "summary.csv", "results.json", "report.md")
METRIC_LABELS = {"rougeL": "ROUGE-L", "bleu": "BLEU", "token_f1": "F1", "contains": "contains",
                 "similarity": "similarity", "accuracy": "accuracy"}
LEAD_METRICS = ("rougeL", "token_f1", "accuracy")  # the first one measured names the leader in the status line
STAGES = {"retrieve": "Retrieving passages", "generate": "Generating answers", "load": "Reading the demo corpus",
          "chunk": "Chunking the demo corpus", "embed": "Embedding the demo corpus", "index": "Building the index",
          "save": "Saving the index"}
NONE = "—"
SUMMARY_HEADERS = ["task", "variant", "n", *(METRIC_LABELS[m] for m in HEADLINE if m in METRIC_LABELS), "s / answer"]


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


def store_test_set(engine: Engine, path: str | Path, name: str | None = None) -> Path:
    """Check an uploaded file loads as a test set (every row with a reference answer), then keep it under
    ``uploads/datasets/``. Raises ValueError with one line naming the file (and line) on a bad file."""
    shown = name or Path(path).name
    if Path(shown).suffix.lower() not in KINDS["datasets"]:
        raise ValueError(f"{shown}: not a test set file; use one of {', '.join(KINDS['datasets'])}")
    load_examples(path)  # DataError names the file and line
    return engine.store_upload(path, "datasets", name=shown)


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


# --------------------------------------------------------------------------------------------------------------------
# Formatting a saved evaluation (results.json as a dict)
# --------------------------------------------------------------------------------------------------------------------


def format_interval(stats: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean [low, high]`` of a summary cell; a dash when the metric does not apply."""
    if not stats or stats.get("mean") is None:
        return NONE
    mean = f"{stats['mean']:.{digits}f}"
    if stats.get("low") is None or stats.get("high") is None:
        return mean
    return f"{mean} [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]"


def variants_of(saved: dict[str, Any]) -> list[str]:
    """Variant names in the order they ran (from the rows, so unavailable variants are kept)."""
    names = list(dict.fromkeys(row["variant"] for row in saved.get("rows", [])))
    return names or list(saved.get("by_task") or {})


def _tasks(by_task: dict[str, dict[str, Any]]) -> list[str]:
    found = {task for tasks in by_task.values() for task in tasks}
    return sorted(found, key=lambda task: (task != ALL_TASKS, task))  # "all" first


def summary_table(saved: dict[str, Any], digits: int = 2) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per task x variant ("all" first), a column per headline metric measured anywhere,
    each cell ``mean [95% interval]`` to ``digits`` places; ``n`` answers scored; seconds per answer. A variant
    that never ran keeps a row saying why."""
    by_task: dict[str, dict[str, dict[str, dict[str, Any]]]] = saved.get("by_task") or {}
    metrics = [m for m in HEADLINE if any(m in stats for tasks in by_task.values() for stats in tasks.values())]
    headers = ["task", "variant", "n", *(METRIC_LABELS.get(m, m) for m in metrics), "s / answer"]
    errors = {row["variant"]: row.get("error") for row in saved.get("rows", []) if not row.get("available", True)}
    rows: list[list[str]] = []
    for task in _tasks(by_task) or [ALL_TASKS]:
        for variant in variants_of(saved):
            stats = by_task.get(variant, {}).get(task)
            if stats is None:
                if task == ALL_TASKS:
                    why = errors.get(variant) or "no answers"
                    rows.append([task, variant, "0", *(NONE for _ in metrics), f"unavailable: {why}"])
                continue
            n = (stats.get("new_tokens") or {}).get("n") or max((s.get("n") or 0 for s in stats.values()), default=0)
            seconds = (stats.get("generate_s") or {}).get("mean")
            rows.append([task, variant, str(n), *(format_interval(stats.get(m), digits) for m in metrics),
                         f"{seconds:.2f}" if seconds is not None else NONE])
    return headers, rows


def lead_line(saved: dict[str, Any]) -> str:
    """Which variant leads on the first headline metric measured, and whether its interval clears the runner-up."""
    overall = {variant: tasks.get(ALL_TASKS, {}) for variant, tasks in (saved.get("by_task") or {}).items()}
    for metric in LEAD_METRICS:
        ranked = sorted(((stats[metric], variant) for variant, stats in overall.items()
                         if (stats.get(metric) or {}).get("mean") is not None),
                        key=lambda item: -item[0]["mean"])
        if not ranked:
            continue
        best, leader = ranked[0]
        label = METRIC_LABELS.get(metric, metric)
        text = f"Best {label}: **{leader}** {best['mean']:.3f}"
        if len(ranked) > 1:
            second, runner = ranked[1]
            clear = best.get("low") is not None and second.get("high") is not None and best["low"] > second["high"]
            text += (f", ahead of {runner} ({second['mean']:.3f}) " +
                     ("beyond the 95% intervals" if clear else "but within the 95% intervals (more rows would tell)"))
        return text + "."
    return "No scores: no variant answered."


def status_line(saved: dict[str, Any], folder: str | Path) -> str:
    variants = variants_of(saved)
    data = Path(str(saved.get("data") or "?")).name
    wall = saved.get("wall_s")
    took = f" in {wall:.0f} s" if isinstance(wall, int | float) else ""
    return (f"**{Path(folder).name}**: {saved.get('n', '?')} rows of `{data}` × {len(variants)} variants{took}. "
            f"{lead_line(saved)}")


def _rows_by_example(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row.get("id")), []).append(row)
    return grouped


def example_choices(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, example id) per example, in test-set order: ``id · task · instruction``."""
    choices = []
    for uid, group in _rows_by_example(rows).items():
        first = group[0]
        text = " ".join(str(first.get("instruction") or "").split())
        text = text if len(text) <= 80 else text[:79] + "…"
        choices.append((f"{uid} · {first.get('task') or 'default'} · {text}", uid))
    return choices


def headline_metric(task: str | None) -> str:
    """The one per-example score shown in the overview: accuracy for classification, ROUGE-L otherwise."""
    return "accuracy" if task == CLASSIFICATION_TASK else "rougeL"


def examples_table(saved: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per example with each variant's headline score (accuracy or ROUGE-L)."""
    variants = variants_of(saved)
    headers = ["id", "task", "score", "instruction", *variants]
    rows = []
    for uid, group in _rows_by_example(saved.get("rows", [])).items():
        first = group[0]
        metric = headline_metric(first.get("task"))
        by_variant = {row["variant"]: row for row in group}
        cells = []
        for variant in variants:
            value = (by_variant.get(variant, {}).get("metrics") or {}).get(metric)
            cells.append(f"{value:.2f}" if value is not None else NONE)
        text = " ".join(str(first.get("instruction") or "").split())
        rows.append([uid, first.get("task") or "default", METRIC_LABELS[metric],
                     text if len(text) <= 90 else text[:89] + "…", *cells])
    return headers, rows


def _chip(label: str, value: float | None, best: bool) -> str:
    if value is None:
        return ""
    star = " ta-best" if best else ""
    return f"<span class='ta-chip ta-score{star}'>{html.escape(label)} {value:.2f}</span>"


def render_example(rows: Sequence[dict[str, Any]], uid: str | None) -> str:
    """The example ``uid``: its question, input and reference, then every variant's answer beside its scores (the
    best of each metric highlighted). Every text is HTML-escaped."""
    group = _rows_by_example(rows).get(str(uid)) if uid is not None else None
    if not group:
        return "<p class='ta-why'>Pick an example to see every variant's answer.</p>"
    first = group[0]
    best: dict[str, float] = {}
    for metric in METRIC_LABELS:
        values = [(row.get("metrics") or {}).get(metric) for row in group if row.get("available", True)]
        values = [v for v in values if v is not None]
        if len(values) > 1 and max(values) > min(values):
            best[metric] = max(values)
    parts = ["<div class='ta-eval-example'>",
             f"<p><span class='ta-chip'>{html.escape(str(first.get('task') or 'default'))}</span> "
             f"<code>{html.escape(str(uid))}</code></p>",
             f"<p><b>Question</b><br><span class='ta-eval-text'>{html.escape(str(first.get('instruction') or ''))}"
             "</span></p>"]
    if first.get("input"):
        parts.append(f"<details open><summary><b>Input</b></summary><div class='ta-eval-text'>"
                     f"{html.escape(str(first['input']))}</div></details>")
    parts.append(f"<p><b>Reference</b><br><span class='ta-eval-text ta-eval-reference'>"
                 f"{html.escape(str(first.get('reference') or ''))}</span></p>")
    parts.append("<table class='ta-eval-table'><thead><tr><th>Variant</th><th>Answer</th><th>Scores</th></tr>"
                 "</thead><tbody>")
    for row in group:
        name = html.escape(str(row["variant"]))
        if not row.get("available", True):
            parts.append(f"<tr class='ta-off'><td><b>{name}</b></td><td colspan='2'><i>Unavailable: "
                         f"{html.escape(str(row.get('error') or ''))}</i></td></tr>")
            continue
        metrics = row.get("metrics") or {}
        chips = "".join(_chip(label, metrics.get(metric), metric in best and metrics.get(metric) is not None
                              and metrics[metric] >= best[metric] - 1e-9)
                        for metric, label in METRIC_LABELS.items())
        seconds = row.get("generate_s")
        facts = f"{row.get('new_tokens', 0)} tokens" + (f", {seconds:.1f} s" if seconds is not None else "")
        sources = sorted({str(source).rsplit("/", 1)[-1] for source in row.get("sources") or []})
        found = f"<div class='ta-eval-meta'>sources: {html.escape(', '.join(sources))}</div>" if sources else ""
        parts.append(f"<tr><td><b>{name}</b><div class='ta-eval-meta'>{facts}</div></td>"
                     f"<td><div class='ta-eval-text'>{html.escape(str(row.get('answer') or ''))}</div>{found}</td>"
                     f"<td>{chips or NONE}</td></tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def download_paths(folder: str | Path) -> list[str]:
    """The evaluation's files that exist, in DOWNLOADS order, at paths Gradio may serve."""
    return [_servable(Path(folder) / name) for name in DOWNLOADS if (Path(folder) / name).is_file()]


def _servable(path: Path) -> str:
    """Gradio serves only files under the working directory, the temp directory or launch(allowed_paths=...): a
    workspace elsewhere (``$TUNE_ARENA_WORKSPACE=~/work``) has its files copied to a temp folder first."""
    resolved = path.resolve()
    roots = (Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve())
    if any(resolved.is_relative_to(root) for root in roots):
        return str(resolved)
    copy = Path(tempfile.mkdtemp(prefix="tune-arena-eval-")) / path.name
    shutil.copyfile(resolved, copy)
    return str(copy)


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


# --------------------------------------------------------------------------------------------------------------------
# The tab
# --------------------------------------------------------------------------------------------------------------------


def create_evaluate_tab(engine: Engine) -> dict[str, gr.components.Component]:
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
            variants = gr.CheckboxGroup(list(DEFAULT_VARIANTS), value=default_variants, label="Variants",
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
    with gr.Row():
        past = gr.Dropdown(past_choices(engine), value=None, label="Past evaluations (pick one to reopen)",
                           allow_custom_value=True, scale=4, elem_id="eval-past")
        refresh_past = gr.Button("Refresh", size="sm", scale=0, elem_id="eval-past-refresh")
    status = gr.Markdown(elem_id="eval-status")
    summary = gr.Dataframe(pd.DataFrame(columns=SUMMARY_HEADERS), interactive=False, wrap=True, pinned_columns=2,
                           label="Summary: mean [95% bootstrap interval] per task and variant (n = answers scored)",
                           elem_id="eval-summary")
    with gr.Row():
        chart = gr.Image(label="Scores by variant (all tasks)", type="filepath", interactive=False, scale=3,
                         elem_id="eval-chart")
        downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, scale=2,
                            elem_id="eval-downloads")
    with gr.Accordion("All examples: each variant's headline score (select a row to open it)", open=False):
        overview = gr.Dataframe(pd.DataFrame(columns=["id", "task", "score", "instruction"]), interactive=False,
                                wrap=True, elem_id="eval-examples")
    pick = gr.Dropdown([], label="Example: every variant's answer beside the reference", elem_id="eval-pick")
    drill = gr.HTML(render_example([], None), elem_id="eval-drill")
    shown = gr.State(None)  # the results.json on display

    def views(saved: dict[str, Any], folder: str | Path) -> tuple:
        headers, rows = summary_table(saved)
        example_headers, example_rows = examples_table(saved)
        choices = example_choices(saved.get("rows", []))
        first = choices[0][1] if choices else None
        chart_path = Path(folder) / "chart.png"
        return (status_line(saved, folder), pd.DataFrame(rows, columns=headers),
                _servable(chart_path) if chart_path.is_file() else None,
                pd.DataFrame(example_rows, columns=example_headers), gr.update(choices=choices, value=first),
                render_example(saved.get("rows", []), first), download_paths(folder), saved)

    def on_data(path: str | None):
        try:
            dataset = load_test_set(path) if path else None
        except ValueError as err:
            gr.Warning(one_line(err))
            return one_line(err), gr.update(choices=[], value=[])
        if dataset is None:
            return "", gr.update(choices=[], value=[])
        return describe_test_set(dataset), gr.update(choices=sorted(dataset.tasks()), value=[])

    def on_upload(file: str | None):
        if not file:
            return gr.update(), None
        try:
            stored = store_test_set(engine, file)
        except ValueError as err:
            gr.Warning(one_line(err))
            return gr.update(), None
        gr.Info(f"Stored {stored.name}")
        return gr.update(choices=dataset_choices(engine), value=str(stored)), None

    def refresh():
        return (gr.update(choices=dataset_choices(engine)), gr.update(choices=run_choices(engine)),
                gr.update(choices=index_choices(engine)))

    def on_run(data_path, tasks_chosen, limit_rows, variants_chosen, adapters, knowledge_base, few_shot_k, rag_k,
               max_new_tokens, progress=gr.Progress()):
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
        return *views(saved, result.eval_dir), gr.update(choices=past_choices(engine), value=result.eval_dir)

    def on_open(folder: str | None):
        if not folder:
            raise gr.Error("Pick a past evaluation.", print_exception=False)
        if folder not in {value for _, value in past_choices(engine)}:
            raise gr.Error(f"No saved evaluation {Path(str(folder)).name!r} in this workspace.", print_exception=False)
        try:
            saved = load_eval(folder)
        except (ValueError, OSError) as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        return views(saved, folder)

    def on_pick(uid: str | None, saved: dict[str, Any] | None) -> str:
        return render_example((saved or {}).get("rows", []), uid)

    def on_select(saved: dict[str, Any] | None, evt: gr.SelectData):
        choices = example_choices((saved or {}).get("rows", []))
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(choices):
            return gr.update()
        return choices[row][1]

    result_views = [status, summary, chart, overview, pick, drill, downloads, shown]
    data.change(on_data, [data], [data_info, tasks], queue=False)
    upload.upload(on_upload, [upload], [data, upload])
    plan_inputs = [data, tasks, limit, variants, adapter, max_new_tokens]
    for component in plan_inputs:
        component.change(plan_text, plan_inputs, [plan], queue=False, api_visibility="private")
    refresh_lists.click(refresh, None, [data, adapter, index], queue=False)
    run.click(on_run, [data, tasks, limit, variants, adapter, index, shots, rag_k, max_new_tokens],
              [*result_views, past], api_name="evaluate", concurrency_limit=1)
    past.input(on_open, [past], result_views, api_name="open_eval")
    refresh_past.click(lambda: gr.update(choices=past_choices(engine)), None, [past], queue=False)
    pick.change(on_pick, [pick, shown], [drill], queue=False, api_visibility="private")
    overview.select(on_select, [shown], [pick], queue=False, api_visibility="private")
    return {"data": data, "upload": upload, "tasks": tasks, "limit": limit, "variants": variants, "adapter": adapter,
            "index": index, "run": run, "status": status, "summary": summary, "chart": chart, "pick": pick,
            "drill": drill, "downloads": downloads, "past": past}


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
"""

__all__ = ["CSS", "build_config", "count_plan", "create_evaluate_tab", "dataset_choices", "describe_test_set",
           "download_paths", "example_choices", "examples_table", "format_interval", "lead_line", "past_choices",
           "plan_text", "render_example", "status_line", "store_test_set", "summary_table"]
