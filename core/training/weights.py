"""Saving a run's trained weights in its method's format (core.runs.SAVE_FORMATS): adapter/ (PEFT), model/ (a whole
model with its tokenizer) or weights/ (the trained tensors only). Written through core.io.atomic_folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.io import atomic_folder
from core.runs import FULL_FORMAT, PEFT_FORMAT, SAVE_FORMATS, Run
from core.training.checkpoint import trainable_state


def save_trained(run: Run, model: Any, tokenizer: Any, save_format: str, state: dict[str, Any] | None = None) -> Path:
    """The run's weights folder in ``save_format``: adapter/ (PEFT, safetensors), model/ (full model + tokenizer)
    or weights/ (trained tensors only + weights.json). Replaces an earlier save of the same run atomically.
    ``state``: the model's whole tensors by name, gathered by the caller (a sharded model's own are shards)."""
    from safetensors.torch import save_file

    storage = SAVE_FORMATS[save_format]
    final = run.path / storage.folder
    with atomic_folder(final) as folder:
        if save_format in (PEFT_FORMAT, FULL_FORMAT):
            extra = {} if state is None else {"state_dict": state}
            model.save_pretrained(folder, safe_serialization=True, **extra)
            if save_format == FULL_FORMAT:
                tokenizer.save_pretrained(folder)
        else:
            names = [name for name, param in model.named_parameters() if param.requires_grad]
            state = trainable_state(model) if state is None else {name: state[name] for name in names}
            save_file(state, str(folder / storage.weights_file))
            (folder / "weights.json").write_text(json.dumps({"tensors": sorted(state)}, indent=1))
    return final
