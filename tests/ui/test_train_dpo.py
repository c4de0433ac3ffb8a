"""Preference tuning from the Train tab: the reward line under a finished DPO run (which pairs it was measured on),
and the form, objective dpo, training on a preference file through gradio_client against the live app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_helpers import wait_for_training
from training_helpers import PREFERENCE_PAIRS

from core.data import demo_path
from core.engine.jobs import JobState
from ui.train import HOLD_OUT, render_progress, reward_line

PAIRS = PREFERENCE_PAIRS[:4]


def test_the_reward_line_says_which_pairs_the_rewards_were_measured_on():
    validation = {"objective": "dpo", "reward_measured_on": "validation", "reward_accuracy": 0.9167,
                  "reward_margin": 1.2134, "pairs": 48, "val_pairs": 12}
    line = reward_line(validation)
    assert "Reward accuracy <b>92%</b>, margin +1.213" in line and "on 12 validation pairs" in line
    train = {**validation, "reward_measured_on": "train", "reward_accuracy": 0.75, "reward_margin": -0.05,
             "pairs": 8, "val_pairs": 0}
    line = reward_line(train)
    assert "<b>75%</b>, margin -0.050" in line and "on its training pairs, none held out for validation" in line
    assert "validation pairs" not in line
    assert reward_line({"objective": "sft", "final_val_loss": 1.2}) == ""  # other objectives: no line
    assert reward_line({**validation, "reward_accuracy": None}) == ""  # stopped before any measure
    done = JobState(state="completed", run_id="r1", method="lora", step=4, total=4, started=1.0, finished=9.0,
                    result=train)
    assert "on its training pairs" in render_progress(done)
    running = JobState(state="running", run_id="r1", method="lora", step=2, total=4, started=1.0, result=None)
    assert "Reward accuracy" not in render_progress(running, now=5.0)


def test_the_leaderboard_names_metrics_as_core_does():
    from core.arena.metrics import METRIC_LABELS
    from ui import leaderboard

    assert leaderboard.METRIC_LABELS is METRIC_LABELS
    frame = leaderboard.agreement_frame({"token_f1": {"agree": 1, "n": 2, "share": 0.5}})
    assert frame.iloc[0].tolist() == [METRIC_LABELS["token_f1"], "50% (1 of 2)", 2]


def _run_id(progress: str) -> str:
    return progress.split("<b>")[1].split("</b>")[0]


@pytest.mark.integration
def test_the_form_with_objective_dpo_trains_a_preference_file(live_app, live_workspace, tiny_model_dir, tmp_path):
    """Start (the form: a preference file, objective dpo, the tiny model as base, 2 steps) runs a DPO run to the end;
    the demo's 60 pairs hold some out and measure the reward on them, an uploaded 4-pair file measures it on its
    training pairs, and the progress line says which."""
    from gradio_client import Client, handle_file

    client = Client(live_app, verbose=False)
    demo = str(demo_path("preferences.jsonl"))
    form = {"param_1": HOLD_OUT, "param_4": str(tiny_model_dir), "param_6": 2, "param_15": "dpo"}
    started = client.predict(param_0=demo, **form, api_name="/train_start")
    run = live_workspace / "runs" / _run_id(started[0])
    done = wait_for_training(client, lambda text: "ta-completed" in text or "ta-failed" in text, 300)
    assert "ta-completed" in done and "step 2/2" in done, done
    config = json.loads((run / "config.json").read_text())
    assert (config["objective"], config["data"], config["max_steps"]) == ("dpo", demo, 2)
    result = json.loads((run / "result.json").read_text())
    extras = result["extras"]
    assert (extras["objective"], extras["reward_measured_on"], extras["pairs"] + extras["val_pairs"]) == (
        "dpo", "validation", 60)
    assert extras["val_pairs"] > 0 and extras["reward_accuracy"] is not None
    assert f"on {extras['val_pairs']} validation pairs" in done and "Reward accuracy" in done
    assert (run / "reference_logps.safetensors").is_file() and (run / "adapter").is_dir()

    upload = tmp_path / "my prefs.jsonl"
    upload.write_text("".join(json.dumps(pair) + "\n" for pair in PAIRS), encoding="utf-8")
    data_update, _, _ = client.predict(handle_file(str(upload)), api_name="/train_upload")
    stored = data_update["value"]
    assert Path(stored).name == "my_prefs.jsonl"
    info, _ = client.predict(stored, api_name="/train_preview")
    assert info.startswith("✓ 4 preference pairs")
    started = client.predict(param_0=stored, **form, api_name="/train_start")
    small = live_workspace / "runs" / _run_id(started[0])
    finished = lambda text: small.name in text and ("ta-completed" in text or "ta-failed" in text)  # noqa: E731
    done = wait_for_training(client, finished, 300)
    assert "ta-completed" in done, done
    extras = json.loads((small / "result.json").read_text())["extras"]
    assert (extras["reward_measured_on"], extras["pairs"], extras["val_pairs"]) == ("train", 4, 0)
    assert extras["reward_accuracy"] is not None and "on its training pairs" in done
