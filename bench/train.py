"""LoRA training on the bundled SmolLM2-135M: our loop vs TRL's SFTTrainer (default SFTConfig) vs the tutorial recipe.

    python -m bench.train [--smoke] [--steps N] [--batch-size B] [--contenders ours,trl,hf,llamafactory]
                          [--llamafactory-cli PATH] [--result NAME]

One process, one machine, the same base model (the bundled SmolLM2-135M-Instruct via core.models), data
(assets/demo/train.jsonl), LoRA settings (r=8, alpha=16, dropout=0.05 on q,k,v,o,gate,up,down), learning rate, seed,
number of optimizer steps and batch size for three contenders, and a fourth when its CLI is found:

- ``ours``: core.training.train with its defaults (answer-only loss and LM head, length-grouped batches, cosine
  schedule with 5% warmup, bf16 autocast where the CPU has bf16 hardware) plus the settings above; ``val_fraction=0``
  so it trains on the whole train file like the others.
- ``trl``: trl.SFTTrainer on a conversational prompt-completion dataset (so it also trains on the answer tokens
  only), model given as the cached folder path (TRL loads it, fp32 weights), a default SFTConfig with only
  output_dir, max_steps, learning_rate, per_device_train_batch_size, seed, logging_steps=1 (so the last logged
  train loss is the last step's), report_to="none", save_strategy="no" and use_cpu=True (without a GPU,
  TrainingArguments refuses TRL's default bf16=True unless use_cpu is set) changed; + peft.LoraConfig. Its own
  defaults stay: bf16 autocast, gradient checkpointing, linear schedule without warmup, max_length 1024, fused
  chunked log-prob head over every position, entropy/accuracy metrics per step. The result file lists them.
- ``hf``: transformers.Trainer + DataCollatorForLanguageModeling(mlm=False) over the chat-template-formatted text,
  the recipe most tutorials use: loss on every token (and, since pad == eos on SmolLM2, no loss on <|im_end|>),
  fp32, TrainingArguments defaults with the same changes as for TRL.
- ``llamafactory``: LLaMA-Factory's ``llamafactory-cli train cfg.yaml`` as a subprocess, from its own virtual
  environment (it pins its own transformers/peft; set-up in bench/README.md), found by ``--llamafactory-cli``, else
  $LLAMAFACTORY_CLI, else the PATH; left out with a note when not found. The same rows as alpaca json (user turn =
  instruction), template ``smollm2`` (the same prompt text as SmolLM2's chat template), cutoff_len = max_length, the
  settings above plus ours' schedule (cosine, int(5% of steps) warmup) and ours' compute dtype (bf16 autocast where
  the CPU has bf16); its own defaults otherwise (gradient checkpointing, answer-only loss). Per-step time and
  non-padding tokens come from its trainer_state.json (train_runtime and num_input_tokens_seen with
  include_num_input_tokens_seen=non_padding); its startup (interpreter, imports, model load, dataset preparation,
  save) is ``setup_s`` and the whole subprocess ``wall_s_with_startup``; peak RSS is the subprocess tree's, sampled.

Tokens/s: non-padding tokens (attention_mask sum) that went through forward + backward, over the training phase.
Ours reports it itself (its per-step time: collate, forward, backward, clip, optimizer, metrics write). TRL and hf:
a forward pre-hook sums attention_mask of every training micro-batch; time = from the first on_step_begin to the last
on_step_end (so each step after the first includes its batch fetch and the previous step's logging, as ours does).
Model load, dataset preparation and adapter saving are excluded for all.

Validation loss: one function (``answer_val_loss``) for all three: each saved adapter is loaded onto a fresh fp32
copy of the base, and the mean cross-entropy over answer tokens only (prompt masked, core.data.encode_for_training)
of the first ``--val-rows`` rows of assets/demo/validation.jsonl is computed in fp32, eval mode, no autocast.

FLOPs per trained token (LoRA; frozen weights get no weight gradients):

    F = 4 * (N_body + N_head) + 6 * N_lora + 12 * n_layers * d_attn * T_eff

with N_body the decoder's linear weights, N_head = vocab * d_model (the LM head), N_lora the adapter weights
(forward 2N, activation gradients 2N, plus weight gradients 2N for the adapters only), d_attn = heads * head_dim and
T_eff = sum(T^2) / sum(T) over the training examples (QK^T and AV: 4 * d_attn * T per token and layer forward,
twice that backward, counted without the causal half). This counts the LM head on every position, which TRL and hf
compute but ours skips on prompt tokens (``answer_only_head``): so ``mfu`` credits ours with head work it never did.
``mfu_required`` counts the head on answer tokens only (4 * N_head * answer share): the work the answer-only loss
needs, the honest figure for ours. Gradient-checkpointing recompute (TRL) is not counted (model FLOPs, not hardware
FLOPs). Achieved FLOP/s = tokens/s * F; MFU = that over the fp32 matmul FLOP/s measured in this process
(2048x2048 torch.matmul, best of several, at the training thread count), and over the bf16 figure too since ours
and TRL run under bf16 autocast on a CPU with bf16 hardware.

Rows/s: optimizer steps x batch size over the training seconds (every step is a full batch: the training file has
more rows than steps x batch).

Each contender trains in a fresh process (``python -m bench.train --child``), one after another: it starts with an
empty allocator, and its peak RSS (the process's, sampled while it trains) is its own, not what an earlier
contender left behind. Validation losses and the matmul peaks are measured in the parent.

Targets (issue): ours >= 3x TRL-default tokens/s at equal or lower validation loss (within ``VAL_TOLERANCE``);
ours >= 3x LLaMA-Factory tokens/s where measured (``ratio_vs_llamafactory``); ours MFU >= 50% of the fp32 matmul
peak. ``--result NAME`` writes bench/results/NAME.json instead of train.json (a partial run beside the full one).
"""

