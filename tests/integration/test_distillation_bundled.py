"""A half-depth student of the bundled SmolLM2 (the distil-half preset: 15 of its 30 blocks, initialised from the
teacher's weights) trains a few steps on the demo data and decodes faster than its teacher, measured in the same
process. A few minutes on a 2-core CPU (the teacher and the 81M-parameter student both run every step)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core.data import demo_path
from core.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]
logger = logging.getLogger(__name__)


def test_half_depth_student_trains_and_decodes_faster(bundled_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_HOME", str(bundled_home))
    engine = Engine(tmp_path / "ws")
    config = engine.training_config({"data": str(demo_path("train.jsonl")), "val_data": str(demo_path(
        "validation.jsonl")), "max_steps": 3, "batch_size": 4, "max_length": 256, "max_eval_examples": 8},
        preset="distil-half")
    result = engine.train(config)
    extras = result.extras
    logger.warning("distil-half: %d steps in %.0f s, val loss %.3f -> %.3f (teacher %.3f), agreement %.3f, "
                   "decode %.1f vs %.1f tokens/s (x%.2f)", result.steps, result.wall_s, result.first_val_loss,
                   result.final_val_loss, extras["teacher_val_loss"], extras["agreement"],
                   extras["student_tokens_per_s"], extras["teacher_tokens_per_s"], extras["decode_speedup"])
    assert result.state == "completed" and result.objective == "distillation"
    assert extras["teacher_layers"] == 30 and extras["student_layers"] == 15
    assert extras["student_params"] < 0.7 * extras["teacher_params"]
    assert result.final_val_loss < result.first_val_loss  # the shrunken student recovers
    assert extras["decode_speedup"] > 1
    recorded = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert recorded["base_model"] == "SmolLM2-135M-Instruct"  # offered in the Arena of its teacher's base
    assert (Path(result.run_dir) / "model" / "model.safetensors").is_file()
