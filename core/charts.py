"""Every chart of the product, in one place: the runs' quality-vs-cost trade-off (PNG), the loss curves of one run
(an inline SVG: the Train tab redraws it every second and the Runs tab shows a finished run the same way) and an
evaluation's scores per variant (chart.png beside results.json).

Drawing only: callers hand over the numbers (core.engine.catalogue rows, a run's curves, an evaluation's summary).
matplotlib is imported on first use, with the Agg backend (no display). Imports nothing above core.methods.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.io import write_atomic
from core.methods import METHODS
from core.text import fmt_count

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10
OTHER_COLOR = "#555555"
TRAIN_COLOR, VAL_COLOR = "#4f8cff", "#f28c28"
NO_CURVES = "The loss curves appear here once training starts."


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def placeholder_png(message: str) -> bytes:
    """A wide, short PNG that says ``message`` (a chart with nothing to draw yet)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.6), dpi=100)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555", wrap=True)
    return _png(fig)


# --------------------------------------------------------------------------------------------------------------------
# Quality vs cost across methods
# --------------------------------------------------------------------------------------------------------------------


def method_color(method: str | None) -> str:
    """A fixed colour per registered method (tab10 in registry order), grey for anything else."""
    names = list(METHODS)
    return PALETTE[names.index(method) % len(PALETTE)] if method in names else OTHER_COLOR


def point_label(row: dict[str, Any]) -> str:
    """``lora · ab12``: the method and the run id's random suffix (the whole id when it is not a generated one);
    another objective than SFT goes first (``classification/full · ab12``)."""
    run_id = str(row.get("run_id", ""))
    match = re.fullmatch(r"\d{8}-\d{6}-.+-([0-9a-f]{4})", run_id)
    short = match.group(1) if match else (run_id if len(run_id) <= 18 else "…" + run_id[-16:])
    objective = row.get("objective") or "sft"
    method = row.get("method") or "?"
    return f"{method if objective == 'sft' else f'{objective}/{method}'} · {short}"


@dataclass
class TradeoffGroup:
    """One row of the trade-off chart: ``points`` (catalogue rows) with quality ``key`` on y, against each x key of
    ``fronts``; ``fronts[x]`` is the Pareto front on that axis (x ascending), drawn as a dashed line."""

    title: str
    ylabel: str
    key: str
    higher_better: bool
    points: list[dict[str, Any]]
    fronts: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


X_AXES: dict[str, tuple[str, Callable[[float], str]]] = {
    "trainable_params": ("trainable parameters (log scale)", fmt_count),
    "wall_s": ("training wall time, seconds (log scale)", lambda value: f"{value:g}"),
}


def tradeoff_png(groups: Sequence[TradeoffGroup], empty: str = "No runs to compare yet.") -> bytes:
    """Quality against each cost (log x), one chart row per group, one colour per method, labelled points and the
    Pareto front; ``placeholder_png(empty)`` when there is no group to draw."""
    groups = [group for group in groups if group.points]
    if not groups:
        return placeholder_png(empty)
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    columns = max(len(group.fronts) for group in groups) or 1
    fig, axes = plt.subplots(len(groups), columns, figsize=(6 * columns, 4.4 * len(groups)), dpi=100, squeeze=False)
    handles: dict[str, Any] = {}
    for row, group in enumerate(groups):
        for col, (xkey, front) in enumerate(group.fronts.items()):
            xlabel, formatter = X_AXES.get(xkey, (xkey, lambda value: f"{value:g}"))
            ax = axes[row][col]
            for point in group.points:
                method = point.get("method") or "?"
                handle = ax.scatter(point[xkey], point[group.key], s=70, color=method_color(method),
                                    edgecolors="white", linewidths=0.8, zorder=3)
                handles.setdefault(method, handle)
                ax.annotate(point_label(point), (point[xkey], point[group.key]), textcoords="offset points",
                            xytext=(6, 5), fontsize=8, color="#333333")
            if len(front) > 1:
                ax.plot(*zip(*front, strict=True), ls="--", lw=1, color="#999999", zorder=2,
                        label="best quality for the cost so far")
                ax.legend(loc="best", fontsize=8, frameon=False)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if col else (1.0,)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _, f=formatter: f(value)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(group.ylabel)
            ax.grid(alpha=0.3)
            ax.margins(x=0.25, y=0.2)
        axes[row][0].set_title(group.title, fontsize=10, loc="left", color="#333333")
    fig.suptitle("Quality vs cost across methods: how close does a cheap method get to full fine-tuning?",
                 fontsize=12)
    order = {name: number for number, name in enumerate(METHODS)}
    methods = sorted(handles, key=lambda name: (order.get(name, len(order)), name))
    fig.legend([handles[m] for m in methods], methods, loc="lower center", ncol=min(len(methods), 9),
               frameon=False, title="method", fontsize=9)
    fig.tight_layout(rect=(0, 0.1 if len(groups) == 1 else 0.06, 1, 0.96))
    return _png(fig)


