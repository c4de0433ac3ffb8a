"""A training run's settings (TrainingConfig, with help text the CLI and the UI read) and the presets in
assets/presets. Validation names the field; ``method_config`` is checked by the method's settings class."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.methods import get_method
from core.training.hybrids import check as check_hybrids
from core.training.objectives import get_objective
from core.training.sharding import check as check_sharding

PRESETS_DIR = Path(__file__).resolve().parents[2] / "assets" / "presets"

SCHEDULERS = ("cosine", "linear", "constant")
TEACHER_CONTEXTS = ("none", "rag")
DPO_LOSSES = ("sigmoid", "ipo")
# max_forward_tokens' default on a CPU: over a whole epoch of the demo set, passes of at most 512 tokens peak at
# 2,889 MiB (1,024: 3,374) at the same 261.8 tokens/s (AMD EPYC, bench/results/memory-epoch.json; on the Intel AMX
# machine, earlier code: 2,670 vs 3,141 MiB at -10% tokens/s). A free Space has 16 GB for the app and its users.
CPU_FORWARD_TOKENS = 512


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TrainingConfig:
    """Everything a run needs. Validation names the field; ``method_config`` is checked by the method's class."""

    data: str = _help("Training data: .jsonl/.json/.csv in any supported shape", "")
    method: str = _help("Fine-tuning method (see core.methods.METHODS)", "lora")
    objective: str = _help("What a batch is and what the loss is: sft (instruction tuning), classification (a label "
                           "head), distillation (a student learns a teacher), dpo (preference pairs: "
                           "prefer the chosen answer over the rejected one)", "sft")
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
    num_processes: int = _help("Processes training together, data parallel (gloo between CPU processes, NCCL between "
                               "GPUs): each step's batch is batch_size x num_processes examples, split between them; "
                               "the steps, schedule and losses are those of one process with that batch", 1)
    fsdp: bool = _help("Shard the weights, gradients and optimizer state over the processes (PyTorch FSDP), for a "
                       "model that does not fit one device: sft with full, freeze, lora or ia3; with num_processes > 1",
                       False)
    max_length: int = _help("Most tokens per example (prompt cut from the left first); DPO: per prompt + answer "
                            "sequence, the prompt cut from the left first", 512)
    scheduler: str = _help("Learning-rate schedule after warmup: cosine, linear or constant", "cosine")
    warmup_ratio: float = _help("Share of steps spent warming up the learning rate", 0.05)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    max_grad_norm: float = _help("Gradient clipping norm (0 = off)", 1.0)
    seed: int = _help("Seed for init, data order and dropout", 42)
    eval_every: int = _help("Steps between validation passes (0 = about 5 per run)", 0)
    max_eval_examples: int = _help("Validation examples per pass (the first N, fixed)", 64)
    checkpoint_every: int = _help("Steps between checkpoints (0 = about 4 per run)", 0)
    keep_checkpoints: int = _help("Checkpoints kept on disk (oldest removed first)", 2)
    group_by_length: bool = _help("Batch examples of similar length: less padding where passes are not split (a "
                                  "GPU), at a higher validation loss per step (default: random batches)", False)
    answer_only_head: bool = _help("Apply the LM head to answer positions only: same loss, less work", True)
    gradient_checkpointing: bool = _help("Recompute activations in backward: less memory, ~30% slower", False)
    max_forward_tokens: int | None = _help("Most padded tokens (rows x longest row) in one forward pass: a "
                                           "micro-batch runs in parts of similar-length rows whose gradients add up "
                                           "to the same step, for less padding and a lower memory peak (0 = whole "
                                           "micro-batches; default: "
                                           f"{CPU_FORWARD_TOKENS} on a CPU, whole on a GPU)")
    device: str | None = _help("cpu, cuda, mps (default: best available)")
    dtype: str | None = _help("fp32, bf16 or fp16 (default: the device policy)")
    text_column: str | None = _help("Classification: the column holding the text (default: text, else the prompt of "
                                    "an instruction row)")
    label_column: str | None = _help("Classification: the column holding the label (default: label, else the answer)")
    teacher: str | None = _help("Distillation: the teacher, a run (folder or id) or a model")
    student: str | None = _help("Distillation: a student model sharing the teacher's tokenizer")
    student_layers: int | None = _help("Distillation: the student keeps N evenly spaced blocks of the teacher, "
                                       "initialised from its weights")
    distill_alpha: float = _help("Distillation: weight of the KL term (1 - alpha weighs cross-entropy on answers)", 0.5)
    distill_temperature: float = _help("Distillation: softmax temperature of teacher and student", 2.0)
    teacher_context: str = _help("Distillation: none, or rag (the teacher reads retrieved passages, the student only "
                                 "the question)", "none")
    index: str | None = _help("Context distillation: the knowledge base the teacher reads (a folder or name)")
    teacher_top_k: int = _help("Distillation: 0 = teacher logits on the fly; K = its top-K logits cached to disk "
                               "once", 0)
    dpo_beta: float = _help("DPO: how far the model may move from the reference (the model it started from); the "
                            "implicit reward of an answer is beta * (log p - log p_ref). Lower: further", 0.1)
    dpo_loss: str = _help("DPO: sigmoid (-log sigmoid(beta * h), the DPO paper) or ipo ((h - 1/(2 beta))^2), h = "
                          "the chosen minus the rejected answer's log-ratio to the reference", "sigmoid")
    max_prompt_length: int = _help("DPO: most prompt tokens, the prompt cut from the left to them before each prompt "
                                   "+ answer sequence is cut to max_length (0 = no limit of its own)", 0)
    layerwise_lr_decay: float = _help("Full and freeze: each block gets this factor of the learning rate of the block "
                                      "above it (1 = off)", 1.0)
    gradual_unfreezing: int = _help("Freeze: unfreeze one more block, from the top, every N steps (0 = off)", 0)

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {message}")

        check(isinstance(self.data, str) and bool(self.data.strip()), "data", "no training data file given")
        objective = get_objective(self.objective)
        method = get_method(self.method)
        self.method_config = method.make_config(self.method_config).to_dict()
        check(0 <= self.val_fraction < 1, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        check(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1), "max_steps",
              f"must be an integer >= 1, got {self.max_steps!r}")
        check(self.learning_rate is None or 0 < self.learning_rate < 1, "learning_rate",
              f"must be in (0, 1), got {self.learning_rate}")
        check(isinstance(self.num_processes, int) and not isinstance(self.num_processes, bool)
              and 1 <= self.num_processes <= 1024, "num_processes",
              f"must be an integer in 1..1024, got {self.num_processes!r}")
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
        check(self.max_forward_tokens is None or (isinstance(self.max_forward_tokens, int)
                                                  and self.max_forward_tokens >= 0), "max_forward_tokens",
              f"must be an integer >= 0, got {self.max_forward_tokens!r}")
        check(self.dtype in (None, "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"), "dtype",
              f"must be fp32, bf16 or fp16, got {self.dtype!r}")
        check(self.student_layers is None or (isinstance(self.student_layers, int) and self.student_layers >= 1),
              "student_layers", f"must be an integer >= 1, got {self.student_layers!r}")
        check(0 <= self.distill_alpha <= 1, "distill_alpha", f"must be in [0, 1], got {self.distill_alpha}")
        check(self.distill_temperature > 0, "distill_temperature", f"must be > 0, got {self.distill_temperature}")
        check(self.teacher_context in TEACHER_CONTEXTS, "teacher_context",
              f"must be one of {', '.join(TEACHER_CONTEXTS)}, got {self.teacher_context!r}")
        check(isinstance(self.teacher_top_k, int) and self.teacher_top_k >= 0, "teacher_top_k",
              f"must be an integer >= 0, got {self.teacher_top_k!r}")
        check(isinstance(self.dpo_beta, int | float) and not isinstance(self.dpo_beta, bool) and self.dpo_beta > 0,
              "dpo_beta", f"must be > 0, got {self.dpo_beta!r}")
        check(self.dpo_loss in DPO_LOSSES, "dpo_loss", f"must be one of {', '.join(DPO_LOSSES)}, got {self.dpo_loss!r}")
        check(isinstance(self.max_prompt_length, int) and not isinstance(self.max_prompt_length, bool)
              and self.max_prompt_length >= 0, "max_prompt_length",
              f"must be an integer >= 0, got {self.max_prompt_length!r}")
        check(0 < self.layerwise_lr_decay <= 1, "layerwise_lr_decay",
              f"must be in (0, 1], got {self.layerwise_lr_decay}")
        check(isinstance(self.gradual_unfreezing, int) and self.gradual_unfreezing >= 0, "gradual_unfreezing",
              f"must be an integer >= 0, got {self.gradual_unfreezing!r}")
        check_hybrids(self)
        objective.validate(self)
        if self.fsdp:
            check_sharding(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a training setting")
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

    @classmethod
    def build(cls, values: dict[str, Any], *, preset: str | None = None) -> TrainingConfig:
        """The one way a TrainingConfig is made from what a person chose (CLI flags, the Train tab's form):
        ``preset`` (if any) < ``values`` (None means "not set") < ``values["method_config"]`` merged over the
        preset's settings when the method is the preset's."""
        chosen = {key: value for key, value in values.items() if value is not None}
        if chosen.get("max_steps") is not None:
            chosen.setdefault("epochs", 1.0)
        return cls.from_preset(preset, **chosen) if preset else cls.from_dict(chosen)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def forward_tokens(self, device: str) -> int:
        """The most padded tokens one forward pass takes on ``device`` (0: whole micro-batches). On a CPU memory is
        the limit and smaller passes cost little; a GPU is fastest with whole micro-batches."""
        if self.max_forward_tokens is not None:
            return self.max_forward_tokens
        return CPU_FORWARD_TOKENS if device == "cpu" else 0


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> dict[str, Any]:
    """``{"description": str, "config": {...TrainingConfig fields without data...}}``."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {', '.join(list_presets())}")
    try:
        preset = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"preset: {path.name} line {err.lineno}: {err.msg}") from None
    if not isinstance(preset, dict) or not isinstance(preset.get("config"), dict):
        raise ConfigError(f"preset: {path.name} must be an object with a config object")
    return preset
