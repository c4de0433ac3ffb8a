"""core.attention: the plain bf16 attention on a CPU gives SDPA's answer (within bf16 rounding), hands everything
else to SDPA, and is switched on only for models whose attention is plain."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import build_tiny_llama
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import core.attention as attention
from core.attention import CPU_ATTENTION, cpu_attention, use_cpu_attention
from core.models import load_causal_lm


class Heads(torch.nn.Module):
    """What the attention functions read from the calling module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def qkv(batch: int, heads: int, kv_heads: int, q: int, k: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, q, 16), (batch, kv_heads, k, 16), (batch, kv_heads, k, 16)]
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def padding_mask(lengths: list[int], q: int, k: int) -> torch.Tensor:
    """SDPA's boolean mask for left-padded rows: causal, and no key before a row's first real token."""
    causal = torch.ones(q, k, dtype=torch.bool).tril(k - q)
    real = torch.stack([torch.arange(k) >= k - n for n in lengths])  # (B, k)
    return causal[None, None] & real[:, None, None, :]


CASES = {
    "causal, no mask": dict(batch=2, heads=4, kv_heads=4, q=24, k=24, lengths=None),
    "grouped heads": dict(batch=2, heads=4, kv_heads=2, q=24, k=24, lengths=None),
    "decode step over a cache": dict(batch=3, heads=4, kv_heads=2, q=1, k=30, lengths=None),
    "left padding": dict(batch=3, heads=4, kv_heads=2, q=20, k=20, lengths=[20, 13, 5]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plain_attention_gives_sdpas_answer_and_gradients(case):
    c = CASES[case]
    q32, k32, v32 = qkv(c["batch"], c["heads"], c["kv_heads"], c["q"], c["k"])
    mask = padding_mask(c["lengths"], c["q"], c["k"]) if c["lengths"] else None
    module = Heads(c["heads"] // c["kv_heads"])
    leaves = [t.to(torch.bfloat16).requires_grad_() for t in (q32, k32, v32)]
    refs = [t.clone().requires_grad_() for t in (q32, k32, v32)]
    out, weights = cpu_attention(module, *leaves, mask, scaling=0.25)
    ref, _ = sdpa_attention_forward(module, *refs, mask, scaling=0.25)  # fp32: the answer bf16 approximates
    assert weights is None and out.dtype == torch.bfloat16 and out.shape == ref.shape == (c["batch"], c["q"],
                                                                                          c["heads"], 16)
    assert torch.isfinite(out).all()  # the padding rows attend to nothing: no NaN
    real = torch.ones(ref.shape[:2], dtype=torch.bool)  # (B, q): the query positions that are real tokens
    for b, n in enumerate(c["lengths"] or []):
        real[b, : c["q"] - n] = False
    assert torch.allclose(out[real].float(), ref[real], atol=3e-2, rtol=3e-2)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)) * real[:, :, None, None]
    out.float().backward(grad)
    ref.backward(grad)
    for mine, theirs in zip(leaves, refs, strict=True):
        scale = theirs.grad.abs().max()
        assert (mine.grad.float() - theirs.grad).abs().max() <= 0.03 * scale


def test_everything_else_goes_to_sdpa_unchanged(monkeypatch):
    module = Heads(2)
    q, k, v = qkv(2, 4, 2, 12, 12)
    fp32, _ = cpu_attention(module, q, k, v, None, scaling=0.25)
    assert torch.equal(fp32, sdpa_attention_forward(module, q, k, v, None, scaling=0.25)[0])
    q16, k16, v16 = (t.to(torch.bfloat16) for t in (q, k, v))
    plain, _ = cpu_attention(module, q16, k16, v16, None, scaling=0.25)
    monkeypatch.setattr(attention, "PROBS_BUDGET", 2 * 4 * 12 * 12 - 1)  # one probability over the budget
    large, _ = cpu_attention(module, q16, k16, v16, None, scaling=0.25)
    flash = sdpa_attention_forward(module, q16, k16, v16, None, scaling=0.25)[0]
    assert torch.equal(large, flash)
    assert not torch.equal(plain, flash)  # the two paths really differ (bf16 rounding), so the check above means it
    monkeypatch.undo()
    module.is_causal = False  # a bidirectional use of the same layers: no mask means no mask, SDPA's answer
    both_ways, _ = cpu_attention(module, q16, k16, v16, None, scaling=0.25)
    assert torch.equal(both_ways, sdpa_attention_forward(module, q16, k16, v16, None, scaling=0.25)[0])
    module.is_causal = True
    module.train()  # attention dropout while training: SDPA's, the same draws
    torch.manual_seed(3)
    dropped, _ = cpu_attention(module, q16, k16, v16, None, scaling=0.25, dropout=0.5)
    torch.manual_seed(3)
    assert torch.equal(dropped, sdpa_attention_forward(module, q16, k16, v16, None, scaling=0.25, dropout=0.5)[0])


def test_a_plain_llama_switches_and_answers_as_before(tiny_tokenizer, tmp_path):
    before = build_tiny_llama(len(tiny_tokenizer)).to(torch.bfloat16)
    after = build_tiny_llama(len(tiny_tokenizer)).to(torch.bfloat16)
    assert before.config._attn_implementation == "sdpa"
    assert use_cpu_attention(after)
    assert after.config._attn_implementation == CPU_ATTENTION
    assert not use_cpu_attention(after)  # once is enough
    ids = torch.tensor([[5, 9, 30, 41, 7, 2, 2], [5, 60, 61, 62, 63, 64, 65]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    with torch.no_grad():
        want, got = before(input_ids=ids, attention_mask=mask).logits, after(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        assert torch.allclose(got[real].float(), want[real].float(), atol=0.05)
        prompt = torch.tensor([[2, 2, 5, 9, 30], [5, 60, 61, 62, 63]])  # left padding, as generation batches it
        prompt_mask = (prompt != 2).long()
        kwargs = dict(attention_mask=prompt_mask, max_new_tokens=2, do_sample=False, pad_token_id=2,
                      output_scores=True, return_dict_in_generate=True)
        want, got = before.generate(prompt, **kwargs), after.generate(prompt, **kwargs)
        assert torch.allclose(got.scores[0].float(), want.scores[0].float(), atol=0.05)  # left-padded prefill
        if torch.equal(got.sequences[:, -2], want.sequences[:, -2]):  # the same first token: the cached step too
            assert torch.allclose(got.scores[1].float(), want.scores[1].float(), atol=0.05)
    after.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not any("attn" in key for key in saved)  # a saved model loads anywhere with the default attention


def test_other_attention_is_left_alone(tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2))
    assert not use_cpu_attention(gpt2)  # not in PLAIN_ATTENTION_MODELS
    llama = build_tiny_llama(len(tiny_tokenizer))
    llama.set_attn_implementation("eager")
    assert not use_cpu_attention(llama)  # a chosen implementation other than SDPA stays


def test_models_loaded_for_a_cpu_use_it(tiny_model_dir):
    loaded = load_causal_lm(str(tiny_model_dir), device="cpu")
    assert loaded.model.config._attn_implementation == CPU_ATTENTION
