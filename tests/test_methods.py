"""core/methods.py: the registry, settings validation (every bad value names its field), and what each builder makes
trainable on the tiny 2-layer Llama (no training here; tests/test_training.py trains)."""

from __future__ import annotations

import pytest
import torch
from training_helpers import fresh_base

from core.methods import (
    METHODS,
    BuildContext,
    MethodConfig,
    count_parameters,
    get_method,
    quantization_config,
)
from core.methods.configs import FreezeConfig, LoraConfig, QLoraConfig
from core.training import TrainingConfig, supports_answer_only_head

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _build(method: str, model_dir, tokenizer, total_steps: int = 10, **settings):
    spec = get_method(method)
    model = fresh_base(model_dir)
    return spec.builder(model, spec.make_config(settings), BuildContext(tokenizer, total_steps))


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _unique_count(model) -> int:
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel()
    return total


# --------------------------------------------------------------------------------------------------------------------
# Registry and settings
# --------------------------------------------------------------------------------------------------------------------


def test_registry_holds_the_ten_methods_with_sane_metadata():
    assert set(METHODS) == {"full", "freeze", "lora", "qlora", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3",
                            "adalora", "multitask_prompt_tuning"}
    for name, method in METHODS.items():
        assert method.name == name and method.title and method.description
        assert 0 < method.default_lr < 1
        assert not (method.mergeable and method.prompt_learning)
        config = method.make_config({})  # the defaults are valid
        assert isinstance(config, method.config_class)
        assert type(config).from_dict(config.to_dict()) == config  # settings round-trip
        for row in method.settings():
            assert row["help"], f"{name}.{row['name']} has no help text"
    assert {m for m, spec in METHODS.items() if spec.prompt_learning} == {"prompt_tuning", "prefix_tuning", "p_tuning",
                                                                          "multitask_prompt_tuning"}
    assert {m for m, spec in METHODS.items() if spec.task_routed} == {"multitask_prompt_tuning"}
    assert {m for m, spec in METHODS.items() if spec.mergeable} == {"freeze", "lora", "qlora", "ia3", "adalora"}


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="^method: unknown method 'dora'"):
        get_method("dora")


def test_make_config_refuses_another_methods_config():
    with pytest.raises(ValueError, match="^method_config: a FreezeConfig given for method lora"):
        get_method("lora").make_config(FreezeConfig())
    config = LoraConfig(r=4)
    assert get_method("lora").make_config(config) is config


