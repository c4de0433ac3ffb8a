"""Instruction tuning with every method of core.methods: a lean PyTorch loop, checkpoints, stop and resume.

Why a plain loop: measured on SmolLM2-135M (r=8 all-linear LoRA, 2-core CPU), a plain loop trains at ~175 tokens/s
and TRL's SFTTrainer with its default SFTConfig at 40-50 tokens/s; bench/train.py keeps that comparison.

The loop: examples are encoded with the chat template (prompt tokens masked with -100); micro-batches of similar
length (group by length, padded to the longest in the batch); gradient accumulation with the loss weighted by answer
tokens; AdamW; warmup then cosine/linear/constant; gradient clipping; a seed fixes init, order and dropout.
Trainable weights are fp32; the forward pass runs under autocast when the dtype policy picks bf16/fp16.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import Example, encode_for_training, load_examples, split_examples
from core.methods import (
    FULL_FORMAT,
    PARTIAL_FORMAT,
    PEFT_FORMAT,
    BuildContext,
    count_parameters,
    get_method,
    quantization_config,
)
from core.models import LoadedModel, load_causal_lm, load_tokenizer, pick_device, pick_dtype
from core.runs import Run, RunStore, folder_bytes, read_json, render_card, write_atomic, write_json

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "presets"
SCHEDULERS = ("cosine", "linear", "constant")

StepCallback = Callable[[int, int, float, float, float, float], None]  # step, total, loss, lr, tokens/s, eta_s
EvalCallback = Callable[[int, float], None]  # step, validation loss


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TrainingConfig:
    """Everything a run needs. Validation names the field; ``method_config`` is checked by the method's class."""

    data: str = _help("Training data: .jsonl/.json/.csv in any supported shape", "")
    method: str = _help("Fine-tuning method (see core.methods.METHODS)", "lora")
    method_config: dict[str, Any] = field(default_factory=dict, metadata={"help": "The method's own settings"})
    base_model: str | None = _help("Base model: registry name, hub id or folder (default: SmolLM2-135M-Instruct)")
    val_data: str | None = _help("Validation data; default: hold out val_fraction of data")
    val_fraction: float = _help("Share of data held out for validation when val_data is not given", 0.1)
    data_shape: str = _help("auto, alpaca, prompt_completion, chat or qa", "auto")
    system_prompt: str | None = _help("System prompt for rows without their own")
    epochs: float = _help("Passes over the training data (ignored when max_steps is set)", 1.0)
    max_steps: int | None = _help("Optimizer steps to run (overrides epochs)")
    learning_rate: float | None = _help("Peak learning rate (default: the method's)")
    batch_size: int = _help("Examples per micro-batch", 8)
    grad_accum: int = _help("Micro-batches per optimizer step", 1)
    max_length: int = _help("Most tokens per example (prompt cut from the left first)", 512)
    scheduler: str = _help("Learning-rate schedule after warmup: cosine, linear or constant", "cosine")
    warmup_ratio: float = _help("Share of steps spent warming up the learning rate", 0.05)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    max_grad_norm: float = _help("Gradient clipping norm (0 = off)", 1.0)
    seed: int = _help("Seed for init, data order and dropout", 42)
    eval_every: int = _help("Steps between validation passes (0 = about 5 per run)", 0)
    max_eval_examples: int = _help("Validation examples per pass (the first N, fixed)", 64)
    checkpoint_every: int = _help("Steps between checkpoints (0 = about 4 per run)", 0)
    keep_checkpoints: int = _help("Checkpoints kept on disk (oldest removed first)", 2)
    group_by_length: bool = _help("Batch examples of similar length (less padding)", True)
    answer_only_head: bool = _help("Apply the LM head to answer positions only: same loss, less work", True)
    gradient_checkpointing: bool = _help("Recompute activations in backward: less memory, ~30% slower", False)
    device: str | None = _help("cpu, cuda, mps (default: best available)")
    dtype: str | None = _help("fp32, bf16 or fp16 (default: the device policy)")

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ValueError(f"{name}: {message}")

        check(isinstance(self.data, str) and bool(self.data.strip()), "data", "no training data file given")
        method = get_method(self.method)
        self.method_config = method.make_config(self.method_config).to_dict()
        check(0 <= self.val_fraction < 1, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        check(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1), "max_steps",
              f"must be an integer >= 1, got {self.max_steps!r}")
        check(self.learning_rate is None or 0 < self.learning_rate < 1, "learning_rate",
              f"must be in (0, 1), got {self.learning_rate}")
        for name in ("batch_size", "grad_accum", "keep_checkpoints"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, f"must be an integer >= 1, got {value!r}")
        check(isinstance(self.max_length, int) and 16 <= self.max_length <= 131072, "max_length",
              f"must be an integer in 16..131072, got {self.max_length!r}")
        check(self.scheduler in SCHEDULERS, "scheduler",
              f"must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        for name in ("eval_every", "checkpoint_every", "max_eval_examples"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, name, f"must be an integer >= 0, got {value!r}")
        check(self.dtype in (None, "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"), "dtype",
              f"must be fp32, bf16 or fp16, got {self.dtype!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: not a training setting")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainingConfig:
        """A preset from assets/presets/<name>.json with ``overrides`` applied (``method_config`` merged)."""
        preset = load_preset(name)["config"]
        values = {**preset, **{k: v for k, v in overrides.items() if k != "method_config"}}
        same_method = values.get("method") == preset.get("method")
        base = preset.get("method_config", {}) if same_method else {}  # another method: the preset's settings go
        values["method_config"] = {**base, **(overrides.get("method_config") or {})}
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> dict[str, Any]:
    """``{"description": str, "config": {...TrainingConfig fields without data...}}``."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(list_presets())}")
    try:
        preset = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"preset: {path.name} line {err.lineno}: {err.msg}") from None
    if not isinstance(preset, dict) or not isinstance(preset.get("config"), dict):
        raise ValueError(f"preset: {path.name} must be an object with a config object")
    return preset


# --------------------------------------------------------------------------------------------------------------------
# Data: encoding and batches
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    train: list[Any]  # EncodedExample
    val: list[Any]
    sha256: str
    truncated: int


def _file_sha256(*paths: str | None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def prepare_data(config: TrainingConfig, tokenizer: Any) -> PreparedData:
    """Load, split and encode the training and validation examples."""
    train: list[Example] = load_examples(config.data, config.data_shape).examples
    if config.val_data:
        val: list[Example] = load_examples(config.val_data, config.data_shape).examples
    elif config.val_fraction > 0 and len(train) >= 10:
        splits = split_examples(train, validation=config.val_fraction, seed=config.seed)
        train, val = splits.train, splits.validation
    else:
        val = []
    encode = lambda ex: encode_for_training(tokenizer, ex, config.system_prompt, config.max_length)  # noqa: E731
    train_enc = [encode(ex) for ex in train]
    val_enc = [encode(ex) for ex in val[: config.max_eval_examples or len(val)]]
    if not any(e.answer_tokens for e in train_enc):
        raise ValueError(f"data: {Path(config.data).name} has no answer tokens to learn from")
    return PreparedData(train_enc, val_enc, _file_sha256(config.data, config.val_data),
                        sum(e.truncated for e in train_enc))


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Index lists of one epoch's micro-batches; the same (seed, epoch) always gives the same batches.

    Group by length: shuffle, cut into windows of 16 batches, sort each window by length, cut into batches, shuffle
    the batches. Padding then stays small while the order stays random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Any], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Shapes: (batch, seq) for input_ids, attention_mask and labels."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# Decoders whose logits are exactly lm_head(final hidden state): for them the loss can skip the LM head on prompt
# positions (most of the tokens in instruction data), see answer_loss.
_PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"})


def supports_answer_only_head(model: Any) -> bool:
    """True when ``answer_loss`` may compute logits for answer positions only (same loss, less work)."""
    if getattr(model, "peft_type", None) == "ADALORA":  # AdaLoRA adds its orthogonality penalty in forward
        return False
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "model_type", None) in _PLAIN_HEAD_MODELS and hasattr(base, "get_decoder")


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens, with the LM head applied to answer positions only.

    Equals ``model(**batch).loss``; on instruction data (~80% prompt tokens in the demo set) it skips most of the
    vocabulary projection and its (batch, seq, vocab) logits. Shapes: hidden (B, L, H) -> (n_answer, H) -> logits
    (n_answer, V).
    """
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]  # (B, L-1): the token each position predicts
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer, V)
    return F.cross_entropy(logits.float(), targets[keep])


def loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Label tokens the causal-LM loss averages over (labels shifted by one)."""
    return int((batch["labels"][:, 1:] != -100).sum())


# --------------------------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: str
    run_id: str
    method: str
    state: str
    steps: int
    total_steps: int
    trainable_params: int
    total_params: int
    adapter_bytes: int
    train_loss: list[float]
    final_train_loss: float | None
    first_val_loss: float | None
    final_val_loss: float | None
    tokens_per_s: float
    peak_mem_bytes: int
    wall_s: float
    train_examples: int
    val_examples: int
    data_sha256: str
    device: str
    dtype: str
    base_model: str = ""

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def contract(self) -> dict[str, Any]:
        """The CLI `train --json` document (DESIGN.md keys first, then extras)."""
        keys = ("run_dir", "method", "trainable_params", "total_params", "adapter_bytes", "train_loss",
                "final_train_loss", "final_val_loss", "tokens_per_s", "peak_mem_bytes", "wall_s")
        out = {k: getattr(self, k) for k in keys}
        out.update(state=self.state, steps=self.steps, total_steps=self.total_steps,
                   trainable_percent=round(self.trainable_percent, 4), first_val_loss=self.first_val_loss,
                   device=self.device, dtype=self.dtype)
        return out


class _PeakMemory:
    """Peak resident memory (CPU: RSS sampled every 50 ms) or max allocated (CUDA) while training runs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakMemory:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            process = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak = max(self.peak, process.memory_info().rss)
                    self._stop.wait(0.05)

            self._thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.startswith("cuda"):
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()


