"""Loading a trained run: its weights applied to a fresh base model. Here, below training and inference, because
both use it: the arena and evaluation load runs to answer with, and distillation loads a run as its teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import RunStateError
from core.methods.artifacts import check_run_weights
from core.methods.registry import get_method
from core.models import LoadedModel, load_causal_lm
from core.runs import FULL_FORMAT, PARTIAL_FORMAT, Run


def training_values(run: Run) -> dict:
    """The run's saved settings (config.json without its format stamp)."""
    return {key: value for key, value in run.config.items() if key != "format"}


def apply_partial_weights(model: Any, weights_file: Path, run_id: str) -> None:
    """Copy a layer-wise run's trained tensors (safetensors) into ``model``, in place; RunStateError naming the run
    when the file holds a weight the model lacks (a run of another base model)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(weights_file))
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise RunStateError(f"run: {run_id} has weights the base model lacks ({unknown[0]}): another base model?")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def load_trained_model(run_dir: str | Path, *, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """A fresh base model with the run's trained weights applied, in eval mode (PEFT runs: a PeftModel). The files
    are checked first (core.artifacts): a truncated, garbled or pickled weights file is an AdapterError naming it."""

    run = Run(Path(run_dir))
    check_run_weights(run.path)
    values = training_values(run)
    method = get_method(values.get("method"))
    weights = run.weights_dir
    if weights is None:
        raise RunStateError(f"run: {run.run_id} saved no weights (status {run.state})")
    if method.save_format == FULL_FORMAT:
        return load_causal_lm(str(weights), device=device, dtype=dtype)
    loaded = load_causal_lm(values.get("base_model"), device=device, dtype=dtype)
    model = loaded.model
    if method.save_format == PARTIAL_FORMAT:
        apply_partial_weights(model, weights / method.storage.weights_file, run.run_id)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(weights), adapter_name=run.run_id)
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.resolved, loaded.device, loaded.dtype, loaded.load_s)
