"""Train tab: its pure helpers on fixed inputs, and a real training through gradio_client against the live app."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import pytest
from app_helpers import wait_for_training

from core.engine import Engine
from core.engine.jobs import JobState
from core.methods import METHODS
from ui.train import (
    HOLD_OUT,
    create_train_tab,
    dataset_choices,
    describe_dataset,
    form_values,
    loss_chart,
    render_progress,
    resumable_runs,
)

ROWS = [{"instruction": f"What is item {i}?", "output": f"Item {i} is a tank part."} for i in range(12)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_describe_dataset_summarises_and_previews(tmp_path):
    line, frame = describe_dataset(str(write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert line.startswith("✓ 12 examples, alpaca shape") and "default 12" in line
    assert len(frame) == 5 and frame.iloc[0]["instruction"] == "What is item 0?"


def test_describe_dataset_shows_the_loader_error_inline(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "<b>x</b>"}\n', encoding="utf-8")
    line, frame = describe_dataset(str(bad))
    assert "ta-error" in line and "bad.jsonl line 2" in line and "<b>x" not in line  # named, one line, escaped
    assert frame.empty


@pytest.fixture
def engine(tmp_path) -> Engine:
    return Engine(tmp_path / "ws", confined=True)


def test_widget_values_are_typed_by_the_methods_config_class(engine):
    widgets = {"r": 16.0, "alpha": "32", "dropout": 0, "use_dora": 0, "bits": 8, "quant_type": "fp4",
               "target_modules": "q_proj, v_proj", "double_quant": None}  # None: an emptied box, the default
    config = engine.training_config(form_values("d.jsonl", HOLD_OUT, "qlora", widgets))
    assert config.method_config == {"r": 16, "alpha": 32, "dropout": 0.0, "use_dora": False, "use_rslora": False,
                                    "target_modules": ["q_proj", "v_proj"], "bits": 8, "quant_type": "fp4",
                                    "double_quant": True, "unfreeze_top": 0}
    assert config.val_data is None and config.max_steps is None and config.learning_rate is None
    for settings, needle in (({"r": 8.5}, "r: expected int, got 8.5"), ({"use_dora": 2}, "use_dora: expected bool"),
                             ({"rank": 8}, "rank: not a setting of this method")):
        with pytest.raises(ValueError, match=f"^{needle}"):
            engine.training_config(form_values("d.jsonl", None, "lora", settings))


def test_every_method_builds_a_config_from_its_default_form(engine):
    for name, method in METHODS.items():
        defaults = {row["name"]: row["default"] for row in method.settings()}
        config = engine.training_config(form_values("data.jsonl", HOLD_OUT, name, defaults, max_steps=3))
        assert config.method == name and config.val_data is None and config.max_steps == 3


def test_a_preset_fills_what_the_form_leaves_unset(engine):
    lora = engine.training_config(form_values("d.jsonl", "v.jsonl", "lora", {}, learning_rate=0, batch_size=4),
                                  preset="quick-lora")
    assert lora.max_eval_examples == 32 and lora.learning_rate == 0.0005  # 0: the preset's learning rate
    assert lora.batch_size == 4 and lora.method_config["r"] == 16  # the form over the preset
    assert engine.training_config(form_values("d.jsonl", None, "lora", {})).learning_rate is None  # the method's
    ia3 = engine.training_config(form_values("d.jsonl", "v.jsonl", "ia3", {}))
    assert ia3.max_eval_examples == 64


def test_choosing_another_method_leaves_the_preset_behind(engine):
    import gradio as gr

    with gr.Blocks() as demo:
        create_train_tab(engine)
    on_method = next(fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "on_method")
    *_, description, preset = on_method("ia3", "quick-lora")
    assert preset["value"] == "" and description == METHODS["ia3"].description
    *_, preset = on_method("lora", "quick-lora")
    assert "value" not in preset


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"data": ""}, "data: no training data file given"),
    ({"batch_size": 0}, "batch_size: must be an integer >= 1"),
    ({"epochs": -1}, "epochs: must be > 0"),
    ({"scheduler": "exp"}, "scheduler: must be one of"),
])
def test_form_errors_name_the_field(engine, kwargs, needle):
    values = {"data": "d.jsonl", **kwargs}
    data = values.pop("data")
    with pytest.raises(ValueError, match=needle):
        engine.training_config(form_values(data, None, "lora", {}, **values))


def test_render_progress_for_each_state():
    assert "No training yet" in render_progress(JobState())
    running = JobState(state="running", run_id="r1", method="lora", step=5, total=20, loss=1.23456, tokens_per_s=180,
                       eta_s=75, started=100.0, val_curve=[(0, 2.5)])
    text = render_progress(running, now=130.0)
    assert "width:25.0%" in text and "step 5/20" in text and "loss 1.2346" in text and "val loss 2.5000" in text
    assert "180 tokens/s" in text and "ETA 1m 15s" in text and "elapsed 30 s" in text
    failed = JobState(state="failed", run_id="r2", method="ia3", error="<oom> at step 3", started=1.0, finished=2.0)
    assert "&lt;oom&gt; at step 3" in render_progress(failed) and "ETA" not in render_progress(failed)
    done = JobState(state="completed", run_id="r3", method="lora", step=20, total=20, result={"steps": 20},
                    started=1.0, finished=61.0)
    assert "width:100.0%" in render_progress(done) and "Arena" in render_progress(done)


def _text(markup: str) -> str:
    """The words an HTML snippet shows."""
    return " ".join(re.sub(r"<[^>]+>", " ", markup).split())


def test_render_progress_for_a_queued_and_a_cancelled_job():
    queued = render_progress(JobState(state="queued", run_id="r4", method="lora", ahead=1, started=1.0))
    assert "ta-queued" in queued and "ta-error" not in queued
    assert _text(queued) == "r4 (lora) · queued · starts after 1 other job Stop takes it out of the queue."
    two = render_progress(JobState(state="queued", run_id="r4", method="lora", ahead=2, started=1.0))
    assert "starts after 2 other jobs" in _text(two)
    cancelled = render_progress(JobState(state="cancelled", run_id="r4", method="lora", started=1.0, finished=2.0))
    assert _text(cancelled) == "r4 (lora) · cancelled before it started"
    assert "ta-cancelled" in cancelled and "ta-error" not in cancelled


def test_loss_chart_draws_the_jobs_curves_up_to_its_total_steps():
    state = JobState(train_curve=[(1, 4.0), (2, 3.0), (5, 2.0)], val_curve=[(0, 3.5), (5, 2.5)], total=10)
    chart = loss_chart(state)
    train = re.search(r"<polyline points='([^']+)' class='ta-train'", chart).group(1).split()
    assert len(train) == 3 and chart.count("class='ta-val-dot'") == 2
    assert float(train[-1].split(",")[0]) == pytest.approx(48 + (640 - 48 - 12) / 2)  # step 5 of 10: halfway
    assert "appear here once training starts" in loss_chart(JobState())


def test_resumable_runs_lists_stopped_and_interrupted_runs_with_a_checkpoint(engine):
    for name, state, checkpoint in (("stopped-run", "stopped", True), ("killed-run", "running", True),
                                    ("done-run", "completed", True), ("early-fail", "failed", False)):
        folder = engine.workspace.runs / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"method": "lora"}))
        (folder / "status.json").write_text(json.dumps({"state": state, "step": 4}))
        if checkpoint:
            (folder / "checkpoints" / "step-4").mkdir(parents=True)
    labels = sorted(label for label, _ in resumable_runs(engine))
    assert labels == ["killed-run (lora, interrupted at step 4)", "stopped-run (lora, stopped at step 4)"]


# ---- against the live app ------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_upload_train_and_refuse_a_second_start(live_app, live_workspace, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(live_app, verbose=False)
    upload = write_jsonl(tmp_path / "my data.jsonl", ROWS)
    data_update, _, _ = client.predict(handle_file(str(upload)), api_name="/train_upload")
    stored = live_workspace / "uploads" / "datasets" / "my_data.jsonl"
    assert stored.read_text() == upload.read_text()
    uploaded = [value for label, value in data_update["choices"] if label.startswith("uploaded: ")]
    assert data_update["value"] == str(stored) and uploaded == [str(stored)]
    info, preview = client.predict(str(stored), api_name="/train_preview")
    assert "12 examples" in info and len(preview["data"]) == 5

    # a long run, stopped by the user: the second Start is refused meanwhile
    started = client.predict(param_0=str(stored), param_1=HOLD_OUT, param_6=40, param_8=2, api_name="/train_start")
    run_id = started[0].split("<b>")[1].split("</b>")[0]
    wait_for_training(client, lambda text: "step 1/" in text or "step 2/" in text, 240)
    with pytest.raises(Exception, match="still running; stop it or wait"):
        client.predict(param_0=str(stored), param_1=HOLD_OUT, param_6=2, api_name="/train_start")
    client.predict(api_name="/train_stop")
    stopped = wait_for_training(client, lambda text: "ta-stopped" in text, 120)
    assert run_id in stopped and "resume it to finish" in stopped
    run = live_workspace / "runs" / run_id
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()  # a stopped run is usable in the Arena

    # then a short run to the end
    client.predict(param_0=str(stored), param_1=HOLD_OUT, param_6=2, param_8=2, api_name="/train_start")
    done = wait_for_training(client, lambda text: "ta-completed" in text or "ta-failed" in text, 240)
    assert "ta-completed" in done and "step 2/2" in done and "width:100.0%" in done
    with pytest.raises(Exception, match=r"learning_rate: must be in \(0, 1\), got 5"):
        client.predict(param_0=str(stored), param_7=5, api_name="/train_start")


def test_training_settings_take_their_help_and_defaults_from_the_config_dataclass(tmp_path):
    """The form's settings read TrainingConfig's field metadata, as the CLI's flags do: one text, one default."""
    import gradio as gr

    from core.training import TrainingConfig
    from ui.common import field_default, field_help

    with gr.Blocks():
        create_train_tab(Engine(tmp_path / "ws", confined=True))
        blocks = gr.context.Context.root_block.blocks.values()
    by_label = {getattr(block, "label", None): block for block in blocks}
    for label, name in (("Gradient accumulation", "grad_accum"), ("Max tokens per example", "max_length"),
                        ("Warmup share", "warmup_ratio"), ("Seed", "seed")):
        widget = by_label[label]
        assert widget.info == field_help(TrainingConfig, name) != ""
        assert widget.value == field_default(TrainingConfig, name)


