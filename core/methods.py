"""Fine-tuning methods: a registry of name -> config dataclass + builder.

A builder takes a freshly loaded base model (its own copy, never the shared inference model) and returns the model
to train, with exactly the method's parameters trainable. QLoRA also says how the base must be loaded (quantized).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PEFT_FORMAT = "peft"  # adapter folder written by PeftModel.save_pretrained
FULL_FORMAT = "full"  # a whole transformers model folder
PARTIAL_FORMAT = "partial"  # only the trained tensors of the base model (layer-wise)


def _help(text: str, default: Any = MISSING, **extra: Any) -> Any:
    return field(default=default, metadata={"help": text, **extra})


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{name}: {message}")


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
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: not a setting of this method; known: {', '.join(sorted(known)) or 'none'}")
        for f in fields(cls):  # coerce strings from a CLI/UI to the declared scalar type
            if f.name in values and isinstance(values[f.name], str) and f.type in ("int", "float", "bool"):
                values[f.name] = _coerce(f.name, values[f.name], f.type)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, text: str, kind: str) -> Any:
    try:
        if kind == "bool":
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"{name}: expected {kind}, got {text!r}") from None


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

    def __post_init__(self) -> None:
        _check(isinstance(self.r, int) and 1 <= self.r <= 1024, "r", f"must be an integer in 1..1024, got {self.r!r}")
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
                raise ValueError(f"feedforward_modules: {extra[0]} is not in target_modules")


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


# --------------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildContext:
    """What a builder may need beyond the model: the tokenizer and the planned number of optimizer steps."""

    tokenizer: PreTrainedTokenizerBase
    total_steps: int


Builder = Callable[["PreTrainedModel", Any, BuildContext], "PreTrainedModel"]


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    description: str
    config_class: type[MethodConfig]
    builder: Builder
    save_format: str  # PEFT_FORMAT, FULL_FORMAT or PARTIAL_FORMAT
    default_lr: float
    mergeable: bool = False  # a LoRA-family adapter that folds into the base weights
    prompt_learning: bool = False  # virtual tokens / prefixes: cannot share a batch with other adapters

    def make_config(self, values: dict[str, Any] | MethodConfig | None = None) -> MethodConfig:
        if isinstance(values, self.config_class):
            return values
        if isinstance(values, MethodConfig):
            raise ValueError(f"method_config: a {type(values).__name__} given for method {self.name}")
        return self.config_class.from_dict(values)  # type: ignore[arg-type]

    def settings(self) -> list[dict[str, Any]]:
        """The method's settings as ``{name, default, help}`` rows (for a UI form or ``--help``)."""
        rows = []
        for f in fields(self.config_class):
            rows.append({"name": f.name, "default": f.default, "type": f.type, "help": f.metadata.get("help", "")})
        return rows


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def _freeze_all(model: PreTrainedModel) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def build_full(model: PreTrainedModel, config: FullConfig, ctx: BuildContext) -> PreTrainedModel:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def _decoder_layers(model: PreTrainedModel):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"method: layer-wise training needs a decoder with model.layers; {type(model).__name__} "
                         "has none")
    return inner, layers


def build_freeze(model: PreTrainedModel, config: FreezeConfig, ctx: BuildContext) -> PreTrainedModel:
    _freeze_all(model)
    inner, layers = _decoder_layers(model)
    if config.trainable_layers > len(layers):
        raise ValueError(f"trainable_layers: the model has {len(layers)} layers, got {config.trainable_layers}")
    for layer in layers[len(layers) - config.trainable_layers :]:
        for param in layer.parameters():
            param.requires_grad_(True)
    if config.train_norm and getattr(inner, "norm", None) is not None:
        inner.norm.requires_grad_(True)
    if config.train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
        model.get_output_embeddings().requires_grad_(True)
    return model


def _task_type():
    from peft import TaskType

    return TaskType.CAUSAL_LM


def build_lora(model: PreTrainedModel, config: LoraConfig, ctx: BuildContext) -> PreTrainedModel:
    import peft

    peft_config = peft.LoraConfig(
        task_type=_task_type(), r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, use_dora=config.use_dora, use_rslora=config.use_rslora,
    )
    return peft.get_peft_model(model, peft_config)


def build_qlora(model: PreTrainedModel, config: QLoraConfig, ctx: BuildContext) -> PreTrainedModel:
    from peft import prepare_model_for_kbit_training

    if not getattr(model, "is_loaded_in_4bit", False) and not getattr(model, "is_loaded_in_8bit", False):
        raise ValueError("method: qlora needs a base loaded through quantization_config (see quantization_config())")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return build_lora(model, config, ctx)


def quantization_config(config: QLoraConfig, compute_dtype: Any) -> Any:
    """The bitsandbytes settings that load the frozen QLoRA base."""
    from transformers import BitsAndBytesConfig

    if config.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type,
                              bnb_4bit_use_double_quant=config.double_quant, bnb_4bit_compute_dtype=compute_dtype)


