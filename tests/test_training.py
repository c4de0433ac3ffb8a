"""core/training.py and core/runs.py on the tiny 2-layer Llama: every method trains, saved weights reload to the same
logits, stop/resume (also after SIGKILL) repeats an uninterrupted run, the loss masks prompts, configs name their bad
field, batching, the run store, and merging."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from training_helpers import (
    ROWS,
    SMALL_METHOD_CONFIG,
    fresh_base,
    sample_logits,
    tiny_config,
    train_captured,
    train_rows,
    write_rows,
)

from core import training
from core.data import Example, encode_for_training
from core.inference import load_trained_model, merge_and_export
from core.io import read_jsonl, write_atomic
from core.methods import METHODS
from core.runs import RunStore
from core.training import (
    TrainingConfig,
    answer_loss,
    collate,
    epoch_batches,
    loss_tokens,
    resume,
    supports_answer_only_head,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
WEIGHT_FOLDER = {"full": "model", "freeze": "weights"}  # every other method saves a PEFT adapter/


# --------------------------------------------------------------------------------------------------------------------
# Shared runs: each method trained once per module (3 steps, lr 1e-2 so that the weights move visibly)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", ROWS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, data_file):
    """``trained(method)``: a completed 3-step run of ``method`` with its captured before/after model (cached)."""
    cache = {}
    root = tmp_path_factory.mktemp("runs")

    def get(method: str):
        if method not in cache:
            config = tiny_config(data_file, tiny_model_dir, method=method, learning_rate=1e-2,
                                 method_config=SMALL_METHOD_CONFIG.get(method, {}))
            cache[method] = train_captured(config, root)
        return cache[method]

    return get


@pytest.fixture(scope="module")
def base_params(tiny_model_dir) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in fresh_base(tiny_model_dir).named_parameters()}


@pytest.fixture(scope="module")
def base_logits(tiny_model_dir) -> torch.Tensor:
    return sample_logits(fresh_base(tiny_model_dir))


def _plain(name: str, base_names) -> str | None:
    """The base model's name for a parameter of a (PEFT-wrapped) model; None for the method's own parameters."""
    name = name.replace(".base_layer.", ".")
    for prefix in ("base_model.model.", "base_model.", ""):  # LoRA-style wrappers / prompt learning / plain
        if name.startswith(prefix) and name[len(prefix):] in base_names:
            return name[len(prefix):]
    return None


def _inner(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# --------------------------------------------------------------------------------------------------------------------
# 1. Every method trains
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_only_its_own_weights(method, trained, base_params):
    captured = trained(method)
    result, model = captured.result, captured.model
    assert (result.state, result.steps, result.total_steps) == ("completed", 3, 3)
    assert Path(result.run_dir, "status.json").is_file()
    assert json.loads(Path(result.run_dir, "status.json").read_text())["state"] == "completed"

    # parameter counts, checked against the captured model and the plain base
    trainable = captured.initial_trainable
    assert trainable, "the method made nothing trainable"
    assert result.trainable_params == sum(captured.initial[n].numel() for n in trainable)
    base_count = sum(t.numel() for t in base_params.values())
    own = [n for n in captured.initial if _plain(n, base_params) is None]  # adapter / prompt-encoder parameters
    assert set(own) >= (trainable if method not in ("full", "freeze") else set())
    assert result.total_params == base_count + sum(captured.initial[n].numel() for n in own)
    if method in ("full", "freeze"):
        assert not own
    assert 0 < result.trainable_params <= result.total_params
    if method == "full":
        assert result.trainable_params == result.total_params

    # the weights folder and its size
    weights = Path(result.run_dir) / WEIGHT_FOLDER.get(method, "adapter")
    assert weights.is_dir()
    assert result.adapter_bytes == sum(p.stat().st_size for p in weights.rglob("*") if p.is_file()) > 0

    # one metrics row per optimizer step, the same losses as the result
    rows = train_rows(result.run_dir)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in rows)
    assert [row["loss"] for row in rows] == pytest.approx(result.train_loss, abs=1e-6)
    assert not (Path(result.run_dir) / "checkpoints").exists()  # a completed run drops its optimizer state

    # every trainable tensor moved; every frozen tensor is bit-identical to before training
    final = dict(model.named_parameters())
    assert set(final) == set(captured.initial)
    for name in trainable:
        assert not torch.equal(final[name].detach(), captured.initial[name]), f"{name} did not train"
    for name in set(final) - trainable:
        assert torch.equal(final[name].detach(), captured.initial[name]), f"frozen {name} changed"

    # the frozen base tensors equal a fresh load of the saved base model
    compared = set()
    for name, param in _inner(model).named_parameters():
        plain = name.replace(".base_layer.", ".")
        if param.requires_grad or plain not in base_params:
            continue
        if method == "qlora" and param.dtype == torch.uint8:  # 4-bit packed: compared with `initial` above
            compared.add(plain)
            continue
        assert torch.equal(param.detach().float(), base_params[plain]), f"frozen base {plain} differs from disk"
        compared.add(plain)
    trained_base = {n.replace(".base_layer.", ".") for n, p in _inner(model).named_parameters() if p.requires_grad}
    assert compared == set(base_params) - trained_base


@pytest.mark.parametrize("method", [m for m in METHODS if m != "p_tuning"])  # p-tuning saves the encoder's output
def test_load_trained_model_holds_the_trained_tensors(method, trained, base_params):
    captured = trained(method)
    run_id = captured.result.run_id
    loaded = load_trained_model(captured.result.run_dir, device="cpu", dtype="fp32").model
    assert not loaded.training
    loaded_params = dict(loaded.named_parameters())
    final = dict(captured.model.named_parameters())
    adapter_config = Path(captured.result.run_dir) / "adapter" / "adapter_config.json"
    rank_pattern = json.loads(adapter_config.read_text()).get("rank_pattern") if adapter_config.exists() else None
    for name in captured.initial_trainable:  # PEFT names the loaded adapter after the run
        loaded_name = re.sub(r"\.default(\.|$)", rf".{run_id}\1", name)
        expected = final[name].detach()
        if rank_pattern and expected.shape != loaded_params[loaded_name].shape:  # AdaLoRA saves the kept ranks only
            module = name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
            keep = torch.tensor(rank_pattern[f"{module}.lora_E"])
            expected = expected[:, keep] if ".lora_B." in name else expected[keep]
        assert torch.equal(loaded_params[loaded_name].detach().float(), expected), name
    trained_base = {n.replace(".base_layer.", ".") for n, p in _inner(captured.model).named_parameters()
                    if p.requires_grad}
    for name, param in _inner(loaded).named_parameters():
        plain = name.replace(".base_layer.", ".")
        if plain in base_params and plain not in trained_base:
            assert torch.equal(param.detach().float(), base_params[plain]), f"{plain} is not the base's"
        elif plain in base_params:
            assert not torch.equal(param.detach().float(), base_params[plain]), f"{plain} was not loaded trained"


# --------------------------------------------------------------------------------------------------------------------
# 2. Loss falls on a memorisable set
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full"])
def test_loss_falls_on_a_memorisable_set(method, tmp_path, tiny_model_dir):
    rows = [{"instruction": f"What is the capital of France? ({i})", "output": "The capital of France is Paris."}
            for i in range(8)]
    config = tiny_config(write_rows(tmp_path / "same.jsonl", rows), tiny_model_dir, method=method, max_steps=30,
                         batch_size=8, learning_rate=1e-2, scheduler="constant", warmup_ratio=0.0,
                         method_config={"r": 8, "dropout": 0.0} if method == "lora" else {})
    result = train(config, runs_root=tmp_path / "runs")
    losses = [row["loss"] for row in train_rows(result.run_dir)]
    assert len(losses) == 30
    assert losses[0] > 5.5  # a random model over ~390 tokens starts near ln(vocab) = 5.96
    assert max(losses[-5:]) < min(losses[:5])
    if method == "full":  # embeddings and head train: the answer is learnt by heart
        assert losses[-1] < 0.25 * losses[0], losses
    else:  # the frozen tiny head (|embedding| ~ 0.1) caps how confident LoRA can make the model
        assert losses[-1] < losses[0] - 0.4, losses


# --------------------------------------------------------------------------------------------------------------------
# 3. Save -> load gives the in-memory model's logits
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full", "freeze", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"])
def test_saved_run_reloads_to_the_trained_logits(method, trained, base_logits):
    captured = trained(method)
    expected = sample_logits(captured.model)
    first = sample_logits(load_trained_model(captured.result.run_dir, device="cpu", dtype="fp32").model)
    second = sample_logits(load_trained_model(captured.result.run_dir, device="cpu", dtype="fp32").model)
    assert first.shape == expected.shape
    assert torch.allclose(first, expected, atol=1e-5)
    assert torch.equal(first, second)
    # the comparison is meaningful: training moved the logits far beyond the tolerance
    trained_part = expected[:, -base_logits.shape[1]:]  # prompt tuning prepends virtual-token positions
    assert (trained_part - base_logits).abs().max() > 1e-3


def test_lora_adapter_applies_with_plain_peft(trained, tiny_model_dir):
    from peft import PeftModel

    captured = trained("lora")
    manual = PeftModel.from_pretrained(fresh_base(tiny_model_dir), str(Path(captured.result.run_dir) / "adapter"))
    assert torch.allclose(sample_logits(manual), sample_logits(captured.model), atol=1e-5)


def test_adalora_pruned_adapter_reloads_to_the_trained_logits(tmp_path, tiny_model_dir, data_file, base_logits):
    # 6 steps, re-allocation every step: the final step fixes the ranks (tfinal = 1) and the saved adapter is resized
    config = tiny_config(data_file, tiny_model_dir, method="adalora", max_steps=6, batch_size=2, learning_rate=1e-2,
                         method_config={"prune_every": 1, "dropout": 0.0})
    captured = train_captured(config, tmp_path / "runs")
    adapter_config = json.loads((Path(captured.result.run_dir) / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["rank_pattern"], "no ranks were pruned: the test would not exercise the resize"
    expected = sample_logits(captured.model)
    reloaded = sample_logits(load_trained_model(captured.result.run_dir, device="cpu", dtype="fp32").model)
    assert torch.allclose(reloaded, expected, atol=1e-5)
    assert (expected - base_logits).abs().max() > 1e-3


def test_adalora_without_a_final_phase_reloads_to_the_trained_logits(tmp_path, tiny_model_dir, data_file):
    config = tiny_config(data_file, tiny_model_dir, method="adalora", max_steps=7, batch_size=2, learning_rate=1e-2,
                         method_config={"prune_every": 4, "warmup_fraction": 0.0, "final_fraction": 0.0,
                                        "dropout": 0.0})
    captured = train_captured(config, tmp_path / "runs")
    expected = sample_logits(captured.model)
    reloaded = sample_logits(load_trained_model(captured.result.run_dir, device="cpu", dtype="fp32").model)
    assert torch.allclose(reloaded, expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# 4. Stop and resume
# --------------------------------------------------------------------------------------------------------------------

RESUME_STEPS = 8


def _resume_config(data: str, model_dir: Path, method: str = "lora", **extra) -> TrainingConfig:
    method_config = {"dropout": 0.0} if method in ("lora", "adalora") else {}
    values = {"method": method, "max_steps": RESUME_STEPS, "batch_size": 2, "learning_rate": 1e-2,
              "checkpoint_every": 100, "method_config": method_config, "warmup_ratio": 0.25, **extra}
    return tiny_config(data, model_dir, **values)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, data_file):
    """The reference: the resume config run start to end (8 steps = 2 epochs of 8 rows in batches of 2)."""
    result = train(_resume_config(data_file, tiny_model_dir), runs_root=tmp_path_factory.mktemp("reference"))
    return result, [row["loss"] for row in train_rows(result.run_dir)]


def _adapter(run_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "adapter" / "adapter_model.safetensors"))


def _stop_at(step_to_stop: int) -> tuple[threading.Event, object]:
    event = threading.Event()

    def on_step(step, total, loss, lr, rate, eta):
        if step == step_to_stop:
            event.set()

    return event, on_step


def test_stop_then_resume_repeats_the_uninterrupted_run(tmp_path, tiny_model_dir, data_file, uninterrupted):
    reference, reference_losses = uninterrupted
    assert reference.state == "completed" and len(reference_losses) == RESUME_STEPS
    event, on_step = _stop_at(3)
    stopped = train(_resume_config(data_file, tiny_model_dir), runs_root=tmp_path, on_step=on_step, stop_event=event)
    run_dir = Path(stopped.run_dir)
    assert (stopped.state, stopped.steps, stopped.total_steps) == ("stopped", 3, RESUME_STEPS)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "step-00000003"]
    assert (run_dir / "adapter").is_dir()  # a stopped run keeps usable weights

    steps_seen = []
    resumed = resume(run_dir, on_step=lambda step, *rest: steps_seen.append(step))
    assert (resumed.state, resumed.steps) == ("completed", RESUME_STEPS)
    assert steps_seen == list(range(4, RESUME_STEPS + 1))
    rows = train_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(1, RESUME_STEPS + 1))
    losses = [row["loss"] for row in rows]
    # same data order, optimizer moments, schedule and RNG: the same curve as the uninterrupted run
    assert torch.allclose(torch.tensor(losses), torch.tensor(reference_losses), atol=1e-5), (losses, reference_losses)
    assert resumed.train_loss == pytest.approx(reference_losses, abs=1e-5)
    assert losses[3:] != losses[:5]  # the curve moves: steps 4..8 are not a replay of 1..5
    final, expected = _adapter(str(run_dir)), _adapter(reference.run_dir)
    assert set(final) == set(expected)
    for name in expected:
        assert torch.allclose(final[name], expected[name], atol=1e-5), name
    with pytest.raises(ValueError, match="already completed"):
        resume(run_dir)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="^resume: .*not a run folder"):
        resume(tmp_path)


def test_resume_refuses_changed_data(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "train.jsonl", ROWS)
    event, on_step = _stop_at(2)
    stopped = train(_resume_config(data, tiny_model_dir), runs_root=tmp_path / "runs", on_step=on_step,
                    stop_event=event)
    write_rows(tmp_path / "train.jsonl", ROWS[::-1])
    with pytest.raises(ValueError, match="^resume: .*data files"):
        resume(stopped.run_dir)
    assert json.loads(Path(stopped.run_dir, "status.json").read_text())["state"] == "failed"


KILLED_RUN = """
import os, sys, time
sys.path.insert(0, {root!r})
from core.training import TrainingConfig, train
config = TrainingConfig(data={data!r}, base_model={model!r}, method="lora", method_config={{"dropout": 0.0}},
                        max_steps={steps}, batch_size=2, learning_rate=1e-2, checkpoint_every=2, warmup_ratio=0.25,
                        device="cpu", dtype="fp32", seed=7)
