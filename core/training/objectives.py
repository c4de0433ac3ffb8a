"""Training objectives: what a batch is and what the loss is, orthogonal to the method (which weights train).

An objective turns examples into encoded rows, rows into a batch, and a batch into a loss with the number of units
it averages over (the loop weights micro-batches by it). The loop drives one ``TrainingSession`` per run: the
objective's session class loads what it trains (and anything else it needs, e.g. a frozen teacher), computes the
loss, evaluates (validation loss and the objective's own measures), saves the weights and reports its extras for
result.json and the CLI's ``--json``. ``sft`` (instruction tuning: next-token cross-entropy on answer tokens, the
prompt masked) is the default; other objectives (core.training.classification, core.training.distillation) subclass
the session and register beside it with ``register_objective``.

``config`` arguments are TrainingConfigs, annotated ``Any``: core.training.config imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import encode_for_training
from core.errors import ConfigError
from core.methods import count_parameters, get_method
from core.models import pick_device
from core.registry import Registry
from core.training.hybrids import before_step, parameter_groups
from core.training.model import load_training_model
from core.training.sharding import is_sharded
from core.training.weights import save_trained

if TYPE_CHECKING:
    import torch

    from core.runs import Run


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
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
    if getattr(examples[0], "task_id", None) is not None:  # multi-task prompt tuning: each row's task, (batch,)
        batch["task_ids"] = torch.tensor([e.task_id for e in examples], dtype=torch.long, device=device)
    return batch


_PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"})


def supports_answer_only_head(model: Any) -> bool:
    """True when ``answer_loss`` may compute logits for answer positions only (same loss, less work)."""
    if getattr(model, "peft_type", None) == "ADALORA":  # AdaLoRA adds its orthogonality penalty in forward
        return False
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False
    if is_sharded(model):  # FSDP gathers weights in the root's forward, which the shortcut bypasses
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


def autocast(device: str, compute: torch.dtype) -> Any:
    import contextlib

    import torch

    if compute == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=compute)


def evaluate_loss(model: Any, examples: list[Any], batch_size: int, pad_id: int, device: str,
                  compute: torch.dtype, objective: Objective | None = None) -> float | None:
    """Unit-weighted (SFT: answer-token-weighted) mean loss over ``examples``; None when there are none."""
    objective = objective or get_objective("sft")
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
    fast_head = objective.fast_path(model)
    with torch.no_grad(), autocast(device, compute):
        for start in range(0, len(order), batch_size):
            batch = objective.collate([examples[i] for i in order[start : start + batch_size]], pad_id, device)
            n = objective.units(batch)
            if n:
                loss = objective.loss(model, batch, fast_head)
                total_loss += float(loss) * n
                total_tokens += n
    if was_training:
        model.train()
    return total_loss / total_tokens if total_tokens else None



@dataclass(frozen=True)
class PreparedData:
    """A run's encoded rows (core.training.batches reads instruction data; an objective may read its own)."""

    train: list[Any]  # EncodedExample
    val: list[Any]
    sha256: str
    truncated: int
    info: dict[str, Any] = field(default_factory=dict)  # what the objective read from the data (e.g. its labels)


@dataclass(frozen=True)
class TrainingResources:
    """What an objective may need from layers above training, handed in by the engine (core.engine.runs): the
    teacher of a distillation run, loaded (``load_teacher() -> LoadedModel``, core.inference's loading of any run
    or model), and the knowledge base's passages for a question (``retrieve(question) -> list of passage texts``)
    for context distillation. None: not provided."""

    load_teacher: Callable[[], Any] | None = None
    retrieve: Callable[[str], list[str]] | None = None


