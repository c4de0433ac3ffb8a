"""The Runs tab: catalogue rows formatted as the table, the headline and one run's overview; delete and merge
refused with exactly the engine's one line; the endpoints through gradio_client (in-process over fake runs; against
the live app's empty workspace). The rows themselves are tested in tests/test_catalogue.py, the charts in
tests/test_charts.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from run_helpers import FULL, IA3_RUNNING, LORA, PROMPT, make_eval, make_run

from core.engine import Engine
from ui import runs as tab

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def engine(tmp_path) -> Engine:
    """The app's kind of engine: confined to its workspace (runs are named by id only)."""
    return Engine(tmp_path / "ws", confined=True)


def _handlers(engine: Engine) -> dict[str, Any]:
    """The Runs tab's event handlers, by api name and by function name."""
    with gr.Blocks() as demo:
        tab.create_runs_tab(engine)
    found: dict[str, Any] = {}
    for block_fn in demo.fns.values():
        found[block_fn.fn.__name__] = block_fn.fn
        if block_fn.api_name:
            found[str(block_fn.api_name)] = block_fn.fn
    return found


# --------------------------------------------------------------------------------------------------------------------
# Table, headline, overview
# --------------------------------------------------------------------------------------------------------------------


def test_a_completed_run_gives_one_formatted_row(engine):
    make_run(engine.runs.root, LORA)
    rows = engine.list_runs()
    row = dict(zip(tab.COLUMNS, tab.table_rows(rows)[0], strict=True))
    assert row == {"run": LORA, "objective": "sft", "method": "lora", "state": "completed", "trainable params": "1.84M",
                   "trainable %": "1.35%", "weights MB": "7.37", "wall time": "2m 05s", "tokens/s": "175",
                   "steps": "30/30", "val loss first": "2.5000", "val loss final": "1.6000",
                   "train loss final": "1.5000", "ROUGE-L": "", "token F1": "", "accuracy": "", "evaluation": "",
                   "forgetting": "—"}
    frame = tab.table_frame(rows)
    assert list(frame.columns) == list(tab.COLUMNS) and len(frame) == 1


def test_no_runs_gives_an_empty_table_with_headers_and_says_so(engine):
    frame = tab.table_frame(engine.list_runs())
    assert list(frame.columns) == list(tab.COLUMNS) and frame.empty
    assert "No runs yet" in tab.headline([], engine.runs.root)


def test_failed_running_and_unreadable_rows(engine):
    make_run(engine.runs.root, "20250101-130000-qlora-0001", "qlora", state="failed", steps=2, total=30,
             error="RuntimeError: bitsandbytes is not installed", result=False, weights=None, val=(2.5,))
    make_run(engine.runs.root, IA3_RUNNING, "ia3", state="running", steps=3, total=10, result=False, weights=None,
             val=(2.5,))
    broken = engine.runs.root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    rows = {row[0]: dict(zip(tab.COLUMNS, row, strict=True)) for row in tab.table_rows(engine.list_runs())}
    failed = rows["20250101-130000-qlora-0001"]
    assert failed["state"] == "failed: RuntimeError: bitsandbytes is not installed"
    assert failed["steps"] == "2/30" and failed["trainable params"] == "" and failed["val loss first"] == "2.5000"
    running = rows[IA3_RUNNING]
    assert running["state"] == "running · step 3/10" and running["steps"] == "3/10"
    assert running["tokens/s"] == "173" and running["wall time"] == "12 s" and running["train loss final"] == "2.5500"
    assert rows["broken"]["method"] == "?" and rows["broken"]["state"].startswith("unreadable:")


def test_scores_and_the_headline(engine):
    make_run(engine.runs.root, LORA)
    b = make_run(engine.runs.root, "20250101-121000-ia3-9999", "ia3")
    make_eval(engine.workspace.root, "20250103-000000-test-0002", [LORA, str(b)],
              {"finetuned@" + LORA: {"rougeL": 0.41, "token_f1": 0.42},
               "finetuned@20250101-121000-ia3-9999": {"rougeL": 0.22, "token_f1": 0.23, "accuracy": 0.25}})
    rows = engine.list_runs()
    shown = {row[0]: dict(zip(tab.COLUMNS, row, strict=True)) for row in tab.table_rows(rows)}
    assert [shown[b.name][key] for key in ("ROUGE-L", "token F1", "accuracy", "evaluation")] == [
        "0.220", "0.230", "0.250", "20250103-000000-test-0002"]
    text = tab.headline(rows)
    assert text.startswith("**2 runs** · 2 completed")
    assert f"Best evaluated: **lora** `{LORA}`, ROUGE-L 0.410 with 1.35% of the parameters trained" in text
    unevaluated = tab.headline([{**row, "rougeL": None} for row in rows])
    assert "Lowest validation loss: **" in unevaluated and "Evaluate tab" in unevaluated