train(config, run_dir={run_dir!r}, on_step=lambda *args: time.sleep(0.25))
"""


def _logged_steps(run_dir: Path) -> list[int]:
    """Steps of the training rows written so far by another process (a line being written is left out)."""
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in row:
            steps.append(row["step"])
    return steps


def test_resume_after_sigkill_completes_each_step_once(tmp_path, tiny_model_dir, data_file, uninterrupted):
    run_dir = tmp_path / "killed"
    script = KILLED_RUN.format(root=str(ROOT), data=data_file, model=str(tiny_model_dir), steps=RESUME_STEPS,
                               run_dir=str(run_dir))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            checkpoints = list((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
            # kill once a checkpoint exists and a step after it was logged (so metrics hold rows to drop)
            if checkpoints and len(_logged_steps(run_dir)) % 2 == 1:
                break
            time.sleep(0.02)
        assert process.poll() is None, f"the training process ended early: {process.stderr.read().decode()[-2000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    logged = _logged_steps(run_dir)
    checkpoint = max(int(p.name.removeprefix("step-")) for p in (run_dir / "checkpoints").glob("step-*"))
    assert logged == list(range(1, len(logged) + 1))
    assert checkpoint < len(logged) < RESUME_STEPS  # rows after the checkpoint must be dropped and re-run
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # nobody recorded the kill

    result = resume(run_dir)
    assert (result.state, result.steps) == ("completed", RESUME_STEPS)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    rows = train_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(1, RESUME_STEPS + 1))
    _, reference_losses = uninterrupted
    assert [row["loss"] for row in rows] == pytest.approx(reference_losses, abs=1e-5)


def test_adalora_resumes_inside_its_final_phase(tmp_path, tiny_model_dir, data_file):
    # 10 steps: tfinal = 2, the ranks are fixed at global step 8 (the 9th step); stop after it
    config = _resume_config(data_file, tiny_model_dir, method="adalora", max_steps=10)
    config.method_config["prune_every"] = 1
    config = TrainingConfig(**config.to_dict())
    event, on_step = _stop_at(9)
    stopped = train(config, runs_root=tmp_path, on_step=on_step, stop_event=event)
    assert (stopped.state, stopped.steps) == ("stopped", 9)
    result = resume(stopped.run_dir)
    assert (result.state, result.steps) == ("completed", 10)


# --------------------------------------------------------------------------------------------------------------------
# 5. The loss covers answer tokens only
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return fresh_base(tiny_model_dir)


@pytest.fixture(scope="module")
def answer_batch(tiny_tokenizer):
    examples = [Example(instruction="What is the capital of France?", output="Paris."),
                Example(instruction="How many pod slots has the Orbit 3 garden?", input="The Orbit 3 garden.",
                        output="The Orbit 3 garden has twelve pod slots.")]
    encoded = [encode_for_training(tiny_tokenizer, ex) for ex in examples]
    return encoded, collate(encoded, tiny_tokenizer.pad_token_id, "cpu")


def _manual_answer_loss(model, batch) -> torch.Tensor:
    """Mean negative log-likelihood of each answer token given the tokens before it, from the full logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    total, count = 0.0, 0
    for row in range(batch["labels"].shape[0]):
        for pos in range(1, batch["labels"].shape[1]):
            target = int(batch["labels"][row, pos])
            if target != -100:
                total -= float(log_probs[row, pos - 1, target])
                count += 1
    return torch.tensor(total / count)


