"""The distillation objective on tiny models: the student (shrunk from the teacher, or a copy of the base), the frozen
teacher, the loss (KL at temperature T + cross-entropy), the top-K cache, context distillation, the checks on bad
input, resume, and the engine's and CLI's side (teacher resolved as a run or a model, ``train --json`` keys)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_tokenizer
from training_helpers import ROWS, fresh_base, tiny_config, write_rows

from core import training
from core.cli import main
from core.engine import Engine
from core.errors import ConfigError
from core.models import load_causal_lm
from core.training import TrainingResources, distillation, get_objective, prepare_data
from core.training.distillation import CACHE_FILE, DistillationSession, distillation_loss
from core.training.teachers import kept_layers, shrink


@pytest.fixture(autouse=True)
def short_decode(monkeypatch):
    """decode_speedup from 2 prompts x 4 tokens: generate() costs tens of ms a token even on a tiny model."""
    monkeypatch.setattr(distillation, "DECODE_PROMPTS", 2)
    monkeypatch.setattr(distillation, "DECODE_TOKENS", 4)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 4-block tiny Llama (same tokenizer as tiny_model_dir): a teacher a 2-block student can be shrunk from."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, bos_token_id=1)
    folder = tmp_path_factory.mktemp("teacher4")
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer was trained on other text: a different vocabulary."""
    from tiny_models import CHATML, build_tiny_llama
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["zebra quokka axolotl narwhal"] * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<unk>")
    fast.chat_template = CHATML
    folder = tmp_path_factory.mktemp("other-tokenizer")
    build_tiny_llama(len(fast)).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path) -> str:
    return write_rows(tmp_path / "rows.jsonl", ROWS * 2)  # 16 rows: 14 train, 2 validation


def distil_config(data: str, base: Path, **overrides):
    values = {"objective": "distillation", "teacher": str(base), "method": "full", "max_eval_examples": 4}
    return tiny_config(data, base, **{**values, **overrides})


def metrics(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ---- the student -----------------------------------------------------------------------------------------------------


def test_kept_layers_are_evenly_spaced_with_both_ends():
    assert kept_layers(4, 2) == [0, 3]
    assert kept_layers(30, 15)[:3] == [0, 2, 4] and kept_layers(30, 15)[-1] == 29
    assert len(set(kept_layers(30, 15))) == 15 and kept_layers(30, 1) == [0]


def test_student_layers_are_copies_of_the_chosen_teacher_layers(teacher_dir):
    teacher = fresh_base(teacher_dir)
    student = shrink(teacher, 2)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for new, old in enumerate([0, 3]):
        ours = dict(student.model.layers[new].named_parameters())
        for name, param in teacher.model.layers[old].named_parameters():
            assert torch.equal(ours[name], param), name
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    assert student.lm_head.weight is student.model.embed_tokens.weight  # still tied
    with torch.no_grad():  # copies, not views: training the student leaves the teacher alone
        student.model.layers[1].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)


# ---- the loss --------------------------------------------------------------------------------------------------------


def test_top_k_loss_over_the_whole_vocabulary_equals_the_full_loss():
    torch.manual_seed(0)
    student, teacher = torch.randn(7, 50), torch.randn(7, 50)
    targets = torch.randint(0, 50, (7,))
    full = distillation_loss(student, targets, teacher, None, 0.7, 2.0)
    values, indices = teacher.topk(50, dim=-1)
    cached = distillation_loss(student, targets, values, indices, 0.7, 2.0)
    assert torch.allclose(full, cached, atol=1e-6)
    top5 = distillation_loss(student, targets, *teacher.topk(5, dim=-1), 0.7, 2.0)
    assert not torch.allclose(full, top5)  # K < V is a different (renormalised) loss


def test_kl_term_is_zero_when_student_is_teacher(data, tmp_path, tiny_model_dir):
    """No --student and no --student-layers: the student is a fresh copy of the teacher; with alpha 1 the loss is
    T^2 * KL, zero before the first update, and the two agree on every validation token."""
    config = distil_config(data, tiny_model_dir, distill_alpha=1.0, max_steps=1, learning_rate=1e-3)
    result = training.train(config, runs_root=tmp_path / "runs")
    assert result.train_loss[0] == pytest.approx(0.0, abs=1e-6)
    first = metrics(result.run_dir)[0]
    assert first["step"] == 0 and first["val_kl"] == pytest.approx(0.0, abs=1e-6) and first["agreement"] == 1.0


