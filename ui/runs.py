"""Runs tab: every training run of the workspace in one table, the cost-vs-quality trade-off across methods, and
one run's details (loss curves, settings, card, files) with delete and merge-and-export.

Layout and wiring only. The pure helpers below read run folders through ``core.runs`` (Run / RunStore) and saved
evaluations through ``engine.list_evals()``; the two actions call ``RunStore.delete`` and
``core.training.merge_and_export`` as ``python -m core runs --delete / --merge`` does.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from core.arena import parse_variants
from core.engine import Engine
from core.methods import FULL_FORMAT, METHODS, PARTIAL_FORMAT
from core.runs import STALE_S, Run, effective_state
from core.training import merge_and_export
from ui.common import one_line

logger = logging.getLogger(__name__)

COLUMNS = ("run", "method", "state", "trainable params", "trainable %", "weights MB", "wall time", "tokens/s", "steps",
           "val loss first", "val loss final", "train loss final", "ROUGE-L", "token F1", "accuracy", "evaluation")
FILE_COLUMNS = ("file", "size")
SCORES = (("rougeL", "ROUGE-L"), ("token_f1", "token F1"), ("accuracy", "accuracy"))
FINETUNED = "finetuned"  # the arena strategy whose scores measure a run on its own (finetuned_rag mixes in RAG)
EXPORTS = "exports"  # <workspace>/exports/<run id>-merged
NO_RUNS = "No runs yet: train one in the Train tab (or python -m core train); each finished run becomes a point here."
PICK_FIRST = "Choose a run first (click a row of the table, or pick it in the Run list)."


# --------------------------------------------------------------------------------------------------------------------
# Reading runs and evaluations (pure: folders in, plain values out)
# --------------------------------------------------------------------------------------------------------------------


def _short(run: str) -> str:
    return str(run).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def adapter_matches(adapter: str, run: Run) -> bool:
    """Whether an evaluation's adapter (a run id or a run folder, as the user gave it) names ``run``."""
    if not adapter:
        return False
    path = Path(adapter).expanduser()
    try:
        if path.is_dir() and path.resolve() == run.path.resolve():
            return True
    except OSError:
        pass
    return _short(adapter) == run.run_id  # ids are unique (time + random suffix); covers relative paths too


