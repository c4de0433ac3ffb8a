"""The model a run trains: a fresh copy of the base (never the shared inference model) made trainable by the
method's builder, in the dtypes the device policy picks.
``config`` arguments are TrainingConfigs, annotated ``Any``: core.training.config imports this module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.methods import PEFT_FORMAT, BuildContext, get_method, quantization_config
from core.models import LoadedModel, load_causal_lm, pick_device, pick_dtype
from core.training.memory import lean_lora_dropout
from core.training.sharding import sharded_run

if TYPE_CHECKING:
    import torch



def compute_dtype(config: Any, device: str) -> torch.dtype:
    return pick_dtype(device, config.dtype)


def keep_lora_inputs(model: Any) -> int:
    """LoRA layers take their input in the compute dtype under autocast; returns how many were set.

    PEFT casts a LoRA layer's input to the adapter's dtype (fp32) before dropout and ``lora_A``, a full copy per
    layer and step that autocast then casts back to bf16 for the matmul. Kept in bf16, the matmuls are the same and
    the dropout scale is applied in float (core.training.memory.LeanDropout): 5% more tokens/s on a 2-core Xeon
    (bench.memory's ``input_cast`` arm), validation loss within the noise (bench/results/memory.json)."""
    layers = [module for module in model.modules() if hasattr(module, "lora_dropout")]
    for layer in layers:
        layer.cast_input_dtype_enabled = False  # read by PEFT's BaseTunerLayer._cast_input_dtype
    return len(layers)


def make_trainable(model: Any, config: Any, tokenizer: Any, total_steps: int, *,
                   task_type: str = "CAUSAL_LM") -> Any:
    """The method's builder over ``model`` (PEFT ``task_type``: CAUSAL_LM, or SEQ_CLS for a classification head);
    trainable weights in fp32; LoRA dropout that saves a one-byte mask; gradient checkpointing when asked."""
    import torch

    method = get_method(config.method)
    torch.manual_seed(config.seed)  # adapter initialisation
    context = BuildContext(tokenizer, total_steps, task_type)
    model = method.builder(model, method.make_config(config.method_config), context)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    lean_lora_dropout(model)  # same draws and gradients, a one-byte saved mask (core.training.memory)
    if compute_dtype(config, pick_device(config.device)) != torch.float32:
        keep_lora_inputs(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    return model


def load_training_model(config: Any, total_steps: int) -> tuple[Any, LoadedModel, torch.dtype]:
    """A fresh copy of the base made trainable by the method's builder.

    The frozen base is stored in the compute dtype (PEFT methods) or fp32 (full, layer-wise: those weights train);
    QLoRA loads it quantized. Trainable parameters are always fp32.
    """
    import torch

    method = get_method(config.method)
    method_config = method.make_config(config.method_config)
    device = pick_device(config.device)
    compute = compute_dtype(config, device)
    if config.method == "qlora":
        loaded = load_causal_lm(config.base_model, device=device, dtype=compute,
                                quantization_config=quantization_config(method_config, compute))
    else:
        store = torch.float32 if method.save_format != PEFT_FORMAT else compute
        # a sharded run builds the model in host memory; sharding moves each rank's shards to its GPU
        where = "cpu" if sharded_run(config) else device
        loaded = load_causal_lm(config.base_model, device=where, dtype=store)
    if loaded.tokenizer.pad_token_id is None:
        raise ConfigError(f"base_model: {loaded.resolved.name} has no pad or eos token")
    model = make_trainable(loaded.model, config, loaded.tokenizer, total_steps)
    return model, loaded, compute