def test_answer_loss_equals_the_model_loss_over_answer_tokens(tiny_model, answer_batch):
    encoded, batch = answer_batch
    assert batch["input_ids"].shape[0] == 2 and (batch["attention_mask"] == 0).any(), "the batch should be padded"
    with torch.no_grad():
        fast = answer_loss(tiny_model, batch)
        standard = tiny_model(**batch).loss
    assert torch.allclose(fast, standard, atol=1e-5)
    assert torch.allclose(fast, _manual_answer_loss(tiny_model, batch), atol=1e-5)


def test_masked_and_padded_positions_carry_no_loss(tiny_model, answer_batch, tiny_tokenizer):
    encoded, batch = answer_batch
    with torch.no_grad():
        loss = answer_loss(tiny_model, batch)
        # padding: the padded batch's loss is the token-weighted mean of each example alone
        singles = [collate([e], tiny_tokenizer.pad_token_id, "cpu") for e in encoded]
        weights = [loss_tokens(s) for s in singles]
        alone = sum(float(answer_loss(tiny_model, s)) * w for s, w in zip(singles, weights, strict=True))
        assert loss == pytest.approx(alone / sum(weights), abs=1e-5)

        # the gradient reaching the logits of positions that predict a prompt (or pad) token is zero
        labels = batch["labels"]
        assert (labels != -100).any() and (labels == -100).any()
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.detach().requires_grad_(True)
    shifted = labels[:, 1:]
    loss_from_logits = torch.nn.functional.cross_entropy(logits[:, :-1][shifted != -100], shifted[shifted != -100])
    loss_from_logits.backward()
    predicts_prompt = torch.nn.functional.pad(shifted == -100, (0, 1), value=True)  # (B, L): position -> masked
    assert logits.grad[predicts_prompt].abs().max() == 0
    assert logits.grad[~predicts_prompt].abs().max() > 0