# --------------------------------------------------------------------------------------------------------------------
# Loss curves (inline SVG)
# --------------------------------------------------------------------------------------------------------------------


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    span = high - low or 1.0
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def smooth(values: Sequence[float]) -> list[float]:
    """A centred moving average over about 5% of the points (at least 2 on each side): no lag behind the curve."""
    half = max(2, len(values) // 20)
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


def loss_curves_svg(train: Sequence[tuple[int, float]], val: Sequence[tuple[int, float]],
                    total_steps: int | None = None, *, title: str | None = None, width: int = 640, height: int = 260,
                    empty: str = NO_CURVES) -> str:
    """Train loss per optimizer step (with a smoothed line from 10 points on) and validation loss (dots) as an inline
    SVG in a ``div.ta-chart`` that scales to its container; ``empty`` in that div when there is no point.

    ``train`` / ``val``: (step, loss) pairs; the x axis runs to ``total_steps`` (or the last step). The lines carry
    their colours, so the SVG reads the same outside the app; the app's CSS (classes ``ta-train``, ``ta-val``...)
    restyles them with its theme."""
    if not train and not val:
        return f"<div class='ta-chart ta-why'>{html.escape(empty)}</div>"
    points = [*train, *val]
    last_step = max([total_steps or 0] + [step for step, _ in points]) or 1
    low, high = min(loss for _, loss in points), max(loss for _, loss in points)
    y_ticks = _ticks(low, high)
    y_low, y_high = min(y_ticks[0], low), max(y_ticks[-1], high)
    left, right, top, bottom = 48, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(step: float) -> float:
        return left + plot_w * step / last_step

    def y(loss: float) -> float:
        return top + plot_h * (1 - (loss - y_low) / ((y_high - y_low) or 1.0))

    def polyline(pairs: Sequence[tuple[float, float]], css: str, style: str) -> str:
        line = " ".join(f"{x(step):.1f},{y(loss):.1f}" for step, loss in pairs)
        return f"<polyline points='{line}' class='{css}' fill='none' {style}/>"

    label = html.escape(title or "loss curves")
    parts = [f"<svg viewBox='0 0 {width} {height}' class='ta-svg' role='img' aria-label='{label}' "
             "font-family='sans-serif'>"]
    for tick in y_ticks:
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y(tick):.1f}' y2='{y(tick):.1f}' class='ta-grid' "
                     "stroke='#d0d0d0'/>"
                     f"<text x='{left - 6}' y='{y(tick) + 4:.1f}' class='ta-tick' text-anchor='end' font-size='11' "
                     f"fill='#666'>{tick:g}</text>")
    for tick in _ticks(0, last_step, 6):
        if tick <= last_step:
            parts.append(f"<text x='{x(tick):.1f}' y='{height - bottom + 16}' class='ta-tick' text-anchor='middle' "
                         f"font-size='11' fill='#666'>{tick:g}</text>")
    parts.append(f"<text x='{left + plot_w / 2}' y='{height - 4}' class='ta-tick' text-anchor='middle' "
                 "font-size='11' fill='#666'>optimizer step</text>")
    if train:
        many = len(train) >= 10
        raw = f"stroke='{TRAIN_COLOR}' stroke-width='1.6'" + (" stroke-opacity='0.35'" if many else "")
        parts.append(polyline(train, "ta-train" + (" ta-raw" if many else ""), raw))
        if many:
            steps = [step for step, _ in train]
            smoothed = list(zip(steps, smooth([loss for _, loss in train]), strict=True))
            parts.append(polyline(smoothed, "ta-train-smooth", f"stroke='{TRAIN_COLOR}' stroke-width='2.2'"))
    if val:
        parts.append(polyline(val, "ta-val", f"stroke='{VAL_COLOR}' stroke-width='2.2'"))
        parts += [f"<circle cx='{x(step):.1f}' cy='{y(loss):.1f}' r='3.5' class='ta-val-dot' fill='{VAL_COLOR}'/>"
                  for step, loss in val]
    parts.append("</svg>")
    heading = f"<div class='ta-chart-title'>{html.escape(title)}</div>" if title else ""
    legend = ("<div class='ta-legend'><span class='ta-key ta-key-train'></span>train loss"
              f"{f' (last {train[-1][1]:.3f})' if train else ''}"
              "<span class='ta-key ta-key-val'></span>validation loss"
              f"{f' (last {val[-1][1]:.3f})' if val else ''}</div>")
    return f"<div class='ta-chart'>{heading}{''.join(parts)}{legend}</div>"


