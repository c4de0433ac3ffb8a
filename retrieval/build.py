"""``build_index``: documents -> chunks -> embeddings -> a saved index folder, created or updated incrementally."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.io import recover_folder
from core.limits import index_limits
from retrieval.chunking import ChunkingConfig
from retrieval.documents import LoadResult, load_documents
from retrieval.embeddings import Embedder
from retrieval.folder import IndexFolderError, IndexLimitError, NothingToIndexError, is_index_folder, read_manifest
from retrieval.index import BuildResult, IndexConfig, KnowledgeBase, Progress
from retrieval.stores import QdrantStore, default_collection, probe_store

logger = logging.getLogger(__name__)


def build_index(
    paths: Iterable[str | Path],
    out: str | Path,
    embedder: Embedder | Callable[[], Embedder],
    *,
    index_config: IndexConfig | None = None,
    chunking: ChunkingConfig | None = None,
    text_column: str | None = None,
    rebuild: bool = False,
    on_progress: Progress | None = None,
    max_documents: int | None = None,
    max_chunks: int | None = None,
) -> BuildResult:
    """Index the documents under ``paths`` into folder ``out``.

    If ``out`` already holds an index of the same embedding model, chunking and index type, it is updated in place:
    only new, changed and deleted documents are touched. Otherwise (or with ``rebuild``) a new index is written,
    still reusing vectors of identical chunks from the old one. Raises NothingToIndexError if nothing can be read.
    ``embedder`` may be a function () -> Embedder: it is called only once some document could be read, so bad input
    fails fast, without loading a model. Over ``max_documents`` documents or ``max_chunks`` chunks (default:
    ``index_limits()``) raises IndexLimitError before anything is embedded; an index already in ``out`` is kept.

    Backend qdrant with a ``qdrant_url``: the collection (default ``tune-arena-<out's name>``) is created on the
    server; one already there is replaced only if ``out``'s index uses it, or with ``rebuild``. With ``rebuild``, an
    unreadable index in ``out`` (a server collection changed by an interrupted update) is rebuilt, not refused.
    """
    start = time.perf_counter()
    out = Path(out).expanduser()
    index_config = index_config or IndexConfig()
    if index_config.qdrant_url and not index_config.collection:
        index_config = replace(index_config, collection=default_collection(out))
    chunking = chunking or ChunkingConfig()
    loaded: LoadResult = load_documents(paths, text_column=text_column)
    if not loaded.documents:  # before any progress line: a CLI user then sees the one error line only
        reasons = "; ".join(f"{item.path}: {item.reason}" for item in loaded.skipped[:3]) or "no paths given"
        more = f" (+{len(loaded.skipped) - 3} more)" if len(loaded.skipped) > 3 else ""
        raise NothingToIndexError(f"nothing to index: {reasons}{more}")
    default_documents, default_chunks = index_limits()
    max_documents = max_documents or default_documents
    if len(loaded.documents) > max_documents:
        raise IndexLimitError(f"{len(loaded.documents)} documents (a .jsonl/.csv row is one) are over the "
                              f"{max_documents} one index takes; index fewer files or rows, or raise "
                              "TUNE_ARENA_MAX_DOCUMENTS")
    probe_store(index_config)  # an unreachable Qdrant server fails here, before a model loads
    if callable(embedder) and not hasattr(embedder, "embed"):
        embedder = embedder()
    if on_progress:
        on_progress("load", len(loaded.documents), len(loaded.documents))
    warnings = []
    if chunking.chunk_size > embedder.max_tokens:
        warnings.append(f"chunk_size {chunking.chunk_size} is over the {embedder.max_tokens} tokens "
                        f"{embedder.name} reads; the end of long chunks is not embedded")

    existing: KnowledgeBase | None = None
    if out.parent.is_dir():
        recover_folder(out)
    if is_index_folder(out):
        manifest = read_manifest(out)
        if manifest["embedding_model"] != embedder.name and not rebuild:
            raise IndexFolderError(f"index {out} was built with embedding model {manifest['embedding_model']}, not "
                              f"{embedder.name}; use another --out or rebuild it")
        if manifest["embedding_model"] == embedder.name:
            try:
                existing = KnowledgeBase.load(out, embedder)
            except IndexFolderError as err:
                if not rebuild:
                    raise
                logger.warning("rebuilding %s from scratch: %s", out, err)
    same_layout = (existing is not None and not rebuild and existing.chunking == chunking
                   and existing.index_config == index_config)
    cache: dict[str, np.ndarray] = {}
    if same_layout:
        kb = existing
    else:
        kb = KnowledgeBase(embedder, index_config=index_config, chunking=chunking)
        if isinstance(kb.store, QdrantStore):  # a server collection of this name: replaced only if ours
            kb.store.replace = rebuild or _same_collection(existing, index_config)
            kb.store.preflight()  # refused now, before anything is embedded
        if existing is not None and existing.index_config.contextual == index_config.contextual:
            ids = sorted(existing.chunks)
            vectors = existing.vectors(ids)  # (n, d), one batch
            cache = {existing.chunks[chunk_id].hash: vectors[row] for row, chunk_id in enumerate(ids)}
        if (existing is not None and existing.index_config.qdrant_url
                and not _same_collection(kb, existing.index_config)):
            warnings.append(f"the index no longer uses {existing.store.label}; delete that collection on the server "
                            "if nothing else needs it")
    counts = kb.sync(loaded.documents, on_progress=on_progress, vector_cache=cache,
                     max_chunks=max_chunks or default_chunks)
    kb.build_s = time.perf_counter() - start
    if on_progress:
        on_progress("save", 0, 1)
    kb.save(out)
    if on_progress:
        on_progress("save", 1, 1)
    if existing is not None and existing is not kb:
        existing.close()
    rebuilt = bool(counts.pop("rebuilt")) or not same_layout
    result = BuildResult(index_dir=str(out), documents=len(kb.documents), chunks=len(kb.chunks),
                         skipped=loaded.skipped, wall_s=time.perf_counter() - start, warnings=warnings,
                         rebuilt=rebuilt, store=kb.store.describe(), **counts)
    if not same_layout and existing is not None:  # counts relative to the index that was there before
        old_docs = existing.documents
        result.added = sum(1 for source in kb.documents if source not in old_docs)
        result.changed = sum(1 for source, doc in kb.documents.items()
                             if source in old_docs and old_docs[source]["sha256"] != doc["sha256"])
        result.removed = sum(1 for source in old_docs if source not in kb.documents)
        result.unchanged = len(kb.documents) - result.added - result.changed
    logger.info("indexed %d documents into %d chunks in %.1f s (%d embedded, %d reused)", result.documents,
                result.chunks, result.wall_s, result.embedded, result.reused)
    return result


def _same_collection(kb: KnowledgeBase | None, config: IndexConfig) -> bool:
    """Whether ``kb`` keeps its vectors in the Qdrant server collection ``config`` names."""
    return (kb is not None and bool(config.qdrant_url) and kb.index_config.qdrant_url == config.qdrant_url
            and kb.index_config.collection == config.collection)