def eval_scores(run: Run, evals: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fine-tuned variant's mean scores in the newest evaluation that used ``run``, or None.

    ``evals`` are ``engine.list_evals()`` rows (newest first). The variant is ``finetuned`` when the evaluation had
    one adapter and ``finetuned@<run id>`` when it compared several (``core.arena.parse_variants`` names them).
    Returns ``{"eval", "variant", "rougeL", "token_f1", "accuracy"}`` (a score is None when not measured)."""
    for row in evals:
        if row.get("error"):
            continue
        adapters = [str(a) for a in row.get("adapters") or []]
        for variant, means in (row.get("summary") or {}).items():
            if variant.partition("@")[0] != FINETUNED or not isinstance(means, dict):
                continue
            try:
                specs = parse_variants([variant], adapters)
            except ValueError:
                continue
            if any(spec.name == variant and adapter_matches(spec.adapter or "", run) for spec in specs):
                return {"eval": row.get("name") or _short(row.get("folder", "")), "variant": variant,
                        **{key: means.get(key) for key, _ in SCORES}}
    return None


def _age_s(updated: str | None, now: float) -> float | None:
    if not updated:
        return None
    try:
        return now - time.mktime(time.strptime(updated, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def state_text(state: str, status: dict[str, Any], now: float | None = None) -> str:
    """One cell: ``completed``, ``running · step 3/10``, ``stopped · step 5/10``, ``failed: <reason>``,
    ``interrupted · step 3/10 (...)`` for a run whose process was killed (see core.runs.effective_state)."""
    step, total = status.get("step"), status.get("total_steps")
    where = f" · step {step}/{total}" if step is not None and total else (f" · step {step}" if step else "")
    if state == "failed":
        return f"failed: {status.get('error') or 'no reason recorded'}"
    if state == "running":
        age = _age_s(status.get("updated"), now or time.time())
        if age is not None and age > STALE_S:
            return f"running{where} · no update for {fmt_duration(age)} (interrupted? resume it in the Train tab)"
        return f"running{where}"
    if state == "stopped":
        return f"stopped{where}"
    if state == "interrupted":
        return f"interrupted{where} (its process ended without finishing: resume it in the Train tab, or delete it)"
    return state


def run_summary(run: Run, evals: Sequence[dict[str, Any]] = (), now: float | None = None) -> dict[str, Any]:
    """Raw values of one run for the table and the chart. A run still training (or failed before its result was
    written) takes its live numbers from metrics.jsonl; an unreadable folder gives a row that says so."""
    try:
        config, status, result = run.config, run.status, run.result or {}
        rows = run.metrics()
    except (OSError, ValueError) as err:
        return {"run_id": run.run_id, "method": "?", "state": "unreadable", "state_text": f"unreadable: {err}",
                "error": str(err)}
    state = effective_state(status, now)
    train = [(row["step"], row["loss"]) for row in rows if "loss" in row]
    val = [(row["step"], row["val_loss"]) for row in rows if "val_loss" in row]
    last = next((row for row in reversed(rows) if "loss" in row), {})
    trainable, total = result.get("trainable_params"), result.get("total_params")
    percent = result.get("trainable_percent")
    if percent is None and trainable is not None and total:
        percent = 100.0 * trainable / total
    scores = eval_scores(run, evals) or {}
    return {
        "run_id": run.run_id, "run_dir": str(run.path), "method": config.get("method") or "?", "state": state,
        "state_text": state_text(state, status, now), "error": status.get("error"),
        "trainable": trainable, "total": total, "percent": percent, "adapter_bytes": result.get("adapter_bytes"),
        "wall_s": result.get("wall_s", last.get("elapsed_s")),
        "tokens_per_s": result.get("tokens_per_s", last.get("tokens_per_s")),
        "steps": result.get("steps", status.get("step")),
        "total_steps": result.get("total_steps", status.get("total_steps")),
        "first_val": result.get("first_val_loss", val[0][1] if val else None),
        "final_val": result.get("final_val_loss", val[-1][1] if val else None),
        "final_train": result.get("final_train_loss", train[-1][1] if train else None),
        "eval": scores.get("eval"), "variant": scores.get("variant"),
        **{key: scores.get(key) for key, _ in SCORES},
    }


def collect(engine: Engine) -> list[dict[str, Any]]:
    """``run_summary`` of every run of the engine's workspace, newest first."""
    evals = engine.list_evals()
    now = time.time()
    return [run_summary(run, evals, now) for run in engine.runs.list()]


# --------------------------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------------------------


def fmt_count(n: int | float | None) -> str:
    """1234 -> 1.23K, 1843200 -> 1.84M, 134515008 -> 135M."""
    if n is None:
        return ""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.3g}{suffix}"
    return str(int(n))


