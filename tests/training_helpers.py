"""Helpers for the training tests: small data files, tiny configs, and a recorder of the model a run trains.

``train_captured`` runs core.training.train while recording (a) every parameter right after the method's builder made
the model (before the first optimizer step) and (b) the in-memory model that the run saved at the end. The tests
compare those with what is on disk, independently of how core.training saves and loads.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from core import training
from core.training import objectives

ROWS = [
    {"instruction": "What is the capital of France?", "output": "The capital of France is Paris."},
    {"instruction": "How many pod slots has the Orbit 3 garden?", "output": "The Orbit 3 garden has twelve pod slots."},
    {"instruction": "Summarize the customer's message in one sentence.", "input": "The tank holds 5.5 litres.",
     "output": "The tank is 5.5 litres."},
    {"instruction": "What is the tank size?", "output": "A 5.5 litre tank."},
    {"instruction": "Answer the question.", "input": "Capital of France?", "output": "Paris."},
    {"instruction": "Give the instruction words.", "output": "user assistant system instruction input output"},
    {"instruction": "How many slots?", "output": "Twelve."},
    {"instruction": "Name the garden.", "output": "The Orbit 3 garden."},
]
for _i, _row in enumerate(ROWS):  # a task per row, for multi-task prompt tuning (other methods ignore it)
    _row["task"] = ("qa", "summarization")[_i % 2]

# Preference pairs (prompt, chosen, rejected) a tiny model can memorise: the DPO tests
PREFERENCE_PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "London, I think."},
    {"prompt": "How many pod slots has the Orbit 3 garden?", "chosen": "Twelve pod slots.",
     "rejected": "Ask someone else."},
    {"prompt": "What is the tank size?", "chosen": "A 5.5 litre tank.", "rejected": "Nine litres, probably."},
    {"prompt": "Name the garden.", "chosen": "The Orbit 3 garden.", "rejected": "Whatever."},
    {"prompt": "Summarize the customer's message in one sentence.\n\nThe tank holds 5.5 litres.",
     "chosen": "The tank is 5.5 litres.", "rejected": "The customer is wrong about everything."},
    {"prompt": "Give the instruction words.", "chosen": "user assistant system instruction",
     "rejected": "input output answer question"},
]

# Prompt-learning methods get short soft prompts; freeze trains one of the two layers.
SMALL_METHOD_CONFIG: dict[str, dict[str, Any]] = {
    "prompt_tuning": {"num_virtual_tokens": 4},
    "prefix_tuning": {"num_virtual_tokens": 4},
    "p_tuning": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "freeze": {"trainable_layers": 1},
    "multitask_prompt_tuning": {"num_virtual_tokens": 4},
}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def tiny_config(data: str, base_model: Path | str, **overrides: Any) -> training.TrainingConfig:
    """A few fp32 CPU steps on the tiny model; ``overrides`` replace any field."""
    values: dict[str, Any] = {
        "data": data, "base_model": str(base_model), "max_steps": 3, "batch_size": 4, "device": "cpu",
        "dtype": "fp32", "seed": 7,
    }
    values.update(overrides)
    return training.TrainingConfig(**values)


@dataclass
class Captured:
    result: training.TrainResult
    initial: dict[str, torch.Tensor] = field(default_factory=dict)  # every parameter before training (clones)
    initial_trainable: set[str] = field(default_factory=set)
    model: Any = None  # the in-memory model the run saved


@contextmanager
def capturing():
    """Patch core.training so that the next run records its initial parameters and its final in-memory model."""
    record: dict[str, Any] = {}
    original_load = objectives.load_training_model
    original_save = objectives.save_trained

    def load_spy(config, total_steps):
        model, loaded, compute = original_load(config, total_steps)
        record["initial"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        record["initial_trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return model, loaded, compute

    def save_spy(run, model, tokenizer, save_format, state=None):
        record["model"] = model
        return original_save(run, model, tokenizer, save_format, state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objectives, "load_training_model", load_spy)
        mp.setattr(objectives, "save_trained", save_spy)
        yield record


def train_captured(config: training.TrainingConfig, runs_root: Path, **kwargs: Any) -> Captured:
    with capturing() as record:
        result = training.train(config, runs_root=runs_root, **kwargs)
    return Captured(result, record["initial"], record["initial_trainable"], record["model"])


def base_name(name: str) -> str:
    """A parameter name inside a (PEFT-wrapped) base model as the plain transformers model names it."""
    return name.replace(".base_layer.", ".")


def fresh_base(model_dir: Path | str) -> Any:
    """The saved tiny model, loaded with transformers alone, fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


SAMPLE_IDS = torch.tensor([[1, 5, 9, 30, 40, 50, 7, 8, 120, 33], [3, 60, 61, 62, 63, 64, 65, 66, 2, 2]])
SAMPLE_MASK = torch.tensor([[1] * 10, [1] * 8 + [0] * 2])


def sample_logits(model: Any) -> torch.Tensor:
    """Logits of a fixed two-row batch (the second right-padded), in eval mode without gradients."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=SAMPLE_IDS, attention_mask=SAMPLE_MASK).logits.float()
    model.train(was_training)
    return logits


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def train_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step training rows of a run's metrics.jsonl, read without core.runs."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [row for row in map(json.loads, lines) if "loss" in row]