# --------------------------------------------------------------------------------------------------------------------
# Model set-up
# --------------------------------------------------------------------------------------------------------------------


def _compute_dtype(config: TrainingConfig, device: str) -> torch.dtype:
    return pick_dtype(device, config.dtype)


def load_training_model(config: TrainingConfig, total_steps: int) -> tuple[Any, LoadedModel, torch.dtype]:
    """A fresh copy of the base (never the shared inference model) made trainable by the method's builder.

    The frozen base is stored in the compute dtype (PEFT methods) or fp32 (full, layer-wise: those weights train);
    QLoRA loads it quantized. Trainable parameters are always fp32.
    """
    import torch

    method = get_method(config.method)
    method_config = method.make_config(config.method_config)
    device = pick_device(config.device)
    compute = _compute_dtype(config, device)
    if config.method == "qlora":
        loaded = load_causal_lm(config.base_model, device=device, dtype=compute,
                                quantization_config=quantization_config(method_config, compute))
    else:
        store = torch.float32 if method.save_format != PEFT_FORMAT else compute
        loaded = load_causal_lm(config.base_model, device=device, dtype=store)
    if loaded.tokenizer.pad_token_id is None:
        raise ValueError(f"base_model: {loaded.resolved.name} has no pad or eos token")
    torch.manual_seed(config.seed)  # adapter initialisation
    model = method.builder(loaded.model, method_config, BuildContext(loaded.tokenizer, total_steps))
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    return model, loaded, compute


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable tensors by parameter name (tied weights once)."""
    return {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON, never pickle)
# --------------------------------------------------------------------------------------------------------------------


def _adalora_allocator(model: Any) -> Any:
    return getattr(getattr(model, "base_model", None), "rankallocator", None)


def _adalora_config(model: Any) -> Any:
    return model.peft_config[model.base_model.trainable_adapter_name]


def finalize_adalora(model: Any) -> None:
    """Re-apply the current rank pattern, so the trained weights equal what the rank-cut saved adapter holds."""
    allocator = _adalora_allocator(model)
    pattern = _adalora_config(model).rank_pattern if allocator is not None else None
    if pattern:
        allocator.mask_using_rank_pattern(model.base_model.model, pattern)


def save_checkpoint(run: Run, model: Any, optimizer: Any, scheduler: Any, step: int, extra: dict[str, Any],
                    keep: int, scaler: Any = None) -> Path:
    """checkpoints/step-N/: trainable weights, optimizer state, scheduler, RNG and loop state; written to a
    temporary folder and renamed, so a kill mid-save leaves the previous checkpoint as the latest. Checkpoints are
    removed by renaming them hidden first, so a kill mid-removal never leaves a half-deleted ``step-N``."""
    import shutil
    import tempfile

    import torch
    from safetensors.torch import save_file

    root = run.path / "checkpoints"
    root.mkdir(exist_ok=True)
    for leftover in root.glob(".tmp-*"):  # a save or removal cut short by a kill (this process owns the run)
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    weights = {name: t.contiguous().cpu() for name, t in trainable_state(model).items()}
    save_file(weights, str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    scalars: dict[str, Any] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    allocator = _adalora_allocator(model)
    if allocator is not None:
        for attr in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            for name, value in getattr(allocator, attr).items():
                tensors[f"adalora.{attr}.{name}"] = value.contiguous().cpu()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {
        "step": step, "param_groups": opt["param_groups"], "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict(), "python_random": _jsonable_random_state(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "adalora_rank_pattern": _adalora_config(model).rank_pattern if allocator is not None else None, **extra,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    final = root / f"step-{step:08d}"

    def remove(checkpoint: Path) -> None:
        trash = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-old-"))
        checkpoint.rename(trash / checkpoint.name)
        shutil.rmtree(trash, ignore_errors=True)

    if final.exists():
        remove(final)
    tmp.rename(final)
    for old in run.checkpoints()[:-keep]:
        remove(old)
    return final


def _jsonable_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def load_checkpoint(checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any = None) -> dict[str, Any]:
    """Restore what save_checkpoint wrote; returns state.json."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((checkpoint / "state.json").read_text())
    weights = load_file(str(checkpoint / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(weights) ^ {n for n, p in params.items() if p.requires_grad})
    if missing:
        raise ValueError(f"resume: checkpoint {checkpoint.name} does not match the model ({missing[0]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    allocator = _adalora_allocator(model)
    if allocator is not None:
        for attr in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            prefix = f"adalora.{attr}."
            getattr(allocator, attr).update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        if state.get("adalora_rank_pattern"):
            _adalora_config(model).rank_pattern = state["adalora_rank_pattern"]
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return state


# --------------------------------------------------------------------------------------------------------------------
# Saving the trained weights
# --------------------------------------------------------------------------------------------------------------------


def _save_folder(run: Run, name: str, write: Callable[[Path], None]) -> Path:
    """Write a weights folder through a temporary sibling and a rename."""
    import shutil
    import tempfile

    final = run.path / name
    tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=f".{name}-"))
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def save_trained(run: Run, model: Any, tokenizer: Any, save_format: str) -> Path:
    """adapter/ (PEFT, safetensors), model/ (full model + tokenizer) or weights/ (trained tensors only)."""
    from safetensors.torch import save_file

    if save_format == PEFT_FORMAT:
        return _save_folder(run, "adapter", lambda d: model.save_pretrained(d, safe_serialization=True))
    if save_format == FULL_FORMAT:
        def write_full(folder: Path) -> None:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)

        return _save_folder(run, "model", write_full)

    def write_partial(folder: Path) -> None:
        state = {name: t.contiguous().cpu() for name, t in trainable_state(model).items()}
        save_file(state, str(folder / "trained.safetensors"))
        (folder / "weights.json").write_text(json.dumps({"tensors": sorted(state)}, indent=1))

    return _save_folder(run, "weights", write_partial)


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