def test_answer_loss_depends_on_answer_labels_only(tiny_model, answer_batch):
    _, batch = answer_batch
    with torch.no_grad():
        loss = answer_loss(tiny_model, batch)
        # another token as the first answer label: the loss changes
        changed = {**batch, "labels": batch["labels"].clone()}
        col = int((batch["labels"][0] != -100).nonzero()[0])  # the first answer position of row 0
        changed["labels"][0, col] = (int(batch["labels"][0, col]) + 1) % tiny_model.config.vocab_size
        assert not torch.allclose(answer_loss(tiny_model, changed), loss)
        # unmasking one prompt label adds it to the mean: the loss changes, so the mask is what keeps prompts out
        unmasked = {**batch, "labels": batch["labels"].clone()}
        unmasked["labels"][0, col - 1] = batch["input_ids"][0, col - 1]
        assert not torch.allclose(answer_loss(tiny_model, unmasked), loss)
        assert torch.allclose(answer_loss(tiny_model, unmasked), tiny_model(**unmasked).loss, atol=1e-5)


def test_loss_tokens_counts_shifted_answer_labels(answer_batch):
    encoded, batch = answer_batch
    assert loss_tokens(batch) == sum(e.answer_tokens for e in encoded)  # prompts are never empty
    hand_made = {"labels": torch.tensor([[-100, 5, 6, -100], [7, -100, 8, 9]])}
    assert loss_tokens(hand_made) == 4  # the very first label predicts nothing
    assert loss_tokens({"labels": torch.full((2, 5), -100)}) == 0


