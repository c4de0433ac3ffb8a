"""The quick-lora preset on the bundled SmolLM2 and the demo data: validation loss falls, answers move towards the
references of the demo test set. Trains for real (about 4-5 minutes on a 2-core CPU), once per session."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest

from core.data import build_messages, demo_path, load_examples
from core.inference import GenerationConfig, generate_reply, load_trained_model
from core.models import load_causal_lm
from core.training import TrainingConfig, train

# the real quick-lora run takes 2-5 minutes alone; on a shared, loaded CPU it has taken over 15
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def quick_lora(bundled_home, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_ARENA_HOME", str(bundled_home))
        config = TrainingConfig.from_preset("quick-lora", data=str(demo_path("train.jsonl")),
                                            val_data=str(demo_path("validation.jsonl")))
        steps: list[tuple[int, float]] = []
        result = train(config, runs_root=tmp_path_factory.mktemp("runs"),
                       on_step=lambda step, total, loss, lr, rate, eta: steps.append((step, loss)))
        logger.warning("quick-lora: %d steps in %.0f s, %.0f tokens/s, val loss %.3f -> %.3f, peak %.0f MiB",
                       result.steps, result.wall_s, result.tokens_per_s, result.first_val_loss,
                       result.final_val_loss, result.peak_mem_bytes / 2**20)
        yield result, steps


def test_quick_lora_completes_and_lowers_validation_loss(quick_lora):
    result, steps = quick_lora
    assert result.state == "completed"
    assert [s for s, _ in steps] == list(range(1, result.total_steps + 1))
    assert result.final_val_loss < result.first_val_loss - 0.1
    assert 0 < result.trainable_params < 0.1 * result.total_params
    assert 1_000_000 < result.adapter_bytes < 50_000_000


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _f1(prediction: str, reference: str) -> float:
    pred, ref = _tokens(prediction), _tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def test_adapter_moves_answers_towards_the_references(quick_lora, bundled_home, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_HOME", str(bundled_home))
    result, _ = quick_lora
    test = load_examples(demo_path("test.jsonl")).examples
    picked = []
    for task in ("classification", "summarization", "qa"):
        picked += [ex for ex in test if ex.task == task][:3]
    base = load_causal_lm()
    tuned = load_trained_model(result.run_dir)
    config = GenerationConfig(max_new_tokens=48)
    scores = {"base": [], "tuned": []}
    for example in picked:
        messages = build_messages(example)
        scores["base"].append(_f1(generate_reply(base.model, base.tokenizer, messages, config).text, example.output))
        scores["tuned"].append(_f1(generate_reply(tuned.model, tuned.tokenizer, messages, config).text,
                                   example.output))
    base_mean = sum(scores["base"]) / len(picked)
    tuned_mean = sum(scores["tuned"]) / len(picked)
    logger.warning("token F1 on %d demo test rows: base %.3f, quick-lora %.3f", len(picked), base_mean, tuned_mean)
    assert tuned_mean > base_mean + 0.05
