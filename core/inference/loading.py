"""Using a trained run: its weights applied to a fresh base model (``load_trained_model``, from core.methods.loading,
where training can reach it too), and merged into the base and exported as a standalone model folder, with the one
rule for which runs can be merged."""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError, RunStateError
from core.io import atomic_folder
from core.methods import FULL_FORMAT, PEFT_FORMAT, get_method
from core.methods.loading import load_trained_model
from core.runs import Run

__all__ = ["load_trained_model", "merge_and_export", "merge_refusal"]  # load_trained_model lives in core.methods


def merge_refusal(run: Run) -> str | None:
    """Why ``run`` cannot be merged into its base model and exported, or None when it can. The one merge rule:
    the CLI's ``runs --merge``, the Runs tab and ``merge_and_export`` all ask it."""
    try:
        config = run.config
    except (OSError, ValueError) as err:
        return f"merge: {run.path}: config.json cannot be read ({str(err).splitlines()[0][-160:]})"
    name = config.get("method")
    try:
        method = get_method(name)
    except ValueError:
        return f"merge: unknown method {name!r}"
    if run.state == "running":
        return f"merge: {run.run_id} is still training; merge it once it has completed or stopped"
    if config.get("objective") == "classification":
        return (f"merge: {run.run_id} is a classification head (a label per text), not a language model: merging it "
                "into the base would make no generating model; use the run as it is")
    if method.prompt_learning:
        return (f"merge: {method.title} learns virtual tokens / prefixes that sit in front of the input, not a change "
                "of the weights, so there is nothing to fold into the base model; use the run as an adapter")
    if method.save_format == FULL_FORMAT:
        folder = run.weights_dir
        return ("merge: full fine-tuning already saved a standalone model" + (f" at {folder}" if folder else "")
                + "; there is no adapter to merge")
    if not method.mergeable:
        return f"merge: {method.title} adapters cannot be merged into the base model"
    if run.weights_dir is None:
        return f"merge: {run.path} holds no saved weights (status {run.state})"
    return None


def merge_and_export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA-family adapter (or layer-wise weights) into the base and save a standalone model folder
    (safetensors + tokenizer) at ``out_dir``, atomically. The merge happens in fp32 on a non-quantized base.
    Refused (RunStateError) where ``merge_refusal`` says so, and for an ``out_dir`` that is not empty."""
    run = Run(Path(run_dir))
    refusal = merge_refusal(run)
    if refusal:
        raise RunStateError(refusal)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out: {out} is not empty; choose a new folder for the merged model")
    method = get_method(run.config["method"])
    loaded = load_trained_model(run.path, device="cpu", dtype="fp32")
    model = loaded.model.merge_and_unload() if method.save_format == PEFT_FORMAT else loaded.model
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
    return out
