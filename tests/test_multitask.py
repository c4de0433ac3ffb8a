"""Multi-task prompt tuning on the tiny Llama: task ids from the rows' ``task`` reach forward (a row gets its own
task's prompt in a mixed batch), the run stores the task map, the two stages train what they should, generation
routes each row's task id, and rows without a task fail with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import ROWS, tiny_config, write_rows

from core import training
from core.errors import AdapterError, DataError
from core.inference.generation import GenerationConfig
from core.inference.host import AdapterHost
from core.models import load_causal_lm
from core.training import collate
from core.training.batches import prepare_data

TASKS = ("qa", "summarization", "classification")
MPT = {"num_virtual_tokens": 4}


def _rows() -> list[dict]:
    return [dict(row, task=TASKS[i % 3]) for i, row in enumerate(ROWS * 3)]


@pytest.fixture(scope="module")
def mpt_data(tmp_path_factory) -> str:
    return write_rows(tmp_path_factory.mktemp("mpt") / "train.jsonl", _rows())


@pytest.fixture(scope="module")
def mpt_run(tmp_path_factory, tiny_model_dir, mpt_data):
    """A 4-step run: source stage for steps 1-2, target stage for steps 3-4 (source_fraction 0.5)."""
    config = tiny_config(mpt_data, tiny_model_dir, method="multitask_prompt_tuning", method_config=MPT, max_steps=4,
                         learning_rate=1e-2, val_fraction=0.0, checkpoint_every=2, keep_checkpoints=4)
    seen: list[torch.Tensor] = []
    steps: list[dict[str, torch.Tensor]] = []

    original = training.objectives.TrainingSession.loss

    def spy(self, batch):  # what forward receives, and the prompt encoder's weights at each step
        seen.append(batch["task_ids"].clone())
        encoder = self.model.prompt_encoder[self.model.active_adapter]
        steps.append({n: p.detach().clone() for n, p in encoder.named_parameters()})
        return original(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.objectives.TrainingSession, "loss", spy)
        result = training.train(config, runs_root=tmp_path_factory.mktemp("runs"))
    return result, seen, steps


def test_task_ids_reach_forward_and_the_run_stores_the_map(mpt_run):
    result, seen, _ = mpt_run
    assert result.state == "completed" and len(result.train_loss) == 4
    config = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert config["method_config"]["tasks"] == sorted(TASKS)  # auto: sorted task names, id = position
    assert all(ids.dtype == torch.long and ids.ndim == 1 for ids in seen)
    assert {int(i) for ids in seen for i in ids} == {0, 1, 2}
    adapter = json.loads((Path(result.run_dir) / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "MULTITASK_PROMPT_TUNING" and adapter["num_tasks"] == 3


def test_source_stage_trains_the_shared_prompt_then_only_task_factors_move(mpt_run):
    _, _, steps = mpt_run  # weights before steps 1..4 (one micro-batch per step)
    shared = [s["embedding.weight"] for s in steps]
    cols = [s["prefix_task_cols"] for s in steps]
    assert not torch.equal(shared[0], shared[1]) and not torch.equal(shared[1], shared[2])  # source: steps 1, 2
    assert torch.equal(shared[2], shared[3])  # target stage: the shared prompt is fixed
    assert not torch.equal(cols[2], cols[3])  # ... while the task factors go on


def test_rows_of_different_tasks_in_one_batch_get_their_own_prompt(tiny_model_dir, tiny_tokenizer):
    from core.methods import BuildContext, get_method

    method = get_method("multitask_prompt_tuning")
    settings = method.make_config({**MPT, "tasks": list(TASKS), "init": "random"})
    model = method.builder(build_tiny(tiny_model_dir), settings, BuildContext(tiny_tokenizer, 10)).eval()
    ids = torch.tensor([[5, 9, 30, 40]] * 3)
    with torch.no_grad():
        mixed = model(input_ids=ids, task_ids=torch.tensor([0, 1, 2])).logits
        alone = [model(input_ids=ids[:1], task_ids=torch.tensor([t])).logits[0] for t in range(3)]
    for t in range(3):
        assert torch.allclose(mixed[t], alone[t], atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the task ids select different prompts


def build_tiny(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def test_collate_adds_task_ids_only_when_rows_carry_them():
    from core.data.prompts import EncodedExample

    plain = [EncodedExample([1, 2], [-100, 2]), EncodedExample([3], [3])]
    assert "task_ids" not in collate(plain, 0, "cpu")
    routed = [EncodedExample([1, 2], [-100, 2], task_id=2), EncodedExample([3], [3], task_id=0)]
    assert collate(routed, 0, "cpu")["task_ids"].tolist() == [2, 0]


def test_generation_routes_each_rows_task_alone_or_batched(mpt_run, tiny_model_dir, tiny_tokenizer, monkeypatch):
    result, _, _ = mpt_run
    host = AdapterHost(load_causal_lm(str(tiny_model_dir), device="cpu", dtype="fp32"))
    key = host.add(result.run_dir).key
    assert host.adapters[key].tasks == tuple(sorted(TASKS)) and not host.adapters[key].mixable
    prompt = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                tokenize=False, add_generation_prompt=True)
    model = host._separate_model(key).model
    calls: list[list[int]] = []  # the task ids each prefill's virtual tokens were made for
    get_prompt = model.get_prompt

    def recording(batch_size, task_ids=None, **kwargs):
        calls.append(task_ids.tolist())
        return get_prompt(batch_size, task_ids=task_ids, **kwargs)

    monkeypatch.setattr(model, "get_prompt", recording)
    config = GenerationConfig(max_new_tokens=6)
    tasks = ["summarization", "qa", "classification", "qa"]
    batched = host.generate([prompt] * 4, [key] * 4, config, tasks=tasks)
    alone = [host.generate([prompt], [key], config, tasks=[task])[0] for task in tasks]
    assert calls[0] == [2, 1, 0, 1]  # one batch of rows of three tasks, each with its own id
    assert calls[1:] == [[2], [1], [0], [1]]
    assert [g.text for g in batched] == [g.text for g in alone] and batched[0].batch_size == 4
    # the task id matters: the prompts differ per task, so the next-token logits do
    ids = tiny_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].repeat(3, 1)
    with torch.no_grad():
        logits = model(input_ids=ids, task_ids=torch.tensor([0, 1, 2])).logits[:, -1]
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(logits[1], logits[2])


def test_generation_without_a_task_fails_with_one_line(mpt_run, tiny_model_dir, tiny_tokenizer):
    host = AdapterHost(load_causal_lm(str(tiny_model_dir), device="cpu", dtype="fp32"))
    key = host.add(mpt_run[0].run_dir).key
    with pytest.raises(AdapterError, match=r"routes each row by its task \(classification, qa, summarization\)"):
        host.generate(["hi"], [key], GenerationConfig(max_new_tokens=2))
    with pytest.raises(AdapterError, match="task 'poetry'"):
        host.generate(["hi"], [key], GenerationConfig(max_new_tokens=2), tasks=["poetry"])


def test_rows_without_a_task_fail_naming_the_file(tmp_path, tiny_model_dir):
    rows = _rows()
    del rows[5]["task"]
    data = write_rows(tmp_path / "mixed.jsonl", rows)
    config = tiny_config(data, tiny_model_dir, method="multitask_prompt_tuning", method_config=MPT)
    with pytest.raises(DataError, match=r"mixed\.jsonl.*has no task") as err:
        prepare_data(config, lambda: pytest.fail("the tokenizer loads after the data is checked"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="has no task"):
        training.train(config, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder


def test_named_tasks_refuse_a_task_they_do_not_name(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "train.jsonl", _rows())
    config = tiny_config(data, tiny_model_dir, method="multitask_prompt_tuning",
                         method_config={**MPT, "tasks": "qa,summarization"})
    with pytest.raises(DataError, match="task 'classification' is not one of the run's tasks"):
        prepare_data(config, lambda: None)


def test_cli_refuses_rows_without_a_task_with_exit_2(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    data = write_rows(tmp_path / "plain.jsonl", [{k: v for k, v in row.items() if k != "task"} for row in ROWS])
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--data", data, "--method",
                           "multitask_prompt_tuning", "--model", str(tiny_model_dir), "--max-steps", "1",
                           "--out", str(tmp_path / "run")], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "plain.jsonl" in last and "has no task" in last
