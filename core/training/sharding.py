"""Fully sharded data parallel (PyTorch FSDP2, ``torch.distributed.fsdp.fully_shard``): each process keeps 1/N of
every weight, gradient and optimizer state and gathers a block's weights only while it computes, so a model that
does not fit one device trains on N of them. What Accelerate's FSDP plugin wraps, used here directly because the
loop is our own.

The loop shards the model once it is built (each transformer block a unit of its own, the embeddings, final norm and
head in the root unit), then runs as for data parallel, with three differences: every process runs the same number
of forward and backward passes (a process without rows in a micro-batch runs one row with weight 0, since the
gathers are collective); gradients are summed by FSDP's reduce-scatter (divide factor 1: the loss is already
weighted by each process's share of the global units); and checkpoints and the saved weights are gathered to whole
tensors, in the layout one process writes, so a run resumes with any process count, sharded or not.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from core.distributed import current
from core.errors import ConfigError
from core.methods import get_method

if TYPE_CHECKING:
    import torch

FSDP_OBJECTIVES = ("sft",)


def requested(config: Any) -> bool:
    """Whether this run shards its model: ``fsdp`` in its config, or an accelerate config asking for FSDP
    (``accelerate launch`` sets ACCELERATE_USE_FSDP)."""
    return bool(config.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def sharded_run(config: Any) -> bool:
    """Whether this process trains a shard of the model: FSDP asked for, over more than one process."""
    return requested(config) and current().distributed


def check(config: Any) -> None:
    """ConfigError naming the field for a run whose state FSDP cannot shard."""
    method = get_method(config.method)
    if method.quantized_base:
        raise ConfigError(f"method: {config.method}'s quantized (bitsandbytes) weights cannot be sharded by FSDP; "
                          "train lora with fsdp, or qlora data parallel (without fsdp)")
    if method.prompt_learning:
        raise ConfigError(f"method: {config.method}'s virtual tokens sit outside the model's blocks and cannot be "
                          "sharded by FSDP; train it data parallel (without fsdp)")
    if config.method == "adalora":
        raise ConfigError("method: AdaLoRA's rank allocator reads and masks whole weights between steps, which FSDP "
                          "keeps in shards; train it data parallel (without fsdp)")
    if config.gradual_unfreezing:
        raise ConfigError("gradual_unfreezing: opening blocks during a sharded run changes which shards have "
                          "gradients; use layerwise_lr_decay, or train it data parallel (without fsdp)")
    if config.objective not in FSDP_OBJECTIVES:
        raise ConfigError(f"objective: FSDP shards {', '.join(FSDP_OBJECTIVES)} runs; the {config.objective} "
                          "objective trains data parallel (without fsdp)")


def _blocks(model: Any) -> list[Any]:
    """The model's transformer blocks: the modules of the classes its ``_no_split_modules`` names."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def shard(model: Any) -> Any:
    """Shard ``model`` in place over this job's processes: one FSDP unit per block, the rest in the root unit;
    gradients summed, not averaged. Returns the model (its parameters are now DTensors)."""
    from torch.distributed.fsdp import fully_shard

    blocks = _blocks(model)
    if not blocks:
        raise ConfigError(f"fsdp: found no transformer blocks to shard in {type(model).__name__} (its "
                          "_no_split_modules names none of its modules)")
    for block in [*blocks, model]:
        fully_shard(block)
        block.set_gradient_divide_factor(1.0)  # each unit's own reduce-scatter: a sum
        block.set_force_sum_reduction_for_comms(True)  # SUM, not PREMUL_SUM(1.0), which gloo lacks
    return model


def is_sharded(model: Any) -> bool:
    if "torch.distributed.fsdp" not in sys.modules:  # nothing was sharded in this process
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def whole_state(model: Any, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The model's state dict with whole tensors, on the CPU of rank 0 (empty elsewhere; collective: every process
    calls it); ``trainable_only``: the trainable tensors alone (an adapter's save needs no frozen base)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    # a tied weight (the head sharing the embeddings) once, under its first name, as save_pretrained writes it
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in state.items() if name in names}


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (collective: every process calls it, in the same order); a plain tensor as is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(value: torch.Tensor, param: Any) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``param``: this process's shard for a sharded parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    return value
