"""Attention for bf16 compute on a CPU: plain matmul-softmax-matmul where it is faster than SDPA and small.

PyTorch's SDPA on a CPU runs a flash kernel whose cost per call is high at the lengths of instruction data: forward
and backward of 8 rows x 64 tokens (9 heads of 64, bf16, 2-core AMD EPYC) took 6.7 ms against 1.8 ms for the plain
three ops, 2 x 179 tokens 8.3 vs 2.8, 1 x 512 16.6 vs 7.8; one decode step at batch 16 over 160 cached tokens 1.25
vs 0.32 ms. In fp32 the flash kernel is the faster one (8 x 64: 3.5 vs 7.4 ms), and the plain ops keep the
(batch, heads, q, k) probabilities for backward, so they run only in bf16, on a CPU, while one layer's
probabilities stay under ``PROBS_BUDGET`` elements; everything else goes to transformers' own SDPA function. The
softmax stays in bf16 (PyTorch's CPU kernel accumulates in fp32): 2 bytes per saved probability, not the 6 of
transformers' eager path (an fp32 softmax then a bf16 copy).

Used through transformers' attention interface: ``use_cpu_attention(model)`` names it as the model's
implementation (nothing is written to a saved config: transformers does not serialize the implementation).
"""

from __future__ import annotations

import functools
from typing import Any

CPU_ATTENTION = "tune_arena_cpu"
PLAIN_ATTENTION_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"})
"""Model types whose attention is plain scaled dot-product (no soft-capping, no sinks, no attention bias)."""
PROBS_BUDGET = 1 << 22
"""Most probabilities (batch x heads x q x k) one layer's plain attention may hold: 8 MiB in bf16; above it, SDPA."""


def cpu_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                  dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention signature. Shapes: query (B, H, q, D), key/value (B, H_kv, k, D), attention_mask a
    bool (B, 1, q, k) (True = attend) or None (causal, no padding); returns (B, q, H, D) and no weights."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    batch, heads, q, k = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
    plain = (query.device.type == "cpu" and query.dtype == torch.bfloat16 and not (dropout and module.training)
             and batch * heads * q * k <= PROBS_BUDGET
             and (attention_mask.dtype == torch.bool if attention_mask is not None
                  else kwargs.get("is_causal", getattr(module, "is_causal", True)) is not False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    groups = heads // key.shape[1]
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if attention_mask is None:  # causal: query i (of the last q positions) sees keys up to k - q + i
        attention_mask = torch.ones(q, k, dtype=torch.bool, device=query.device).tril(k - q)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    # the dtype's lowest, not -inf: a row with nothing to attend to (left padding) gets a uniform mix, not NaN
    scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    """Name the function (and SDPA's boolean masks for it) in transformers' registries; once per process."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_ATTENTION, cpu_attention)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)


def use_cpu_attention(model: Any) -> bool:
    """Switch a model on SDPA to ``cpu_attention`` when its attention is plain; returns whether it was switched.
    Safe to call for any device: off a CPU, or in fp32, the function hands every call to SDPA."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_ATTENTION_MODELS:
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    model.set_attn_implementation(CPU_ATTENTION)
    return True
