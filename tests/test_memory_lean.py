"""LeanDropout (core.training.memory): the LoRA dropout that draws only the dropped positions on a CPU (rate up to
SPARSE_DROP_P) or a one-byte mask (above it) is the same dropout as nn.Dropout, and saves less for backward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from core.training.memory import _lean_dropout_class, lean_lora_dropout
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


def test_above_the_sparse_rate_same_loss_and_gradients_bit_for_bit():
    p = 0.3  # > SPARSE_DROP_P: bernoulli_ like the input, nn.Dropout's own draws
    plain, lean = _lora(dropout=p), _lora(dropout=p)
    lean_lora_dropout(lean)
    for seed in (1, 2):
        loss_a, grads_a = _step(plain, seed)
        loss_b, grads_b = _step(lean, seed)
        assert torch.equal(loss_a, loss_b)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            assert torch.equal(grads_a[name], grads_b[name]), name


@pytest.mark.parametrize("p", [0.05, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_element_is_dropped_with_probability_p_and_the_rest_scaled(p, dtype):
    layer = _lean_dropout_class()(p).train()
    torch.manual_seed(0)
    x = (torch.rand(400, 2500) + 0.5).to(dtype).requires_grad_()  # no zeros of its own
    out = layer(x)
    dropped = out == 0
    n = x.numel()
    assert abs(dropped.float().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5  # 5 sigma on 1M draws
    # no clustering: every row and column block drops at the same rate (the draws are spread uniformly)
    by_block = dropped.view(40, 10, 10, 250).float().mean(dim=(1, 3))
    assert (by_block - p).abs().max() < 6 * (p * (1 - p) / by_block[0, 0].numel() / 2500) ** 0.5
    torch.testing.assert_close(out[~dropped], (x.detach() * (1 / (1 - p))).to(dtype)[~dropped])
    # backward drops the gradient at the same positions and scales the rest the same way
    grad = torch.rand_like(x) + 0.5
    out.backward(grad)
    assert torch.equal(x.grad == 0, dropped)
    torch.testing.assert_close(x.grad[~dropped], (grad * (1 / (1 - p))).to(dtype)[~dropped])


def test_the_same_seed_draws_the_same_drops_and_another_seed_others():
    layer = _lean_dropout_class()(0.1).train()
    x = torch.randn(64, 256, requires_grad=True)
    torch.manual_seed(3)
    first = layer(x) == 0
    torch.manual_seed(3)
    assert torch.equal(layer(x) == 0, first)
    torch.manual_seed(4)
    assert not torch.equal(layer(x) == 0, first)


@pytest.mark.parametrize("p", [0.05, 0.1])
def test_a_lora_model_trains_as_with_nn_dropout(p):
    """Different draws, the same dropout: a short run ends where PEFT's own dropout ends, within its seed noise."""
    ids = (torch.arange(8)[:, None] * 7 + torch.arange(16)) % 61 + 3  # counting: each token is the last one + 1

    def val_loss(model) -> float:
        model.eval()
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    def run(lean: bool, seed: int) -> float:
        model = _lora(dropout=p)
        if lean:
            lean_lora_dropout(model)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-2)
        torch.manual_seed(seed)
        for _ in range(30):
            model.train()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
        return val_loss(model)

    start = val_loss(_lora(dropout=p))
    plain = [run(False, seed) for seed in (1, 2)]
    lean = [run(True, seed) for seed in (1, 2)]
    learned = start - max(plain)
    assert learned > 0.1, (start, plain)
    assert abs(sum(plain) - sum(lean)) / 2 < 0.25 * learned, (start, plain, lean)


@pytest.mark.parametrize(("p", "most_bytes_per_element"), [(0.05, 0.5), (0.1, 1.0), (0.3, 1.0)])
def test_saves_the_positions_or_a_one_byte_mask_instead_of_the_noise(p, most_bytes_per_element):
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

    plain = saved_bytes(torch.nn.Dropout(p).train())
    lean = saved_bytes(_lean_dropout_class()(p).train())
    assert 0 < lean <= most_bytes_per_element * x.numel()  # positions: 8 bytes x ~p*1.03; mask: one byte
    assert plain >= 4 * x.numel()  # fp32 noise


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


def test_an_empty_input_passes_through():
    layer = _lean_dropout_class()(0.1).train()
    x = torch.empty(0, 16, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert out.shape == (0, 16) and x.grad.shape == (0, 16)


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "malloc_trim"), reason="glibc's malloc_trim only")
def test_release_memory_returns_freed_heap_below_a_live_block_to_the_system():
    from core.training.memory import release_memory

    release_memory()
    before = _rss_mib()
    blocks = [bytearray(8192) for _ in range(25_000)]  # ~200 MB from malloc's heap (each above pymalloc's 512 bytes)
    kept = blocks[::100]  # a live block every ~800 KB: freeing the rest cannot shrink the heap from its top
    del blocks
    held = _rss_mib()
    assert held - before > 100  # free() alone kept the pages
    release_memory()
    assert _rss_mib() < held - 100
    assert len(kept) == 250