# --------------------------------------------------------------------------------------------------------------------
# An evaluation's scores per variant
# --------------------------------------------------------------------------------------------------------------------


class Evaluated(Protocol):
    """What ``save_chart`` reads of an evaluation (core.arena.evals.EvalResult)."""

    n: int
    variants: list[str]
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]]  # variant -> task -> metric -> {mean, low, high, n}


EVAL_METRICS = ("rougeL", "token_f1", "similarity", "accuracy")


def eval_chart_png(result: Evaluated, metrics: Sequence[str] = EVAL_METRICS, task: str = "all") -> bytes | None:
    """Grouped bars: variants x metrics (of ``task``), error bars from the bootstrap intervals; None when no variant
    has any of ``metrics``."""
    shown = [m for m in metrics if any(m in tasks.get(task, {}) for tasks in result.summary.values())]
    variants = [v for v in result.variants if v in result.summary]
    if not shown or not variants:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(variants) + 2), 4.0), dpi=110)
    width = 0.8 / len(shown)
    for number, metric in enumerate(shown):
        means, errors = [], [[], []]
        for variant in variants:
            stats = result.summary[variant].get(task, {}).get(metric)
            mean = stats["mean"] if stats else 0.0
            means.append(mean)
            errors[0].append(mean - stats["low"] if stats else 0.0)
            errors[1].append(stats["high"] - mean if stats else 0.0)
        positions = [i + (number - (len(shown) - 1) / 2) * width for i in range(len(variants))]
        ax.bar(positions, means, width, yerr=errors, capsize=3, label=metric)
    ax.set_xticks(range(len(variants)), variants, rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean score (95% CI)")
    ax.set_title(f"{result.n} examples")
    ax.legend(ncol=len(shown), fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def save_chart(result: Evaluated, path: Path, metrics: Sequence[str] = EVAL_METRICS, task: str = "all") -> Path | None:
    """``eval_chart_png`` written atomically to ``path``; None (and nothing written) when there is nothing to draw."""
    png = eval_chart_png(result, metrics, task)
    if png is None:
        return None
    write_atomic(Path(path), png)
    return Path(path)