# ---- the teacher -----------------------------------------------------------------------------------------------------


def test_teacher_stays_frozen_and_out_of_the_student(data, tmp_path, teacher_dir):
    holder = {}

    def load_teacher():
        holder["teacher"] = load_causal_lm(str(teacher_dir), device="cpu", dtype="fp32")
        return holder["teacher"]

    config = distil_config(data, teacher_dir, student_layers=2, learning_rate=1e-2)
    result = training.train(config, runs_root=tmp_path / "runs", resources=TrainingResources(load_teacher))
    teacher = holder["teacher"].model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    untouched = fresh_base(teacher_dir)
    for name, param in untouched.named_parameters():
        assert torch.equal(dict(teacher.named_parameters())[name], param), name
    student_params = sum(p.numel() for p in shrink(untouched, 2).parameters())
    assert result.total_params == result.trainable_params == student_params  # the teacher is never counted
    assert result.extras["student_params"] == student_params < result.extras["teacher_params"]
    saved = json.loads((Path(result.run_dir) / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2  # a model folder of its own: the Arena loads it as a separate model
    trained = fresh_base(Path(result.run_dir) / "model")
    assert not torch.equal(trained.model.layers[1].mlp.up_proj.weight, untouched.model.layers[3].mlp.up_proj.weight)
    assert set(result.extras) >= {"teacher", "teacher_params", "student_params", "agreement", "decode_speedup"}
    assert 0 <= result.extras["agreement"] <= 1 and result.extras["decode_speedup"] > 0


def test_cache_gives_the_loss_of_the_teacher_on_the_fly_and_is_reused_on_resume(data, tmp_path, teacher_dir):
    vocab = len(build_tiny_tokenizer())
    fly = training.train(distil_config(data, teacher_dir, student_layers=2), runs_root=tmp_path / "a")
    stop = threading.Event()
    cached_config = distil_config(data, teacher_dir, student_layers=2, teacher_top_k=vocab)
    stopped = training.train(cached_config, runs_root=tmp_path / "b", stop_event=stop,
                             on_step=lambda step, *rest: stop.set())
    assert stopped.state == "stopped" and stopped.steps == 1
    cache = Path(stopped.run_dir) / CACHE_FILE
    written = cache.stat().st_mtime_ns
    resumed = training.resume(stopped.run_dir)
    assert resumed.state == "completed" and cache.stat().st_mtime_ns == written  # read back, not recomputed
    assert resumed.extras["cache_bytes"] == cache.stat().st_size
    # K = vocabulary: the renormalised top-K KL is the full KL (logits cached in fp16)
    assert resumed.train_loss == pytest.approx(fly.train_loss, rel=1e-3)
    assert resumed.final_val_loss == pytest.approx(fly.final_val_loss, rel=1e-3)


def test_a_lora_student_of_another_model_learns_from_a_run_as_teacher(data, tmp_path, teacher_dir, tiny_model_dir,
                                                                       monkeypatch):
    """The teacher is a LoRA run of the workspace (by id); the student is --student MODEL trained with LoRA, so the
    run records the student as its base model (an adapter applies to it). Stopped, it resumes through the engine."""
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    engine = Engine()
    sft = engine.train(tiny_config(data, teacher_dir, method_config={"r": 4}), run_dir=engine.workspace.runs / "t")
    config = training.TrainingConfig(data=data, objective="distillation", teacher="t", student=str(tiny_model_dir),
                                     method="lora", method_config={"r": 4}, max_steps=2, batch_size=4, device="cpu",
                                     dtype="fp32", max_eval_examples=4)
    stop = threading.Event()
    stopped = engine.train(config, stop_event=stop, on_step=lambda step, *rest: stop.set())
    assert stopped.state == "stopped"
    result = engine.resume(Path(stopped.run_dir).name)  # the engine finds the teacher run again
    assert result.state == "completed" and result.steps == 2 and result.extras["teacher"] == "t"
    recorded = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert recorded["base_model"] == str(tiny_model_dir) and (Path(result.run_dir) / "adapter").is_dir()
    assert result.extras["teacher_params"] > sum(p.numel() for p in fresh_base(teacher_dir).parameters())  # + LoRA
    assert Path(sft.run_dir).name == "t"


# ---- context distillation --------------------------------------------------------------------------------------------


def test_context_distillation_feeds_the_passages_to_the_teacher_only(data, tiny_model_dir, tiny_tokenizer):
    marker = "Orbit garden twelve pod slots"
    asked: list[str] = []

    def retrieve(question: str) -> list[str]:
        asked.append(question)
        return [f"(source: a.md) {marker}"]

    config = distil_config(data, tiny_model_dir, teacher_context="rag", index="unused")
    prepared = prepare_data(config, lambda: tiny_tokenizer)
    resources = TrainingResources(lambda: load_causal_lm(str(tiny_model_dir), device="cpu", dtype="fp32"), retrieve)
    session = DistillationSession(get_objective("distillation"), config, prepared, 3, resources)
    seen: list[torch.Tensor] = []
    record = lambda module, args, kwargs: seen.append(kwargs["input_ids"])  # noqa: E731
    session.teacher.model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)  # what the teacher reads
    rows = prepared.train[:3]
    batch = session.collate(rows)
    session.loss(batch)
    assert len(asked) == len({tuple(row.input_ids) for row in prepared.train + prepared.val})  # once per row
    decode = tiny_tokenizer.batch_decode
    assert all(marker not in text for text in decode(batch["input_ids"]))
    assert all(marker in text for text in decode(batch["teacher_input_ids"]))
    assert seen and all(marker in text for text in decode(seen[-1]))
    student_answers = batch["labels"][batch["labels"] != -100]
    teacher_answers = batch["teacher_labels"][batch["teacher_labels"] != -100]
    assert torch.equal(student_answers, teacher_answers)  # the same answer tokens, compared position by position


# ---- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"teacher": None}, "teacher:"),
        ({"student": "x", "student_layers": 1}, "student:"),
        ({"student_layers": 0}, "student_layers:"),
        ({"student_layers": 1, "method": "lora"}, "method:"),
        ({"teacher_context": "rag"}, "index:"),
        ({"method": "prompt_tuning"}, "method:"),
    ],
)
def test_bad_settings_are_one_line_naming_the_field(data, tiny_model_dir, overrides, needle):
    with pytest.raises(ConfigError) as err:
        distil_config(data, tiny_model_dir, **overrides)
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--teacher", "{missing}", "--student-layers", "1"], "teacher:"),
        (["--teacher", "{teacher}", "--student", "{other}"], "student:"),
        (["--teacher", "{teacher}", "--student-layers", "4"], "student_layers:"),
        (["--teacher", "{teacher}", "--teacher-context", "rag"], "index:"),
        (["--teacher", "{teacher}", "--teacher-context", "rag", "--index", "{missing}"], "index:"),
    ],
)
def test_bad_input_from_the_cli_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, data, teacher_dir,
                                                        other_tokenizer_dir, extra, needle):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    names = {"missing": str(tmp_path / "nowhere"), "teacher": str(teacher_dir), "other": str(other_tokenizer_dir)}
    argv = ["train", "--data", data, "--objective", "distillation", "--method", "full", "--max-steps", "1",
            "--dtype", "fp32", *[arg.format(**names) for arg in extra]]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "ws" / "runs").is_dir() or not any((tmp_path / "ws" / "runs").iterdir())  # no run made