def test_the_objective_picker_shows_only_the_chosen_objectives_fields(engine):
    import gradio as gr

    from core.training import OBJECTIVES

    with gr.Blocks() as demo:
        tab = create_train_tab(engine)
    own = tab["objective_widgets"]
    assert set(own) == {name for name, objective in OBJECTIVES.items() if objective.fields}
    assert set(own["classification"]) == {"text_column", "label_column"}
    on_objective = next(fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "on_objective")
    *shown, description = on_objective("classification")
    assert [update["visible"] for update in shown] == [name == "classification" for name in own]
    assert description == OBJECTIVES["classification"].description
    *shown, _ = on_objective("sft")
    assert not any(update["visible"] for update in shown)


def test_a_preset_sets_its_objective_and_base_model_and_the_form_passes_objective_fields(engine):
    import gradio as gr

    with gr.Blocks() as demo:
        tab = create_train_tab(engine)
    on_preset = next(fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "on_preset")
    outputs = next(fn for fn in demo.fns.values() if fn.fn.__name__ == "on_preset").outputs
    updates = dict(zip([block._id for block in outputs], on_preset("sentiment-head"), strict=True))
    assert updates[tab["objective"]._id]["value"] == "classification"
    assert updates[tab["method"]._id]["value"] == "full"
    values = form_values("d.jsonl", None, "full", {}, objective="classification",
                         objective_values={"text_column": " message ", "label_column": ""}, base_model="m")
    assert values["objective"] == "classification" and values["text_column"] == "message"
    assert values["label_column"] is None  # an emptied box: the default column
    distil = form_values("d.jsonl", None, "full", {}, objective="distillation",
                         objective_values={"student_layers": 0, "teacher": "SmolLM2-135M-Instruct"},
                         hybrid_values={"layerwise_lr_decay": 0.9, "gradual_unfreezing": 0})
    assert distil["student_layers"] is None and distil["layerwise_lr_decay"] == 0.9