def fmt_duration(seconds: float | None) -> str:
    """42.1 -> 42 s, 185 -> 3m 05s, 7300 -> 2h 01m."""
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for scale, suffix in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n} B"


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}%" if value >= 99.95 else (f"{value:.2f}%" if value >= 0.01 else f"{value:.4f}%")


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row of display strings per run, in ``COLUMNS`` order ("" where a value is unknown)."""
    rows = []
    for s in summaries:
        steps = s.get("steps")
        total = s.get("total_steps")
        mb = s.get("adapter_bytes")
        rows.append([
            s["run_id"], s.get("method") or "?", s.get("state_text") or s.get("state", ""),
            fmt_count(s.get("trainable")),
            _percent(s.get("percent")), "" if mb is None else f"{mb / 1e6:.2f}", fmt_duration(s.get("wall_s")),
            _num(s.get("tokens_per_s"), 0), "" if steps is None else (f"{steps}/{total}" if total else str(steps)),
            _num(s.get("first_val"), 4), _num(s.get("final_val"), 4), _num(s.get("final_train"), 4),
            *[_num(s.get(key), 3) for key, _ in SCORES], s.get("eval") or "",
        ])
    return rows


def table_frame(summaries: Sequence[dict[str, Any]]):
    """The runs table as a pandas DataFrame with ``COLUMNS`` (empty, with its headers, when there are no runs)."""
    import pandas as pd

    return pd.DataFrame(table_rows(summaries), columns=list(COLUMNS))


def headline(summaries: Sequence[dict[str, Any]], runs_root: Path | None = None) -> str:
    """A one-paragraph summary above the table: counts per state and the best run so far."""
    if not summaries:
        where = f" in `{runs_root}`" if runs_root else ""
        return f"**No runs yet**{where}. Train one in the Train tab (or `python -m core train`)."
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s.get("state", "unknown")] = counts.get(s.get("state", "unknown"), 0) + 1
    parts = [f"**{len(summaries)} run{'s' if len(summaries) != 1 else ''}**"]
    parts += [f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    text = " · ".join(parts)
    scored = [s for s in summaries if s.get("rougeL") is not None]
    by_loss = [s for s in summaries if s.get("final_val") is not None and s.get("state") != "running"]
    if scored:
        best = max(scored, key=lambda s: s["rougeL"])
        text += (f"  \nBest evaluated: **{best['method']}** `{best['run_id']}`, ROUGE-L {best['rougeL']:.3f}"
                 + (f" with {_percent(best['percent'])} of the parameters trained" if best.get("percent") else ""))
    elif by_loss:
        best = min(by_loss, key=lambda s: s["final_val"])
        text += (f"  \nLowest validation loss: **{best['method']}** `{best['run_id']}`, {best['final_val']:.4f}"
                 + (f" with {_percent(best['percent'])} of the parameters trained" if best.get("percent") else "")
                 + " (evaluate runs in the Evaluate tab to compare answer quality)")
    return text


def run_label(s: dict[str, Any]) -> str:
    return f"{s['run_id']} ({s.get('method')}, {s.get('state')})"


# --------------------------------------------------------------------------------------------------------------------
# Charts (matplotlib, Agg, imported on first use)
# --------------------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_color(method: str) -> str:
    """A fixed colour per registered method (tab10 in registry order), grey for anything else."""
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")
    names = list(METHODS)
    return palette[names.index(method) % len(palette)] if method in names else "#555555"


def point_label(s: dict[str, Any]) -> str:
    """``lora · ab12``: the method and the run id's random suffix (the whole id when it is not a generated one)."""
    match = re.fullmatch(r"\d{8}-\d{6}-.+-([0-9a-f]{4})", s["run_id"])
    short = match.group(1) if match else (s["run_id"] if len(s["run_id"]) <= 18 else "…" + s["run_id"][-16:])
    return f"{s.get('method')} · {short}"


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def placeholder_png(message: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.6), dpi=100)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555", wrap=True)
    return _png(fig)