class TrainingSession:
    """One run's objective at work: the model it trains and how. The loop calls, in order: ``counts``,
    ``parameter_groups`` (for AdamW), then per step ``before_step``, ``collate``/``units``/``loss``, ``trainable``
    (for clipping); ``evaluate`` at each validation pass; ``save`` and ``summary`` at the end. This class is SFT's;
    other objectives subclass it and override what differs."""

    def __init__(self, objective: Objective, config: Any, data: PreparedData, total_steps: int,
                 resources: TrainingResources | None = None) -> None:
        self.objective, self.config, self.data, self.total_steps = objective, config, data, total_steps
        self.resources = resources or TrainingResources()
        self.device = pick_device(config.device)
        self.model, self.loaded, self.compute = self.load_model()
        self.pad_id = self.tokenizer.pad_token_id
        self.fast = config.answer_only_head and objective.fast_path(self.model)

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def base_model_name(self) -> str:
        return self.loaded.resolved.name

    def load_model(self) -> tuple[Any, Any, torch.dtype]:
        """(the model to train, the LoadedModel it came from, the compute dtype)."""
        return load_training_model(self.config, self.total_steps)

    def start(self, run: Run, resumed: bool) -> None:
        """Called once the run folder exists, before the first validation or step (also on resume): an objective
        may keep files there (a distillation run caches its teacher's logits)."""

    def counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of what this run trains and saves."""
        return count_parameters(self.model)

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """AdamW's parameter groups (core.training.hybrids: one group, or learning rates by depth)."""
        return parameter_groups(self.model, self.config, lr)

    def trainable(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def before_step(self, step: int) -> None:
        """Called before optimizer step ``step`` + 1 (gradual unfreezing opens blocks here)."""
        before_step(self.model, self.config, step)

    def collate(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        return self.objective.collate(rows, self.pad_id, self.device)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return self.objective.units(batch)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.objective.loss(self.model, batch, self.fast)

    def evaluate(self, examples: list[Any]) -> dict[str, float | None]:
        """The validation measures at one pass: ``val_loss`` first (the curve), then the objective's own."""
        return {"val_loss": evaluate_loss(self.model, examples, self.config.batch_size, self.pad_id, self.device,
                                          self.compute, self.objective)}

    def save(self, run: Run, state: dict[str, Any] | None = None) -> Path:
        """The trained weights in the method's save format; returns their folder. ``state``: the whole tensors of
        a sharded model (core.training.sharding.whole_state)."""
        return save_trained(run, self.model, self.tokenizer, get_method(self.config.method).save_format, state)

    def summary(self) -> dict[str, Any]:
        """The objective's extras for result.json and ``train --json`` (after ``save``)."""
        return {}


@dataclass(frozen=True)
class Objective:
    """One training objective. ``encode(tokenizer, example, system, max_length)`` -> an encoded row (with
    ``input_ids`` and ``answer_tokens``); ``collate(rows, pad_id, device)`` -> a batch; ``loss(model, batch, fast)``
    -> the mean loss over ``units(batch)`` units; ``fast_path(model)``: whether ``loss`` may take its shortcut.
    ``session``: the TrainingSession class a run of it uses. ``prepare(config, load_tokenizer)`` -> PreparedData,
    where the objective reads its data its own way (None: core.training.batches reads instruction data).
    ``check(config)``: raises ConfigError naming the field for settings this objective cannot use. ``methods``:
    the methods it trains with (None: all). ``fields``: the TrainingConfig fields that are its own (the Train tab
    shows them only for it)."""

    name: str
    title: str
    description: str
    encode: Any
    collate: Any
    loss: Any
    units: Any
    fast_path: Any
    session: type[TrainingSession] = TrainingSession
    prepare: Callable[..., Any] | None = None
    check: Callable[[Any], None] | None = None
    methods: tuple[str, ...] | None = None
    fields: tuple[str, ...] = ()

    def validate(self, config: Any) -> None:
        """The objective's rules for ``config`` (called by TrainingConfig): its methods, then its own check."""
        if self.methods is not None and config.method not in self.methods:
            raise ConfigError(f"method: the {self.name} objective trains with {', '.join(self.methods)}; "
                              f"got {config.method!r}")
        if self.check is not None:
            self.check(config)


def _sft_loss(model: Any, batch: dict[str, torch.Tensor], fast: bool) -> torch.Tensor:
    return answer_loss(model, batch) if fast else model(**batch).loss


OBJECTIVES: Registry[Objective] = Registry("objective")
register_objective = OBJECTIVES.register
get_objective = OBJECTIVES.lookup


register_objective(Objective(
    "sft", "Instruction tuning",
    "Instruction tuning: next-token cross-entropy on the answer tokens (the prompt is masked).",
    encode_for_training, collate, _sft_loss, loss_tokens, supports_answer_only_head,
))