def build_prompt_tuning(model: PreTrainedModel, config: PromptTuningConfig, ctx: BuildContext) -> PreTrainedModel:
    """Soft prompt; ``init=text`` copies the token embeddings of ``init_text`` (repeated to the prompt length).

    The copy is done here rather than by PEFT's TEXT init, which re-loads the tokenizer by name (a converted cache
    or an in-memory tokenizer has none to load)."""
    import peft
    import torch

    peft_config = peft.PromptTuningConfig(task_type=_task_type(), num_virtual_tokens=config.num_virtual_tokens,
                                          prompt_tuning_init=peft.PromptTuningInit.RANDOM)
    peft_model = peft.get_peft_model(model, peft_config)
    if config.init == "text":
        ids = ctx.tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
        n = config.num_virtual_tokens
        ids = (ids * (n // max(1, len(ids)) + 1))[:n]
        with torch.no_grad():
            word_embeddings = peft_model.get_input_embeddings().weight  # (vocab, hidden)
            encoder = peft_model.prompt_encoder[peft_model.active_adapter]
            encoder.embedding.weight.copy_(word_embeddings[torch.tensor(ids)].to(encoder.embedding.weight.dtype))
    return peft_model


def build_prefix_tuning(model: PreTrainedModel, config: PrefixTuningConfig, ctx: BuildContext) -> PreTrainedModel:
    import peft

    peft_config = peft.PrefixTuningConfig(task_type=_task_type(), num_virtual_tokens=config.num_virtual_tokens,
                                          prefix_projection=config.prefix_projection,
                                          encoder_hidden_size=config.encoder_hidden_size)
    return peft.get_peft_model(model, peft_config)


def build_p_tuning(model: PreTrainedModel, config: PTuningConfig, ctx: BuildContext) -> PreTrainedModel:
    import peft

    peft_config = peft.PromptEncoderConfig(task_type=_task_type(), num_virtual_tokens=config.num_virtual_tokens,
                                           encoder_hidden_size=config.encoder_hidden_size,
                                           encoder_reparameterization_type=config.encoder_type)
    return peft.get_peft_model(model, peft_config)


def build_ia3(model: PreTrainedModel, config: IA3Config, ctx: BuildContext) -> PreTrainedModel:
    import peft

    peft_config = peft.IA3Config(task_type=_task_type(), target_modules=config.target_modules,
                                 feedforward_modules=config.feedforward_modules)
    return peft.get_peft_model(model, peft_config)


def build_adalora(model: PreTrainedModel, config: AdaLoraConfig, ctx: BuildContext) -> PreTrainedModel:
    import peft

    # The last step must fall in the final phase (ranks fixed and re-applied every step); otherwise triplets pruned
    # at the last re-allocation train again and the saved, rank-cut adapter differs from the trained one.
    total = ctx.total_steps
    if total < 2:
        raise ValueError("max_steps: adalora needs at least 2 optimizer steps (a budgeting and a final phase)")
    tfinal = max(1, int(total * config.final_fraction))
    tinit = int(total * config.warmup_fraction)
    if total - tinit - tfinal < 1:  # AdaLoRA needs a budgeting phase of at least one step
        tinit = 0
        tfinal = min(tfinal, total - 1)
    peft_config = peft.AdaLoraConfig(
        task_type=_task_type(), init_r=config.init_r, target_r=config.target_r, lora_alpha=config.alpha,
        lora_dropout=config.dropout, target_modules=config.target_modules, total_step=total, tinit=tinit,
        tfinal=tfinal, deltaT=config.prune_every,
    )
    return peft.get_peft_model(model, peft_config)


for _method in (
    Method("full", "Full fine-tuning", "Every weight of the model trains.", FullConfig, build_full, FULL_FORMAT, 2e-5),
    Method("freeze", "Layer-wise (freeze)", "Only the top N transformer blocks train; the rest stay frozen.",
           FreezeConfig, build_freeze, PARTIAL_FORMAT, 5e-5),
    Method("lora", "LoRA", "Low-rank update matrices beside frozen weights (optionally DoRA / rsLoRA).",
           LoraConfig, build_lora, PEFT_FORMAT, 2e-4, mergeable=True),
    Method("qlora", "QLoRA", "LoRA over a 4-bit or 8-bit quantized frozen base (bitsandbytes).",
           QLoraConfig, build_qlora, PEFT_FORMAT, 2e-4, mergeable=True),
    Method("prompt_tuning", "Prompt tuning", "A learned soft prompt prepended to the input embeddings.",
           PromptTuningConfig, build_prompt_tuning, PEFT_FORMAT, 3e-2, prompt_learning=True),
    Method("prefix_tuning", "Prefix tuning", "Learned key/value prefixes in every attention layer.",
           PrefixTuningConfig, build_prefix_tuning, PEFT_FORMAT, 1e-2, prompt_learning=True),
    Method("p_tuning", "P-tuning", "Virtual tokens produced by a small trained prompt encoder (MLP or LSTM).",
           PTuningConfig, build_p_tuning, PEFT_FORMAT, 1e-2, prompt_learning=True),
    Method("ia3", "IA3", "Learned scales on attention keys/values and feed-forward activations.",
           IA3Config, build_ia3, PEFT_FORMAT, 3e-3, mergeable=True),
    Method("adalora", "AdaLoRA", "LoRA whose rank budget is re-allocated across matrices during training.",
           AdaLoraConfig, build_adalora, PEFT_FORMAT, 5e-4, mergeable=True),
):
    register_method(_method)


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once; 4-bit weights counted as their elements."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":  # packed two 4-bit values per byte
            n = int(getattr(param, "quant_state", None).shape.numel()) if getattr(param, "quant_state", None) else n * 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