def _pareto(points: list[tuple[float, float]], higher_better: bool) -> list[tuple[float, float]]:
    """The points no cheaper point beats (x ascending)."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or (y > front[-1][1] if higher_better else y < front[-1][1]):
            front.append((x, y))
    return front


def tradeoff_png(summaries: Sequence[dict[str, Any]]) -> bytes:
    """Quality against trainable parameters (log x) and against training wall time (log x), one colour per method.

    Quality is the evaluation's ROUGE-L (higher is better) for runs that were evaluated, else the final validation
    loss (lower is better), on a row of its own: the two are never mixed on one axis. Runs without a result yet
    (running, failed) are left out. With nothing to plot, a placeholder image that says why."""
    usable = [s for s in summaries if s.get("trainable") and s.get("wall_s") and s.get("state") != "running"]
    groups = [("Evaluated runs: ROUGE-L of the fine-tuned variant (higher is better)", "ROUGE-L  ↑ better",
               "rougeL", True, [s for s in usable if s.get("rougeL") is not None]),
              ("Runs not evaluated yet: final validation loss (lower is better; comparable on the same data only)",
               "validation loss  ↓ better", "final_val", False,
               [s for s in usable if s.get("rougeL") is None and s.get("final_val") is not None])]
    groups = [group for group in groups if group[4]]
    if not groups:
        return placeholder_png(NO_RUNS if not summaries else
                               "No finished run with a result yet: runs appear here once they complete or stop.")
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.4 * len(groups)), dpi=100, squeeze=False)
    axes_x = (("trainable", "trainable parameters (log scale)", fmt_count),
              ("wall_s", "training wall time, seconds (log scale)", lambda value: f"{value:g}"))
    handles: dict[str, Any] = {}
    for row, (title, ylabel, key, higher_better, points) in enumerate(groups):
        for col, (xkey, xlabel, formatter) in enumerate(axes_x):
            ax = axes[row][col]
            for s in points:
                method = s.get("method") or "?"
                handle = ax.scatter(s[xkey], s[key], s=70, color=method_color(method), edgecolors="white",
                                    linewidths=0.8, zorder=3)
                handles.setdefault(method, handle)
                ax.annotate(point_label(s), (s[xkey], s[key]), textcoords="offset points", xytext=(6, 5),
                            fontsize=8, color="#333333")
            front = _pareto([(float(s[xkey]), float(s[key])) for s in points], higher_better)
            if len(front) > 1:
                ax.plot(*zip(*front, strict=True), ls="--", lw=1, color="#999999", zorder=2,
                        label="best quality for the cost so far")
                ax.legend(loc="best", fontsize=8, frameon=False)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if col else (1.0,)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _, f=formatter: f(value)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.margins(x=0.25, y=0.2)
        axes[row][0].set_title(title, fontsize=10, loc="left", color="#333333")
    fig.suptitle("Quality vs cost across methods: how close does a cheap method get to full fine-tuning?",
                 fontsize=12)
    order = {name: number for number, name in enumerate(METHODS)}
    methods = sorted(handles, key=lambda name: (order.get(name, len(order)), name))
    fig.legend([handles[m] for m in methods], methods, loc="lower center", ncol=min(len(methods), 9),
               frameon=False, title="method", fontsize=9)
    fig.tight_layout(rect=(0, 0.1 if len(groups) == 1 else 0.06, 1, 0.96))
    return _png(fig)


def curves_png(run: Run) -> bytes | None:
    """Train loss per step (raw and smoothed) and validation loss against the optimizer step; None without rows."""
    train, val = run.train_curve(), run.val_curve()
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=100)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, lw=1, alpha=0.35 if len(train) >= 10 else 0.9, color="#1f77b4",
                label="train loss (per step)")
        if len(train) >= 10:
            half = max(2, len(losses) // 20)  # centred moving average: no lag behind the raw curve
            smooth = [sum(losses[max(0, i - half):i + half + 1]) / len(losses[max(0, i - half):i + half + 1])
                      for i in range(len(losses))]
            ax.plot(steps, smooth, lw=2, color="#1f77b4", label="train loss (smoothed)")
    if val:
        steps, losses = zip(*val, strict=True)
        ax.plot(steps, losses, "o-", lw=2, color="#d62728", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy per answer token)")
    ax.set_title(run.run_id, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _image(png: bytes | None):
    """PNG bytes -> a PIL image for gr.Image (None stays None)."""
    if png is None:
        return None
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image


# --------------------------------------------------------------------------------------------------------------------
# One run: details and actions
# --------------------------------------------------------------------------------------------------------------------


def find_run(engine: Engine, run_id: str | None) -> Run:
    """A run of this workspace by id. Paths are refused: the tab never touches a folder outside the workspace."""
    text = (run_id or "").strip()
    if not text:
        raise ValueError(PICK_FIRST)
    if "/" in text or "\\" in text or text.startswith(".") or text in ("..", "."):
        raise ValueError(f"run: {text!r} is not a run id of this workspace (give the folder name under runs/)")
    try:
        return engine.runs.get(text)  # also refuses a folder under runs/ that links out of the workspace
    except ValueError:
        raise ValueError(f"run: {text} is not a run of this workspace ({engine.runs.root})") from None


def merge_refusal(run: Run) -> str | None:
    """Why ``run`` cannot be merged into its base model and exported, or None when it can."""
    method_name = run.config.get("method")
    method = METHODS.get(method_name or "")
    if method is None:
        return f"merge: unknown method {method_name!r}"
    if run.state == "running":
        return f"merge: {run.run_id} is still training; merge it once it has completed or stopped"
    if method.prompt_learning:
        return (f"merge: {method.title} learns virtual tokens / prefixes that sit in front of the input, not a change "
                "of the weights, so there is nothing to fold into the base model; use the run as an adapter")
    if method.save_format == FULL_FORMAT:
        folder = run.weights_dir
        return ("merge: full fine-tuning already saved a standalone model" + (f" at {folder}" if folder else "")
                + "; there is no adapter to merge")
    if not (method.mergeable or method.save_format == PARTIAL_FORMAT):
        return f"merge: {method.title} adapters cannot be merged into the base model"
    if run.weights_dir is None:
        return f"merge: {run.run_id} saved no weights (status {run.state})"
    return None


def export_dir(engine: Engine, run: Run) -> Path:
    """Where a merged run goes: ``<workspace>/exports/<run id>-merged``."""
    return engine.workspace.root / EXPORTS / f"{run.run_id}-merged"


def merge_run(engine: Engine, run_id: str | None) -> Path:
    """Merge a LoRA-family (or layer-wise) run into its base model and save it under the workspace's exports/.
    Refused (ValueError, one line) for other methods, running runs and an existing export folder."""
    run = find_run(engine, run_id)
    refusal = merge_refusal(run)
    if refusal:
        raise ValueError(refusal)
    out = export_dir(engine, run)
    root = engine.workspace.root.resolve()
    if not out.resolve().is_relative_to(root):
        raise ValueError(f"out: {out} is outside the workspace {root}")
    if out.exists():
        raise ValueError(f"out: {out} already exists; delete it first to export {run.run_id} again")
    return merge_and_export(run.path, out)


def delete_run(engine: Engine, run_id: str | None, confirmed: bool) -> str:
    """Delete a run folder (``RunStore.delete``: a running run is refused). Returns the deleted run's id."""
    run = find_run(engine, run_id)
    if not confirmed:
        raise ValueError(f"delete: tick 'I am sure' to delete {run.run_id} (its weights go too)")
    engine.runs.delete(run.run_id)
    return run.run_id