def test_run_overview_curves_and_files(engine):
    path = make_run(engine.runs.root, LORA, method_config={"r": 8, "alpha": 16, "target_modules": "all-linear"})
    (path / ".card.md.123.tmp").write_text("half", encoding="utf-8")
    details = engine.run_details(LORA)
    overview = tab.run_overview(details)
    assert "r=8, alpha=16, target_modules=all-linear" in overview
    assert "val loss 2.5000 → 1.6000" in overview and "Not evaluated yet" in overview
    assert "Forgetting: not benchmarked yet" in overview
    assert f"exports/{LORA}-merged" in overview and "1.84M trainable of 136M (1.35%)" in overview
    files = dict(tab.files_frame(details).values.tolist())
    assert files["adapter/adapter_model.safetensors"] == "4 KB" and ".card.md.123.tmp" not in files
    assert tab.card_text(details).startswith(f"# Run {LORA}")
    curves = tab.curves_html(details)
    assert "class='ta-train ta-raw'" in curves and "class='ta-val'" in curves and LORA in curves
    (path / "card.md").unlink()
    assert tab.card_text(engine.run_details(LORA)).startswith("_No card yet")
    assert "(loads the model" in overview


# --------------------------------------------------------------------------------------------------------------------
# Delete and merge: the engine's rules, its one-line messages
# --------------------------------------------------------------------------------------------------------------------


def test_merge_is_refused_with_exactly_the_engines_one_line_message(engine):
    root = engine.runs.root
    make_run(root, PROMPT, "prompt_tuning", method_config={"num_virtual_tokens": 20})
    make_run(root, FULL, "full", weights="model")
    make_run(root, "20250101-140000-lora-0002", state="running", steps=3, total=10, result=False, weights=None)
    make_run(root, "20250101-130000-qlora-0001", "qlora", state="failed", result=False, weights=None,
             error="RuntimeError: boom")
    merge = _handlers(engine)["merge_run"]
    cases = {PROMPT: "virtual tokens", FULL: "already saved a standalone model",
             "20250101-140000-lora-0002": "still training", "20250101-130000-qlora-0001": "no saved weights",
             "nope": "not a run folder", "": "choose a run first", "../x": "not a run id of this workspace"}
    for run_id, reason in cases.items():
        with pytest.raises(ValueError) as refused:
            engine.merge_run(run_id)
        with pytest.raises(gr.Error) as shown:
            merge(run_id)
        assert reason in str(refused.value) and "\n" not in str(refused.value)
        assert shown.value.message == str(refused.value)  # the engine's line, as is
        if run_id in (PROMPT, FULL):
            overview = tab.run_overview(engine.run_details(run_id))
            assert f"not available — {str(refused.value).removeprefix('merge: ')}." in overview
    assert not engine.workspace.exports.exists() or not any(engine.workspace.exports.iterdir())


def test_delete_asks_for_confirmation_then_deletes_through_the_engine(engine):
    make_run(engine.runs.root, IA3_RUNNING, "ia3", state="running", steps=3, total=10, result=False)
    make_run(engine.runs.root, LORA)
    delete = _handlers(engine)["delete_run"]
    with pytest.raises(ValueError) as refused:
        engine.delete_run(IA3_RUNNING)
    with pytest.raises(gr.Error) as shown:
        delete(IA3_RUNNING, True)
    assert shown.value.message == str(refused.value) and "is running; stop it before deleting" in shown.value.message
    with pytest.raises(gr.Error, match="tick 'I am sure'"):
        delete(LORA, False)
    assert (engine.runs.root / LORA).is_dir()
    assert delete(LORA, True) == (f"Deleted run `{LORA}`.", False)
    assert [row["run_id"] for row in engine.list_runs()] == [IA3_RUNNING]


