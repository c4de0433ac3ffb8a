"""Builders: a freshly loaded base model (its own copy, never the shared inference model) in, the model to train out,
with exactly the method's parameters trainable. QLoRA also says how the base must be loaded (quantized)."""

from __future__ import annotations

import re
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
    MultitaskPromptTuningConfig,
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


def find_blocks(model: PreTrainedModel) -> tuple[str, list[Any]]:
    """The transformer blocks of ``model``, bottom to top, and the dotted name of the list holding them in the plain
    transformers model (inside a PEFT wrapper: in its base model): a decoder's ``model.layers`` (Llama, Qwen ...), a
    BERT's ``bert.encoder.layer`` (all-MiniLM-L6-v2), GPT-2's ``transformer.h``. ConfigError when it has none."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", "")
    inner, owner = (getattr(base, prefix), prefix) if prefix and hasattr(base, prefix) else (base, "")
    for path in _BLOCK_LISTS:
        node = inner
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, torch.nn.ModuleList) and len(node):
            return ".".join(filter(None, (owner, path))), list(node)
    raise ConfigError(f"method: layer-wise training needs transformer blocks (model.layers, encoder.layer); "
                      f"{type(base).__name__} has none")


_BLOCK_LISTS = ("layers", "encoder.layer", "h", "decoder.layers", "encoder.layers")


CLASSIFIER_HEADS = ("classifier", "score", "pooler")  # a sequence-classification head (and BERT's pooler)


def build_freeze(model: PreTrainedModel, config: FreezeConfig, ctx: BuildContext) -> PreTrainedModel:
    """The top ``trainable_layers`` blocks train (and the final norm, the embeddings if asked); with a
    classification head (SEQ_CLS) the head always trains."""
    _freeze_all(model)
    _, layers = find_blocks(model)
    if config.trainable_layers > len(layers):
        raise ConfigError(f"trainable_layers: the model has {len(layers)} layers, got {config.trainable_layers}")
    for layer in layers[len(layers) - config.trainable_layers :]:
        for param in layer.parameters():
            param.requires_grad_(True)
    inner = getattr(model, "model", None)
    if config.train_norm and getattr(inner, "norm", None) is not None:
        inner.norm.requires_grad_(True)
    if config.train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
        if model.get_output_embeddings() is not None:
            model.get_output_embeddings().requires_grad_(True)
    if ctx.task_type == "SEQ_CLS":
        for name in CLASSIFIER_HEADS:
            head = getattr(model, name, None) or getattr(getattr(model, "base_model", None), name, None)
            if head is not None:
                head.requires_grad_(True)
    return model


def _task_type(ctx: BuildContext):
    from peft import TaskType

    return TaskType(ctx.task_type)


def build_lora(model: PreTrainedModel, config: LoraConfig, ctx: BuildContext) -> PreTrainedModel:
    """LoRA; with ``unfreeze_top`` N the top N blocks train fully instead (PEFT's ``modules_to_save``: a trained
    copy of each block, saved in the adapter's safetensors and restored by ``PeftModel.from_pretrained``, so every
    loader and ``merge_and_unload`` handle it) and LoRA adapts the blocks below."""
    import peft

    extra: dict[str, Any] = {}
    if getattr(config, "unfreeze_top", 0):
        path, layers = find_blocks(model)
        if config.unfreeze_top >= len(layers):
            raise ConfigError(f"unfreeze_top: the model has {len(layers)} blocks; unfreeze fewer than all "
                              f"(full fine-tuning trains every one), got {config.unfreeze_top}")
        top = [f"{path}.{i}" for i in range(len(layers) - config.unfreeze_top, len(layers))]
        extra["modules_to_save"] = top
        extra["exclude_modules"] = "|".join(rf"(.*\.)?{re.escape(name)}\..*" for name in top)
    peft_config = peft.LoraConfig(
        task_type=_task_type(ctx), r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, use_dora=config.use_dora, use_rslora=config.use_rslora, **extra,
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


def _prompt_from_text(peft_model: Any, ctx: BuildContext, text: str, n: int) -> None:
    """Start a soft prompt of ``n`` tokens from the token embeddings of ``text`` (repeated to the length)."""
    import torch

    ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (n // max(1, len(ids)) + 1))[:n]
    with torch.no_grad():
        word_embeddings = peft_model.get_input_embeddings().weight  # (vocab, hidden)
        encoder = peft_model.prompt_encoder[peft_model.active_adapter]
        encoder.embedding.weight.copy_(word_embeddings[torch.tensor(ids)].to(encoder.embedding.weight.dtype))


def build_prompt_tuning(model: PreTrainedModel, config: PromptTuningConfig, ctx: BuildContext) -> PreTrainedModel:
    """Soft prompt; ``init=text`` copies the token embeddings of ``init_text`` (repeated to the prompt length).

    The copy is done here rather than by PEFT's TEXT init, which re-loads the tokenizer by name (a converted cache
    or an in-memory tokenizer has none to load)."""
    import peft

    peft_config = peft.PromptTuningConfig(task_type=_task_type(ctx), num_virtual_tokens=config.num_virtual_tokens,
                                          prompt_tuning_init=peft.PromptTuningInit.RANDOM)
    peft_model = peft.get_peft_model(model, peft_config)
    if config.init == "text":
        _prompt_from_text(peft_model, ctx, config.init_text, config.num_virtual_tokens)
    return peft_model


def build_multitask_prompt_tuning(model: PreTrainedModel, config: MultitaskPromptTuningConfig,
                                  ctx: BuildContext) -> PreTrainedModel:
    """Multi-task prompt tuning: a shared soft prompt (``init=text`` copies the embeddings of ``init_text``, as
    build_prompt_tuning does) times, element-wise, each task's rank-``num_ranks`` factor; a batch carries
    ``task_ids`` (B,). PEFT draws the factors from N(0, 0.02), so their product (~4e-4) would shrink the prompt to
    almost nothing and lose the text init; here they start near all-ones, so every task starts from the shared
    prompt itself and the factors learn how each task departs from it.

    Both stages in one run: the shared prompt trains for the first ``source_fraction`` of the steps (the source
    stage, rows of all tasks); after that its gradient is dropped (core.methods.gates) and each task's factors go on
    alone (the target stage: a row's gradient reaches only its own task's factors, so each task adapts to its own
    rows, starting from the source stage)."""
    import math

    import peft
    import torch

    from core.methods.gates import gate_of

    if not isinstance(config.tasks, list):
        raise ConfigError("tasks: the task names are not known yet (auto is resolved from the training rows when a "
                          "run starts)")
    peft_config = peft.MultitaskPromptTuningConfig(
        task_type=_task_type(ctx), num_virtual_tokens=config.num_virtual_tokens, num_tasks=len(config.tasks),
        num_ranks=config.num_ranks, prompt_tuning_init=peft.MultitaskPromptTuningInit.RANDOM)
    peft_model = peft.get_peft_model(model, peft_config)
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    with torch.no_grad():  # each task's factor starts near all-ones: prompt * factor = the shared prompt at step 0
        encoder.prefix_task_cols.normal_(1.0, 0.02)  # (tasks, tokens, ranks)
        encoder.prefix_task_rows.normal_(1.0 / config.num_ranks, 0.02)  # (tasks, ranks, hidden)
    if config.init == "text":
        _prompt_from_text(peft_model, ctx, config.init_text, config.num_virtual_tokens)
    source_steps = math.ceil(config.source_fraction * ctx.total_steps)
    if source_steps < ctx.total_steps:
        gate_of(peft_model, create=True).add([encoder.embedding.weight], lambda step: step < source_steps)
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
