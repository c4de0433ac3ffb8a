"""The Runs tab: table rows from run folders, eval scores matched to their run, charts, delete and merge guards,
and the endpoints through gradio_client (in-process over fake runs; against the live app's empty workspace)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from core.engine import Engine
from core.runs import RunStore, write_json
from ui import runs as tab

PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------------------
# Fake run folders and evaluations, written as core.runs / core.training / core.evals write them
# --------------------------------------------------------------------------------------------------------------------


def make_run(root: Path, run_id: str, method: str = "lora", *, state: str = "completed", steps: int = 30,
             total: int = 30, trainable: int | None = 1_843_200, total_params: int = 136_358_400,
             wall_s: float = 125.4, val: tuple[float, ...] = (2.5, 1.9, 1.6), error: str | None = None,
             result: bool = True, method_config: dict[str, Any] | None = None, weights: str | None = "adapter",
             card: bool = True) -> Path:
    """A run folder: config.json, status.json, metrics.jsonl (train rows per step, val rows), result.json."""
    run = RunStore(root).create({"format": 1, "data": "assets/demo/train.jsonl", "method": method,
                                 "method_config": method_config if method_config is not None else {"r": 8},
                                 "base_model": None, "max_steps": total, "batch_size": 8}, root / run_id)
    losses = [round(3.0 - 1.5 * step / max(total, 1), 4) for step in range(1, steps + 1)]
    for step, loss in enumerate(losses, 1):
        run.append_metrics({"step": step, "loss": loss, "lr": 1e-4, "grad_norm": 1.0,
                            "tokens_per_s": 170.0 + step, "elapsed_s": round(step * 4.0, 3)})
    for number, value in enumerate(val):
        run.append_metrics({"step": number * max(steps // max(len(val) - 1, 1), 1), "val_loss": value})
    extra = {"error": error} if error else {}
    run.set_status(state, step=steps, total_steps=total, **extra)
    if weights:
        (run.path / weights).mkdir()
        (run.path / weights / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    if result:
        write_json(run.path / "result.json", {
            "run_dir": str(run.path), "run_id": run_id, "method": method, "state": state, "steps": steps,
            "total_steps": total, "trainable_params": trainable, "total_params": total_params,
            "adapter_bytes": 7_372_800, "train_loss": losses, "final_train_loss": losses[-1] if losses else None,
            "first_val_loss": val[0] if val else None, "final_val_loss": val[-1] if val else None,
            "tokens_per_s": 175.3, "peak_mem_bytes": 2_000_000_000, "wall_s": wall_s, "train_examples": 90,
            "val_examples": 10, "data_sha256": "ab" * 32, "device": "cpu", "dtype": "float32", "base_model": "x"})
    if card:
        (run.path / "card.md").write_text(f"# Run {run_id}\n\n| Method | {method} |\n", encoding="utf-8")
    return run.path


def make_eval(workspace: Path, name: str, adapters: list[str], summary: dict[str, dict[str, float]]) -> Path:
    folder = workspace / "evals" / name
    folder.mkdir(parents=True)
    write_json(folder / "results.json", {"data": "assets/demo/test.jsonl", "config": {"adapters": adapters,
                                                                                      "variants": list(summary)},
                                         "summary": summary, "n": 12, "by_task": {}, "rows": [], "wall_s": 60.0})
    return folder


@pytest.fixture
def engine(tmp_path) -> Engine:
    return Engine(tmp_path / "ws")


LORA = "20250101-120000-lora-ab12"
FULL = "20250101-110000-full-cd34"
PROMPT = "20250101-100000-prompt-tuning-ef56"


# --------------------------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------------------------


def test_a_completed_run_gives_one_formatted_row(engine):
    make_run(engine.runs.root, LORA)
    summaries = tab.collect(engine)
    assert [s["run_id"] for s in summaries] == [LORA]
    row = dict(zip(tab.COLUMNS, tab.table_rows(summaries)[0], strict=True))
    assert row == {"run": LORA, "method": "lora", "state": "completed", "trainable params": "1.84M",
                   "trainable %": "1.35%", "weights MB": "7.37", "wall time": "2m 05s", "tokens/s": "175",
                   "steps": "30/30", "val loss first": "2.5000", "val loss final": "1.6000",
                   "train loss final": "1.5000", "ROUGE-L": "", "token F1": "", "accuracy": "", "evaluation": ""}
    frame = tab.table_frame(summaries)
    assert list(frame.columns) == list(tab.COLUMNS) and len(frame) == 1


def test_no_runs_gives_an_empty_table_with_headers_and_says_so(engine):
    frame = tab.table_frame(tab.collect(engine))
    assert list(frame.columns) == list(tab.COLUMNS) and frame.empty
    assert "No runs yet" in tab.headline([], engine.runs.root)


def test_a_failed_run_shows_its_reason(engine):
    make_run(engine.runs.root, "20250101-130000-qlora-0001", "qlora", state="failed", steps=2, total=30,
             error="RuntimeError: bitsandbytes is not installed", result=False, weights=None, val=(2.5,))
    row = dict(zip(tab.COLUMNS, tab.table_rows(tab.collect(engine))[0], strict=True))
    assert row["state"] == "failed: RuntimeError: bitsandbytes is not installed"
    assert row["steps"] == "2/30" and row["trainable params"] == "" and row["val loss first"] == "2.5000"


def test_a_running_run_takes_live_numbers_from_its_metrics(engine):
    make_run(engine.runs.root, "20250101-140000-ia3-0002", "ia3", state="running", steps=3, total=10,
             result=False, weights=None, val=(2.5,))
    (summary,) = tab.collect(engine)
    row = dict(zip(tab.COLUMNS, tab.table_rows([summary])[0], strict=True))
    assert row["state"] == "running · step 3/10"
    assert row["steps"] == "3/10" and row["tokens/s"] == "173" and row["wall time"] == "12 s"
    assert row["train loss final"] == "2.5500"
    stale = tab.state_text("running", {"step": 3, "total_steps": 10, "updated": "2020-01-01T00:00:00"})
    assert "interrupted?" in stale


def test_a_stopped_run_and_a_broken_folder(engine):
    make_run(engine.runs.root, "20250101-150000-lora-0003", state="stopped", steps=5, total=30)
    broken = engine.runs.root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    states = {s["run_id"]: s["state_text"] for s in tab.collect(engine)}
    assert states["20250101-150000-lora-0003"] == "stopped · step 5/30"
    assert states["broken"].startswith("unreadable:")
    assert len(tab.table_rows(tab.collect(engine))) == 2


def test_formatting_helpers():
    assert [tab.fmt_count(n) for n in (None, 12, 4608, 1_843_200, 134_515_008, 2e9)] == [
        "", "12", "4.61K", "1.84M", "135M", "2B"]
    assert [tab.fmt_duration(s) for s in (None, 4.25, 42.1, 185, 7300)] == ["", "4.2 s", "42 s", "3m 05s", "2h 01m"]
    assert tab.fmt_bytes(7_372_800) == "7.0 MB" and tab.fmt_bytes(512) == "512 B"
    assert tab._percent(100.0) == "100%" and tab._percent(0.0034) == "0.0034%"


# --------------------------------------------------------------------------------------------------------------------
# Evaluation scores matched to their run
# --------------------------------------------------------------------------------------------------------------------


def test_eval_scores_go_to_the_run_the_variant_used(engine):
    root, ws = engine.runs.root, engine.workspace.root
    a = make_run(root, LORA)
    b = make_run(root, "20250101-121000-ia3-9999", "ia3")
    make_run(root, "20250101-122000-freeze-7777", "freeze", weights="weights")  # never evaluated
    explicit = make_run(root, "20250101-123000-adalora-5555", "adalora")
    # older: one adapter (given as a folder) -> "finetuned"
    make_eval(ws, "20250102-000000-test-0001", [str(a)],
              {"zero_shot": {"rougeL": 0.1}, "finetuned": {"rougeL": 0.30, "token_f1": 0.31, "accuracy": 0.5},
               "finetuned_rag": {"rougeL": 0.9}})
    # newer: two adapters (an id and a folder) -> finetuned@<id> each; finetuned_rag must never be taken
    make_eval(ws, "20250103-000000-test-0002", [LORA, str(b) + "/"],
              {"finetuned@" + LORA: {"rougeL": 0.41, "token_f1": 0.42},
               "finetuned@20250101-121000-ia3-9999": {"rougeL": 0.22, "token_f1": 0.23, "accuracy": 0.25},
               "finetuned_rag@" + LORA: {"rougeL": 0.99}})
    # a run named in the variant itself, not in config.adapters
    make_eval(ws, "20250101-000000-test-0003", [],
              {"finetuned@" + explicit.name: {"rougeL": 0.12}})
    (ws / "evals" / "20250104-000000-broken").mkdir()
    (ws / "evals" / "20250104-000000-broken" / "results.json").write_text("{", encoding="utf-8")

    scores = {s["run_id"]: s for s in tab.collect(engine)}
    assert (scores[LORA]["rougeL"], scores[LORA]["token_f1"], scores[LORA]["accuracy"]) == (0.41, 0.42, None)
    assert scores[LORA]["eval"] == "20250103-000000-test-0002" and scores[LORA]["variant"] == "finetuned@" + LORA
    assert (scores[b.name]["rougeL"], scores[b.name]["accuracy"]) == (0.22, 0.25)
    assert scores["20250101-122000-freeze-7777"]["rougeL"] is None
    assert scores["20250101-122000-freeze-7777"]["eval"] is None
    assert scores[explicit.name]["rougeL"] == 0.12
    row = dict(zip(tab.COLUMNS, tab.table_rows([scores[b.name]])[0], strict=True))
    assert (row["ROUGE-L"], row["token F1"], row["accuracy"], row["evaluation"]) == (
        "0.220", "0.230", "0.250", "20250103-000000-test-0002")
    # with only the older evaluation, the single-adapter "finetuned" variant is the one taken
    evals = [row for row in engine.list_evals() if row["name"] == "20250102-000000-test-0001"]
    assert tab.eval_scores(tab.Run(a), evals) == {"eval": "20250102-000000-test-0001", "variant": "finetuned",
                                                  "rougeL": 0.30, "token_f1": 0.31, "accuracy": 0.5}
    assert tab.eval_scores(tab.Run(b), evals) is None
    assert "Best evaluated: **lora**" in tab.headline(list(scores.values()))


def test_a_run_with_the_same_id_prefix_is_not_matched(engine):
    a = make_run(engine.runs.root, LORA)
    make_eval(engine.workspace.root, "e1", [LORA + "x"], {"finetuned": {"rougeL": 0.5}})
    assert tab.eval_scores(tab.Run(a), engine.list_evals()) is None


# --------------------------------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------------------------------


def test_tradeoff_chart_png_is_written_for_evaluated_and_unevaluated_runs(engine, tmp_path):
    root = engine.runs.root
    make_run(root, LORA)
    make_run(root, FULL, "full", trainable=134_515_008, wall_s=900.0, weights="model")
    make_run(root, PROMPT, "prompt_tuning", trainable=11_520, wall_s=80.0, method_config={"num_virtual_tokens": 20})
    make_run(root, "20250101-140000-ia3-0002", "ia3", state="running", steps=3, total=10, result=False)
    make_eval(engine.workspace.root, "e1", [LORA, FULL],
              {f"finetuned@{LORA}": {"rougeL": 0.4}, f"finetuned@{FULL}": {"rougeL": 0.45}})
    summaries = tab.collect(engine)
    png = tab.tradeoff_png(summaries)
    path = tmp_path / "tradeoff.png"
    path.write_bytes(png)
    assert png.startswith(PNG) and path.stat().st_size > 10_000
    from PIL import Image

    width, height = Image.open(path).size
    assert width >= 1000 and height >= 800  # two rows: ROUGE-L (evaluated) and validation loss (the rest)
    only_loss = tab.tradeoff_png([s for s in summaries if s["rougeL"] is None])
    assert Image.open(io.BytesIO(only_loss)).size[1] < height
    assert tab.point_label(summaries[0]).endswith("· ab12") or tab.point_label(summaries[0]).startswith("ia3")
    assert tab._pareto([(1, 0.2), (2, 0.1), (3, 0.5)], True) == [(1, 0.2), (3, 0.5)]
    assert tab._pareto([(1, 2.0), (2, 2.5), (3, 1.5)], False) == [(1, 2.0), (3, 1.5)]


def test_tradeoff_chart_placeholder_without_finished_runs():
    empty = tab.tradeoff_png([])
    assert empty.startswith(PNG) and len(empty) > 1000
    running = tab.tradeoff_png([{"run_id": "r", "method": "lora", "state": "running", "trainable": None}])
    assert running.startswith(PNG)


def test_loss_curves_png(engine):
    path = make_run(engine.runs.root, LORA)
    assert tab.curves_png(tab.Run(path)).startswith(PNG)
    bare = RunStore(engine.runs.root).create({"method": "lora"}, engine.runs.root / "bare")
    assert tab.curves_png(bare) is None


# --------------------------------------------------------------------------------------------------------------------
# One run: details, delete, merge
# --------------------------------------------------------------------------------------------------------------------


def test_run_details(engine):
    path = make_run(engine.runs.root, LORA, method_config={"r": 8, "alpha": 16, "target_modules": "all-linear"})
    (path / ".card.md.123.tmp").write_text("half", encoding="utf-8")
    run = tab.find_run(engine, LORA)
    files = dict(tab.run_files(run))
    assert set(files) == {"config.json", "status.json", "metrics.jsonl", "result.json", "card.md",
                          "adapter/adapter_model.safetensors"}
    assert files["adapter/adapter_model.safetensors"] == "4.0 KB"
    overview = tab.run_overview(engine, run)
    assert "r=8, alpha=16, target_modules=all-linear" in overview
    assert "val loss 2.5000 → 1.6000" in overview and "Not evaluated yet" in overview
    assert f"exports/{LORA}-merged" in overview
    assert tab._card(run).startswith(f"# Run {LORA}")


def test_find_run_refuses_paths_and_unknown_ids(engine, tmp_path):
    outside = make_run(tmp_path / "elsewhere", LORA)
    for bad in (str(outside), "../elsewhere/" + LORA, "..", ".hidden"):
        with pytest.raises(ValueError, match="not a run id of this workspace"):
            tab.find_run(engine, bad)
    with pytest.raises(ValueError, match="is not a run of this workspace"):
        tab.find_run(engine, "nope")
    with pytest.raises(ValueError, match="Choose a run first"):
        tab.find_run(engine, " ")


def test_delete_refuses_a_running_run_and_asks_for_confirmation(engine):
    make_run(engine.runs.root, "20250101-140000-ia3-0002", "ia3", state="running", steps=3, total=10, result=False)
    make_run(engine.runs.root, LORA)
    with pytest.raises(ValueError, match="is running; stop it before deleting"):
        tab.delete_run(engine, "20250101-140000-ia3-0002", True)
    with pytest.raises(ValueError, match="tick 'I am sure'"):
        tab.delete_run(engine, LORA, False)
    assert (engine.runs.root / LORA).is_dir()
    assert tab.delete_run(engine, LORA, True) == LORA
    assert not (engine.runs.root / LORA).exists()
    assert [s["run_id"] for s in tab.collect(engine)] == ["20250101-140000-ia3-0002"]


def test_merge_is_refused_with_a_reason_for_non_mergeable_runs(engine):
    root = engine.runs.root
    make_run(root, PROMPT, "prompt_tuning", method_config={"num_virtual_tokens": 20})
    make_run(root, FULL, "full", weights="model")
    make_run(root, "20250101-140000-lora-0002", state="running", steps=3, total=10, result=False, weights=None)
    make_run(root, "20250101-130000-qlora-0001", "qlora", state="failed", result=False, weights=None,
             error="RuntimeError: boom")
    cases = {PROMPT: "virtual tokens", FULL: "already saved a standalone model",
             "20250101-140000-lora-0002": "still training", "20250101-130000-qlora-0001": "saved no weights"}
    for run_id, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            tab.merge_run(engine, run_id)
        assert reason in tab.run_overview(engine, tab.find_run(engine, run_id))
    assert not (engine.workspace.root / tab.EXPORTS).exists()
    with pytest.raises(ValueError, match="not a run of this workspace"):
        tab.merge_run(engine, "nope")


def test_merge_exports_a_real_tiny_lora_run_under_the_workspace(engine, tmp_path, tiny_model_dir):
    from training_helpers import ROWS, tiny_config, write_rows

    data = write_rows(tmp_path / "train.jsonl", ROWS)
    result = engine.train(tiny_config(data, tiny_model_dir, method="lora", max_steps=2))
    out = tab.merge_run(engine, result.run_id)
    assert out == engine.workspace.root / "exports" / f"{result.run_id}-merged"
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    with pytest.raises(ValueError, match="already exists"):
        tab.merge_run(engine, result.run_id)
    (summary,) = tab.collect(engine)
    assert summary["state"] == "completed" and summary["trainable"] > 0 and summary["final_train"] is not None


# --------------------------------------------------------------------------------------------------------------------
# The endpoints through gradio_client
# --------------------------------------------------------------------------------------------------------------------


def _frame_rows(value: dict[str, Any]) -> list[list[Any]]:
    return [row for row in value["data"] if any(cell not in ("", None) for cell in row)]


def test_endpoints_in_process_over_fake_runs(engine):
    import gradio as gr
    from gradio_client import Client

    make_run(engine.runs.root, LORA)
    make_run(engine.runs.root, "20250101-140000-ia3-0002", "ia3", state="running", steps=3, total=10, result=False)
    with gr.Blocks() as demo:
        with gr.Tab("Runs"):
            components = tab.create_runs_tab(engine)
    assert {"table", "chart", "pick", "delete", "merge"} <= set(components)
    demo.queue()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        table, chart, summary, _ = client.predict(None, api_name="/list_runs")
        assert table["headers"] == list(tab.COLUMNS)
        assert [row[0] for row in _frame_rows(table)] == ["20250101-140000-ia3-0002", LORA]
        assert Path(chart).read_bytes().startswith(PNG)
        assert "**2 runs**" in summary
        with pytest.raises(Exception, match="is running; stop it before deleting"):
            client.predict("20250101-140000-ia3-0002", True, api_name="/delete_run")
        with pytest.raises(Exception, match="tick 'I am sure'"):
            client.predict(LORA, False, api_name="/delete_run")
        message, sure = client.predict(LORA, True, api_name="/delete_run")
        assert message == f"Deleted run `{LORA}`." and sure is False
        with pytest.raises(Exception, match="not a run of this workspace"):
            client.predict(LORA, api_name="/merge_run")
        table, *_ = client.predict(None, api_name="/list_runs")
        assert [row[0] for row in _frame_rows(table)] == ["20250101-140000-ia3-0002"]
    finally:
        demo.close()


@pytest.mark.integration
def test_runs_endpoints_against_the_live_app(live_app):
    from gradio_client import Client

    client = Client(live_app, verbose=False)
    table, chart, summary, _ = client.predict(None, api_name="/list_runs")
    assert table["headers"] == list(tab.COLUMNS)
    assert Path(chart).read_bytes().startswith(PNG)
    if not _frame_rows(table):  # a fresh workspace (other UI tests of the session may have trained since)
        assert summary.startswith("**No runs yet**")
    with pytest.raises(Exception, match="not a run of this workspace"):
        client.predict("no-such-run", True, api_name="/delete_run")
    with pytest.raises(Exception, match="not a run of this workspace"):
        client.predict("no-such-run", api_name="/merge_run")
    with pytest.raises(Exception, match="Choose a run first"):
        client.predict(None, api_name="/merge_run")
    with pytest.raises(Exception, match="not a run id of this workspace"):
        client.predict("../../etc", True, api_name="/delete_run")
