"""Runs tab: every training run of the workspace in one table, the cost-vs-quality trade-off across methods, and
one run's details (loss curves, settings, card, files) with delete and merge-and-export.

Layout, wiring and formatting only. The rows come from ``engine.list_runs()`` (the run catalogue ``python -m core
runs`` prints too), one run from ``engine.run_details``; the actions are ``engine.delete_run`` and
``engine.merge_run``; the charts are drawn by ``core.charts``. A run's forgetting (its change from the base in the
newest saved benchmark, ``row["forgetting"]``) is formatted by ui.bench_views.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from core.charts import loss_curves_svg, tradeoff_png
from core.engine import Engine
from core.engine.catalogue import headline_facts, tradeoff_groups
from core.text import fmt_bytes, fmt_count, fmt_duration, fmt_number, fmt_percent, one_line
from ui.bench_views import forgetting_cell, forgetting_line
from ui.visitors import scoped

logger = logging.getLogger(__name__)

COLUMNS = ("run", "objective", "method", "state", "trainable params", "trainable %", "weights MB", "wall time",
           "tokens/s", "steps", "val loss first", "val loss final", "train loss final", "ROUGE-L", "token F1",
           "accuracy", "evaluation", "forgetting")
FILE_COLUMNS = ("file", "size")
SCORE_LABELS = (("rougeL", "ROUGE-L"), ("token_f1", "token F1"), ("accuracy", "accuracy"))
NO_RUNS = "No runs yet: train one in the Train tab (or python -m core train); each finished run becomes a point here."
NO_RESULTS = "No finished run with a result yet: runs appear here once they complete or stop."
NO_LOSS = "No loss logged yet for this run."


# --------------------------------------------------------------------------------------------------------------------
# Formatting catalogue rows (pure: rows in, display values out)
# --------------------------------------------------------------------------------------------------------------------


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row of display strings per catalogue row, in ``COLUMNS`` order ("" where a value is unknown)."""
    table = []
    for row in rows:
        steps, total, size = row.get("steps"), row.get("total_steps"), row.get("adapter_bytes")
        table.append([
            row["run_id"], row.get("objective") or "sft", row.get("method") or "?",
            row.get("state_text") or row.get("state") or "",
            fmt_count(row.get("trainable_params")), fmt_percent(row.get("trainable_percent")),
            "" if size is None else f"{size / 1e6:.2f}", fmt_duration(row.get("wall_s")),
            fmt_number(row.get("tokens_per_s"), 0),
            "" if steps is None else (f"{steps}/{total}" if total else str(steps)),
            fmt_number(row.get("first_val_loss"), 4), fmt_number(row.get("final_val_loss"), 4),
            fmt_number(row.get("final_train_loss"), 4), *[fmt_number(row.get(key), 3) for key, _ in SCORE_LABELS],
            row.get("eval") or "", forgetting_cell(row.get("forgetting")),
        ])
    return table


def table_frame(rows: Sequence[dict[str, Any]]):
    """The runs table as a pandas DataFrame with ``COLUMNS`` (empty, with its headers, when there are no runs)."""
    import pandas as pd

    return pd.DataFrame(table_rows(rows), columns=list(COLUMNS))


def _trained_share(row: dict[str, Any]) -> str:
    share = fmt_percent(row.get("trainable_percent"))
    return f" with {share} of the parameters trained" if share else ""


def headline(rows: Sequence[dict[str, Any]], runs_root: Path | None = None) -> str:
    """A one-paragraph summary above the table: counts per state and the best run so far."""
    if not rows:
        where = f" in `{runs_root}`" if runs_root else ""
        return f"**No runs yet**{where}. Train one in the Train tab (or `python -m core train`)."
    facts = headline_facts(rows)
    count = facts["count"]
    text = " · ".join([f"**{count} run{'s' if count != 1 else ''}**"] + [f"{n} {s}" for s, n in facts["states"]])
    best = facts["best"]
    if facts["best_by"] == "rougeL":
        text += (f"  \nBest evaluated: **{best['method']}** `{best['run_id']}`, ROUGE-L {best['rougeL']:.3f}"
                 + _trained_share(best))
    elif facts["best_by"] == "final_val_loss":
        text += (f"  \nLowest validation loss: **{best['method']}** `{best['run_id']}`, {best['final_val_loss']:.4f}"
                 + _trained_share(best) + " (evaluate runs in the Evaluate tab to compare answer quality)")
    return text


