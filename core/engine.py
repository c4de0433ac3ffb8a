"""The one engine object a process holds: workspace, shared models. The UI and CLI call into it."""

from __future__ import annotations

import logging
from pathlib import Path

from core.generation import GenerationConfig, Reply, generate_reply
from core.models import LoadedModel, ModelManager
from core.runs import RunStore
from core.training import TrainingConfig, TrainResult, resume, train
from core.workspace import Workspace

logger = logging.getLogger(__name__)


class Engine:
    """Owns every piece of mutable state of a process: the workspace and the loaded models.

    Nothing loads in ``__init__``; models load on first use and are shared afterwards.
    """

    def __init__(self, workspace: str | Path | None = None, *, device: str | None = None,
                 dtype: str | None = None) -> None:
        self.workspace = Workspace.open(workspace)
        self.models = ModelManager(device=device, dtype=dtype)
        self.runs = RunStore(self.workspace.runs)

    def base_model(self, name: str | None = None) -> LoadedModel:
        """The shared base model (default: ``$TUNE_ARENA_MODEL`` or SmolLM2-135M-Instruct)."""
        return self.models.base(name)

    def ask(self, prompt: str, *, system: str | None = None, model: str | None = None,
            generation: GenerationConfig | None = None) -> Reply:
        """Answer one prompt with the base model through its chat template."""
        if not prompt or not prompt.strip():
            raise ValueError("prompt: is empty; type a question")
        loaded = self.base_model(model)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return generate_reply(loaded.model, loaded.tokenizer, messages, generation)

    def train(self, config: TrainingConfig, **kwargs) -> TrainResult:
        """Train a new run in this workspace (``kwargs``: run_dir, on_step, on_eval, stop_event; see core.training)."""
        return train(config, runs_root=self.workspace.runs, **kwargs)

    def resume(self, run: str | Path, **kwargs) -> TrainResult:
        """Continue a stopped or killed run of this workspace from its latest checkpoint."""
        return resume(self.runs.get(run).path, **kwargs)