from __future__ import annotations

import os

# never download anything: every model and dataset here is local
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import cpu_shares, print_table, run_child, write_result  # noqa: E402
from core.data import Example, build_messages, demo_path, encode_for_training, load_examples  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VAL_TOLERANCE = 0.02
"""Nats: ours' validation loss counts as 'equal' to TRL's when at most this much higher."""
SPEEDUP_TARGET = 3.0
MFU_TARGET = 0.5


@dataclass(frozen=True)
class Settings:
    steps: int
    batch_size: int
    lr: float
    r: int
    alpha: int
    dropout: float
    seed: int
    max_length: int
    val_rows: int
    matmul_n: int
    matmul_repeats: int
    group_by_length: bool = False  # ours only: random batches, as TRL and hf batch (TrainingConfig's default)
    device: str | None = None  # None: as on a CPU machine (TRL and hf told use_cpu); "cuda": every contender on it


@dataclass
class Outcome:
    """One contender's training phase; ``adapter`` is the saved PEFT adapter folder."""

    name: str
    per_step: list[tuple[float, int]]  # (seconds, non-padding tokens) of each optimizer step
    final_train_loss: float | None
    train_loss_definition: str
    peak_rss_bytes: int
    setup_s: float
    adapter: Path
    compute_dtype: str
    extra: dict[str, Any]
    load_average: tuple[float, float]  # 1-min load average before and after the training phase

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.per_step)

    @property
    def train_s(self) -> float:
        return sum(s for s, _ in self.per_step)

    @property
    def steps(self) -> int:
        return len(self.per_step)


# --------------------------------------------------------------------------------------------------------------------
# Shared measurements
# --------------------------------------------------------------------------------------------------------------------


def matmul_flops(dtype: Any, n: int, samples: int, min_sample_s: float = 0.25,
                 device: str = "cpu") -> dict[str, float]:
    """FLOP/s of (n, n) @ (n, n) torch.matmul in ``dtype`` at the current thread count (on ``device``; CUDA timings
    synchronized): best and median over ``samples`` timed blocks of back-to-back calls (each block at least
    ``min_sample_s``)."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    a = torch.randn(n, n).to(device=device, dtype=dtype)
    b = torch.randn(n, n).to(device=device, dtype=dtype)
    sync()
    start = time.perf_counter()
    for _ in range(2):  # warm-up, and a first estimate of one call
        torch.matmul(a, b)
    sync()
    per_call = (time.perf_counter() - start) / 2
    calls = max(1, round(min_sample_s / max(per_call, 1e-6)))
    rates = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        sync()
        rates.append(2 * n**3 * calls / (time.perf_counter() - start))
    rates.sort()
    return {"best": rates[-1], "median": rates[len(rates) // 2], "calls_per_sample": calls}


def answer_val_loss(model: Any, tokenizer: Any, examples: list[Example], max_length: int,
                    batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over answer tokens (prompt masked), token-weighted over all ``examples``.

    fp32, eval mode, no autocast; the LM head on every position (plain ``model(...).logits``), so it does not depend
    on any contender's tricks. Shapes: logits (B, L, V) -> shifted (B, L-1, V) vs labels (B, L-1).
    """
    import torch
    import torch.nn.functional as F

    from core.training import collate

    encoded = [encode_for_training(tokenizer, ex, None, max_length) for ex in examples]
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], tokenizer.pad_token_id, "cpu")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            targets = batch["labels"][:, 1:]
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return total / count


def _fresh_base() -> Any:
    from core.models import load_causal_lm

    return load_causal_lm(device="cpu", dtype="fp32")


def flop_terms(model: Any, lengths: list[int], answer_share: float, lora_params: int) -> dict[str, Any]:
    """The per-token FLOP count of the docstring, from the loaded base ``model`` and the training lengths."""
    import torch

    head = model.get_output_embeddings()
    n_head = head.in_features * head.out_features
    n_linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    n_body = n_linear - n_head
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * head_dim
    t_eff = sum(t * t for t in lengths) / sum(lengths)
    attention = 12 * cfg.num_hidden_layers * d_attn * t_eff
    full = 4 * (n_body + n_head) + 6 * lora_params + attention
    required = 4 * n_body + 4 * n_head * answer_share + 6 * lora_params + attention
    return {"formula": "4*(N_body+N_head) + 6*N_lora + 12*n_layers*d_attn*T_eff",
            "formula_required": "4*N_body + 4*N_head*answer_share + 6*N_lora + 12*n_layers*d_attn*T_eff",
            "N_body": n_body, "N_head": n_head, "N_lora": lora_params, "n_layers": cfg.num_hidden_layers,
            "d_attn": d_attn, "T_eff": round(t_eff, 2), "answer_share": round(answer_share, 4),
            "flops_per_token": round(full), "flops_per_token_required": round(required)}


