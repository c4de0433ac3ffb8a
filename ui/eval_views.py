"""A saved evaluation (results.json as a dict) as the Evaluate tab shows it: the summary table, the status line,
the per-example overview and drill-down, and the files to download. Pure: dicts in, strings and tables out."""

from __future__ import annotations

import html
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.arena.evals import ALL_TASKS, HEADLINE
from core.arena.metrics import CLASSIFICATION_TASK, METRIC_LABELS

DOWNLOADS = ("examples.csv", "summary.csv", "results.json", "report.md", "report.html")
LEAD_METRICS = ("rougeL", "token_f1", "accuracy")  # the first one measured names the leader in the status line
NONE = "—"
SUMMARY_HEADERS = ["task", "variant", "n", *(METRIC_LABELS[m] for m in HEADLINE), "s / answer"]


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
    """The evaluation in one Markdown line: name, rows, data file, variants, time; then the leader by overlapping
    intervals, unless the evaluation has a verdict (paired tests, shown in the cards under this line)."""
    variants = variants_of(saved)
    data = Path(str(saved.get("data") or "?")).name
    wall = saved.get("wall_s")
    took = f" in {wall:.0f} s" if isinstance(wall, int | float) else ""
    line = f"**{Path(folder).name}**: {saved.get('n', '?')} rows of `{data}` × {len(variants)} variants{took}."
    return line if saved.get("verdict") else f"{line} {lead_line(saved)}"


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


def probabilities_html(probabilities: dict[str, float] | None, top: int = 3) -> str:
    """A classification run's most likely classes as small bars (``label 93%``), or "" for a generated answer."""
    if not probabilities:
        return ""
    ranked = sorted(probabilities.items(), key=lambda pair: -pair[1])[:top]
    bars = "".join(f"<li><span class='ta-prob-label'>{html.escape(str(label))}</span> "
                   f"<meter min='0' max='1' value='{p:.4f}'></meter> {100 * p:.0f}%</li>" for label, p in ranked)
    return (f"<ul class='ta-probs' style='list-style:none;margin:4px 0;padding:0' "
            f"title='class probabilities of the classification head'>{bars}</ul>")


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
    for metric in HEADLINE:
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
        chips = "".join(_chip(METRIC_LABELS[metric], value, metric in best and value is not None
                              and value >= best[metric] - 1e-9)
                        for metric, value in ((metric, metrics.get(metric)) for metric in HEADLINE))
        seconds = row.get("generate_s")
        facts = ("label" if row.get("probabilities") else f"{row.get('new_tokens', 0)} tokens") + (
            f", {seconds:.1f} s" if seconds is not None else "")
        sources = sorted({str(source).rsplit("/", 1)[-1] for source in row.get("sources") or []})
        found = f"<div class='ta-eval-meta'>sources: {html.escape(', '.join(sources))}</div>" if sources else ""
        parts.append(f"<tr><td><b>{name}</b><div class='ta-eval-meta'>{facts}</div></td>"
                     f"<td><div class='ta-eval-text'>{html.escape(str(row.get('answer') or ''))}</div>"
                     f"{probabilities_html(row.get('probabilities'))}{found}</td>"
                     f"<td>{chips or NONE}</td></tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def download_paths(folder: str | Path, roots: Sequence[Path] = ()) -> list[str]:
    """The evaluation's files that exist, in DOWNLOADS order, at paths Gradio may serve (``servable``)."""
    return [servable(Path(folder) / name, roots) for name in DOWNLOADS if (Path(folder) / name).is_file()]


def servable(path: Path, roots: Sequence[Path] = ()) -> str:
    """Gradio serves only files under the working directory, the temp directory or launch(allowed_paths=...), which
    the app sets to its workspaces (``roots``: the asking engine's workspace and the shared demo items'). A file under
    none of them (``$TUNE_ARENA_WORKSPACE=~/work`` outside the app) is copied to a temp folder first; a file under a
    workspace is served where it lies, so a shared instance's file guard (ui.visitors) keeps it its owner's."""
    resolved = path.resolve()
    places = (Path.cwd(), Path(tempfile.gettempdir()), *roots)
    if any(resolved.is_relative_to(Path(place).resolve()) for place in places):
        return str(resolved)
    copy = Path(tempfile.mkdtemp(prefix="tune-arena-eval-")) / path.name
    shutil.copyfile(resolved, copy)
    return str(copy)


__all__ = ["DOWNLOADS", "NONE", "SUMMARY_HEADERS", "download_paths", "example_choices",
           "examples_table", "format_interval", "headline_metric", "lead_line", "render_example", "servable",
           "status_line", "summary_table", "variants_of"]
