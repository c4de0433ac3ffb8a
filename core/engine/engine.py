"""The one engine object a process holds: workspace, shared models, jobs. The CLI, the app and Python callers go
through it: its methods are the product's API, split by concern into mixins (runs, knowledge, arena).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any

from core.data import load_examples
from core.engine.arena import ArenaMixin
from core.engine.benchmarks import BenchmarksMixin
from core.engine.feedback import FeedbackMixin
from core.engine.jobs import TrainingJobs
from core.engine.knowledge import KnowledgeMixin
from core.engine.runs import RunsMixin
from core.engine.uploads import check_file_type, store_upload
from core.engine.visitors import VisitorQuota, Visitors, VisitorSettings
from core.engine.workspace import DEMO_EVAL, DEMO_INDEX, DEMO_RUN, Workspace
from core.errors import ConfigError, DataError
from core.inference import GenerationConfig, Reply
from core.methods import METHODS, get_method
from core.models import (
    LoadedModel,
    ModelManager,
    default_embedding_model,
    load_causal_lm,
    resolve_base_model,
    resolve_embedding_model,
)
from core.runs import RunStore
from core.training import list_presets, load_preset
from core.training.dpo import read_pairs

logger = logging.getLogger(__name__)

__all__ = ["DEMO_EVAL", "DEMO_INDEX", "DEMO_RUN", "Engine"]

DATASET_USES = ("training", "test")  # what Engine.store_dataset checks an uploaded dataset for


class Engine(RunsMixin, KnowledgeMixin, ArenaMixin, FeedbackMixin, BenchmarksMixin):
    """Owns every piece of mutable state of a process: the workspace and the loaded models.

    Nothing loads in ``__init__``; models load on first use and are shared afterwards.

    Runs, indexes and evaluation folders are named by their folder name in the workspace (``demo``). The CLI and
    Python callers may also give a folder path (anything with a slash); a ``confined`` engine (the app's: its
    callers are remote users) takes only names, or paths that resolve to a folder of its own workspace.
    """

    def __init__(self, workspace: str | Path | None = None, *, device: str | None = None,
                 dtype: str | None = None, confined: bool = False, visitors: VisitorSettings | None = None) -> None:
        self.workspace = Workspace.open(workspace)
        self.confined = confined
        self.models = ModelManager(device=device, dtype=dtype)
        self.runs = RunStore(self.workspace.runs)
        self._kb_lock = threading.Lock()
        self._knowledge_bases: dict[str, tuple[int, object]] = {}  # folder -> (manifest mtime, KnowledgeBase)
        self._hosts: dict[str, object] = {}  # base model -> AdapterHost
        self._pools: dict[str, tuple[list, object]] = {}  # few-shot file -> (examples, vectors)
        self._classifiers: dict[str, tuple[int, object]] = {}  # run folder -> (weights mtime, loaded Classifier)
        self._loaded: dict[str, object] = {}  # "scorer" -> the metrics Scorer, once made
        self._lock = threading.Lock()
        self._demo_lock = threading.Lock()
        self._feedback_lock = threading.Lock()  # orders appends to votes files (core.engine.feedback)
        self.jobs = TrainingJobs(self.train, self.resume, self.workspace.runs)  # the app's one background trainer
        self.instance: Engine | None = None  # a visitor's engine: the instance's engine it is a view of
        self.quota: VisitorQuota | None = None  # a visitor's engine: their limits
        # a shared instance (a public Space): every visitor gets a view of this engine (core.engine.visitors)
        self.visitors = (Visitors(self.workspace.root, visitors, lambda folder, owner, quota: self.scoped(
            folder, owner=owner, quota=quota)) if visitors is not None and visitors.enabled else None)

    def scoped(self, folder: str | Path, *, owner: str, quota: VisitorQuota | None = None) -> Engine:
        """A view of this engine for one visitor: the same loaded models, caches and training queue; its own
        workspace at ``folder`` (the shared demo items read from this engine's), confined to it; ``quota`` checked
        before anything is written; its training jobs queue behind other visitors' (``owner``'s, at most one)."""
        view = copy.copy(self)  # every cache and lock is the same object: shared
        view.workspace = Workspace.open(folder, shared=self.workspace.root)
        view.runs = RunStore(view.workspace.runs, shared=(self.workspace.demo_run,))
        view.confined, view.instance, view.quota, view.visitors = True, self, quota, None
        queue = self.visitors.queue if self.visitors is not None else self.jobs.queue
        view.jobs = TrainingJobs(view.train, view.resume, view.workspace.runs, queue=queue, owner=owner,
                                 check=quota.check_training if quota is not None else None)
        return view

    def base_model(self, name: str | None = None) -> LoadedModel:
        """The shared base model (default: ``$TUNE_ARENA_MODEL`` or SmolLM2-135M-Instruct). Generate through
        ``host()``: once a LoRA adapter is loaded its layers sit inside this model."""
        return self.models.base(name)

    def ask(self, prompt: str, *, system: str | None = None, model: str | None = None,
            generation: GenerationConfig | None = None) -> Reply:
        """Answer one prompt with the base model through its chat template."""
        if not prompt or not prompt.strip():
            raise ConfigError("prompt: is empty; type a question")
        host = self.host(model)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered = host.render(messages)
        generated = host.generate([rendered], [None], generation)[0]
        return Reply(generated.text, rendered, generated.new_tokens, generated.batch_s)

    def store_upload(self, source: str | Path, kind: str, *, name: str | None = None) -> Path:
        """Keep a user's file under ``uploads/<kind>/`` (kind: datasets or documents) with a safe name. A visitor's
        upload counts against their quotas (disk, uploads per hour)."""
        if self.quota is not None:
            try:
                size = Path(source).stat().st_size
            except OSError:
                size = 0  # store_upload names what is wrong with the file
            self.quota.check_upload(size)
        return store_upload(self.workspace.uploads, source, kind, name=name)

    def store_dataset(self, source: str | Path, use: str = "training", *, name: str | None = None) -> Path:
        """Check a user's dataset file, then keep it under ``uploads/datasets/`` (``store_upload``). ``use``:
        ``training`` (instruction data, or preference pairs for the dpo objective) or ``test`` (instruction data,
        every row with a reference answer). ``name``: the user's file name (default: the source's).

        One line naming the file for each refusal, the same from every tab: an extension no dataset has
        (UploadError), a file that does not load (the instruction-data loader's DataError, naming the line), then
        size and quota (``store_upload``). A file that is refused is not stored."""
        if use not in DATASET_USES:
            raise ConfigError(f"use: must be one of {', '.join(DATASET_USES)}, got {use!r}")
        shown = name or Path(source).name
        check_file_type(shown, "datasets")
        try:
            load_examples(source)
        except DataError as err:
            if use != "training":
                raise
            try:  # prompt, chosen, rejected: what the dpo objective trains on
                read_pairs(source)
            except (DataError, OSError):
                raise err from None  # neither: the instruction-data loader's line
        return self.store_upload(source, "datasets", name=shown)

    def model_info(self, name: str | None = None, *, prepare: bool = False) -> dict[str, Any]:
        """Where the base model ``name`` (default: the default base model) and the embedding model come from. With
        ``prepare`` the base model is loaded (a GGUF converted and cached once) and a second load from the cache is
        timed: ``first_load_s``, ``second_load_s`` (seconds), ``device``, ``dtype``."""
        resolved = resolve_base_model(name)
        embedding = resolve_embedding_model(None)
        info: dict[str, Any] = {
            "model": resolved.name, "kind": resolved.kind, "location": resolved.location,
            "cache_dir": str(resolved.cache_dir) if resolved.cache_dir else None, "cached": resolved.is_cached,
            "embedding_model": default_embedding_model(), "embedding_location": embedding.location,
        }
        if prepare:
            first = self.models.base(name)
            start = time.perf_counter()
            second = load_causal_lm(name, device=self.models.device, dtype=self.models.dtype)
            info.update(first_load_s=round(first.load_s, 2), second_load_s=round(time.perf_counter() - start, 2),
                        device=second.device, dtype=str(second.dtype).removeprefix("torch."), cached=True)
            logger.info("first load %.1f s, second load %.2f s", first.load_s, info["second_load_s"])
        return info

    def dataset_summary(self, path: str | Path, *, shape: str = "auto", require_output: bool = True,
                        ) -> dict[str, Any]:
        """A dataset file checked (DataError naming the file and line otherwise): ``path``, ``shape``, ``rows``,
        ``tasks`` (rows per task) and ``with_source`` (rows naming a source document)."""
        self.check_sources([path])
        data = load_examples(path, shape, require_output=require_output)
        return {"path": data.path, "shape": data.shape, "rows": len(data), "tasks": data.tasks(),
                "with_source": sum(example.source is not None for example in data)}

    def method_catalogue(self, method: str | None = None) -> dict[str, Any]:
        """``{"methods": {name: {title, description, default_lr, settings: [{name, default, type, help}]}},
        "presets": {name: description}}`` for every method, or only ``method``."""
        methods = {}
        for name in [method] if method else list(METHODS):
            found = get_method(name)
            settings = [{key: value if isinstance(value, int | float | str | bool | list | None) else str(value)
                         for key, value in row.items()} for row in found.settings()]
            methods[name] = {"title": found.title, "description": found.description,
                             "default_lr": found.default_lr, "settings": settings}
        return {"methods": methods, "presets": {name: load_preset(name)["description"] for name in list_presets()}}