@pytest.mark.parametrize(("method", "settings", "field"), [
    ("lora", {"r": 0}, "r"),
    ("lora", {"r": 2000}, "r"),
    ("lora", {"dropout": 1.5}, "dropout"),
    ("lora", {"alpha": 0}, "alpha"),
    ("lora", {"target_modules": " "}, "target_modules"),
    ("lora", {"target_modules": []}, "target_modules"),
    ("lora", {"rank": 8}, "rank"),
    ("lora", {"r": "eight"}, "r"),
    ("lora", {"use_dora": "maybe"}, "use_dora"),
    ("qlora", {"bits": 3}, "bits"),
    ("qlora", {"quant_type": "int4"}, "quant_type"),
    ("qlora", {"r": -1}, "r"),
    ("prompt_tuning", {"init": "zzz"}, "init"),
    ("prompt_tuning", {"init_text": "  "}, "init_text"),
    ("prompt_tuning", {"num_virtual_tokens": 0}, "num_virtual_tokens"),
    ("prefix_tuning", {"encoder_hidden_size": 0}, "encoder_hidden_size"),
    ("p_tuning", {"encoder_type": "GRU"}, "encoder_type"),
    ("ia3", {"target_modules": "k_proj,v_proj", "feedforward_modules": "down_proj"}, "feedforward_modules"),
    ("adalora", {"init_r": 4, "target_r": 8}, "target_r"),
    ("adalora", {"warmup_fraction": 0.6, "final_fraction": 0.5}, "final_fraction"),
    ("adalora", {"prune_every": 0}, "prune_every"),
    ("adalora", {"dropout": 1.0}, "dropout"),
    ("freeze", {"trainable_layers": 0}, "trainable_layers"),
    ("lora", {"unfreeze_top": -1}, "unfreeze_top"),
    ("qlora", {"unfreeze_top": 1}, "unfreeze_top"),
    ("multitask_prompt_tuning", {"num_ranks": 0}, "num_ranks"),
    ("multitask_prompt_tuning", {"source_fraction": 0}, "source_fraction"),
    ("multitask_prompt_tuning", {"source_fraction": 1.5}, "source_fraction"),
    ("multitask_prompt_tuning", {"tasks": "qa,qa"}, "tasks"),
    ("multitask_prompt_tuning", {"tasks": []}, "tasks"),
    ("multitask_prompt_tuning", {"num_virtual_tokens": 0}, "num_virtual_tokens"),
    ("multitask_prompt_tuning", {"init": "zzz"}, "init"),
    ("full", {"r": 8}, "r"),
])
def test_bad_method_setting_names_its_field(method, settings, field):
    for make in (lambda: TrainingConfig(data="train.jsonl", method=method, method_config=settings),
                 lambda: METHODS[method].make_config(settings)):
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_settings_from_text_are_coerced_to_their_types():
    config = METHODS["lora"].make_config({"r": "4", "alpha": "8", "dropout": "0.25", "use_dora": "yes",
                                          "use_rslora": "0", "target_modules": "q_proj, v_proj"})
    assert (config.r, config.alpha, config.dropout, config.use_dora, config.use_rslora) == (4, 8, 0.25, True, False)
    assert config.target_modules == ["q_proj", "v_proj"]
    assert METHODS["lora"].make_config({"target_modules": "all-linear"}).target_modules == "all-linear"
    training = TrainingConfig(data="train.jsonl", method="freeze", method_config={"trainable_layers": "1"})
    assert training.method_config == {"trainable_layers": 1, "train_embeddings": False, "train_norm": True}


def test_quantization_config_follows_the_settings():
    eight = quantization_config(QLoraConfig(bits=8), torch.float32)
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = quantization_config(QLoraConfig(bits=4, quant_type="fp4", double_quant=False), torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "fp4" and not four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16


def test_method_config_base_class_has_no_settings():
    assert MethodConfig.from_dict(None).to_dict() == {}
    with pytest.raises(ValueError, match="^x: not a setting of this method; known: none"):
        MethodConfig.from_dict({"x": 1})


# --------------------------------------------------------------------------------------------------------------------
# Builders: exactly the method's parameters are trainable
# --------------------------------------------------------------------------------------------------------------------


def test_full_trains_every_weight_and_counts_tied_weights_once(tiny_model_dir, tiny_tokenizer):
    model = _build("full", tiny_model_dir, tiny_tokenizer)
    trainable, total = count_parameters(model)
    assert trainable == total == _unique_count(fresh_base(tiny_model_dir))
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied: counted once above


def test_freeze_trains_the_top_layers_and_optionally_norm_and_embeddings(tiny_model_dir, tiny_tokenizer):
    model = _build("freeze", tiny_model_dir, tiny_tokenizer, trainable_layers=1)
    names = set(_trainable(model))
    assert names == {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")} | {
        "model.norm.weight"}
    assert not any(n.startswith("model.layers.0.") for n in names)
    model = _build("freeze", tiny_model_dir, tiny_tokenizer, trainable_layers=2, train_norm=False,
                   train_embeddings=True)
    names = set(_trainable(model))
    assert "model.norm.weight" not in names and "model.embed_tokens.weight" in names
    assert {n.split(".")[2] for n in names if n.startswith("model.layers.")} == {"0", "1"}
    trainable, total = count_parameters(model)
    assert trainable == total - 32  # everything but the final norm's 32 weights
    with pytest.raises(ValueError, match="^trainable_layers: the model has 2 layers, got 3"):
        _build("freeze", tiny_model_dir, tiny_tokenizer, trainable_layers=3)


def test_lora_adapts_the_named_modules_at_the_given_rank(tiny_model_dir, tiny_tokenizer):
    model = _build("lora", tiny_model_dir, tiny_tokenizer, r=4, target_modules="q_proj,down_proj")
    trainable = _trainable(model)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "down_proj"}
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x 2 modules x (A, B)
    down_a = trainable["base_model.model.model.layers.0.mlp.down_proj.lora_A.default.weight"]
    assert down_a.shape == (4, 64)  # (r, in_features of down_proj)
    trainable_count, total = count_parameters(model)
    per_layer = 4 * (32 + 32) + 4 * (64 + 32)  # q_proj 32->32, down_proj 64->32
    assert trainable_count == 2 * per_layer
    assert total == _unique_count(fresh_base(tiny_model_dir)) + trainable_count

    everything = _build("lora", tiny_model_dir, tiny_tokenizer, r=2, use_dora=True)
    modules = {n.split(".")[-4] for n in _trainable(everything) if ".lora_A." in n}
    assert modules == set(LINEAR)  # all-linear: every linear layer but the LM head
    assert any("lora_magnitude_vector" in n for n in _trainable(everything))