class _StepTimer:
    """A transformers TrainerCallback (duck-typed): step times from the first on_step_begin, each step ending at its
    on_step_end, and the tokens the forward pre-hook counted in each step."""

    def __init__(self, counter: list[int]) -> None:
        self.counter = counter
        self.marks: list[tuple[float, int]] = []  # (time, tokens so far) at the first begin, then at each step end

    def __getattr__(self, name: str) -> Any:  # every other callback event: a no-op
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.marks:
            self.marks.append((time.perf_counter(), self.counter[0]))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks.append((time.perf_counter(), self.counter[0]))

    def per_step(self) -> list[tuple[float, int]]:
        """(seconds, tokens) of each optimizer step."""
        return [(t1 - t0, n1 - n0) for (t0, n0), (t1, n1) in zip(self.marks, self.marks[1:], strict=False)]


def _count_tokens(model: Any) -> tuple[list[int], Any]:
    """A forward pre-hook on ``model`` summing attention_mask of every training-mode call; (counter, handle)."""
    counter = [0]

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if module.training and mask is not None:
            counter[0] += int(mask.sum())

    return counter, model.register_forward_pre_hook(hook, with_kwargs=True)


def _last_logged_loss(log_history: list[dict[str, Any]]) -> float | None:
    losses = [row["loss"] for row in log_history if "loss" in row]
    return float(losses[-1]) if losses else None


def _trainer_args_common(s: Settings, out: Path) -> dict[str, Any]:
    return {"output_dir": str(out), "max_steps": s.steps, "learning_rate": s.lr,
            "per_device_train_batch_size": s.batch_size, "seed": s.seed, "logging_steps": 1, "report_to": "none",
            "save_strategy": "no"}


def _peft_config(s: Settings) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=TARGETS,
                      task_type="CAUSAL_LM")


# --------------------------------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------------------------------


def run_ours(s: Settings, train_file: Path, work: Path) -> Outcome:
    from core.runs import Run
    from core.training import TrainingConfig, train

    config = TrainingConfig(data=str(train_file), val_fraction=0.0, method="lora",
                            method_config={"r": s.r, "alpha": s.alpha, "dropout": s.dropout,
                                           "target_modules": TARGETS},
                            max_steps=s.steps, batch_size=s.batch_size, learning_rate=s.lr, seed=s.seed,
                            max_length=s.max_length, group_by_length=s.group_by_length, device=s.device)
    load_before = os.getloadavg()[0]
    result = train(config, runs_root=work / "runs")
    rows = [row for row in Run(Path(result.run_dir)).metrics() if "loss" in row]
    elapsed = [0.0] + [float(row["elapsed_s"]) for row in rows]
    seen = [0.0] + [row["tokens_per_s"] * row["elapsed_s"] for row in rows]  # its running tokens_seen / train_s
    per_step = [(elapsed[i] - elapsed[i - 1], round(seen[i] - seen[i - 1])) for i in range(1, len(elapsed))]
    return Outcome("ours", per_step, result.final_train_loss, "last step, answer tokens", result.peak_mem_bytes,
                   round(result.wall_s - elapsed[-1], 2), Path(result.run_dir) / "adapter", result.dtype,
                   {"trainable_params": result.trainable_params, "tokens_per_s_reported": result.tokens_per_s,
                    "train_call_wall_s": result.wall_s},
                   (load_before, os.getloadavg()[0]))


def _train_timed(trainer: Any, timer: _StepTimer, adapter: Path,
                 device: str | None = None) -> tuple[int, tuple[float, float]]:
    """Train a transformers/TRL trainer with its steps timed and its tokens counted; save its adapter. Returns the
    peak RSS in bytes (CUDA: peak allocated GPU memory) and the 1-minute load average before and after."""
    from core.training.memory import PeakMemory

    timer.counter, handle = _count_tokens(trainer.model)
    load_before = os.getloadavg()[0]
    with PeakMemory(device or "cpu") as memory:
        trainer.train()
    handle.remove()
    trainer.model.save_pretrained(str(adapter))
    return memory.peak, (load_before, os.getloadavg()[0])


def run_trl(s: Settings, examples: list[Example], model_dir: str, work: Path) -> Outcome:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    rows = [{"prompt": build_messages(ex), "completion": [{"role": "assistant", "content": ex.output}]}
            for ex in examples]
    # use_cpu: TRL's default bf16=True is refused on a machine without a GPU unless use_cpu is set
    args = SFTConfig(**_trainer_args_common(s, work / "trl"), use_cpu=s.device in (None, "cpu"))
    timer = _StepTimer([0])
    trainer = SFTTrainer(model=model_dir, args=args, train_dataset=Dataset.from_list(rows),
                         peft_config=_peft_config(s), callbacks=[timer])
    setup_s = time.perf_counter() - start
    adapter = work / "trl-adapter"
    peak, load = _train_timed(trainer, timer, adapter, s.device)
    in_effect = {k: getattr(args, k) for k in ("bf16", "gradient_checkpointing", "lr_scheduler_type", "warmup_steps",
                                                "weight_decay", "max_grad_norm", "optim", "max_length", "packing",
                                                "completion_only_loss", "assistant_only_loss", "loss_type")}
    in_effect["completion_only_loss_resolved"] = trainer.completion_only_loss
    in_effect["lr_scheduler_type"] = str(in_effect["lr_scheduler_type"])
    in_effect["optim"] = str(in_effect["optim"])
    outcome = Outcome("trl", timer.per_step(), _last_logged_loss(trainer.state.log_history),
                      "last step, answer tokens", peak, round(setup_s, 2), adapter,
                      "bfloat16" if args.bf16 else "float32", {"defaults_in_effect": in_effect}, load)
    del trainer
    gc.collect()
    return outcome


