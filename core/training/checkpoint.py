"""Checkpoints of a run in progress (safetensors + JSON, never pickle): trainable weights, optimizer and scheduler
state, RNG and loop state, so a resumed run repeats exactly the steps an uninterrupted one would take."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import RunStateError
from core.io import atomic_folder, remove_folder
from core.runs import Run
from core.training.sharding import like, whole

if TYPE_CHECKING:
    import torch


def trainable_state(model: Any, keep: bool = True) -> dict[str, torch.Tensor]:
    """The trainable tensors by parameter name (tied weights once), whole (a sharded model's shards are gathered:
    every process calls it); ``keep=False``: gathered but not kept (an FSDP process that writes nothing)."""
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            tensor = whole(param.detach())
            if keep:
                state[name] = tensor.contiguous().cpu()
    return state


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
                    keep: int, scaler: Any = None, write: bool = True) -> Path | None:
    """checkpoints/step-N/: trainable weights, optimizer state, scheduler, RNG and loop state, written through
    core.io.atomic_folder (a kill mid-save leaves the previous checkpoint as the latest); the oldest beyond ``keep``
    are removed with core.io.remove_folder (never a half-deleted ``step-N``). Tensors are saved whole, as one
    process holds them: a sharded (FSDP) model's every process calls this to gather them, and only the one with
    ``write`` saves."""
    import torch
    from safetensors.torch import save_file

    weights = trainable_state(model, keep=write)
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    scalars: dict[str, Any] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                gathered = whole(value)
                if write:
                    tensors[f"optimizer.{index}.{key}"] = gathered.contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    if not write:
        return None
    root = run.path / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"step-{step:08d}"
    with atomic_folder(final) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
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
    for old in run.checkpoints()[:-keep]:
        remove_folder(old)
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
        raise RunStateError(f"resume: checkpoint {checkpoint.name} does not match the model ({missing[0]})")
    with torch.no_grad():  # a sharded parameter takes this process's shard of the whole tensor
        for name, tensor in weights.items():
            params[name].copy_(like(tensor.to(params[name].device, params[name].dtype), params[name]))
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    in_order = [param for group in optimizer.param_groups for param in group["params"]]  # the state's indices
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in sorted(tensors.items()):  # the same order in every process: shards are scattered
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            param = in_order[int(index)]
            opt_state.setdefault(int(index), {})[name] = like(value, param) if value.shape == param.shape else value
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