def _plan(config: TrainingConfig, n_train: int) -> tuple[int, int, int, int, int]:
    """(micro-batches per epoch, total optimizer steps, warmup steps, eval every, checkpoint every)."""
    micro_per_epoch = math.ceil(n_train / config.batch_size)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.grad_accum))
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = int(total * config.warmup_ratio)
    eval_every = config.eval_every or max(1, math.ceil(total / 5))
    checkpoint_every = config.checkpoint_every or max(1, math.ceil(total / 4))
    return micro_per_epoch, total, warmup, eval_every, checkpoint_every


def _scheduler(optimizer: Any, kind: str, warmup: int, total: int) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[kind]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def evaluate_loss(model: Any, examples: list[Any], batch_size: int, pad_id: int, device: str,
                  compute: torch.dtype) -> float | None:
    """Answer-token-weighted mean loss over ``examples`` (None when there are none)."""
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    # bitsandbytes repacks 4-bit weights for fast CPU inference in eval mode, in place; the training copy must stay
    # in the trainable layout, so its 4-bit layers stay in training mode (they hold no dropout)
    for module in model.modules():
        if type(module).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4"):
            module.training = True
    total_loss, total_tokens = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    fast_head = supports_answer_only_head(model)
    with torch.no_grad(), _autocast(device, compute):
        for start in range(0, len(order), batch_size):
            batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id, device)
            n = loss_tokens(batch)
            if n:
                loss = answer_loss(model, batch) if fast_head else model(**batch).loss
                total_loss += float(loss) * n
                total_tokens += n
    if was_training:
        model.train()
    return total_loss / total_tokens if total_tokens else None


