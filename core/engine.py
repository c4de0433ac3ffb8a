"""The one engine object a process holds: workspace, shared models. The UI and CLI call into it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from core.generation import GenerationConfig, Reply, generate_reply
from core.models import LoadedModel, ModelManager
from core.runs import RunStore
from core.training import TrainingConfig, TrainResult, resume, train
from core.workspace import Workspace
from retrieval import BuildResult, KnowledgeBase, SentenceTransformerEmbedder, build_index, read_manifest

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
        self._kb_lock = threading.Lock()
        self._knowledge_bases: dict[str, tuple[int, KnowledgeBase]] = {}

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

    # ---- retrieval ---------------------------------------------------------------------------------------------

    def embedder(self, name: str | None = None) -> SentenceTransformerEmbedder:
        """The shared embedding model (default: bundled all-MiniLM-L6-v2) as a retrieval Embedder."""
        from core.models import default_embedding_model

        name = name or default_embedding_model()
        return SentenceTransformerEmbedder(self.models.embedder(name), name)

    def index_dir(self, name_or_path: str | Path) -> Path:
        """A bare name means ``<workspace>/indexes/<name>``; anything with a slash is a path."""
        text = str(name_or_path)
        if "/" in text or "\\" in text or text.startswith((".", "~")):
            return Path(text).expanduser()
        return self.workspace.indexes / text

    def build_index(self, paths: Iterable[str | Path], out: str | Path, *, embedding_model: str | None = None,
                    **kwargs) -> BuildResult:
        """Build or update an index (``kwargs``: index_config, chunking, text_column, rebuild, on_progress)."""
        folder = self.index_dir(out)
        result = build_index(paths, folder, self.embedder(embedding_model), **kwargs)
        with self._kb_lock:
            self._knowledge_bases.pop(str(folder.resolve()), None)
        return result

    def knowledge_base(self, name_or_path: str | Path) -> KnowledgeBase:
        """A loaded index, cached until its manifest changes on disk (an index is never re-read per query)."""
        folder = self.index_dir(name_or_path)
        manifest = read_manifest(folder)
        key = str(folder.resolve())
        stamp = (folder / "manifest.json").stat().st_mtime_ns
        with self._kb_lock:
            cached = self._knowledge_bases.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        kb = KnowledgeBase.load(folder, self.embedder(manifest["embedding_model"]))
        with self._kb_lock:
            self._knowledge_bases[key] = (stamp, kb)
        return kb

    def list_indexes(self) -> list[dict]:
        """Stats of every index folder under the workspace's indexes/."""
        rows = []
        for folder in sorted(self.workspace.indexes.iterdir()):
            if folder.name.startswith(".") or not (folder / "manifest.json").is_file():
                continue
            try:
                manifest = read_manifest(folder)
            except ValueError as err:
                rows.append({"name": folder.name, "folder": str(folder), "error": str(err)})
                continue
            rows.append({"name": folder.name, "folder": str(folder), "embedding_model": manifest["embedding_model"],
                         "index_type": manifest.get("index", {}).get("index_type"), **manifest.get("counts", {}),
                         "updated": manifest.get("updated")})
        return rows