def run_label(row: dict[str, Any]) -> str:
    return f"{row['run_id']} ({row.get('method') or '?'}, {row.get('state')})"


def tradeoff_image(rows: Sequence[dict[str, Any]]):
    """The trade-off chart of the catalogue ``rows`` as a PIL image (a placeholder that says why when empty)."""
    return _image(tradeoff_png(tradeoff_groups(rows), empty=NO_RESULTS if rows else NO_RUNS))


def _image(png: bytes | None):
    """PNG bytes -> a PIL image for gr.Image (None stays None)."""
    if png is None:
        return None
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()) or "none"


def run_overview(details: dict[str, Any], forgetting: dict[str, Any] | None = None) -> str:
    """Markdown of ``engine.run_details``: state, headline numbers, data, method settings, evaluation scores, its
    forgetting (``forgetting``, else the row's: the newest benchmark's change from the base per task) and whether it
    can be merged (and where to)."""
    row = details["row"]
    if row["state"] == "unreadable":
        return f"**{row['run_id']}**: {row['state_text']}"
    config = details["config"] or {}
    lines = [f"### {row['run_id']}", f"**{row.get('method') or '?'}** · {row['state_text']}"]
    facts = []
    if row.get("trainable_params") is not None:
        facts.append(f"{fmt_count(row['trainable_params'])} trainable of {fmt_count(row.get('total_params'))} "
                     f"({fmt_percent(row.get('trainable_percent'))})")
    if row.get("adapter_bytes") is not None:
        facts.append(f"weights {fmt_bytes(row['adapter_bytes'])}")
    if row.get("wall_s") is not None:
        facts.append(fmt_duration(row["wall_s"]))
    if row.get("tokens_per_s"):
        facts.append(f"{row['tokens_per_s']:.0f} tokens/s")
    if row.get("final_val_loss") is not None:
        first = f"{row['first_val_loss']:.4f} → " if row.get("first_val_loss") is not None else ""
        facts.append(f"val loss {first}{row['final_val_loss']:.4f}")
    if facts:
        lines.append(" · ".join(facts))
    lines.append(f"Base model: `{config.get('base_model') or 'default'}` · data: `{config.get('data')}`")
    lines.append(f"Method settings: {_settings(config.get('method_config') or {})}")
    if row.get("eval"):
        scores = " · ".join(f"{label} {row[key]:.3f}" for key, label in SCORE_LABELS if row.get(key) is not None)
        lines.append(f"Evaluated in `{row['eval']}` as `{row['variant']}`: {scores or 'no scores'}")
    else:
        lines.append("Not evaluated yet (Evaluate tab: choose this run as the fine-tuned adapter).")
    lines.append(forgetting_line(forgetting or row.get("forgetting")))
    refusal, out = details.get("merge_refusal"), details["export_dir"]
    if refusal:
        lines.append(f"**Merge and export:** not available — {refusal.removeprefix('merge: ')}.")
    elif details.get("exported"):
        lines.append(f"**Merge and export:** already exported to `{out}`.")
    else:
        lines.append(f"**Merge and export:** folds the adapter into the base model and writes it to `{out}` "
                     "(loads the model: about a minute on a CPU).")
    return "  \n".join(lines)


def curves_html(details: dict[str, Any]) -> str:
    """The run's loss curves, drawn as the Train tab draws a live run."""
    row = details["row"]
    return loss_curves_svg(details["train_curve"], details["val_curve"], row.get("total_steps"),
                           title=row["run_id"], empty=NO_LOSS)


def files_frame(details: dict[str, Any] | None):
    """The run folder's files (path, size) as a DataFrame with ``FILE_COLUMNS``."""
    import pandas as pd

    rows = [[path, fmt_bytes(size)] for path, size in (details or {}).get("files", [])]
    if (details or {}).get("more_files"):
        rows.append(["…", f"more files not listed (first {len(rows)} shown)"])
    return pd.DataFrame(rows, columns=list(FILE_COLUMNS))


def card_text(details: dict[str, Any]) -> str:
    return details.get("card") or "_No card yet: it is written when training ends._"


# --------------------------------------------------------------------------------------------------------------------
# The tab
# --------------------------------------------------------------------------------------------------------------------