def run_hf(s: Settings, examples: list[Example], model_dir: str, work: Path) -> Outcome:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template(build_messages(ex, with_answer=True), tokenize=False) for ex in examples]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=s.max_length), batched=True,
        remove_columns=["text"])
    set_seed(s.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), _peft_config(s))
    args = TrainingArguments(**_trainer_args_common(s, work / "hf"), **({"use_cpu": s.device == "cpu"} if s.device
                                                                       else {}))
    timer = _StepTimer([0])
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[timer])
    setup_s = time.perf_counter() - start
    adapter = work / "hf-adapter"
    peak, load = _train_timed(trainer, timer, adapter, s.device)
    outcome = Outcome("hf", timer.per_step(), _last_logged_loss(trainer.state.log_history),
                      "last step, all non-pad tokens", peak, round(setup_s, 2), adapter,
                      "bfloat16" if args.bf16 else "float32",
                      {"lr_scheduler_type": str(args.lr_scheduler_type), "gradient_checkpointing":
                       args.gradient_checkpointing}, load)
    del trainer, model
    gc.collect()
    return outcome


# --------------------------------------------------------------------------------------------------------------------
# LLaMA-Factory (its CLI, in its own virtual environment: bench/README.md)
# --------------------------------------------------------------------------------------------------------------------

LLAMAFACTORY_ENV = "LLAMAFACTORY_CLI"
LLAMAFACTORY_TEMPLATE = "smollm2"
"""LLaMA-Factory's template for SmolLM2: ChatML, answer + ``<|im_end|>\\n``, prompt masked, as the tokenizer's own
chat template that the other contenders use. Its default system prompt ends with a full stop that the tokenizer's
does not, so ``default_system`` is set to the tokenizer's (``chat_template_default_system``): the token ids are then
the same as ``encode_for_training``'s."""


def find_llamafactory_cli(option: str | None) -> tuple[str | None, str]:
    """Where ``llamafactory-cli`` is: ``--llamafactory-cli`` PATH, else $LLAMAFACTORY_CLI, else the PATH.

    Returns (path, how it was found) or (None, why not). Raises ValueError naming the option or variable when one was
    given but is not an executable file."""
    for source, value in (("--llamafactory-cli", option), (LLAMAFACTORY_ENV, os.environ.get(LLAMAFACTORY_ENV))):
        if value:
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise ValueError(f"{source}: not an executable file: {value}")
            return str(path), source
    found = shutil.which("llamafactory-cli")
    if found:
        return found, "PATH"
    return None, ("llamafactory-cli not found (--llamafactory-cli PATH, $LLAMAFACTORY_CLI or the PATH); its set-up "
                  "in its own virtual environment: bench/README.md")