def _autocast(device: str, compute: torch.dtype) -> Any:
    import contextlib

    import torch

    if compute == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=compute)


def train(
    config: TrainingConfig,
    *,
    run_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    on_step: StepCallback | None = None,
    on_eval: EvalCallback | None = None,
    stop_event: threading.Event | None = None,
) -> TrainResult:
    """Train a new run. ``run_dir`` (a new or empty folder) or a fresh id under ``runs_root`` (default: the
    workspace's runs/). Returns when the run completes, is stopped, or fails (the error is then raised after the
    run's status is recorded)."""
    from core.workspace import Workspace

    store = RunStore(runs_root or Workspace.open().runs)
    data = prepare_data(config, _tokenizer_for(config))  # bad data or model: an error before any run folder exists
    run = store.create({"format": 1, **config.to_dict()}, run_dir)
    return _run(run, config, None, on_step, on_eval, stop_event, data)


def resume(
    run_dir: str | Path,
    *,
    on_step: StepCallback | None = None,
    on_eval: EvalCallback | None = None,
    stop_event: threading.Event | None = None,
) -> TrainResult:
    """Continue a run from its latest checkpoint (also after the process was killed): same data order, optimizer,
    scheduler and RNG state, so the steps after the checkpoint repeat what an uninterrupted run would do."""
    run = Run(Path(run_dir))
    if not (run.path / "config.json").is_file():
        raise ValueError(f"resume: {run_dir} is not a run folder (no config.json)")
    if run.state == "completed":
        raise ValueError(f"resume: run {run.run_id} already completed")
    owner = run.owned_elsewhere()
    if owner is not None:
        raise ValueError(f"resume: run {run.run_id} is still being trained by process {owner}; stop it first")
    values = {k: v for k, v in run.config.items() if k != "format"}
    config = TrainingConfig.from_dict(values)
    checkpoint = run.latest_checkpoint()
    data = prepare_data(config, _tokenizer_for(config))
    return _run(run, config, checkpoint, on_step, on_eval, stop_event, data)


def _run(run: Run, config: TrainingConfig, checkpoint: Path | None, on_step: StepCallback | None,
         on_eval: EvalCallback | None, stop_event: threading.Event | None, data: PreparedData) -> TrainResult:
    import torch

    start_wall = time.perf_counter()
    run.set_status("running", step=0)
    try:
        return _loop(run, config, checkpoint, on_step, on_eval, stop_event, start_wall, data)
    except BaseException as err:  # record the failure (also KeyboardInterrupt), then let it propagate
        if not is_out_of_memory(err):
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            run.set_status("failed", error=message)
            logger.error("run %s failed: %s", run.run_id, message)
            raise
        done = run.status.get("step", 0)
        message = out_of_memory_message(config, err, done + 1)
        run.set_status("failed", error=message, step=done, reason="out_of_memory")
        logger.error("run %s failed: %s", run.run_id, message)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    # out of memory: the except block has ended, so the failed step's frames (model, optimizer, activations) are
    # gone; free them now and raise a fresh error that holds none of them
    release_memory()
    raise TrainingOutOfMemoryError(message)