def test_on_a_shared_app_each_visitor_has_their_own_lists_and_a_place_in_the_queue(tmp_path):
    import gradio as gr
    from test_jobs import Scripted
    from training_helpers import tiny_config

    from core.data import demo_path
    from core.engine.visitors import VisitorSettings
    from core.errors import ConfigError
    from ui.visitors import scoped

    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))
    alice, bob = gr.Request(session_hash="alice-browser-secret"), gr.Request(session_hash="bob-browser-secret")
    with gr.Blocks() as demo:
        parts = create_train_tab(engine)
    handlers = {fn.fn.__name__: fn.fn for fn in demo.fns.values()}
    refresh, inputs, outputs = parts["refresh"]
    assert inputs == [parts["data"], parts["val_data"], parts["resume_run"]] and outputs[:3] == inputs

    data, _, _ = handlers["on_upload"](str(write_jsonl(tmp_path / "mine.jsonl", ROWS)), alice)
    stored = data["value"]
    assert Path(stored).parent == scoped(engine, alice).workspace.uploads / "datasets"
    data, val, runs, *pickers = refresh(stored, HOLD_OUT, None, alice)
    assert stored in [value for _, value in data["choices"]] and (data["value"], val["value"]) == (stored, HOLD_OUT)
    assert len(pickers) == len(outputs) - 3
    data, val, runs, *_ = refresh(stored, stored, "gone", bob)  # alice's file is not bob's: back to the demo set
    assert stored not in [value for _, value in data["choices"]] and data["value"] == str(demo_path("train.jsonl"))
    assert val["value"] == str(demo_path("validation.jsonl")) and runs["value"] is None
    with pytest.raises(ConfigError, match="needs a browser session"):
        refresh(None, None, None, None)

    fake = Scripted()  # alice's job trains; bob's waits its turn, and Stop takes it out of the queue
    for request in (alice, bob):
        jobs = scoped(engine, request).jobs
        jobs._train = fake
        jobs.start(tiny_config("d.jsonl", "base"))
    try:
        progress, *_ = handlers["on_tick"](None, bob)
        assert "queued · starts after 1 other job" in _text(progress)
        assert "cancelled before it started" in _text(handlers["on_stop"](bob))
        with pytest.warns(UserWarning, match="No training is running or queued"):
            handlers["on_stop"](bob)
        assert fake.reported.wait(5) and "ta-running" in handlers["on_tick"](None, alice)[0]
    finally:
        fake.release.set()
        scoped(engine, alice).jobs.wait(5)
    assert len(fake.calls) == 1


