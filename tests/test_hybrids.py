"""Hybrid recipes on the tiny Llama (and a tiny BERT): learning rates by depth, gradual unfreezing (blocks open at
the planned steps, stay bit-identical until then, and a resumed run repeats an uninterrupted one), and LoRA plus
fully trained top blocks (trained, saved beside the adapter, reloaded to the same logits)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import ROWS, sample_logits, tiny_config, train_captured, write_rows

from core import training
from core.errors import ConfigError
from core.inference.loading import load_trained_model, merge_and_export
from core.methods import BuildContext, get_method
from core.methods.builders import find_blocks
from core.runs import Run
from core.training.hybrids import open_blocks, parameter_groups


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", ROWS)


def _built(method: str, model_dir: Path, tokenizer, **settings):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    spec = get_method(method)
    return spec.builder(model, spec.make_config(settings), BuildContext(tokenizer, 10))


def _lr_of(groups) -> dict[int, float]:
    return {id(p): group["lr"] for group in groups for p in group["params"]}


# --------------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# --------------------------------------------------------------------------------------------------------------------


def test_layerwise_decay_gives_each_block_its_rate(data_file, tiny_model_dir, tiny_tokenizer):
    model = _built("full", tiny_model_dir, tiny_tokenizer)
    config = tiny_config(data_file, tiny_model_dir, method="full", layerwise_lr_decay=0.5)
    groups = parameter_groups(model, config, 1e-3)
    lr = _lr_of(groups)
    params = dict(model.named_parameters())
    assert lr[id(params["model.norm.weight"])] == 1e-3  # above the blocks: the top rate
    assert {lr[id(p)] for n, p in params.items() if n.startswith("model.layers.1.")} == {1e-3}
    assert {lr[id(p)] for n, p in params.items() if n.startswith("model.layers.0.")} == {5e-4}
    assert lr[id(params["model.embed_tokens.weight"])] == 2.5e-4  # tied with the LM head: the lowest rate
    assert sum(len(g["params"]) for g in groups) == len(params)  # every weight once
    assert [g["depth"] for g in groups] == [-1, 0, 1, 2]


def test_layerwise_decay_on_freeze_covers_only_the_open_blocks(data_file, tiny_model_dir, tiny_tokenizer):
    model = _built("freeze", tiny_model_dir, tiny_tokenizer, trainable_layers=1)
    config = tiny_config(data_file, tiny_model_dir, method="freeze", layerwise_lr_decay=0.1,
                         method_config={"trainable_layers": 1})
    groups = parameter_groups(model, config, 1e-3)
    assert {g["depth"]: g["lr"] for g in groups} == {-1: 1e-3, 0: 1e-3}
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_layerwise_decay_trains_with_the_planned_rates(tmp_path, data_file, tiny_model_dir):
    config = tiny_config(data_file, tiny_model_dir, method="full", layerwise_lr_decay=0.5, max_steps=2,
                         learning_rate=1e-3, scheduler="constant", warmup_ratio=0.0)
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(sorted(g["lr"] for g in self.param_groups))
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        result = training.train(config, runs_root=tmp_path)
    assert result.state == "completed"
    assert seen[-1] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])


@pytest.mark.parametrize(("method", "values", "message"), [
    ("lora", {"layerwise_lr_decay": 0.8}, "^layerwise_lr_decay: only full and freeze train whole blocks; got method "
                                          "lora"),
    ("full", {"gradual_unfreezing": 2}, "^gradual_unfreezing: only freeze opens blocks one by one; got method full"),
])
def test_hybrids_refuse_methods_without_whole_blocks(method, values, message, data_file, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=message):  # when the settings are made: before any run folder
        tiny_config(data_file, tiny_model_dir, method=method, **values)


def test_blocks_are_found_in_a_bert_encoder_and_freeze_trains_its_top_and_head():
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3))
    path, blocks = find_blocks(bert)
    assert path == "bert.encoder.layer" and len(blocks) == 3
    spec = get_method("freeze")
    model = spec.builder(bert, spec.make_config({"trainable_layers": 1}), BuildContext(None, 10, "SEQ_CLS"))
    trainable = {n.split(".")[0] if not n.startswith("bert.encoder") else ".".join(n.split(".")[:4])
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bert.encoder.layer.2", "bert", "classifier"}  # top block, pooler (bert.pooler), head
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("bert.embeddings"))


# --------------------------------------------------------------------------------------------------------------------
# Gradual unfreezing
# --------------------------------------------------------------------------------------------------------------------


def test_open_blocks_follow_the_step(data_file, tiny_model_dir):
    config = tiny_config(data_file, tiny_model_dir, method="freeze", gradual_unfreezing=3,
                         method_config={"trainable_layers": 2})
    assert [open_blocks(config, step) for step in range(8)] == [1, 1, 1, 2, 2, 2, 2, 2]


def _gradual(data_file, model_dir, **overrides):
    return tiny_config(data_file, model_dir, method="freeze", gradual_unfreezing=2, max_steps=4, learning_rate=1e-2,
                       method_config={"trainable_layers": 2}, checkpoint_every=1, keep_checkpoints=4, **overrides)


def test_gradual_unfreezing_opens_blocks_at_their_step(tmp_path, data_file, tiny_model_dir):
    before: list[dict[str, torch.Tensor]] = []  # all weights before each optimizer step
    original = training.objectives.TrainingSession.loss

    def spy(self, batch):
        before.append({n: p.detach().clone() for n, p in self.model.named_parameters()})
        return original(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.objectives.TrainingSession, "loss", spy)
        result = training.train(_gradual(data_file, tiny_model_dir), runs_root=tmp_path)
    assert result.trainable_params == sum(p.numel() for n, p in before[0].items()
                                          if n.startswith("model.layers.") or n == "model.norm.weight")
    final = load_file(str(Path(result.run_dir) / "weights" / "trained.safetensors"))
    after = [*before[1:], final]  # weights after each step

    def moved(prefix: str, step: int) -> bool:  # step 1-based
        return any(not torch.equal(before[step - 1][n], after[step - 1][n]) for n in before[0] if n.startswith(prefix))

    assert [moved("model.layers.1.", s) for s in (1, 2, 3, 4)] == [True, True, True, True]  # top: from the start
    assert [moved("model.layers.0.", s) for s in (1, 2, 3, 4)] == [False, False, True, True]  # opens at step 3
    assert [moved("model.norm.", s) for s in (1, 2, 3, 4)] == [True, True, True, True]
    assert "model.embed_tokens.weight" not in final  # not a candidate: never trains


def test_gradual_unfreezing_resumes_as_if_uninterrupted(tmp_path, data_file, tiny_model_dir):
    whole = training.train(_gradual(data_file, tiny_model_dir), runs_root=tmp_path / "a")
    stop = threading.Event()
    first = training.train(_gradual(data_file, tiny_model_dir), runs_root=tmp_path / "b", stop_event=stop,
                           on_step=lambda step, *_: stop.set() if step == 2 else None)
    assert (first.state, first.steps) == ("stopped", 2)  # stopped with block 0 still closed
    resumed = training.resume(first.run_dir)
    assert (resumed.state, resumed.steps) == ("completed", 4)
    assert resumed.train_loss == pytest.approx(whole.train_loss, abs=1e-6)
    a = load_file(str(Path(whole.run_dir) / "weights" / "trained.safetensors"))
    b = load_file(str(Path(resumed.run_dir) / "weights" / "trained.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[n], b[n], atol=1e-7) for n in a)


# --------------------------------------------------------------------------------------------------------------------
# LoRA plus fully trained top blocks
# --------------------------------------------------------------------------------------------------------------------


def test_unfreeze_top_trains_the_top_block_fully_and_lora_below(tiny_model_dir, tiny_tokenizer):
    model = _built("lora", tiny_model_dir, tiny_tokenizer, r=4, unfreeze_top=1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    top = [n for n in names if ".layers.1." in n]
    assert top and all(".modules_to_save." in n and "lora_" not in n for n in top)  # whole block, no LoRA inside
    assert any("lora_A" in n for n in names if ".layers.0." in n)
    assert not get_method("lora").mixes_in_batch({"unfreeze_top": 1})
    with pytest.raises(ConfigError, match="^unfreeze_top: the model has 2 blocks"):
        _built("lora", tiny_model_dir, tiny_tokenizer, unfreeze_top=2)
    with pytest.raises(ConfigError, match="^unfreeze_top: qlora"):
        get_method("qlora").make_config({"unfreeze_top": 1})


def test_unfreeze_top_saves_the_blocks_and_a_reload_reproduces_the_logits(tmp_path, data_file, tiny_model_dir):
    config = tiny_config(data_file, tiny_model_dir, method="lora", learning_rate=1e-2,
                         method_config={"r": 4, "unfreeze_top": 1})
    captured = train_captured(config, tmp_path / "runs")
    result, model = captured.result, captured.model
    saved = load_file(str(Path(result.run_dir) / "adapter" / "adapter_model.safetensors"))
    assert any(".layers.1.self_attn.q_proj.weight" in n for n in saved)  # the block's own weights
    base = dict(_built("full", tiny_model_dir, None).named_parameters())
    block_name = next(n for n in saved if n.endswith("layers.1.mlp.down_proj.weight"))
    assert not torch.equal(saved[block_name], base["model.layers.1.mlp.down_proj.weight"])  # it trained
    expected = sample_logits(model)
    loaded = load_trained_model(result.run_dir, device="cpu", dtype="fp32").model
    assert torch.allclose(sample_logits(loaded), expected, atol=1e-5)
    merged = merge_and_export(result.run_dir, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    standalone = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    assert torch.allclose(sample_logits(standalone), expected, atol=1e-4)
    assert Run(Path(result.run_dir)).config["method_config"]["unfreeze_top"] == 1
