"""Each method's own settings as a dataclass: field help (read by the CLI and the UI), defaults and validation that
names the field. ``MethodConfig.from_dict`` takes strings from a form or ``--set KEY=VALUE`` and coerces them once."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from core.errors import ConfigError


def _help(text: str, default: Any = MISSING, **extra: Any) -> Any:
    return field(default=default, metadata={"help": text, **extra})


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


def _check_virtual_tokens(value: Any) -> None:
    _check(isinstance(value, int) and 1 <= value <= 512, "num_virtual_tokens",
           f"must be an integer in 1..512, got {value!r}")


def _modules(value: str | list[str], name: str) -> str | list[str]:
    """``"all-linear"``, a comma-separated string or a list of module names."""
    if isinstance(value, str):
        value = value.strip()
        _check(bool(value), name, "is empty; give module names such as q_proj,v_proj or all-linear")
        return value if value == "all-linear" else [part.strip() for part in value.split(",") if part.strip()]
    _check(isinstance(value, list) and value and all(isinstance(v, str) and v for v in value), name,
           "must be a list of module names or all-linear")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MethodConfig:
    """Base of every method config. ``from_dict`` names an unknown field instead of a TypeError."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> MethodConfig:
        """The config from plain values: a CLI's ``--set`` strings, a form's numbers (``8.0`` from a number box for
        an int field), JSON. Scalars are coerced once, here, to the declared type (see ``coerce``); None means "not
        set" (the default). ConfigError naming the field for an unknown name or a value of the wrong kind."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            known_list = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"{unknown[0]}: not a setting of this method; known: {known_list}")
        for f in fields(cls):
            if f.name not in values:
                continue
            if values[f.name] is None and "None" not in str(f.type):
                del values[f.name]
            elif f.type in SCALAR_TYPES:
                values[f.name] = coerce(f.name, values[f.name], str(f.type))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SCALAR_TYPES = ("int", "float", "bool")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def coerce(name: str, value: Any, kind: str) -> Any:
    """``value`` as ``kind`` (int, float or bool): from text (``"8"``, ``"0.1"``, ``"yes"``), a whole float for an
    int (``8.0``), 0/1 for a bool. ConfigError ``"<name>: expected <kind>, got <value>"`` otherwise."""
    wrong = ConfigError(f"{name}: expected {kind}, got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        if kind == "bool":
            if text not in _TRUE + _FALSE:
                raise wrong
            return text in _TRUE
        try:
            number = float(text) if kind == "float" or not text.lstrip("+-").isdigit() else int(text)
        except ValueError:
            raise wrong from None
        value = number
    if isinstance(value, bool):
        if kind == "bool":
            return value
        raise wrong
    if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
        raise wrong
    if kind == "bool":
        if value not in (0, 1):
            raise wrong
        return bool(value)
    if kind == "int":
        if not float(value).is_integer():
            raise wrong
        return int(value)
    return float(value)


@dataclass
class FullConfig(MethodConfig):
    """Every weight trains. No settings beyond the training ones."""


@dataclass
class FreezeConfig(MethodConfig):
    trainable_layers: int = _help("How many of the top transformer blocks train (the rest stay frozen)", 2)
    train_embeddings: bool = _help("Also train the token embeddings (tied to the LM head on SmolLM2)", False)
    train_norm: bool = _help("Also train the final layer norm", True)

    def __post_init__(self) -> None:
        _check(isinstance(self.trainable_layers, int) and self.trainable_layers >= 1, "trainable_layers",
               f"must be an integer >= 1, got {self.trainable_layers!r}")


@dataclass
class LoraConfig(MethodConfig):
    r: int = _help("LoRA rank: inner dimension of the low-rank update", 8)
    alpha: int = _help("LoRA scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA)", 16)
    dropout: float = _help("Dropout on the LoRA input", 0.05)
    target_modules: str | list[str] = _help("Modules to adapt: all-linear or names such as q_proj,v_proj",
                                            "all-linear")
    use_dora: bool = _help("DoRA: weight-decomposed LoRA (magnitude + direction)", False)
    use_rslora: bool = _help("rsLoRA: scale by alpha / sqrt(r), stable at high ranks", False)
    unfreeze_top: int = _help("Also train the top N transformer blocks fully (no LoRA inside them); 0 = LoRA only", 0)

    def __post_init__(self) -> None:
        _check(isinstance(self.r, int) and 1 <= self.r <= 1024, "r", f"must be an integer in 1..1024, got {self.r!r}")
        _check(isinstance(self.unfreeze_top, int) and not isinstance(self.unfreeze_top, bool)
               and self.unfreeze_top >= 0, "unfreeze_top", f"must be an integer >= 0, got {self.unfreeze_top!r}")
        _check(isinstance(self.alpha, int | float) and self.alpha > 0, "alpha", f"must be > 0, got {self.alpha!r}")
        _check(isinstance(self.dropout, int | float) and 0 <= self.dropout < 1, "dropout",
               f"must be in [0, 1), got {self.dropout!r}")
        self.target_modules = _modules(self.target_modules, "target_modules")


@dataclass
class QLoraConfig(LoraConfig):
    bits: int = _help("Quantize the frozen base to 4 or 8 bits (bitsandbytes)", 4)
    quant_type: str = _help("4-bit data type: nf4 (normal float) or fp4", "nf4")
    double_quant: bool = _help("Quantize the 4-bit scales too (saves ~0.4 bit per weight)", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.bits in (4, 8), "bits", f"must be 4 or 8, got {self.bits!r}")
        _check(self.quant_type in ("nf4", "fp4"), "quant_type", f"must be nf4 or fp4, got {self.quant_type!r}")
        _check(self.unfreeze_top == 0, "unfreeze_top", "qlora's base is quantized, its blocks cannot train fully; "
               "use lora for LoRA plus fully trained top blocks")


@dataclass
class PromptTuningConfig(MethodConfig):
    num_virtual_tokens: int = _help("Length of the learned soft prompt, in tokens", 20)
    init: str = _help("Soft prompt start: text (the embeddings of init_text) or random", "text")
    init_text: str = _help("Text whose token embeddings start the soft prompt (init=text)",
                           "Answer the request accurately and concisely.")

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        _check(self.init in ("text", "random"), "init", f"must be text or random, got {self.init!r}")
        _check(self.init != "text" or bool(self.init_text.strip()), "init_text", "is empty while init=text")


@dataclass
class MultitaskPromptTuningConfig(MethodConfig):
    """Multi-task prompt tuning (PEFT's MultitaskPromptTuningConfig, Wang et al. 2023): one soft prompt shared by all
    tasks, times a rank-``num_ranks`` matrix of each task's own. A run trains both stages of the recipe in turn: the
    source stage (the shared prompt and every task's factors, on rows of all tasks), then the target stage (the
    shared prompt fixed; each task's factors go on learning from that task's rows only)."""

    num_virtual_tokens: int = _help("Length of the shared soft prompt, in tokens", 20)
    num_ranks: int = _help("Rank of each task's factor of the prompt (PEFT's num_ranks)", 1)
    tasks: str | list[str] = _help("Task names, in task-id order: auto (the training rows' task values, sorted) or "
                                   "names such as qa,classification", "auto")
    source_fraction: float = _help("Share of the steps in the source stage (all tasks train the shared prompt); the "
                                   "rest is the target stage (each task's own factors only)", 0.5)
    init: str = _help("Shared prompt start: text (the embeddings of init_text) or random", "text")
    init_text: str = _help("Text whose token embeddings start the shared prompt (init=text)",
                           "Answer the request accurately and concisely.")

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        _check(isinstance(self.num_ranks, int) and 1 <= self.num_ranks <= 64, "num_ranks",
               f"must be an integer in 1..64, got {self.num_ranks!r}")
        _check(isinstance(self.source_fraction, int | float) and 0 < self.source_fraction <= 1, "source_fraction",
               f"must be in (0, 1], got {self.source_fraction!r}")
        _check(self.init in ("text", "random"), "init", f"must be text or random, got {self.init!r}")
        _check(self.init != "text" or bool(self.init_text.strip()), "init_text", "is empty while init=text")
        if isinstance(self.tasks, str) and self.tasks.strip() != "auto":
            self.tasks = [part.strip() for part in self.tasks.split(",") if part.strip()]
        if isinstance(self.tasks, str):
            self.tasks = "auto"
        else:
            _check(isinstance(self.tasks, list) and bool(self.tasks) and all(isinstance(t, str) and t.strip()
                                                                             for t in self.tasks),
                   "tasks", "must be auto or a list of task names")
            _check(len(set(self.tasks)) == len(self.tasks), "tasks", f"names a task twice: {self.tasks}")

    @property
    def resolved(self) -> bool:
        """Whether the task names are known (``tasks`` is a list, not ``auto``)."""
        return isinstance(self.tasks, list)


@dataclass
class PrefixTuningConfig(MethodConfig):
    num_virtual_tokens: int = _help("Prefix length: learned key/value pairs per layer", 20)
    prefix_projection: bool = _help("Reparameterise the prefix through a two-layer MLP", False)
    encoder_hidden_size: int = _help("Hidden size of that MLP (prefix_projection only)", 256)

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        _check(isinstance(self.encoder_hidden_size, int) and self.encoder_hidden_size >= 1, "encoder_hidden_size",
               f"must be an integer >= 1, got {self.encoder_hidden_size!r}")


@dataclass
class PTuningConfig(MethodConfig):
    num_virtual_tokens: int = _help("Number of virtual tokens produced by the prompt encoder", 20)
    encoder_hidden_size: int = _help("Hidden size of the prompt encoder", 128)
    encoder_type: str = _help("Prompt encoder: MLP or LSTM", "MLP")

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        _check(isinstance(self.encoder_hidden_size, int) and self.encoder_hidden_size >= 1, "encoder_hidden_size",
               f"must be an integer >= 1, got {self.encoder_hidden_size!r}")
        _check(self.encoder_type in ("MLP", "LSTM"), "encoder_type", f"must be MLP or LSTM, got {self.encoder_type!r}")


@dataclass
class IA3Config(MethodConfig):
    target_modules: str | list[str] = _help("Modules whose activations get learned scales", "k_proj,v_proj,down_proj")
    feedforward_modules: str | list[str] = _help("Of those, the feed-forward ones (scaled on the input)", "down_proj")

    def __post_init__(self) -> None:
        self.target_modules = _modules(self.target_modules, "target_modules")
        self.feedforward_modules = _modules(self.feedforward_modules, "feedforward_modules")
        if isinstance(self.target_modules, list) and isinstance(self.feedforward_modules, list):
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ConfigError(f"feedforward_modules: {extra[0]} is not in target_modules")


@dataclass
class AdaLoraConfig(MethodConfig):
    init_r: int = _help("Starting rank of every adapted matrix", 12)
    target_r: int = _help("Average rank left after pruning", 8)
    alpha: int = _help("Scaling numerator (as LoRA's alpha)", 32)
    dropout: float = _help("Dropout on the adapter input", 0.05)
    target_modules: str | list[str] = _help("Modules to adapt: all-linear or names", "all-linear")
    warmup_fraction: float = _help("Share of steps before rank pruning starts (tinit)", 0.1)
    final_fraction: float = _help("Share of steps at the end with the final ranks fixed (tfinal)", 0.2)
    prune_every: int = _help("Steps between two rank re-allocations (deltaT)", 5)

    def __post_init__(self) -> None:
        _check(isinstance(self.init_r, int) and self.init_r >= 1, "init_r",
               f"must be an integer >= 1, got {self.init_r!r}")
        _check(isinstance(self.target_r, int) and 1 <= self.target_r <= self.init_r, "target_r",
               f"must be an integer in 1..init_r ({self.init_r}), got {self.target_r!r}")
        _check(isinstance(self.dropout, int | float) and 0 <= self.dropout < 1, "dropout",
               f"must be in [0, 1), got {self.dropout!r}")
        _check(0 <= self.warmup_fraction < 1, "warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction!r}")
        _check(0 <= self.final_fraction < 1 and self.warmup_fraction + self.final_fraction < 1, "final_fraction",
               "must be in [0, 1) with warmup_fraction + final_fraction < 1")
        _check(isinstance(self.prune_every, int) and self.prune_every >= 1, "prune_every",
               f"must be an integer >= 1, got {self.prune_every!r}")
        self.target_modules = _modules(self.target_modules, "target_modules")