def test_qlora_needs_a_quantized_base(tiny_model_dir, tiny_tokenizer):
    with pytest.raises(ValueError, match="^method: qlora needs a base loaded through quantization_config"):
        _build("qlora", tiny_model_dir, tiny_tokenizer)


def test_ia3_scales_inputs_of_feedforward_and_outputs_of_attention(tiny_model_dir, tiny_tokenizer):
    model = _build("ia3", tiny_model_dir, tiny_tokenizer)
    trainable = _trainable(model)
    assert {n.split(".")[-3] for n in trainable} == {"k_proj", "v_proj", "down_proj"}
    shapes = {n.split(".")[-3]: tuple(p.shape) for n, p in trainable.items()}
    assert shapes["down_proj"] == (1, 64)  # feed-forward: one scale per input feature
    assert shapes["k_proj"] == (16, 1)  # 2 kv heads x head dim 8: one scale per output feature
    assert all(torch.equal(p, torch.ones_like(p)) for p in trainable.values())  # starts as the identity


@pytest.fixture(scope="module")
def saved_tokenizer(tiny_model_dir):
    """The tiny tokenizer as training sees it: loaded from the model folder (so it has a name_or_path)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_prompt_tuning_starts_from_the_text_embeddings_or_randomly(tiny_model_dir, saved_tokenizer):
    text = "What is the capital of France?"
    model = _build("prompt_tuning", tiny_model_dir, saved_tokenizer, num_virtual_tokens=12, init_text=text)
    trainable = _trainable(model)
    assert list(trainable) == ["prompt_encoder.default.embedding.weight"]
    soft = trainable["prompt_encoder.default.embedding.weight"]
    ids = saved_tokenizer(text, add_special_tokens=False)["input_ids"]
    repeated = (ids * 12)[:12]
    words = fresh_base(tiny_model_dir).get_input_embeddings().weight.detach()
    assert torch.equal(soft.detach(), words[repeated])
    torch.manual_seed(0)
    random_init = _build("prompt_tuning", tiny_model_dir, saved_tokenizer, num_virtual_tokens=12, init="random")
    assert not torch.equal(_trainable(random_init)["prompt_encoder.default.embedding.weight"].detach(),
                           words[repeated])
    assert not any(p.requires_grad for p in model.get_base_model().parameters())


@pytest.mark.parametrize("method", ["prefix_tuning", "p_tuning"])
def test_other_prompt_learning_methods_train_only_their_encoder(method, tiny_model_dir, tiny_tokenizer):
    model = _build(method, tiny_model_dir, tiny_tokenizer, num_virtual_tokens=5)
    assert _trainable(model) and all(n.startswith("prompt_encoder.") for n in _trainable(model))
    assert not any(p.requires_grad for p in model.get_base_model().parameters())
    assert not supports_answer_only_head(model)  # virtual tokens shift positions: the full forward is needed


@pytest.mark.parametrize("steps", [2, 3, 4, 10, 100])
def test_adalora_schedule_follows_the_planned_steps(steps, tiny_model_dir, tiny_tokenizer):
    model = _build("adalora", tiny_model_dir, tiny_tokenizer, total_steps=steps, init_r=6, target_r=2)
    config = model.peft_config["default"]
    assert config.total_step == steps  # the last optimizer step falls in the final phase (ranks fixed)
    assert config.tfinal >= 1
    assert config.total_step - config.tinit - config.tfinal >= 1  # a budgeting phase exists
    if steps >= 10:  # the default fractions: 10% warm-up, 20% final phase with fixed ranks
        assert (config.tinit, config.tfinal) == (steps // 10, steps // 5)
    assert (config.init_r, config.target_r) == (6, 2)
    assert not supports_answer_only_head(model)  # its orthogonality penalty is added in forward


def test_answer_only_head_is_offered_for_plain_llama_and_lora(tiny_model_dir, saved_tokenizer):
    assert supports_answer_only_head(fresh_base(tiny_model_dir))
    assert supports_answer_only_head(_build("lora", tiny_model_dir, saved_tokenizer))
    assert supports_answer_only_head(_build("ia3", tiny_model_dir, saved_tokenizer))
    assert not supports_answer_only_head(_build("prompt_tuning", tiny_model_dir, saved_tokenizer,
                                                num_virtual_tokens=2))


def test_prompt_tuning_text_init_works_with_an_in_memory_tokenizer(tiny_model_dir, tiny_tokenizer):
    assert tiny_tokenizer.name_or_path == ""
    model = _build("prompt_tuning", tiny_model_dir, tiny_tokenizer, num_virtual_tokens=3, init_text="Paris")
    ids = (tiny_tokenizer("Paris", add_special_tokens=False)["input_ids"] * 3)[:3]
    words = fresh_base(tiny_model_dir).get_input_embeddings().weight.detach()
    assert torch.equal(_trainable(model)["prompt_encoder.default.embedding.weight"].detach(), words[ids])


def test_multitask_prompt_tuning_starts_from_the_text_and_has_a_factor_per_task(tiny_model_dir, tiny_tokenizer):
    model = _build("multitask_prompt_tuning", tiny_model_dir, tiny_tokenizer, num_virtual_tokens=3, num_ranks=2,
                   tasks="qa,summarization,classification", init_text="Paris")
    trainable = _trainable(model)
    assert set(trainable) == {"prompt_encoder.default.embedding.weight", "prompt_encoder.default.prefix_task_cols",
                              "prompt_encoder.default.prefix_task_rows"}
    assert tuple(trainable["prompt_encoder.default.prefix_task_cols"].shape) == (3, 3, 2)  # (tasks, tokens, ranks)
    assert tuple(trainable["prompt_encoder.default.prefix_task_rows"].shape) == (3, 2, 32)  # (tasks, ranks, hidden)
    ids = (tiny_tokenizer("Paris", add_special_tokens=False)["input_ids"] * 3)[:3]
    words = fresh_base(tiny_model_dir).get_input_embeddings().weight.detach()
    assert torch.equal(trainable["prompt_encoder.default.embedding.weight"].detach(), words[ids])
    factor = trainable["prompt_encoder.default.prefix_task_cols"] @ trainable["prompt_encoder.default.prefix_task_rows"]
    assert torch.allclose(factor, torch.ones_like(factor), atol=0.2)  # every task starts from the shared prompt
    assert not supports_answer_only_head(model)
    assert METHODS["multitask_prompt_tuning"].make_config({"tasks": " qa , summarization "}).tasks == [
        "qa", "summarization"]
    with pytest.raises(ValueError, match="^tasks: the task names are not known yet"):
        _build("multitask_prompt_tuning", tiny_model_dir, tiny_tokenizer)  # auto: resolved from the rows at run start


def test_lora_unfreeze_top_is_a_lora_of_its_own_batch(tiny_model_dir, tiny_tokenizer):
    model = _build("lora", tiny_model_dir, tiny_tokenizer, unfreeze_top=1)
    names = set(_trainable(model))
    assert {n.split(".")[4] for n in names if ".layers." in n} == {"0", "1"}
    assert all("modules_to_save" in n for n in names if ".layers.1." in n)
    assert METHODS["lora"].mixes_in_batch({}) and not METHODS["lora"].mixes_in_batch({"unfreeze_top": 1})


def test_freeze_finds_the_blocks_of_an_encoder():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                intermediate_size=32))
    spec = get_method("freeze")
    model = spec.builder(bert, spec.make_config({"trainable_layers": 2}), BuildContext(None, 10))
    layers = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert layers == {"1", "2"}
