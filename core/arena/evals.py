"""Batch evaluation: chosen variants over a test set, per-example rows and a per-variant, per-task summary with
95% bootstrap intervals, then the evidence (core.arena.evidence: paired comparisons, the verdict per task,
knowledge/behaviour slices, cost, provenance), saved under ``<workspace>/evals/<eval-id>/``:

    results.json   config, summary, evidence and every row (answers, prompts' token counts, metrics, slice)
    report.html    the self-contained evidence report (core.arena.report)
    examples.csv   one row per (example, variant)
    summary.csv    variant, task, metric, mean, low, high, n
    report.md      the summary tables and the chart
    chart.png      mean per variant of the headline metrics, with the intervals
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import distributed
from core.arena.evidence import evidence
from core.arena.metrics import CLASSIFICATION_TASK, bootstrap_ci
from core.arena.report import render_html
from core.arena.runner import ArenaConfig, ArenaContext, VariantResult, run_examples, score_results
from core.charts import save_chart
from core.data import Example
from core.errors import ConfigError
from core.io import write_atomic, write_json
from core.limits import new_id, writable_folder

logger = logging.getLogger(__name__)

HEADLINE = ("rougeL", "bleu", "token_f1", "contains", "similarity", "accuracy")
ALL_TASKS = "all"
@dataclass
class EvalResult:
    eval_dir: str
    n: int
    variants: list[str]
    summary: dict[str, dict[str, dict[str, dict[str, float | int | None]]]]  # variant -> task -> metric -> stats
    rows: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    generate_s: float = 0.0
    metrics_s: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)  # comparisons, verdict, slices, cost, provenance

    def means(self, task: str = ALL_TASKS) -> dict[str, dict[str, float | None]]:
        """variant -> metric -> mean over ``task`` (the CLI contract's ``summary``)."""
        return {variant: {metric: stats["mean"] for metric, stats in tasks.get(task, {}).items()}
                for variant, tasks in self.summary.items()}

    def contract(self) -> dict[str, Any]:
        return {"eval_dir": self.eval_dir, "summary": self.means(), "n": self.n, "by_task": self.summary,
                "wall_s": round(self.wall_s, 2), "generate_s": round(self.generate_s, 2),
                "metrics_s": round(self.metrics_s, 2),
                **{key: self.evidence.get(key) for key in ("comparisons", "verdict", "slices", "cost")},
                "report": str(Path(self.eval_dir) / "report.html")}


def new_eval_id(data: str | Path) -> str:
    """A new evaluation's folder name from its test file's name (core.limits.new_id)."""
    return new_id(Path(str(data)).stem, "eval")


def dataset_label_set(examples: Sequence[Example], limit: int = 30) -> list[str] | None:
    """Every distinct answer of the classification rows, when there are few enough to be labels."""
    labels = sorted({example.output.strip() for example in examples
                     if example.task == CLASSIFICATION_TASK and example.output})
    return labels if 0 < len(labels) <= limit else None


def summarise(rows: Sequence[dict[str, Any]], *, n_resamples: int = 1000, seed: int = 0,
              ) -> dict[str, dict[str, dict[str, dict[str, float | int | None]]]]:
    """variant -> task (and "all") -> metric -> {mean, low, high, n}; None metric values are left out."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in rows:
        if not row.get("available", True):
            continue
        for task in (row.get("task") or "default", ALL_TASKS):
            metrics = grouped.setdefault(row["variant"], {}).setdefault(task, {})
            for metric, value in (row.get("metrics") or {}).items():
                if value is not None:
                    metrics.setdefault(metric, []).append(float(value))
            for metric in ("generate_s", "new_tokens"):
                if row.get(metric) is not None:
                    metrics.setdefault(metric, []).append(float(row[metric]))
    summary: dict[str, dict[str, dict[str, dict[str, float | int | None]]]] = {}
    for variant, tasks in grouped.items():
        for task, metrics in tasks.items():
            for metric, values in metrics.items():
                mean, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
                summary.setdefault(variant, {}).setdefault(task, {})[metric] = {
                    "mean": mean, "low": low, "high": high, "n": len(values)}
    return summary


def run_eval(
    examples: Sequence[Example],
    config: ArenaConfig,
    context: ArenaContext,
    out_dir: str | Path,
    *,
    data_path: str = "",
    on_progress: Callable[[str, int, int], None] | None = None,
    source_in_index: Callable[[str], bool] | None = None,
) -> EvalResult:
    """Run every variant over ``examples`` (batched across examples), score, summarise, weigh the evidence and save
    to ``out_dir``. ``source_in_index(source)``: whether a document is in the knowledge base (the slice rule).

    In a data-parallel job (core.distributed) each process answers and scores its contiguous share of the examples;
    rank 0 gathers them in order and summarises, weighs and saves as one process would (the other processes return
    their share's result, unsaved)."""
    if not examples:
        raise ConfigError("data: no examples to evaluate")
    start = time.perf_counter()
    labels = dataset_label_set(examples)
    label_sets = [labels if example.task == CLASSIFICATION_TASK else None for example in examples]
    world = distributed.current()
    mine = distributed.shard(range(len(examples)), world)  # all of them for one process
    part = [examples[i] for i in mine]
    table = run_examples(part, config, context, label_sets=[label_sets[i] for i in mine], on_progress=on_progress,
                         score=False)
    generate_s = time.perf_counter() - start
    metrics_start = time.perf_counter()
    score_results(part, table, context, [label_sets[i] for i in mine])  # timed apart from generation
    metrics_s = time.perf_counter() - metrics_start
    if world.distributed:  # rank 0 gathers the scored answers in example order and goes on alone
        parts = distributed.gather_to_main((table, generate_s, metrics_s))
        if not world.is_main:
            return EvalResult(eval_dir=str(out_dir), n=len(part), variants=[r.variant for r in table[0]] if table
                              else [], summary={}, rows=[], wall_s=time.perf_counter() - start,
                              generate_s=generate_s, metrics_s=metrics_s, evidence={})
        table = [results for shard_table, _, _ in parts for results in shard_table]
        generate_s = max(item[1] for item in parts)
        metrics_s = max(item[2] for item in parts)
    rows = [_row(example, result) for example, results in zip(examples, table, strict=True) for result in results]
    summary = summarise(rows, seed=config.seed)
    found = evidence(examples, table, rows, config, context, data_path=data_path, source_in_index=source_in_index)
    variants = [result.variant for result in table[0]]
    result = EvalResult(eval_dir=str(out_dir), n=len(examples), variants=variants, summary=summary, rows=rows,
                        wall_s=time.perf_counter() - start, generate_s=generate_s, metrics_s=metrics_s,
                        evidence=found)
    save_eval(result, config, Path(out_dir), data_path=data_path)
    logger.info("evaluated %d examples x %d variants in %.1f s (metrics %.1f s) -> %s", len(examples),
                len(variants), result.wall_s, metrics_s, out_dir)
    return result


def _row(example: Example, result: VariantResult) -> dict[str, Any]:
    row = result.to_dict()
    row.pop("prompt")
    row.update(id=example.uid, task=example.task, instruction=example.instruction, input=example.input,
               reference=example.output, sources=[item["source"] for item in result.retrieved])
    row.pop("retrieved")
    return row


# --------------------------------------------------------------------------------------------------------------------
# Saving: JSON, CSV, Markdown and a chart (core.charts draws it)
# --------------------------------------------------------------------------------------------------------------------


def save_eval(result: EvalResult, config: ArenaConfig, out: Path, *, data_path: str = "") -> None:
    writable_folder(out)
    saved = {"data": data_path, "config": config.to_dict(), **result.contract(),
             "provenance": result.evidence.get("provenance"), "rows": result.rows}
    write_json(out / "results.json", saved)
    write_atomic(out / "report.html", render_html(saved))
    metric_names = sorted({metric for row in result.rows for metric in (row.get("metrics") or {})})
    columns = ["id", "task", "variant", "adapter", "available", "error", "answer", "reference", "generate_s",
               "new_tokens", "prompt_tokens", *metric_names]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in result.rows:
        metrics = row.get("metrics") or {}
        writer.writerow([row.get(column) if column not in metric_names else metrics.get(column)
                         for column in columns])
    write_atomic(out / "examples.csv", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "task", "metric", "mean", "low", "high", "n"])
    for variant, tasks in result.summary.items():
        for task, metrics in tasks.items():
            for metric, stats in metrics.items():
                writer.writerow([variant, task, metric, stats["mean"], stats["low"], stats["high"], stats["n"]])
    write_atomic(out / "summary.csv", buffer.getvalue())
    chart = save_chart(result, out / "chart.png", task=ALL_TASKS)
    write_atomic(out / "report.md", render_report(result, data_path=data_path, chart=chart))


def _fmt(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def render_report(result: EvalResult, *, data_path: str = "", chart: Path | None = None) -> str:
    """Markdown: one table per task (variants x headline metrics, mean [95% CI]) and the chart."""
    lines = [f"# Evaluation {Path(result.eval_dir).name}", "",
             f"Data: `{data_path}` — {result.n} examples x {len(result.variants)} variants, "
             f"{result.wall_s:.0f} s ({result.generate_s:.0f} s generating, {result.metrics_s:.1f} s scoring).", "",
             "Mean and 95% bootstrap interval per variant; n/a where a metric does not apply. generate s: seconds "
             "from the start of an example's batch to its last token.", ""]
    tasks = sorted({task for tasks in result.summary.values() for task in tasks}, key=lambda t: (t == ALL_TASKS, t))
    for task in tasks:
        metrics = [m for m in HEADLINE if any(m in tasks_.get(task, {}) for tasks_ in result.summary.values())]
        lines += [f"## {task}", "", "| variant | " + " | ".join(metrics) + " | generate s |",
                  "|---|" + "---|" * (len(metrics) + 1)]
        for variant in result.variants:
            stats = result.summary.get(variant, {}).get(task)
            if stats is None:
                lines.append(f"| {variant} | " + " | ".join("unavailable" for _ in metrics) + " | |")
                continue
            latency = stats.get("generate_s", {}).get("mean")
            shown = f"{latency:.1f}" if latency is not None else ""
            lines.append(f"| {variant} | " + " | ".join(_fmt(stats.get(m)) for m in metrics) + f" | {shown} |")
        lines.append("")
    errors = sorted({(row["variant"], row["error"]) for row in result.rows if row.get("error")})
    if errors:
        lines += ["## Unavailable", ""] + [f"- {variant}: {error}" for variant, error in errors] + [""]
    if chart is not None:
        lines += [f"![scores by variant]({chart.name})", ""]
    return "\n".join(lines)


def load_eval(folder: str | Path) -> dict[str, Any]:
    """A saved evaluation's results.json."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise ConfigError(f"eval: {folder} has no results.json")
    return json.loads(path.read_text(encoding="utf-8"))