def test_train_json_carries_the_distillation_keys(tmp_path, monkeypatch, capsys, data, teacher_dir):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    argv = ["train", "--data", data, "--objective", "distillation", "--method", "full", "--teacher",
            str(teacher_dir), "--student-layers", "2", "--max-steps", "2", "--batch-size", "4", "--dtype", "fp32",
            "--max-eval-examples", "2", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"objective", "teacher", "teacher_params", "student_params", "agreement", "decode_speedup"} <= set(result)
    assert result["objective"] == "distillation" and result["teacher"] == str(teacher_dir)
    assert result["student_params"] < result["teacher_params"]
    recorded = json.loads((Path(result["run_dir"]) / "config.json").read_text())
    assert recorded["base_model"] == str(teacher_dir)  # the teacher's base: the Arena offers the run for it


def test_cache_works_under_bf16_autocast(data, tmp_path, teacher_dir):
    """The cache holds fp16 logits; batches are built outside autocast (CPU autocast refuses fp16 tensors)."""
    config = distil_config(data, teacher_dir, student_layers=2, teacher_top_k=16, dtype="bf16", max_steps=1)
    result = training.train(config, runs_root=tmp_path / "runs")
    assert result.state == "completed" and result.dtype == "bfloat16"
    assert 0 <= result.extras["agreement"] <= 1