def test_a_preference_file_is_offered_and_previewed_for_dpo(tmp_path):
    from core.data import demo_path

    engine = Engine(tmp_path / "ws", confined=True)
    assert str(demo_path("preferences.jsonl")) in {value for _, value in dataset_choices(engine)}
    line, frame = describe_dataset(str(demo_path("preferences.jsonl")))
    assert line.startswith("✓ 60 preference pairs") and "dpo" in line
    assert frame["output"].iloc[0].startswith("✓ ") and " ✗ " in frame["output"].iloc[0]
    broken = tmp_path / "prefs.jsonl"
    broken.write_text('{"prompt": "Q?", "chosen": "A", "rejected": "A"}\n{"prompt": "Q2?", "chosen": "B"}\n')
    assert "✗" in describe_dataset(str(broken))[0]  # neither instruction data nor valid pairs: the loader's line


def test_train_from_votes_exports_the_pairs_and_trains_a_dpo_run(tmp_path, tiny_model_dir):
    """The button's handler on the tiny model: the workspace's votes become pairs and a DPO run that learns them: on
    the held-out pairs the chosen answers' implicit reward beats the rejected ones'."""
    import json

    engine = Engine(tmp_path / "ws", confined=True)
    with gr.Blocks() as demo:
        create_train_tab(engine)
    on_from_votes = next(fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "on_from_votes")
    with pytest.raises(gr.Error, match="votes: none yet"):
        on_from_votes(2, str(tiny_model_dir))  # nothing to learn from yet: one line, nothing started
    for number in range(12):  # 12 pairs: the preset holds out a fifth to measure the reward on
        arena = {"query": f"How many pod slots has garden {number}?", "reference": None, "task": "qa",
                 "results": [{"variant": "zero_shot", "strategy": "zero_shot", "adapter": None, "available": True,
                              "answer": f"Garden {number} has twelve slots.", "prompt": "p", "metrics": {}},
                             {"variant": "rag", "strategy": "rag", "adapter": None, "available": True,
                              "answer": "No idea, ask someone else.", "prompt": "q", "metrics": {}}]}
        engine.record_vote(arena, "zero_shot", shown=["rag", "zero_shot"])
    on_from_votes(12, str(tiny_model_dir))  # 12 steps at the preset's settings: enough to learn the pattern
    done = engine.jobs.wait(120)
    assert done.state == "completed", done.error
    config = json.loads((tmp_path / "ws" / "runs" / done.run_id / "config.json").read_text())
    assert config["objective"] == "dpo" and config["data"].endswith("feedback/preferences.jsonl")
    result = done.result
    assert (result["reward_measured_on"], result["pairs"], result["val_pairs"]) == ("validation", 10, 2)
    assert result["reward_accuracy"] > 0.5 and result["reward_margin"] > 0, result