def test_answer_loss_matches_on_a_lora_model_with_nonzero_update(tiny_model_dir, answer_batch):
    import peft

    model = peft.get_peft_model(fresh_base(tiny_model_dir), peft.LoraConfig(r=4, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    _, batch = answer_batch
    assert supports_answer_only_head(model)
    with torch.no_grad():
        assert torch.allclose(answer_loss(model, batch), model(**batch).loss, atol=1e-5)
        assert not torch.allclose(answer_loss(model, batch), answer_loss(fresh_base(tiny_model_dir), batch))


# --------------------------------------------------------------------------------------------------------------------
# 6. A bad training setting names its field
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("batch_size", 0), ("grad_accum", 0), ("scheduler", "x"), ("learning_rate", 2), ("learning_rate", 0),
    ("epochs", 0), ("max_steps", 0), ("data", ""), ("data", "   "), ("max_length", 8), ("warmup_ratio", 1.0),
    ("val_fraction", 1.0), ("dtype", "int8"), ("keep_checkpoints", 0), ("checkpoint_every", -1),
    ("method", "nope"),
])
def test_bad_training_setting_names_its_field(field, value):
    values = {"data": "train.jsonl", field: value}
    with pytest.raises(ValueError) as err:
        TrainingConfig(**values)
    assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_unknown_training_setting_is_named():
    with pytest.raises(ValueError, match="^batchsize: not a training setting"):
        TrainingConfig.from_dict({"data": "x.jsonl", "batchsize": 4})