def run_files(run: Run, limit: int = 300) -> list[list[str]]:
    """(path relative to the run folder, size) of every file, hidden temporary files left out."""
    rows = []
    for path in sorted(run.path.rglob("*")):
        relative = path.relative_to(run.path)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        rows.append([relative.as_posix(), fmt_bytes(path.stat().st_size)])
        if len(rows) >= limit:
            rows.append(["…", f"more files not listed (first {limit} shown)"])
            break
    return rows


def files_frame(rows: Sequence[Sequence[str]]):
    import pandas as pd

    return pd.DataFrame([list(row) for row in rows], columns=list(FILE_COLUMNS))


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()) or "none"


def run_overview(engine: Engine, run: Run, evals: Sequence[dict[str, Any]] = ()) -> str:
    """Markdown: state, headline numbers, data, method settings, evaluation scores and whether it can be merged."""
    s = run_summary(run, evals)
    if s["state"] == "unreadable":
        return f"**{run.run_id}**: {s['state_text']}"
    config = run.config
    lines = [f"### {run.run_id}", f"**{s['method']}** · {s['state_text']}"]
    facts = []
    if s.get("trainable") is not None:
        facts.append(f"{fmt_count(s['trainable'])} trainable of {fmt_count(s.get('total'))} "
                     f"({_percent(s.get('percent'))})")
    if s.get("adapter_bytes") is not None:
        facts.append(f"weights {fmt_bytes(s['adapter_bytes'])}")
    if s.get("wall_s") is not None:
        facts.append(f"{fmt_duration(s['wall_s'])}")
    if s.get("tokens_per_s"):
        facts.append(f"{s['tokens_per_s']:.0f} tokens/s")
    if s.get("final_val") is not None:
        first = f"{s['first_val']:.4f} → " if s.get("first_val") is not None else ""
        facts.append(f"val loss {first}{s['final_val']:.4f}")
    if facts:
        lines.append(" · ".join(facts))
    lines.append(f"Base model: `{config.get('base_model') or 'default'}` · data: `{config.get('data')}`")
    lines.append(f"Method settings: {_settings(config.get('method_config') or {})}")
    if s.get("eval"):
        scores = " · ".join(f"{label} {s[key]:.3f}" for key, label in SCORES if s.get(key) is not None)
        lines.append(f"Evaluated in `{s['eval']}` as `{s['variant']}`: {scores or 'no scores'}")
    else:
        lines.append("Not evaluated yet (Evaluate tab: choose this run as the fine-tuned adapter).")
    refusal = merge_refusal(run)
    out = export_dir(engine, run)
    if refusal:
        lines.append(f"**Merge and export:** not available — {refusal.removeprefix('merge: ')}.")
    elif out.exists():
        lines.append(f"**Merge and export:** already exported to `{out}`.")
    else:
        lines.append(f"**Merge and export:** folds the adapter into the base model and writes it to `{out}`.")
    return "  \n".join(lines)


