"""The sentiment-head preset on the bundled all-MiniLM-L6-v2 (named as a base model, offline) and the demo's ticket
classification rows: the head learns, the run reloads and beats chance on the demo test set's classification rows.
Trains for real, a shortened run (30 steps: 191 s measured on a shared 2-core CPU)."""

from __future__ import annotations

import logging

import pytest

from core.data import demo_path, load_examples
from core.inference import load_classifier
from core.training import TrainingConfig, train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def head(bundled_home, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_ARENA_HOME", str(bundled_home))
        config = TrainingConfig.from_preset("sentiment-head", data=str(demo_path("train.jsonl")),
                                            val_data=str(demo_path("validation.jsonl")), max_steps=30)
        result = train(config, runs_root=tmp_path_factory.mktemp("runs"))
        logger.warning("sentiment-head: %d steps in %.0f s, val loss %.3f -> %.3f, val accuracy %.3f",
                       result.steps, result.wall_s, result.first_val_loss, result.final_val_loss,
                       result.extras["val_accuracy"])
        yield result


def test_the_minilm_head_learns_the_demo_ticket_labels(head):
    assert head.state == "completed" and head.base_model == "all-MiniLM-L6-v2"
    assert head.extras["labels"] == ["account", "billing", "feedback", "returns", "shipping", "technical"]
    assert head.final_val_loss < head.first_val_loss - 0.1
    assert head.trainable_params == head.total_params and 20_000_000 < head.total_params < 25_000_000


def test_the_reloaded_head_beats_chance_on_the_demo_test_rows(head):
    examples = [e for e in load_examples(demo_path("test.jsonl")).examples if e.task == "classification"]
    classifier = load_classifier(head.run_dir, device="cpu", dtype="fp32")
    predictions = classifier.predict([classifier.text_of(e) for e in examples])
    accuracy = sum(p.label == e.output for p, e in zip(predictions, examples, strict=True)) / len(examples)
    logger.warning("sentiment-head (30 steps): accuracy %.3f on %d demo test rows", accuracy, len(examples))
    assert accuracy > 2 / 6  # six balanced labels: chance is 1/6