class TrainingOutOfMemoryError(RuntimeError):
    """Training ran out of (GPU or CPU) memory; the message names the settings to lower."""


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's OutOfMemoryError, Python's MemoryError and an allocator's RuntimeError (CPU: "can't allocate
    memory", CUDA/MPS: "out of memory")."""
    import torch

    if isinstance(err, MemoryError | torch.OutOfMemoryError | TrainingOutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(marker in str(err).lower() for marker in _OOM_MARKERS)


def out_of_memory_message(config: TrainingConfig, err: BaseException, step: int) -> str:
    """One line: where memory ran out, the allocator's words, and the settings that lower the peak."""
    detail = " ".join(str(err).split())
    cut = detail.find("can't allocate memory")  # the CPU allocator's message starts with C++ source positions
    detail = detail[cut:] if cut > 0 else detail
    detail = detail[:140] or type(err).__name__
    tips = []
    if config.batch_size > 1:
        tips.append(f"lower batch_size (now {config.batch_size}; raise grad_accum to keep the effective batch)")
    tips.append(f"lower max_length (now {config.max_length})")
    if not config.gradient_checkpointing:
        tips.append("turn on gradient_checkpointing")
    advice = tips[0] if len(tips) == 1 else ", ".join(tips[:-1]) + f" or {tips[-1]}"
    return f"out of memory in training step {step} ({detail}): {advice}"


def release_memory() -> None:
    """Collect unreachable objects (models in reference cycles) and hand cached GPU memory back to the driver."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _loop(run: Run, config: TrainingConfig, checkpoint: Path | None, on_step: StepCallback | None,
          on_eval: EvalCallback | None, stop_event: threading.Event | None, start_wall: float,
          data: PreparedData) -> TrainResult:
    import torch

    method = get_method(config.method)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    micro_per_epoch, total, warmup, eval_every, checkpoint_every = _plan(config, len(data.train))
    model, loaded, compute = load_training_model(config, total)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total_params = count_parameters(model)
    lr = config.learning_rate or method.default_lr
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config.scheduler, warmup, total)
    scaler = torch.amp.GradScaler("cuda") if compute == torch.float16 and device.startswith("cuda") else None
    step, tokens_seen, train_s = 0, 0, 0.0
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler)
        if saved.get("data_sha256") not in (None, data.sha256):
            raise ValueError(f"resume: the data files of run {run.run_id} changed since it started")
        step, tokens_seen, train_s = saved["step"], saved["tokens_seen"], saved["train_s"]
        run.truncate_metrics(step)
        logger.info("resumed %s at step %d/%d from %s", run.run_id, step, total, checkpoint.name)
    elif run.metrics():
        run.truncate_metrics(0)  # resumed without a checkpoint: start over
    logger.info("%s: %s on %d examples (%d validation), %d steps, %s/%s, %d trainable of %d params (%.3f%%)",
                run.run_id, config.method, len(data.train), len(data.val), total, device,
                str(compute).removeprefix("torch."), trainable, total_params, 100 * trainable / total_params)
    if data.truncated:
        logger.warning("%d training examples were longer than max_length=%d and were cut", data.truncated,
                       config.max_length)
    lengths = [len(e.input_ids) for e in data.train]
    cache: dict[int, list[list[int]]] = {}

    def micro_batch(position: int) -> list[int]:
        epoch, index = divmod(position, micro_per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_batches(lengths, config.batch_size, config.seed, epoch, config.group_by_length)
        return cache[epoch][index]

    allocator = _adalora_allocator(model)
    fast_head = config.answer_only_head and supports_answer_only_head(model)
    val_losses = [row["val_loss"] for row in run.metrics() if "val_loss" in row]
    train_losses = [row["loss"] for row in run.metrics() if "loss" in row]
    state = "completed"
    with _PeakMemory(device) as memory:
        if checkpoint is None and data.val:  # the starting point of the validation curve
            val = evaluate_loss(model, data.val, config.batch_size, pad_id, device, compute)
            run.append_metrics({"step": 0, "val_loss": val})
            val_losses.append(val)
            if on_eval:
                on_eval(0, val)
        while step < total:
            step_start = time.perf_counter()
            batches = [collate([data.train[i] for i in micro_batch(step * config.grad_accum + k)], pad_id, device)
                       for k in range(config.grad_accum)]
            step_tokens = sum(loss_tokens(b) for b in batches) or 1
            step_loss = 0.0
            for batch in batches:
                n = loss_tokens(batch)
                if n == 0:
                    continue
                with _autocast(device, compute):
                    loss = answer_loss(model, batch) if fast_head else model(**batch).loss
                scaled = loss * (n / step_tokens)  # token-weighted mean over the accumulation window
                (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += float(loss.detach()) * n / step_tokens
                tokens_seen += int(batch["attention_mask"].sum())
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            if allocator is not None:
                model.base_model.update_and_allocate(step)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_s += time.perf_counter() - step_start
            rate = tokens_seen / train_s if train_s else 0.0
            eta = (total - step) * train_s / step
            current_lr = scheduler.get_last_lr()[0]
            train_losses.append(step_loss)
            run.append_metrics({"step": step, "loss": round(step_loss, 6), "lr": current_lr,
                                "grad_norm": round(grad_norm, 6), "tokens_per_s": round(rate, 2),
                                "elapsed_s": round(train_s, 3)})
            if on_step:
                on_step(step, total, step_loss, current_lr, rate, eta)
            stopping = stop_event is not None and stop_event.is_set()
            if data.val and (step % eval_every == 0 or step == total or stopping):
                val = evaluate_loss(model, data.val, config.batch_size, pad_id, device, compute)
                run.append_metrics({"step": step, "val_loss": val})
                val_losses.append(val)
                if on_eval:
                    on_eval(step, val)
            if step % checkpoint_every == 0 or stopping or step == total:
                save_checkpoint(run, model, optimizer, scheduler, step,
                                {"tokens_seen": tokens_seen, "train_s": train_s, "total_steps": total,
                                 "data_sha256": data.sha256},
                                config.keep_checkpoints, scaler)
            run.set_status("running", step=step, total_steps=total)
            if stopping and step < total:
                state = "stopped"
                logger.info("stopped at step %d/%d", step, total)
                break
    finalize_adalora(model)
    weights = save_trained(run, model, tokenizer, method.save_format)
    result = TrainResult(
        run_dir=str(run.path), run_id=run.run_id, method=config.method, state=state, steps=step, total_steps=total,
        trainable_params=trainable, total_params=total_params, adapter_bytes=folder_bytes(weights),
        train_loss=[round(x, 6) for x in train_losses],
        final_train_loss=train_losses[-1] if train_losses else None,
        first_val_loss=val_losses[0] if val_losses else None, final_val_loss=val_losses[-1] if val_losses else None,
        tokens_per_s=round(tokens_seen / train_s, 2) if train_s else 0.0, peak_mem_bytes=int(memory.peak),
        wall_s=round(time.perf_counter() - start_wall, 3), train_examples=len(data.train),
        val_examples=len(data.val), data_sha256=data.sha256, device=device,
        dtype=str(compute).removeprefix("torch."), base_model=loaded.resolved.name,
    )
    write_json(run.path / "result.json", asdict(result))
    run.set_status(state, step=step, total_steps=total)
    if state == "completed":  # a completed run cannot resume: its checkpoints (optimizer state) are dead weight
        import shutil

        shutil.rmtree(run.path / "checkpoints", ignore_errors=True)
    write_atomic(run.path / "card.md", render_card(run.config, asdict(result), run.status))
    return result


def _tokenizer_for(config: TrainingConfig) -> Any:
    """The base model's tokenizer, loaded without the weights (to encode and check the data first)."""
    return load_tokenizer(config.base_model)


# --------------------------------------------------------------------------------------------------------------------
# Using a trained run
# --------------------------------------------------------------------------------------------------------------------


def load_trained_model(run_dir: str | Path, *, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """A fresh base model with the run's trained weights applied, in eval mode (PEFT runs: a PeftModel). The files
    are checked first (core.artifacts): a truncated, garbled or pickled weights file is an AdapterError naming it."""
    import torch

    from core.artifacts import check_run_weights

    run = Run(Path(run_dir))
    check_run_weights(run.path)
    config = TrainingConfig.from_dict({k: v for k, v in run.config.items() if k != "format"})
    method = get_method(config.method)
    weights = run.weights_dir
    if weights is None:
        raise ValueError(f"run: {run.run_id} saved no weights (status {run.state})")
    if method.save_format == FULL_FORMAT:
        return load_causal_lm(str(weights), device=device, dtype=dtype)
    loaded = load_causal_lm(config.base_model, device=device, dtype=dtype)
    model = loaded.model
    if method.save_format == PARTIAL_FORMAT:
        from safetensors.torch import load_file

        state = load_file(str(weights / "trained.safetensors"))
        params = dict(model.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise ValueError(f"run: {run.run_id} has weights the base model lacks ({unknown[0]}): another base model?")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(weights), adapter_name=run.run_id)
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.resolved, loaded.device, loaded.dtype, loaded.load_s)


def merge_and_export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA-family adapter (or layer-wise weights) into the base and save a standalone model folder
    (safetensors + tokenizer) at ``out_dir``, atomically. The merge happens in fp32 on a non-quantized base."""
    import shutil
    import tempfile

    run = Run(Path(run_dir))
    method = get_method(read_json(run.path / "config.json")["method"])
    if method.prompt_learning:
        raise ValueError(f"merge: {method.name} adds virtual tokens/prefixes and cannot be merged into the weights")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out: {out} is not empty")
    loaded = load_trained_model(run.path, device="cpu", dtype="fp32")
    model = loaded.model.merge_and_unload() if method.save_format == PEFT_FORMAT else loaded.model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    if out.exists():
        out.rmdir()
    shutil.move(str(tmp), str(out))
    return out