def _card(run: Run) -> str:
    path = run.path / "card.md"
    if not path.is_file():
        return "_No card yet: it is written when training ends._"
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# The tab
# --------------------------------------------------------------------------------------------------------------------


def create_runs_tab(engine: Engine, tab: gr.Tab | None = None) -> dict[str, gr.components.Component]:
    """Runs table + trade-off chart + one run's details, delete and merge; refreshed when the tab is selected."""
    initial = collect(engine)
    with gr.Row(equal_height=True):
        summary = gr.Markdown(headline(initial, engine.runs.root), elem_id="runs-summary")
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=120, elem_id="runs-refresh")
    widths = {"run": "230px", "method": "120px", "state": "190px", "evaluation": "220px"}
    table = gr.Dataframe(value=table_frame(initial), headers=list(COLUMNS), interactive=False, wrap=True,
                         column_widths=[widths.get(column, "100px") for column in COLUMNS], max_height=420,
                         pinned_columns=1, show_search="search",
                         label="Runs: click a row to see its curves, settings and files below", elem_id="runs-table")
    chart = gr.Image(label="Quality vs cost across methods", type="pil", format="png", interactive=False,
                     elem_id="runs-chart")
    gr.Markdown("### Run details")
    with gr.Row():
        with gr.Column(scale=2):
            pick = gr.Dropdown([(run_label(s), s["run_id"]) for s in initial], value=None, label="Run",
                               allow_custom_value=True, filterable=True, elem_id="runs-pick")
            overview = gr.Markdown(elem_id="runs-overview")
            with gr.Group():
                sure = gr.Checkbox(value=False, label="I am sure: delete this run's folder, weights included",
                                   elem_id="runs-sure")
                with gr.Row():
                    delete = gr.Button("Delete run", variant="stop", size="sm", elem_id="runs-delete")
                    merge = gr.Button("Merge and export", size="sm", elem_id="runs-merge")
            action = gr.Markdown(elem_id="runs-action")
        with gr.Column(scale=3):
            curves = gr.Image(label="Loss curves", type="pil", format="png", interactive=False,
                              elem_id="runs-curves")
    with gr.Tabs():
        with gr.Tab("Settings"):
            config = gr.JSON(label="config.json", elem_id="runs-config")
        with gr.Tab("Card"):
            card = gr.Markdown(elem_id="runs-card")
        with gr.Tab("Files"):
            files = gr.Dataframe(headers=list(FILE_COLUMNS), interactive=False, label="Files in the run folder",
                                 elem_id="runs-files")

    def on_refresh(current: str | None):
        try:
            summaries = collect(engine)
            png = tradeoff_png(summaries)
        except (OSError, ValueError) as err:
            raise gr.Error(f"Could not read the runs: {one_line(err)}") from None
        ids = {s["run_id"] for s in summaries}
        return (table_frame(summaries), _image(png), headline(summaries, engine.runs.root),
                gr.update(choices=[(run_label(s), s["run_id"]) for s in summaries],
                          value=current if current in ids else None))

    def on_select(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row and row[0] else gr.update()

    def on_show(run_id: str | None):
        blank = ("", None, None, "", files_frame([]), False)
        if not run_id:
            return blank
        try:
            run = find_run(engine, run_id)
            evals = engine.list_evals()
            return (run_overview(engine, run, evals), _image(curves_png(run)), run.config, _card(run),
                    files_frame(run_files(run)), False)
        except (OSError, ValueError) as err:
            gr.Warning(one_line(err))
            return blank

    def on_delete(run_id: str | None, confirmed: bool):
        try:
            deleted = delete_run(engine, run_id, bool(confirmed))
        except (OSError, ValueError) as err:
            raise gr.Error(one_line(err)) from None
        gr.Info(f"Deleted run {deleted}")
        return f"Deleted run `{deleted}`.", False

    def on_merge(run_id: str | None) -> Iterator[str]:
        try:
            run = find_run(engine, run_id)
            refusal = merge_refusal(run)
            if refusal:
                raise ValueError(refusal)
            yield f"Merging `{run.run_id}` into its base model (loads the model, about a minute on a CPU)…"
            out = merge_run(engine, run.run_id)
        except (OSError, ValueError, KeyError) as err:
            raise gr.Error(one_line(err)) from None
        except Exception as err:  # a failure inside the model code: logged in full, shown as one line
            logger.exception("merging %s failed", run_id)
            raise gr.Error(f"merge: {type(err).__name__}: {one_line(err)}") from None
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        gr.Info(f"Exported {run.run_id}")
        yield (f"Merged and exported `{run.run_id}` to `{out}` ({fmt_bytes(size)}): a standalone transformers "
               "model folder (safetensors + tokenizer).")

    listing = [table, chart, summary, pick]
    details = [overview, curves, config, card, files, sure]
    refresh.click(on_refresh, [pick], listing, api_name="list_runs").success(
        on_show, [pick], details, api_visibility="private")
    if tab is not None:  # the gr.Tab this tab is built in (app.py): refreshed whenever it is opened
        tab.select(on_refresh, [pick], listing, api_visibility="private").success(
            on_show, [pick], details, api_visibility="private")
    table.select(on_select, None, [pick], api_visibility="private")
    pick.change(on_show, [pick], details, api_visibility="private")
    delete.click(on_delete, [pick, sure], [action, sure], api_name="delete_run").success(
        on_refresh, [pick], listing, api_visibility="private")
    merge.click(on_merge, [pick], [action], api_name="merge_run", concurrency_limit=1).success(
        on_show, [pick], details, api_visibility="private")
    return {"summary": summary, "refresh": refresh, "table": table, "chart": chart, "pick": pick,
            "overview": overview, "curves": curves, "config": config, "card": card, "files": files, "sure": sure,
            "delete": delete, "merge": merge, "action": action}
