"""Builders: a freshly loaded base model (its own copy, never the shared inference model) in, the model to train out,
with exactly the method's parameters trainable. QLoRA also says how the base must be loaded (quantized)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.methods.configs import (
    AdaLoraConfig,
    FreezeConfig,
    FullConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    QLoraConfig,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BuildContext:
    """What a builder may need beyond the model: the tokenizer, the planned number of optimizer steps, and the PEFT
    task type of the model (CAUSAL_LM; SEQ_CLS for a classification head, which then always trains)."""

    tokenizer: PreTrainedTokenizerBase
    total_steps: int
    task_type: str = "CAUSAL_LM"


Builder = Callable[["PreTrainedModel", Any, BuildContext], "PreTrainedModel"]


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
        raise ConfigError(f"method: layer-wise training needs a decoder with model.layers; {type(model).__name__} "
                         "has none")
    return inner, layers


def build_freeze(model: PreTrainedModel, config: FreezeConfig, ctx: BuildContext) -> PreTrainedModel:
    _freeze_all(model)
    inner, layers = _decoder_layers(model)
    if config.trainable_layers > len(layers):
        raise ConfigError(f"trainable_layers: the model has {len(layers)} layers, got {config.trainable_layers}")
    for layer in layers[len(layers) - config.trainable_layers :]:
        for param in layer.parameters():
            param.requires_grad_(True)
    if config.train_norm and getattr(inner, "norm", None) is not None:
        inner.norm.requires_grad_(True)
    if config.train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
        model.get_output_embeddings().requires_grad_(True)
    return model


def _task_type(ctx: BuildContext):
    from peft import TaskType

    return TaskType(ctx.task_type)


def build_lora(model: PreTrainedModel, config: LoraConfig, ctx: BuildContext) -> PreTrainedModel:
    import peft

    peft_config = peft.LoraConfig(
        task_type=_task_type(ctx), r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, use_dora=config.use_dora, use_rslora=config.use_rslora,
    )
    return peft.get_peft_model(model, peft_config)


def build_qlora(model: PreTrainedModel, config: QLoraConfig, ctx: BuildContext) -> PreTrainedModel:
    from peft import prepare_model_for_kbit_training

    if not getattr(model, "is_loaded_in_4bit", False) and not getattr(model, "is_loaded_in_8bit", False):
        raise ConfigError("method: qlora needs a base loaded through quantization_config (see quantization_config())")
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

    peft_config = peft.PromptTuningConfig(task_type=_task_type(ctx), num_virtual_tokens=config.num_virtual_tokens,
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

    peft_config = peft.PrefixTuningConfig(task_type=_task_type(ctx), num_virtual_tokens=config.num_virtual_tokens,
                                          prefix_projection=config.prefix_projection,
                                          encoder_hidden_size=config.encoder_hidden_size)
    return peft.get_peft_model(model, peft_config)


def build_p_tuning(model: PreTrainedModel, config: PTuningConfig, ctx: BuildContext) -> PreTrainedModel:
    import peft

    peft_config = peft.PromptEncoderConfig(task_type=_task_type(ctx), num_virtual_tokens=config.num_virtual_tokens,
                                           encoder_hidden_size=config.encoder_hidden_size,
                                           encoder_reparameterization_type=config.encoder_type)
    return peft.get_peft_model(model, peft_config)


def build_ia3(model: PreTrainedModel, config: IA3Config, ctx: BuildContext) -> PreTrainedModel:
    import peft

    peft_config = peft.IA3Config(task_type=_task_type(ctx), target_modules=config.target_modules,
                                 feedforward_modules=config.feedforward_modules)
    return peft.get_peft_model(model, peft_config)


def build_adalora(model: PreTrainedModel, config: AdaLoraConfig, ctx: BuildContext) -> PreTrainedModel:
    import peft

    # The last step must fall in the final phase (ranks fixed and re-applied every step); otherwise triplets pruned
    # at the last re-allocation train again and the saved, rank-cut adapter differs from the trained one.
    total = ctx.total_steps
    if total < 2:
        raise ConfigError("max_steps: adalora needs at least 2 optimizer steps (a budgeting and a final phase)")
    tfinal = max(1, int(total * config.final_fraction))
    tinit = int(total * config.warmup_fraction)
    if total - tinit - tfinal < 1:  # AdaLoRA needs a budgeting phase of at least one step
        tinit = 0
        tfinal = min(tfinal, total - 1)
    peft_config = peft.AdaLoraConfig(
        task_type=_task_type(ctx), init_r=config.init_r, target_r=config.target_r, lora_alpha=config.alpha,
        lora_dropout=config.dropout, target_modules=config.target_modules, total_step=total, tinit=tinit,
        tfinal=tfinal, deltaT=config.prune_every,
    )
    return peft.get_peft_model(model, peft_config)


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
