"""LeanDropout (core.training.memory): the LoRA dropout that keeps a one-byte mask for backward gives the same
outputs, gradients and training run as nn.Dropout, and saves less for backward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from core.training.memory import lean_lora_dropout
from tests.tiny_models import build_tiny_llama


def _lora(seed: int = 0, dropout: float = 0.1):
    torch.manual_seed(seed)
    # init_lora_weights=False: B is random too, so the adapters (and their dropout) change the outputs
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, init_lora_weights=False,
                        target_modules="all-linear")
    model = get_peft_model(build_tiny_llama(64, seed), config)
    model.train()
    return model


def _step(model, seed: int):
    torch.manual_seed(seed)
    ids = torch.randint(3, 64, (3, 11))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


def test_swaps_every_lora_dropout_and_nothing_else():
    model = _lora()
    n_lora = sum(1 for m in model.modules() if hasattr(m, "lora_dropout"))
    assert lean_lora_dropout(model) == n_lora == 14  # 2 blocks x 7 linear layers
    kinds = {type(m.lora_dropout["default"]).__name__ for m in model.modules() if hasattr(m, "lora_dropout")}
    assert kinds == {"LeanDropout"}
    assert lean_lora_dropout(model) == 0  # already lean
    assert lean_lora_dropout(_lora(dropout=0.0)) == 0  # PEFT's Identity stays


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_same_loss_and_gradients_bit_for_bit(p):
    plain, lean = _lora(dropout=p), _lora(dropout=p)
    lean_lora_dropout(lean)
    for seed in (1, 2):
        loss_a, grads_a = _step(plain, seed)
        loss_b, grads_b = _step(lean, seed)
        assert torch.equal(loss_a, loss_b)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            assert torch.equal(grads_a[name], grads_b[name]), name


def test_dropout_still_drops_in_training_and_not_in_eval():
    model = _lora(dropout=0.5)
    lean_lora_dropout(model)
    torch.manual_seed(0)
    ids = torch.randint(3, 64, (2, 9))
    torch.manual_seed(5)
    first = model(input_ids=ids).logits
    torch.manual_seed(6)
    second = model(input_ids=ids).logits
    assert not torch.equal(first, second)  # different masks
    model.eval()
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_saves_a_one_byte_mask_instead_of_the_noise():
    from core.training.memory import _lean_dropout_class

    x = torch.randn(64, 128, requires_grad=True)

    def saved_bytes(layer) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sum(sizes)

    plain = saved_bytes(torch.nn.Dropout(0.1).train())
    lean = saved_bytes(_lean_dropout_class()(0.1).train())
    assert lean == x.numel()  # one byte per element
    assert plain >= 4 * lean  # fp32 noise


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_lora_inputs_stay_in_the_compute_dtype_under_autocast(dtype, tmp_path, tiny_model_dir):
    """bf16 compute: PEFT's per-layer cast of the input to fp32 is off, and a step still trains every adapter."""
    from core.training.model import load_training_model
    from core.training.objectives import autocast
    from tests.training_helpers import ROWS, tiny_config, write_rows

    config = tiny_config(write_rows(tmp_path / "train.jsonl", ROWS), tiny_model_dir, dtype=dtype, method="lora",
                         method_config={"dropout": 0.1})
    model, loaded, compute = load_training_model(config, 1)
    layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
    assert len(layers) > 0
    kept = {getattr(layer, "cast_input_dtype_enabled", True) for layer in layers}
    assert kept == ({False} if dtype == "bf16" else {True})
    ids = torch.randint(3, 64, (2, 9))
    with autocast("cpu", compute):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