# --------------------------------------------------------------------------------------------------------------------
# 7. Batches and presets
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by_length", [True, False])
def test_epoch_batches_are_deterministic_and_cover_every_example_once(group_by_length):
    lengths = [(i * 37) % 290 + 5 for i in range(203)]
    first = epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=group_by_length)
    assert first == epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=group_by_length)
    flat = [i for batch in first for i in batch]
    assert sorted(flat) == list(range(203))
    assert len(first) == math.ceil(203 / 8) and all(1 <= len(b) <= 8 for b in first)
    assert first != epoch_batches(lengths, 8, seed=1, epoch=1, group_by_length=group_by_length)
    assert first != epoch_batches(lengths, 8, seed=2, epoch=0, group_by_length=group_by_length)
    assert flat != sorted(flat)  # shuffled


def test_group_by_length_pads_less_than_random_batches():
    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(400)]

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    for seed in range(3):
        grouped = padding(epoch_batches(lengths, 8, seed, 0, group_by_length=True))
        shuffled = padding(epoch_batches(lengths, 8, seed, 0, group_by_length=False))
        assert grouped < 0.25 * shuffled, (grouped, shuffled)


def _preset_files() -> list[Path]:
    return sorted((ROOT / "assets" / "presets").glob("*.json"))


@pytest.mark.parametrize("preset", [p.stem for p in _preset_files()] or ["none"])
def test_presets_build_valid_configs(preset, tmp_path):
    if not _preset_files():
        pytest.skip("no presets in assets/presets yet")
    document = json.loads((ROOT / "assets" / "presets" / f"{preset}.json").read_text())
    config = TrainingConfig.from_preset(preset, data="train.jsonl", max_steps=5)
    assert (config.data, config.max_steps) == ("train.jsonl", 5)
    for key, value in document["config"].items():
        if key == "method_config":
            for setting, expected in value.items():
                assert config.method_config[setting] == expected, setting
        else:
            assert getattr(config, key) == value, key


def test_preset_overrides_merge_the_method_settings():
    if "quick-lora" not in training.list_presets():
        pytest.skip("no quick-lora preset yet")
    preset = json.loads((ROOT / "assets" / "presets" / "quick-lora.json").read_text())["config"]
    merged = TrainingConfig.from_preset("quick-lora", data="t.jsonl", method_config={"r": 4})
    assert merged.method_config["r"] == 4
    assert merged.method_config["alpha"] == preset["method_config"]["alpha"]
    other = TrainingConfig.from_preset("quick-lora", data="t.jsonl", method="ia3", method_config={"target_modules":
                                                                                                   "k_proj,down_proj"})
    assert other.method == "ia3" and other.method_config["target_modules"] == ["k_proj", "down_proj"]
    assert other.learning_rate == preset["learning_rate"]
    with pytest.raises(ValueError, match="^preset: unknown preset"):
        TrainingConfig.from_preset("no-such-preset", data="t.jsonl")


