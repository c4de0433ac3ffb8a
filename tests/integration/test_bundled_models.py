"""The bundled SmolLM2 (GGUF -> cached safetensors) and MiniLM, loaded for real, offline."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch

from core.data import Example, demo_path, encode_for_training, load_examples
from core.inference import GenerationConfig, generate_reply
from core.models import ModelManager, load_causal_lm, load_embedding_model, resolve_base_model

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def smollm(bundled_home):
    """The default model, converted once into the session's home (the cold load) and then loaded from cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_ARENA_HOME", str(bundled_home))
        start = time.perf_counter()
        cold = load_causal_lm(dtype="fp32")
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = load_causal_lm(dtype="fp32")
        warm_s = time.perf_counter() - start
    logger.warning("SmolLM2 cold load (GGUF conversion) %.1f s, warm load (cache) %.2f s", cold_s, warm_s)
    return cold, warm


def test_conversion_writes_a_complete_cache_that_later_loads_read(smollm, bundled_home, monkeypatch):
    cold, warm = smollm
    monkeypatch.setenv("TUNE_ARENA_HOME", str(bundled_home))
    resolved = resolve_base_model()
    assert resolved.kind == "gguf" and resolved.is_cached
    marker = json.loads((resolved.cache_dir / "tune_arena_cache.json").read_text())
    assert marker["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (resolved.cache_dir / "model.safetensors").stat().st_size > 100_000_000
    assert not list(resolved.cache_dir.glob("*.bin")) and not list(resolved.cache_dir.glob("*.pt"))
    # the warm load read the same folder and is the same network
    assert warm.model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in warm.model.parameters()) == sum(p.numel() for p in cold.model.parameters())


def test_cached_weights_equal_the_gguf_dequantized_weights(smollm):
    from transformers import AutoModelForCausalLM

    _, warm = smollm
    gguf = resolve_base_model().location
    reference = AutoModelForCausalLM.from_pretrained(str(gguf).rsplit("/", 1)[0], gguf_file=gguf.rsplit("/", 1)[1],
                                                     dtype=torch.float32).eval()
    ids = warm.tokenizer("The Orbit 3 has twelve pods.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(warm.model(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)


def test_the_bundled_model_answers_through_its_chat_template(smollm):
    _, warm = smollm
    reply = generate_reply(warm.model, warm.tokenizer, [{"role": "user", "content": "What is the capital of France?"}],
                           GenerationConfig(max_new_tokens=24))
    assert "Paris" in reply.text
    assert reply.prompt.endswith("<|im_start|>assistant\n") and 0 < reply.new_tokens <= 24


def test_training_encoding_with_the_real_template(smollm):
    _, warm = smollm
    example = load_examples(demo_path("train.jsonl")).examples[0]
    encoded = encode_for_training(warm.tokenizer, example)
    answer = warm.tokenizer.decode([t for t in encoded.labels if t != -100])
    assert answer.startswith(example.output) and "<|im_end|>" in answer
    assert "<|im_start|>assistant" not in answer
    short = encode_for_training(warm.tokenizer, Example(instruction="hi", output="ok"))
    assert short.answer_tokens < 5


def test_the_probe_is_still_answered_by_the_base_model(smollm):
    """A sample of the forgetting probe: the base model (fp32) answers the rows it was filtered on."""
    _, warm = smollm
    probe = load_examples(demo_path("forgetting_probe.jsonl")).examples[:6]
    tok = warm.tokenizer
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template([{"role": "user", "content": ex.instruction}], tokenize=False,
                                       add_generation_prompt=True) for ex in probe]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = warm.model.generate(**batch, **GenerationConfig(max_new_tokens=48).generate_kwargs(),
                                  pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    hits = sum(ex.output.lower() in answer.lower() for ex, answer in zip(probe, answers, strict=True))
    assert hits >= 5, list(zip([ex.output for ex in probe], answers, strict=True))


def test_bundled_minilm_embeds_offline():
    model = load_embedding_model()
    vectors = model.encode(
        ["How long is the return window?", "How many days do I have to send an item back?", "Pods germinate fast."],
        normalize_embeddings=True,
    )
    assert vectors.shape == (3, 384)
    close, far = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert close > far + 0.2


def test_manager_shares_the_embedder():
    manager = ModelManager()
    assert manager.embedder() is manager.embedder("all-MiniLM-L6-v2")
