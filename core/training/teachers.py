"""The two models of a distillation run (core.training.distillation): where the teacher comes from (a run or a
model) and the checks that need it before any weights load (the engine runs them before a run folder exists), and
the student made of the teacher's own blocks (``shrink``: DistilBERT's initialisation)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.methods import get_method
from core.methods.builders import find_blocks
from core.methods.loading import load_trained_model
from core.models import LoadedModel, load_causal_lm, load_tokenizer, loadable_location, resolve_base_model

if TYPE_CHECKING:
    from core.training.config import TrainingConfig


# ---- the teacher -----------------------------------------------------------------------------------------------------


def is_run_folder(path: Path) -> bool:
    """A training run folder (config.json and status.json), as opposed to a model folder (config.json alone)."""
    return (path / "config.json").is_file() and (path / "status.json").is_file()


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights come from: a run folder (``run_dir``) or a model (``name``: a registry name, hub id
    or folder). ``name`` is what the person gave (recorded as the run's ``teacher``)."""

    name: str
    run_dir: Path | None = None

    @classmethod
    def of(cls, reference: str) -> TeacherSource:
        """A folder holding a run is that run; anything else is a model (the engine also resolves run ids)."""
        path = Path(reference).expanduser()
        return cls(reference, path if is_run_folder(path) else None)

    def _run_values(self) -> dict[str, Any]:
        from core.runs import Run

        return Run(self.run_dir).config if self.run_dir is not None else {}

    @property
    def base_model(self) -> str | None:
        """The model the teacher's weights start from: a run's base model (None: the default), or the model."""
        return self._run_values().get("base_model") if self.run_dir is not None else self.name

    def _weights_location(self) -> str:
        """Where the teacher's config and tokenizer are read: a full-format run's model folder, else its base."""
        from core.methods import FULL_FORMAT
        from core.runs import Run

        values = self._run_values()
        if self.run_dir is not None and get_method(values.get("method")).save_format == FULL_FORMAT:
            weights = Run(self.run_dir).weights_dir
            if weights is None:
                raise ConfigError(f"teacher: run {self.run_dir.name} saved no weights")
            return str(weights)
        return loadable_location(resolve_base_model(self.base_model))

    def tokenizer(self) -> Any:
        try:
            return load_tokenizer(self._weights_location())
        except (OSError, ValueError) as err:
            raise ConfigError(f"teacher: {self.name} is neither a run nor a model that can be loaded "
                              f"({str(err).splitlines()[0][:200]})") from None

    def num_layers(self) -> int:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self._weights_location()).num_hidden_layers)

    def load(self, device: str | None = None, dtype: str | None = None) -> LoadedModel:
        if self.run_dir is not None:
            return load_trained_model(self.run_dir, device=device, dtype=dtype)
        return load_causal_lm(self.name, device=device, dtype=dtype)


def student_base_config(config: TrainingConfig, source: TeacherSource) -> TrainingConfig:
    """``config`` with ``base_model`` set to the model the student's weights start from: the ``--student`` model,
    else the teacher's base. The run records it: an adapter applies to it, and the Arena offers the run for it."""
    wanted = config.student or source.base_model
    if wanted is None or config.base_model == wanted:
        return config
    if config.base_model is None:
        return replace(config, base_model=wanted)
    if resolve_base_model(config.base_model).location != resolve_base_model(wanted).location:
        whose = "the --student model" if config.student else "the teacher's base model"
        raise ConfigError(f"base_model: the student starts from {wanted} ({whose}), not {config.base_model}; "
                          "leave --model out")
    return config


def same_vocabulary(teacher: Any, student: Any, student_name: str) -> None:
    """ConfigError unless the two tokenizers map the same strings to the same ids: the loss compares the two
    next-token distributions id by id."""
    if teacher.get_vocab() != student.get_vocab():
        raise ConfigError(f"student: {student_name}'s tokenizer differs from the teacher's ({len(student)} vs "
                          f"{len(teacher)} tokens); distillation compares their next-token distributions token by "
                          "token, so both need the same tokenizer")


def check_layers(config: TrainingConfig, teacher_layers: int) -> None:
    if config.student_layers is not None and not 1 <= config.student_layers < teacher_layers:
        raise ConfigError(f"student_layers: must be between 1 and {teacher_layers - 1} (the teacher has "
                          f"{teacher_layers} blocks), got {config.student_layers}")


def check_teacher(config: TrainingConfig, source: TeacherSource) -> None:
    """What can be checked before any weights load (the engine calls it before the run folder exists): the teacher
    can be found, its tokenizer is the student's, the student is smaller."""
    teacher_tokenizer = source.tokenizer()
    student = config.student or config.base_model
    same_vocabulary(teacher_tokenizer, load_tokenizer(student), student or "the base model")
    check_layers(config, source.num_layers())


# ---- the student -----------------------------------------------------------------------------------------------------


def kept_layers(total: int, keep: int) -> list[int]:
    """``keep`` evenly spaced block indices of ``total``, the first and the last included (one block: the first)."""
    if keep == 1:
        return [0]
    return [int(i * (total - 1) / (keep - 1) + 0.5) for i in range(keep)]


def shrink(teacher: Any, layers: int) -> Any:
    """A new model of the teacher's architecture with ``layers`` of its blocks (``kept_layers``), every weight copied
    from the teacher (embeddings, the kept blocks, final norm, head), in fp32. A PEFT teacher's adapter is merged
    into a copy first, so the student starts from what the teacher computes."""
    import torch

    source = teacher
    if hasattr(teacher, "merge_and_unload"):
        try:
            source = copy.deepcopy(teacher).merge_and_unload()
        except (AttributeError, NotImplementedError, ValueError):  # prompt learning: nothing to merge
            source = teacher.get_base_model()
    prefix, blocks = find_blocks(source)
    keep = kept_layers(len(blocks), layers)
    config = copy.deepcopy(source.config)
    total = config.num_hidden_layers
    for key, value in list(vars(config).items()):  # per-block settings (layer_types, ...) follow their blocks
        if isinstance(value, (list, tuple)) and len(value) == total and not key.startswith("_"):
            setattr(config, key, type(value)(value[i] for i in keep))
    config.num_hidden_layers = layers
    state = {}
    mapping = {f"{prefix}.{old}.": f"{prefix}.{new}." for new, old in enumerate(keep)}
    for name, tensor in source.state_dict().items():
        if not name.startswith(prefix + "."):
            state[name] = tensor
            continue
        for old, new in mapping.items():
            if name.startswith(old):
                state[new + name[len(old):]] = tensor
    student = type(source)(config).float()
    with torch.no_grad():  # load_state_dict copies: the student never shares storage with the teacher
        result = student.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise ConfigError(f"student_layers: the student's weights do not match the teacher's "
                          f"({(missing or result.unexpected_keys)[0]})")
    student.tie_weights()
    return student.to(next(teacher.parameters()).device).eval()