@pytest.mark.parametrize("method_config", [None, {}])
def test_preset_with_another_method_drops_the_preset_method_settings(method_config):
    if "quick-lora" not in training.list_presets():
        pytest.skip("no quick-lora preset yet")
    overrides = {} if method_config is None else {"method_config": method_config}
    config = TrainingConfig.from_preset("quick-lora", data="t.jsonl", method="ia3", **overrides)
    assert config.method == "ia3" and config.method_config == METHODS["ia3"].make_config({}).to_dict()


# --------------------------------------------------------------------------------------------------------------------
# 8. The run store
# --------------------------------------------------------------------------------------------------------------------


def test_run_store_create_list_delete(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert store.list() == []
    first = store.create({"method": "lora"})
    second = store.create({"method": "full"}, tmp_path / "runs" / "second")
    assert json.loads((first.path / "config.json").read_text()) == {"method": "lora"}
    assert first.state == "running" and first.status["step"] == 0
    os.utime(first.path / "config.json", (1_000_000, 1_000_000))  # older
    os.utime(second.path / "config.json", (2_000_000, 2_000_000))
    assert [run.run_id for run in store.list()] == ["second", first.run_id]
    os.utime(first.path / "config.json", (3_000_000, 3_000_000))
    assert [run.run_id for run in store.list()] == [first.run_id, "second"]

    with pytest.raises(ValueError, match="already holds a run"):
        store.create({"method": "lora"}, second.path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="^out: .*not empty"):
        store.create({"method": "lora"}, busy)
    assert (busy / "notes.txt").read_text() == "mine" and not (busy / "config.json").exists()

    with pytest.raises(ValueError, match="is running"):
        store.delete(first.run_id)
    assert first.path.is_dir()
    first.set_status("stopped", step=2)
    store.delete(first.run_id)
    assert not first.path.exists()
    assert [run.run_id for run in store.list()] == ["second"]
    assert not any(p.name.startswith(".deleting") for p in (tmp_path / "runs").iterdir())
    with pytest.raises(ValueError, match="not a run folder"):
        store.get(first.run_id)
    with pytest.raises(ValueError, match="^state: "):
        second.set_status("paused")


def test_run_truncate_metrics_keeps_rows_up_to_a_step(tmp_path):
    run = RunStore(tmp_path).create({"method": "lora"})
    for step in range(0, 6):
        run.append_metrics({"step": step, "loss": 1.0 / (step + 1)})
        if step % 2 == 0:
            run.append_metrics({"step": step, "val_loss": 2.0})
    run.truncate_metrics(3)
    assert [row["step"] for row in run.metrics()] == [0, 0, 1, 2, 2, 3]
    assert run.train_curve() == [(s, 1.0 / (s + 1)) for s in range(4)]
    assert run.val_curve() == [(0, 2.0), (2, 2.0)]
    run.truncate_metrics(0)
    assert run.metrics() == [{"step": 0, "loss": 1.0}, {"step": 0, "val_loss": 2.0}]


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.4}\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.4}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "status.json"
    write_atomic(target, "first")
    write_atomic(target, "second")
    assert target.read_text() == "second"
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "broken \udc80")  # a lone surrogate cannot be encoded: the write fails midway
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["status.json"]


# --------------------------------------------------------------------------------------------------------------------
# 9. Merge and export
# --------------------------------------------------------------------------------------------------------------------


def test_merged_lora_loads_with_transformers_and_keeps_the_logits(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    captured = trained("lora")
    out = merge_and_export(captured.result.run_dir, tmp_path / "merged")
    assert out == tmp_path / "merged"
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    expected = sample_logits(load_trained_model(captured.result.run_dir, device="cpu", dtype="fp32").model)
    assert torch.allclose(sample_logits(merged), expected, atol=1e-4)
    assert AutoTokenizer.from_pretrained(str(out)).chat_template
    with pytest.raises(ValueError, match="not empty"):
        merge_and_export(captured.result.run_dir, out)


def test_prompt_tuning_cannot_be_merged(trained, tmp_path):
    with pytest.raises(ValueError, match="^merge: Prompt tuning learns virtual tokens .* nothing to fold into"):
        merge_and_export(trained("prompt_tuning").result.run_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