def chat_template_default_system(tokenizer: Any) -> str | None:
    """The system prompt a ChatML chat template inserts when the messages have none (SmolLM2's), else None."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head, end = "<|im_start|>system\n", "<|im_end|>"
    return text[len(head) : text.index(end)] if text.startswith(head) and end in text else None


def _llamafactory_versions(cli: str) -> dict[str, str] | None:
    """Package versions in the CLI's own environment (from its script's python), or None when that is not plain."""
    import subprocess

    first = Path(cli).read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
    python = first[2:].strip() if first.startswith("#!") else ""
    if not python or " " in python or not Path(python).is_file():
        return None
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('llamafactory', 'torch', 'transformers', 'peft', 'accelerate', 'datasets')}))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else None


def llamafactory_config(s: Settings, model_dir: str, data_dir: Path, out: Path, bf16: bool,
                        default_system: str | None = None) -> dict[str, Any]:
    """The `llamafactory-cli train` settings: the same model, LoRA, steps, batch, lr, seed and compute dtype as ours;
    its defaults otherwise (gradient checkpointing, SDPA, answer-only loss, pad to a multiple of 8)."""
    system = {"default_system": default_system} if default_system is not None else {}
    return {"model_name_or_path": model_dir, "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "lora_rank": s.r, "lora_alpha": s.alpha, "lora_dropout": s.dropout, "lora_target": ",".join(TARGETS),
            "dataset": "bench", "dataset_dir": str(data_dir), "template": LLAMAFACTORY_TEMPLATE,
            **system, "cutoff_len": s.max_length, "overwrite_cache": True,
            "output_dir": str(out), "overwrite_output_dir": True, "logging_steps": 1, "save_strategy": "no",
            "report_to": "none", "per_device_train_batch_size": s.batch_size, "gradient_accumulation_steps": 1,
            "learning_rate": s.lr, "max_steps": s.steps,
            # ours' schedule (TrainingConfig: cosine, warmup_ratio 0.05 -> int(steps * 0.05) warmup steps)
            "lr_scheduler_type": "cosine", "warmup_steps": int(s.steps * 0.05),
            "seed": s.seed, "bf16": bf16, "use_cpu": s.device in (None, "cpu"),
            # per-step attention_mask sums in its log: the same token definition as the others
            "include_num_input_tokens_seen": "non_padding"}


def _write_llamafactory_inputs(s: Settings, examples: list[Example], model_dir: str, folder: Path,
                               bf16: bool) -> tuple[Path, Path, dict[str, Any]]:
    """The training rows as an alpaca json (user turn = instruction, as ``Example.user_text``; the row's system
    prompt and history when it has them) + dataset_info.json + cfg.yaml; returns (cfg.yaml, output dir, settings)."""
    data = folder / "data"
    data.mkdir(parents=True)
    has_system = any(ex.system for ex in examples)
    has_history = any(ex.history for ex in examples)
    rows = []
    for ex in examples:
        row: dict[str, Any] = {"instruction": ex.user_text, "output": ex.output}
        if has_system:
            row["system"] = ex.system or ""  # empty: the template's default system prompt, as the chat template
        if has_history:
            row["history"] = [list(turn) for turn in ex.history]
        rows.append(row)
    columns = {"prompt": "instruction", "response": "output"}
    columns |= {"system": "system"} if has_system else {}
    columns |= {"history": "history"} if has_history else {}
    (data / "bench.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json", "columns": columns}}),
                                            encoding="utf-8")
    from transformers import AutoTokenizer

    out = folder / "out"
    system = chat_template_default_system(AutoTokenizer.from_pretrained(model_dir))
    config = llamafactory_config(s, model_dir, data, out, bf16, system)
    cfg = folder / "cfg.yaml"  # one `key: value` line each; JSON scalars are YAML scalars
    cfg.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items()), encoding="utf-8")
    return cfg, out, config


def _wait_sampling_rss(proc: Any, interval: float = 0.05) -> int:
    """Wait for ``proc``; the peak of the summed RSS of it and all its descendants, sampled every ``interval`` s."""
    import psutil

    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for process in tree:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(interval)
    return peak


def run_llamafactory(s: Settings, examples: list[Example], model_dir: str, work: Path, cli: str) -> Outcome:
    """``llamafactory-cli train cfg.yaml`` as a subprocess; its per-step loss, cumulative train_runtime and
    non-padding tokens come from its trainer_state.json, its adapter from its output dir."""
    import subprocess

    from core.models import cpu_has_bf16

    folder = work / "llamafactory"
    bf16 = cpu_has_bf16() if s.device in (None, "cpu") else True
    cfg, out, config = _write_llamafactory_inputs(s, examples, model_dir, folder, bf16)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_CACHE": str(folder / "datasets-cache"),
            "WANDB_DISABLED": "true"}
    log_path = folder / "llamafactory.log"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([cli, "train", str(cfg)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = _wait_sampling_rss(proc)
    wall = time.perf_counter() - start
    load = (load_before, os.getloadavg()[0])
    state_file = out / "trainer_state.json"
    if proc.returncode != 0 or not state_file.is_file():
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise RuntimeError(f"llamafactory-cli train exited with {proc.returncode}; the end of its log:\n{tail}")
    history = json.loads(state_file.read_text(encoding="utf-8"))["log_history"]
    steps = [row for row in history if "loss" in row]
    if not steps or any("train_runtime" not in row or "num_input_tokens_seen" not in row for row in steps):
        raise RuntimeError(f"llamafactory: no per-step train_runtime / num_input_tokens_seen in {state_file}")
    marks = [(0.0, 0)] + [(float(row["train_runtime"]), int(row["num_input_tokens_seen"])) for row in steps]
    per_step = [(t1 - t0, n1 - n0) for (t0, n0), (t1, n1) in zip(marks, marks[1:], strict=False)]
    runtime = max(float(row.get("train_runtime", 0.0)) for row in history)  # its whole training loop
    extra = {"cli": cli, "versions": _llamafactory_versions(cli), "config": config,
             "wall_s_with_startup": round(wall, 2),
             "rows_per_s_wall": round(len(steps) * s.batch_size / wall, 3),
             "train_runtime_s": round(runtime, 3),
             "timing": "per step: differences of the train_runtime its log records at each step (seconds since its "
                       "training loop began); setup_s: the subprocess wall time outside that loop (interpreter "
                       "start and imports, model load, dataset preparation, adapter save, exit)",
             "tokens_from": "its log: num_input_tokens_seen with include_num_input_tokens_seen=non_padding "
                            "(attention_mask sums)",
             "peak_rss": "summed RSS of the subprocess tree, sampled every 50 ms over its whole run",
             "train_loss": "its logged loss (mean over answer tokens of the step's batch)"}
    return Outcome("llamafactory", per_step, float(steps[-1]["loss"]), "last step, answer tokens", peak,
                   round(wall - runtime, 2), out, "bfloat16" if bf16 else "float32", extra, load)


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def run_contender(name: str, s: Settings, train_file: Path, work: Path, llamafactory_cli: str | None) -> Outcome:
    """One contender's training in this process."""
    from core.models import loadable_location, resolve_base_model

    if name == "ours":
        return run_ours(s, train_file, work)
    examples = load_examples(train_file).examples
    model_dir = loadable_location(resolve_base_model(None))  # the cached safetensors copy (converted once)
    if name == "trl":
        return run_trl(s, examples, model_dir, work)
    if name == "llamafactory":
        return run_llamafactory(s, examples, model_dir, work, llamafactory_cli)
    return run_hf(s, examples, model_dir, work)


def run_in_child(name: str, s: Settings, train_file: Path, work: Path, llamafactory_cli: str | None) -> Outcome:
    """``run_contender`` in a fresh process (``python -m bench.train --child``): each contender starts with the
    same empty allocator and its peak RSS is its own, not what earlier contenders left behind."""
    spec = {"name": name, "settings": dataclasses.asdict(s), "train_file": str(train_file), "work": str(work),
            "llamafactory_cli": llamafactory_cli}
    data = run_child("bench.train", spec, f"{name} (seed {s.seed})")
    return Outcome(**{**data, "per_step": [tuple(step) for step in data["per_step"]], "adapter": Path(data["adapter"]),
                      "load_average": tuple(data["load_average"])})