def test_merge_exports_a_real_tiny_lora_run_under_the_workspace(engine, tmp_path, tiny_model_dir):
    from training_helpers import ROWS, tiny_config, write_rows

    data = write_rows(tmp_path / "train.jsonl", ROWS)
    result = engine.train(tiny_config(data, tiny_model_dir, method="lora", max_steps=2))
    message = _handlers(engine)["merge_run"](result.run_id)
    out = engine.workspace.root / "exports" / f"{result.run_id}-merged"
    assert f"to `{out}`" in message and (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    with pytest.raises(ValueError, match="already exists"):
        engine.merge_run(result.run_id)
    assert "already exported to" in tab.run_overview(engine.run_details(result.run_id))
    (row,) = engine.list_runs()
    assert row["state"] == "completed" and row["trainable_params"] > 0 and row["final_train_loss"] is not None


# --------------------------------------------------------------------------------------------------------------------
# The endpoints through gradio_client
# --------------------------------------------------------------------------------------------------------------------


def _frame_rows(value: dict[str, Any]) -> list[list[Any]]:
    return [row for row in value["data"] if any(cell not in ("", None) for cell in row)]


def test_endpoints_in_process_over_fake_runs(engine):
    from gradio_client import Client

    make_run(engine.runs.root, LORA)
    make_run(engine.runs.root, IA3_RUNNING, "ia3", state="running", steps=3, total=10, result=False)
    with gr.Blocks() as demo:
        with gr.Tab("Runs"):
            components = tab.create_runs_tab(engine)
    assert {"table", "chart", "pick", "delete", "merge", "curves"} <= set(components)
    demo.queue()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        table, chart, summary, _ = client.predict(None, api_name="/list_runs")
        assert table["headers"] == list(tab.COLUMNS)
        assert [row[0] for row in _frame_rows(table)] == [IA3_RUNNING, LORA]
        assert Path(chart).read_bytes().startswith(PNG)
        assert "**2 runs**" in summary
        with pytest.raises(Exception, match="is running; stop it before deleting"):
            client.predict(IA3_RUNNING, True, api_name="/delete_run")
        with pytest.raises(Exception, match="tick 'I am sure'"):
            client.predict(LORA, False, api_name="/delete_run")
        message, sure = client.predict(LORA, True, api_name="/delete_run")
        assert message == f"Deleted run `{LORA}`." and sure is False
        with pytest.raises(Exception, match="not a run folder"):
            client.predict(LORA, api_name="/merge_run")
        table, *_ = client.predict(None, api_name="/list_runs")
        assert [row[0] for row in _frame_rows(table)] == [IA3_RUNNING]
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
    with pytest.raises(Exception, match="not a run folder"):
        client.predict("no-such-run", True, api_name="/delete_run")
    with pytest.raises(Exception, match="not a run folder"):
        client.predict("no-such-run", api_name="/merge_run")
    with pytest.raises(Exception, match="choose a run first"):
        client.predict(None, api_name="/merge_run")
    with pytest.raises(Exception, match="not a run id of this workspace"):
        client.predict("../../etc", True, api_name="/delete_run")


def test_on_a_shared_app_each_visitor_lists_and_deletes_only_their_own_runs(tmp_path):
    from core.engine.visitors import VisitorSettings
    from core.errors import ConfigError
    from ui.visitors import scoped

    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))
    alice, bob = gr.Request(session_hash="alice-browser-secret"), gr.Request(session_hash="bob-browser-secret")
    make_run(scoped(engine, alice).runs.root, LORA)
    with gr.Blocks() as demo:
        parts = tab.create_runs_tab(engine)
    assert parts["table"].value["data"] == []  # what a new visitor sees: nobody's runs
    refresh, inputs, outputs = parts["refresh"]
    assert inputs == [parts["pick"]] and outputs == [parts["table"], parts["chart"], parts["summary"], parts["pick"]]
    table, _, summary, pick = refresh(LORA, alice)
    assert list(table["run"]) == [LORA] and pick["value"] == LORA and "**1 run**" in summary
    table, _, summary, pick = refresh(LORA, bob)
    assert table.empty and pick["value"] is None and summary.startswith("**No runs yet**")
    with pytest.raises(ConfigError, match="needs a browser session"):
        refresh(None, None)
    handlers = {fn.fn.__name__: fn.fn for fn in demo.fns.values()}
    with pytest.warns(UserWarning, match="not a run"):
        assert handlers["on_show"](LORA, bob)[0] == ""
    assert handlers["on_show"](LORA, alice)[0].startswith(f"### {LORA}")
    with pytest.raises(gr.Error, match="not a run folder"):
        handlers["on_delete"](LORA, True, bob)
    assert handlers["on_delete"](LORA, True, alice) == (f"Deleted run `{LORA}`.", False)
    assert engine.list_runs() == [] and scoped(engine, alice).list_runs() == []