def create_runs_tab(engine: Engine, tab: gr.Tab | None = None) -> dict[str, Any]:
    """Runs table + trade-off chart + one run's details, delete and merge; refreshed when the tab is selected.

    The instance ``engine`` fills the widgets at build time; every handler works with the requesting visitor's
    engine (``ui.visitors.scoped``). ``refresh`` in the returned parts: (fn, inputs, outputs) of the listing."""
    instance = engine
    initial = engine.list_runs()
    with gr.Row(equal_height=True):
        summary = gr.Markdown(headline(initial, engine.runs.root), elem_id="runs-summary")
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=120, elem_id="runs-refresh")
    widths = {"run": "230px", "objective": "110px", "method": "120px", "state": "190px", "evaluation": "220px",
              "forgetting": "260px"}
    table = gr.Dataframe(value=table_frame(initial), headers=list(COLUMNS), interactive=False, wrap=True,
                         column_widths=[widths.get(column, "100px") for column in COLUMNS], max_height=420,
                         pinned_columns=1, show_search="search",
                         label="Runs: click a row to see its curves, settings and files below", elem_id="runs-table")
    chart = gr.Image(label="Quality vs cost across methods", type="pil", format="png", interactive=False,
                     elem_id="runs-chart")
    gr.Markdown("### Run details")
    with gr.Row():
        with gr.Column(scale=2):
            pick = gr.Dropdown([(run_label(row), row["run_id"]) for row in initial], value=None, label="Run",
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
            curves = gr.HTML(label="Loss curves", elem_id="runs-curves")
    with gr.Tabs():
        with gr.Tab("Settings"):
            config = gr.JSON(label="config.json", elem_id="runs-config")
        with gr.Tab("Card"):
            card = gr.Markdown(elem_id="runs-card")
        with gr.Tab("Files"):
            files = gr.Dataframe(headers=list(FILE_COLUMNS), interactive=False, label="Files in the run folder",
                                 elem_id="runs-files")

    def on_refresh(current: str | None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        try:
            rows = engine.list_runs()
        except (OSError, ValueError) as err:
            raise gr.Error(f"Could not read the runs: {one_line(err)}") from None
        ids = {row["run_id"] for row in rows}
        return (table_frame(rows), tradeoff_image(rows), headline(rows, engine.runs.root),
                gr.update(choices=[(run_label(row), row["run_id"]) for row in rows],
                          value=current if current in ids else None))

    def on_select(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row and row[0] else gr.update()

    def on_show(run_id: str | None, request: gr.Request | None = None):
        if not run_id:
            return "", "", None, "", files_frame(None), False
        engine = scoped(instance, request)
        try:
            details = engine.run_details(run_id)
        except (OSError, ValueError) as err:
            gr.Warning(one_line(err))
            return "", "", None, "", files_frame(None), False
        try:  # the run's change from the base in the newest benchmark that has it
            forgetting = details["row"].get("forgetting") or engine.forgetting(details["row"]["run_id"])
        except (OSError, ValueError) as err:
            logger.warning("forgetting of %s not read: %s", run_id, one_line(err))
            forgetting = None
        return (run_overview(details, forgetting), curves_html(details), details["config"], card_text(details),
                files_frame(details), False)

    def on_delete(run_id: str | None, confirmed: bool, request: gr.Request | None = None):
        engine = scoped(instance, request)
        try:
            if not confirmed:
                chosen = run_id or "the chosen run"
                raise ValueError(f"delete: tick 'I am sure' to delete {chosen} (its weights go too)")
            deleted = engine.delete_run(run_id or "")
        except (OSError, ValueError) as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        gr.Info(f"Deleted run {deleted}")
        return f"Deleted run `{deleted}`.", False

    def on_merge(run_id: str | None, request: gr.Request | None = None) -> str:
        engine = scoped(instance, request)
        try:
            out = engine.merge_run(run_id or "")
        except (OSError, ValueError) as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        except Exception as err:  # a failure inside the model code: logged in full, shown as one line
            logger.exception("merging %s failed", run_id)
            raise gr.Error(f"merge: {type(err).__name__}: {one_line(err)}") from None
        gr.Info(f"Exported {run_id}")
        size = fmt_bytes(engine.workspace.bytes_of(out))
        return (f"Merged and exported `{run_id}` to `{out}` ({size}): a standalone "
                "transformers model folder (safetensors + tokenizer).")

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
    return {"summary": summary, "refresh_button": refresh, "table": table, "chart": chart, "pick": pick,
            "overview": overview, "curves": curves, "config": config, "card": card, "files": files, "sure": sure,
            "delete": delete, "merge": merge, "action": action, "refresh": (on_refresh, [pick], listing)}