def _child(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    outcome = run_contender(spec["name"], Settings(**spec["settings"]), Path(spec["train_file"]), Path(spec["work"]),
                            spec["llamafactory_cli"])
    print(json.dumps({**dataclasses.asdict(outcome), "adapter": str(outcome.adapter)}), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the code paths run (~1 min)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per contender (default 12; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per step (default 8; smoke 2)")
    parser.add_argument("--val-rows", type=int, default=None, help="validation rows (default 32; smoke 4)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--contenders", default=None,
                        help="comma-separated subset of ours,trl,hf,llamafactory (default: ours,trl,hf, plus "
                             "llamafactory when its CLI is found)")
    parser.add_argument("--llamafactory-cli", default=None, metavar="PATH",
                        help=f"LLaMA-Factory's CLI (else ${LLAMAFACTORY_ENV}, else llamafactory-cli on the PATH); "
                             "set-up in its own virtual environment: bench/README.md")
    parser.add_argument("--result", default="train", metavar="NAME",
                        help="write bench/results/NAME.json (default train), e.g. train-llamafactory for a partial run")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds; each contender trains once per seed "
                                                      "(validation loss is compared as the mean over seeds)")
    parser.add_argument("--ours-grouped-batches", action="store_true",
                        help="ours with batches of similar-length examples (group_by_length=True)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return {}
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds: integers separated by commas, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds: at least one seed")
    if not args.result.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--result: letters, digits, - and _ only, got {args.result!r}")
    try:
        llamafactory_cli, found_by = find_llamafactory_cli(args.llamafactory_cli)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    smoke = args.smoke
    s = Settings(steps=args.steps or (2 if smoke else 12), batch_size=args.batch_size or (2 if smoke else 8),
                 lr=args.lr, r=args.r, alpha=2 * args.r, dropout=0.05, seed=seeds[0],
                 max_length=128 if smoke else 512,
                 val_rows=args.val_rows or (4 if smoke else 32), matmul_n=1024 if smoke else 2048,
                 matmul_repeats=3 if smoke else 6, group_by_length=args.ours_grouped_batches)
    default_names = "ours,trl,hf" + (",llamafactory" if llamafactory_cli else "")
    names = [n.strip() for n in (args.contenders or default_names).split(",") if n.strip()]
    unknown = sorted(set(names) - {"ours", "trl", "hf", "llamafactory"})
    if unknown:
        parser.error(f"--contenders: unknown {unknown[0]!r}")
    skipped = {}
    if llamafactory_cli:
        print(f"llamafactory: {llamafactory_cli} (from {found_by})", flush=True)
    elif args.contenders is None or "llamafactory" in names:
        skipped["llamafactory"] = found_by
        names = [n for n in names if n != "llamafactory"]
        print(f"note: llamafactory skipped: {found_by}", flush=True)
    if not names:
        parser.error("--contenders: nothing left to run")
    wall_start = time.perf_counter()
    load_before = os.getloadavg()
    train_file = demo_path("train.jsonl")
    examples = load_examples(train_file).examples
    if smoke:  # a smaller file keeps TRL's and the tutorial's dataset preparation short
        examples = examples[: s.batch_size * s.steps * 2]
    val_examples = load_examples(demo_path("validation.jsonl")).examples[: s.val_rows]
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        if smoke:
            train_file = work / "train.jsonl"
            lines = demo_path("train.jsonl").read_text(encoding="utf-8").splitlines()[: len(examples)]
            train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        def measure_peaks(when: str) -> dict[str, Any]:
            return {"when": when, "load_average_1m": os.getloadavg()[0],
                    **{k: matmul_flops(dt, s.matmul_n, s.matmul_repeats, 0.05 if smoke else 0.25)
                       for k, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}}

        peaks = [measure_peaks("start")]
        outcomes: list[tuple[int, Outcome]] = []
        for seed in seeds:
            seeded, folder = dataclasses.replace(s, seed=seed), work / f"seed-{seed}"
            folder.mkdir()
            for name in names:
                print(f"training: {name} ({s.steps} steps, batch {s.batch_size}, seed {seed})", flush=True)
                outcomes.append((seed, run_in_child(name, seeded, train_file, folder, llamafactory_cli)))
                peaks.append(measure_peaks(f"after {name} (seed {seed})"))
        # the best block seen: contention from other jobs only ever lowers it, so this is the conservative peak
        peak = {k: max(m[k]["best"] for m in peaks) for k in ("fp32", "bf16")}

        print("validation loss (shared function, fp32)", flush=True)
        from peft import PeftModel

        base = _fresh_base()
        tokenizer = base.tokenizer
        base_val = answer_val_loss(base.model, tokenizer, val_examples, s.max_length)
        encoded = [encode_for_training(tokenizer, ex, None, s.max_length) for ex in examples]
        lengths = [len(e.input_ids) for e in encoded]
        answer_share = sum(e.answer_tokens for e in encoded) / sum(lengths)
        lora_params = sum(s.r * (m.in_features + m.out_features) for name, m in base.model.named_modules()
                          if name.rsplit(".", 1)[-1] in TARGETS)
        flops = flop_terms(base.model, lengths, answer_share, lora_params)
        del base
        gc.collect()
        val: dict[tuple[str, int], float] = {}
        for seed, outcome in outcomes:
            fresh = _fresh_base()
            model = PeftModel.from_pretrained(fresh.model, str(outcome.adapter))
            val[outcome.name, seed] = answer_val_loss(model, tokenizer, val_examples, s.max_length)
            del model, fresh
            gc.collect()
        load_after = os.getloadavg()

        def pooled_rate(name: str) -> float:  # all of a contender's seeds: tokens over training seconds
            runs = [o for _, o in outcomes if o.name == name]
            seconds = sum(o.train_s for o in runs)
            return sum(o.tokens for o in runs) / seconds if seconds else 0.0

        def pooled_rows_rate(name: str) -> float:  # rows per training second; every step is a full batch here
            runs = [o for _, o in outcomes if o.name == name]
            seconds = sum(o.train_s for o in runs)
            return sum(o.steps * s.batch_size for o in runs) / seconds if seconds else 0.0

        rows, contenders = [], []
        trl_rate = pooled_rate("trl") if "trl" in names else None
        lf_rate = pooled_rate("llamafactory") if "llamafactory" in names else None
        for seed, o in outcomes:
            rate = o.tokens / o.train_s if o.train_s else 0.0
            later = sorted(n / sec for sec, n in o.per_step[1:] if sec > 0) or [rate]  # steps 2..N
            achieved = rate * flops["flops_per_token"]
            achieved_req = rate * flops["flops_per_token_required"]
            entry = {"contender": o.name, "seed": seed, "tokens_per_s": round(rate, 2),
                     "rows_per_s": round(o.steps * s.batch_size / o.train_s, 3) if o.train_s else 0.0,
                     "s_per_step": round(o.train_s / o.steps, 3),
                     "steps": o.steps, "tokens": o.tokens, "train_s": round(o.train_s, 3),
                     "tokens_per_s_median_step": round(later[len(later) // 2], 2),
                     "tokens_per_s_best_step": round(later[-1], 2),
                     "per_step": [[round(sec, 3), n] for sec, n in o.per_step],
                     "load_average_1m": {"before": o.load_average[0], "after": o.load_average[1]},
                     "final_train_loss": o.final_train_loss, "train_loss_definition": o.train_loss_definition,
                     "val_loss": round(val[o.name, seed], 5), "peak_rss_mib": round(o.peak_rss_bytes / 2**20),
                     "setup_s": o.setup_s, "compute_dtype": o.compute_dtype,
                     "achieved_gflops": round(achieved / 1e9, 2),
                     "mfu_fp32": round(achieved / peak["fp32"], 4), "mfu_bf16": round(achieved / peak["bf16"], 4),
                     "mfu_required_fp32": round(achieved_req / peak["fp32"], 4),
                     "mfu_required_bf16": round(achieved_req / peak["bf16"], 4),
                     "speedup_vs_trl": round(rate / trl_rate, 3) if trl_rate else None,
                     "ratio_vs_llamafactory": round(rate / lf_rate, 3) if lf_rate else None, **o.extra}
            contenders.append(entry)
        entries: dict[str, dict[str, Any]] = {}  # per contender, over its seeds
        for name in names:
            runs = [c for c in contenders if c["contender"] == name]
            rate = pooled_rate(name)
            losses = [c["val_loss"] for c in runs]
            entries[name] = {
                "contender": name, "seeds": [c["seed"] for c in runs], "tokens_per_s": round(rate, 2),
                "rows_per_s": round(pooled_rows_rate(name), 3),
                "tokens_per_s_median_step": statistics.median(c["tokens_per_s_median_step"] for c in runs),
                "val_loss": round(statistics.fmean(losses), 5), "val_loss_by_seed": losses,
                "val_loss_spread": round(max(losses) - min(losses), 5),
                "final_train_loss": statistics.fmean(c["final_train_loss"] for c in runs)
                if all(c["final_train_loss"] is not None for c in runs) else None,
                "peak_rss_mib": max(c["peak_rss_mib"] for c in runs), "compute_dtype": runs[0]["compute_dtype"],
                "mfu_fp32": round(rate * flops["flops_per_token"] / peak["fp32"], 4),
                "mfu_bf16": round(rate * flops["flops_per_token"] / peak["bf16"], 4),
                "mfu_required_fp32": round(rate * flops["flops_per_token_required"] / peak["fp32"], 4),
                "speedup_vs_trl": round(rate / trl_rate, 3) if trl_rate else None,
                "ratio_vs_llamafactory": round(rate / lf_rate, 3) if lf_rate else None}
            e = entries[name]
            rows.append({"contender": name, "seeds": len(runs), "rows/s": e["rows_per_s"], "tok/s": e["tokens_per_s"],
                         "median step tok/s": e["tokens_per_s_median_step"],
                         "train loss": round(e["final_train_loss"], 4) if e["final_train_loss"] else None,
                         "val loss (mean)": e["val_loss"], "val loss spread": e["val_loss_spread"],
                         "peak RSS MiB": e["peak_rss_mib"], "dtype": e["compute_dtype"], "MFU fp32": e["mfu_fp32"],
                         "MFU req fp32": e["mfu_required_fp32"], "MFU bf16": e["mfu_bf16"],
                         "x TRL": e["speedup_vs_trl"], "x LF": e["ratio_vs_llamafactory"],
                         "setup s": statistics.fmean(o.setup_s for _, o in outcomes if o.name == name)})
        targets = []
        if "ours" in entries and "trl" in entries:
            ours, trl = entries["ours"], entries["trl"]
            speed_ok = ours["speedup_vs_trl"] >= SPEEDUP_TARGET
            loss_ok = ours["val_loss"] <= trl["val_loss"] + VAL_TOLERANCE
            median_ratio = ours["tokens_per_s_median_step"] / trl["tokens_per_s_median_step"]
            targets.append({"target": f">= {SPEEDUP_TARGET}x TRL-default tokens/s at equal or lower val loss "
                                      f"(mean over {len(seeds)} seed(s), tolerance {VAL_TOLERANCE} nats)",
                            "value": ours["speedup_vs_trl"], "value_median_step": round(median_ratio, 3),
                            "val_loss_ours": ours["val_loss"], "val_loss_trl": trl["val_loss"],
                            "speed_met": bool(speed_ok), "val_loss_met": bool(loss_ok),
                            "met": bool(speed_ok and loss_ok)})
        if "ours" in entries and "llamafactory" in entries:
            ours, lf = entries["ours"], entries["llamafactory"]
            speed_ok = ours["ratio_vs_llamafactory"] >= SPEEDUP_TARGET
            loss_ok = ours["val_loss"] <= lf["val_loss"] + VAL_TOLERANCE
            targets.append({"target": f">= {SPEEDUP_TARGET}x LLaMA-Factory tokens/s where measured, at equal or "
                                      f"lower val loss (mean over {len(seeds)} seed(s), tolerance {VAL_TOLERANCE} "
                                      "nats)",
                            "value": ours["ratio_vs_llamafactory"],
                            "value_rows_per_s": round(ours["rows_per_s"] / lf["rows_per_s"], 3),
                            "value_median_step": round(ours["tokens_per_s_median_step"]
                                                       / lf["tokens_per_s_median_step"], 3),
                            "val_loss_ours": ours["val_loss"], "val_loss_llamafactory": lf["val_loss"],
                            "speed_met": bool(speed_ok), "val_loss_met": bool(loss_ok),
                            "met": bool(speed_ok and loss_ok)})
        if "ours" in entries:
            ours = entries["ours"]
            targets.append({"target": f"ours MFU >= {MFU_TARGET:.0%} of measured fp32 matmul FLOP/s",
                            "value": ours["mfu_fp32"], "value_required_flops": ours["mfu_required_fp32"],
                            "met": ours["mfu_fp32"] >= MFU_TARGET})
        print()
        print_table(rows)
        print(f"\nmatmul peak GFLOP/s: fp32 {peak['fp32'] / 1e9:.1f}, bf16 {peak['bf16'] / 1e9:.1f}; "
              f"base model val loss {base_val:.4f}; FLOPs/token {flops['flops_per_token'] / 1e6:.1f} M "
              f"(required {flops['flops_per_token_required'] / 1e6:.1f} M)")
        for t in targets:
            print(f"target: {t['target']}: {t['value']} -> {'met' if t['met'] else 'NOT met'}")
        # normal-priority jobs beside it slow a timed run down (niced ones are served after it): cpu_during_run
        shares = cpu_shares()
        busy = shares is not None and shares["other_jobs"] > 0.1
        if busy:
            print(f"warning: other jobs used {shares['other_jobs']:.0%} of the CPU during this run: the ratios are "
                  "not reliable; re-run on an idle machine")
        payload = {
            "settings": {**s.__dict__, "targets_modules": TARGETS, "data": "assets/demo/train.jsonl",
                         "train_examples": len(examples), "validation": "assets/demo/validation.jsonl",
                         "torch_threads": torch.get_num_threads()},
            "trl_sftconfig_changed": {"output_dir": "a temp folder", "max_steps": s.steps, "learning_rate": s.lr,
                                      "per_device_train_batch_size": s.batch_size, "seed": s.seed,
                                      "logging_steps": 1, "report_to": "none", "save_strategy": "no",
                                      "use_cpu": True,
                                      "why": "same steps/lr/batch/seed as the others; logging_steps=1 so the last "
                                             "logged train loss is the last step's; no reporting, no checkpoints; "
                                             "use_cpu because TrainingArguments refuses the default bf16=True "
                                             "without a GPU unless use_cpu is set (bf16 autocast stays on)"},
            "tokens_per_s_definition": "non-padding tokens (attention_mask sum) through forward+backward / training "
                                       "phase seconds (per-step time incl. batch fetch; no model load, dataset "
                                       "prep or adapter save)",
            "val_loss_definition": "mean CE over answer tokens of the first val_rows validation rows; adapter on a "
                                   "fresh fp32 base, eval mode, no autocast; same function for all",
            "base_model_val_loss": round(base_val, 5),
            "matmul_flops": {"n": s.matmul_n, "measurements": peaks, "peak_used": peak},
            "flops": flops,
            "seeds": seeds,
            "llamafactory": {"cli": llamafactory_cli, "found_by": found_by} if llamafactory_cli else None,
            "skipped": skipped,
            "summary": list(entries.values()),
            "contenders": contenders,
            "targets": targets,
            "load_average": {"before": load_before, "after": load_after},
            "other_load_during_training": busy,
            "wall_s": round(time.perf_counter() - wall_start, 1),
        }
        path = write_result(args.result, payload, smoke=smoke)
        print(f"wrote {path} ({payload['wall_s']} s)")
        return payload
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
