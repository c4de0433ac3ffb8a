"""The engine's knowledge bases: building and updating indexes (documents checked against the folders a confined
engine may read), loading them once and caching them until they change, and listing them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from core.data import demo_path
from core.engine.workspace import DEMO_INDEX
from core.errors import ConfigError
from core.limits import check_name, child_folder, writable_folder
from core.models import default_embedding_model
from retrieval import (
    BuildResult,
    IndexConfig,
    KnowledgeBase,
    RetrievalReport,
    SearchHit,
    SentenceTransformerEmbedder,
    build_index,
    evaluate_retrieval,
    load_cases,
    read_manifest,
)


class KnowledgeMixin:
    """Knowledge bases of an Engine (see core.engine.engine.Engine for the state it holds)."""

    def embedder(self, name: str | None = None) -> SentenceTransformerEmbedder:
        """The shared embedding model (default: bundled all-MiniLM-L6-v2) as a retrieval Embedder."""
        name = name or default_embedding_model()
        return SentenceTransformerEmbedder(self.models.embedder(name), name)

    def index_dir(self, name: str) -> Path:
        """``<workspace>/indexes/<name>`` for a plain index name; ValueError for anything else (``../x``, ``/etc``,
        ``a/b``, ``.hidden``, NUL, empty, over 128 characters): a name never leads out of indexes/."""
        if self.workspace.shared is not None and name == DEMO_INDEX:  # a visitor: the instance's demo index
            return self.workspace.demo_index
        return self.workspace.indexes / check_name(name, "index")

    def resolve_index(self, index: str | Path) -> Path:
        """The folder of ``index``: a plain name is ``indexes/<name>``; a path (with a slash, or ``.``/``..``) is
        taken as given, except by a confined engine, which accepts only folders of its indexes/."""
        text = str(index)
        if self.workspace.shared is not None and (text == DEMO_INDEX or self.workspace.is_shared(text)):
            return self.workspace.demo_index  # a visitor's engine: the shared demo index, read-only
        if self.confined:
            return child_folder(self.workspace.indexes, text, "index")
        if "/" in text or "\\" in text or text in (".", ".."):
            return Path(text).expanduser()
        return self.index_dir(text)

    def document_roots(self) -> list[Path]:
        """Where a confined engine reads documents and datasets from: the workspace, the shipped demo material
        (corpus and splits) and the folders in ``$TUNE_ARENA_DOC_ROOTS`` (separated by ``os.pathsep``; what the
        person running the app chooses to share). A visitor's workspace is their own folder alone."""
        extra = [Path(part).expanduser() for part in os.environ.get("TUNE_ARENA_DOC_ROOTS", "").split(os.pathsep)
                 if part.strip()]
        return [self.workspace.root, demo_path("corpus").parent, *extra]

    def check_sources(self, paths: Iterable[str | Path], what: str = "documents") -> list[Path]:
        """The document paths, each (after symlinks and ``..``) inside ``document_roots`` when the engine is confined:
        a remote user of the app cannot index (and then read back) files elsewhere on the server."""
        paths = [Path(path).expanduser() for path in paths]
        if not self.confined:
            return paths
        roots = [root.resolve() for root in self.document_roots()]
        for path in paths:
            resolved = path.resolve()
            if not any(resolved == root or root in resolved.parents for root in roots):
                raise ConfigError(f"{what}: {str(path)[:200]} is outside the folders this app may read (its "
                                 "workspace and the demo corpus; more with TUNE_ARENA_DOC_ROOTS): upload the files")
        return paths

    def check_store(self, settings: IndexConfig | dict | None) -> None:
        """A visitor's engine (a shared app) keeps vectors in-process only: a Qdrant server URL would make the
        server reach whatever host a visitor names. ConfigError naming ``qdrant_url``."""
        url = settings.get("qdrant_url") if isinstance(settings, dict) else getattr(settings, "qdrant_url", None)
        if self.instance is not None and url:
            raise ConfigError("qdrant_url: a Qdrant server is not available on a shared app; use backend faiss or "
                              "qdrant without a URL (local mode)")

    def build_index(self, paths: Iterable[str | Path], out: str | Path, *, embedding_model: str | None = None,
                    **kwargs) -> BuildResult:
        """Build or update an index (``kwargs``: index_config, chunking, text_column, rebuild, on_progress)."""
        self.check_store(kwargs.get("index_config"))
        folder = self.resolve_index(out)
        check_name(folder.name, "index")  # the name it is found by later (the app, --index NAME)
        if self.workspace.is_shared(folder):
            raise ConfigError(f"index: {DEMO_INDEX} is the demo corpus every visitor shares (read-only); choose "
                              "another name")
        paths = self.check_sources(paths)
        if self.quota is not None:
            self.quota.check_disk()
        writable_folder(folder.parent)  # an index goes in as a sibling folder, swapped in: refused before embedding
        # the model loads only when some document could be read: bad uploads fail fast
        result = build_index(paths, folder, lambda: self.embedder(embedding_model), **kwargs)
        with self._kb_lock:
            self._knowledge_bases.pop(str(folder.resolve()), None)
        return result

    def ensure_demo_index(self, on_progress=None) -> Path:
        """The demo corpus's index at ``indexes/demo``, built once (about 15 s on 2 cores) if it is not there."""
        if self.instance is not None:  # a visitor's engine: the instance builds the shared one
            return self.instance.ensure_demo_index(on_progress)
        folder = self.workspace.demo_index
        with self._demo_lock:
            if not (folder / "manifest.json").is_file():
                self.build_index([str(demo_path("corpus"))], folder, on_progress=on_progress)
        return folder

    def knowledge_base(self, name_or_path: str | Path) -> KnowledgeBase:
        """A loaded index, cached until its manifest changes on disk (an index is never re-read per query). The
        embedding model named in its manifest loads only once the index files have been read and checked."""
        folder = self.resolve_index(name_or_path)
        manifest = read_manifest(folder)
        self.check_store(manifest.get("index"))
        key = str(folder.resolve())
        stamp = (folder / "manifest.json").stat().st_mtime_ns
        with self._kb_lock:
            cached = self._knowledge_bases.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        kb = KnowledgeBase.load(folder, self.embedder)
        with self._kb_lock:
            self._knowledge_bases[key] = (stamp, kb)
        return kb

    def search(self, index: str | Path, query: str, k: int = 5, *, mmr_lambda: float | None = None,
               hybrid: bool = True) -> list[SearchHit]:
        """The top ``k`` chunks of ``index`` (a name, or unconfined a folder) for ``query``: hybrid (dense + BM25)
        unless ``hybrid`` is False; ``mmr_lambda`` (0..1) diversifies (see retrieval.KnowledgeBase.search)."""
        return self.knowledge_base(index).search(query, k, mmr_lambda=mmr_lambda, hybrid=hybrid)

    def evaluate_retrieval(self, index: str | Path, data: str | Path, *, k: int = 3,
                           mmr_lambda: float | None = None, hybrid: bool = True,
                           on_progress: Callable[[int, int], None] | None = None) -> RetrievalReport:
        """hit@1..k and MRR@k of ``index`` over the rows of ``data`` that name a source document (JSONL with a
        question/query/instruction and a source). The file is read and checked before the index or a model loads."""
        (path,) = self.check_sources([data])
        cases = load_cases(path)
        return evaluate_retrieval(self.knowledge_base(index), cases, k=k, mmr_lambda=mmr_lambda, hybrid=hybrid,
                                  on_progress=on_progress)

    def list_indexes(self) -> list[dict]:
        """Stats of every index folder under the workspace's indexes/."""
        rows = []
        folders = sorted(self.workspace.indexes.iterdir())
        if self.workspace.shared is not None:  # a visitor's engine: the shared demo index too, first
            folders.insert(0, self.workspace.demo_index)
        for folder in folders:
            if folder.name.startswith(".") or folder.is_symlink() or not (folder / "manifest.json").is_file():
                continue  # hidden or temporary folders, and links that may lead out of the workspace
            try:
                manifest = read_manifest(folder)
            except ValueError as err:
                rows.append({"name": folder.name, "folder": str(folder), "error": str(err)})
                continue
            settings = manifest.get("index", {})
            rows.append({"name": folder.name, "folder": str(folder), "embedding_model": manifest["embedding_model"],
                         "index_type": settings.get("index_type"), "backend": settings.get("backend", "faiss"),
                         **manifest.get("counts", {}), "updated": manifest.get("updated")})
        return rows
