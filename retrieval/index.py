"""The knowledge base: chunks + a vector store + manifest, persisted to one folder, updated incrementally.

    <index>/chunks.jsonl         one chunk per line: id, doc_id, source, title, headings, start, end, text, n_tokens,
                                 hash
    <index>/manifest.json        embedding model, dimension, index (store) and chunking settings, documents with
                                 hashes, counts
    <index>/index.faiss          backend faiss (default): flat (IndexFlatIP), hnsw (IndexHNSWFlat) or ivf
    <index>/vectors.safetensors  backend qdrant, local mode (server mode: the collection on the Qdrant server)

The store (retrieval.stores: FAISS or Qdrant) only holds vectors by chunk id; chunks, BM25, hybrid fusion, MMR, the
incremental update and the embedding-model check are the same for every backend.

Never pickled. Saving goes through core.io.atomic_folder (a fsynced sibling folder swapped in); a process killed at any
moment leaves either the previous index or the new one (``load`` finishes an interrupted swap). A Qdrant server's
collection is updated in place, before the folder: an interrupted update there is found on the next load (counts
differ) and fixed with a rebuild.
Re-indexing reuses the vector of every chunk whose embedded text is unchanged (looked up by hash), so an unchanged
document embeds nothing, and only added, changed or deleted documents touch the vector store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from core.io import atomic_folder, folder_bytes
from core.limits import writable_folder
from retrieval.chunking import ChunkingConfig, ChunkSpan, chunk_document
from retrieval.documents import Document, Skipped
from retrieval.embeddings import Embedder
from retrieval.folder import (
    BACKENDS,
    FORMAT,
    INDEX_TYPES,
    Chunk,
    IndexFolderError,
    IndexLimitError,
    read_chunks,
    read_manifest,
)
from retrieval.search import BM25, mmr, reciprocal_rank_fusion
from retrieval.stores import (
    COLLECTION_NAME,
    FaissStore,
    VectorStore,
    default_collection,
    load_store,
    new_store,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total); stages: load, chunk, embed, index, save


@dataclass
class IndexConfig:
    """The vector store (FAISS or Qdrant), its structure, and how chunks are embedded."""

    index_type: str = field(default="flat", metadata={
        "help": "flat = exact inner product; hnsw = graph search for large corpora; ivf = inverted lists (FAISS "
                "only)"})
    hnsw_m: int = field(default=32, metadata={"help": "HNSW neighbours per node"})
    hnsw_ef_construction: int = field(default=80, metadata={"help": "HNSW candidate list while building"})
    hnsw_ef_search: int = field(default=64, metadata={"help": "HNSW candidate list while searching"})
    ivf_nlist: int = field(default=0, metadata={"help": "IVF lists (0 = 4*sqrt(chunks), at most chunks/39)"})
    ivf_nprobe: int = field(default=8, metadata={"help": "IVF lists searched per query"})
    contextual: bool = field(default=True, metadata={
        "help": "embed each chunk with its document title and heading path in front"})
    backend: str = field(default="faiss", metadata={
        "help": "vector store: faiss = index.faiss in the index folder; qdrant = Qdrant, in memory from the index "
                "folder, or on a server with qdrant_url"})
    qdrant_url: str | None = field(default=None, metadata={
        "help": "backend qdrant: URL of a Qdrant server or cluster (API key from $QDRANT_API_KEY); the vectors "
                "then live there, not in the index folder"})
    collection: str | None = field(default=None, metadata={
        "help": "backend qdrant with a qdrant_url: the server's collection (default: tune-arena-<index folder "
                "name>)"})

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ConfigError(f"index_type: must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "qdrant" and self.index_type == "ivf":
            raise ConfigError("index_type: ivf is a FAISS structure; with backend qdrant use flat (exact search) or "
                              "hnsw (Qdrant's own graph on a server)")
        if self.qdrant_url is not None:
            if self.backend != "qdrant":
                raise ConfigError(f"qdrant_url: only for backend qdrant, not {self.backend}")
            if not isinstance(self.qdrant_url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?",
                                                                         self.qdrant_url):
                raise ConfigError(f"qdrant_url: must be an http:// or https:// URL, got {self.qdrant_url!r:.120}")
        if self.collection is not None:
            if self.qdrant_url is None:
                raise ConfigError("collection: names a collection on a Qdrant server; give qdrant_url too (local "
                                  "mode keeps its vectors in the index folder)")
            if not isinstance(self.collection, str) or not COLLECTION_NAME.fullmatch(self.collection):
                raise ConfigError("collection: 1 to 255 letters, digits, _ . or -, got "
                                  f"{self.collection!r:.120}")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if isinstance(self.ivf_nlist, bool) or not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 0:
            raise ConfigError(f"ivf_nlist: must be 0 (auto) or a positive integer, got {self.ivf_nlist!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float
    chunk: Chunk
    dense_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The CLI contract keys (rank, score, text, doc_id, source, title) plus position and headings."""
        chunk = self.chunk
        row: dict[str, Any] = {"rank": self.rank, "score": round(self.score, 6), "text": chunk.text,
                               "doc_id": chunk.doc_id, "source": chunk.source, "title": chunk.title,
                               "headings": list(chunk.headings), "chunk_id": chunk.id, "start": chunk.start,
                               "end": chunk.end}
        if self.dense_score is not None:
            row["dense_score"] = round(self.dense_score, 6)
        return row


@dataclass
class BuildResult:
    """What ``build_index`` did. ``embedded`` counts texts sent to the model; ``reused`` vectors found by hash."""

    index_dir: str
    documents: int
    chunks: int
    skipped: list[Skipped]
    wall_s: float
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0
    rebuilt: bool = True
    warnings: list[str] = field(default_factory=list)
    store: dict[str, Any] = field(default_factory=lambda: {"backend": "faiss"})  # VectorStore.describe()

    def contract(self) -> dict[str, Any]:
        """The CLI ``index`` JSON: index_dir, documents, chunks, skipped, wall_s, plus the update counts and the
        store: backend (qdrant: mode local|server, and qdrant_url, collection on a server)."""
        return {"index_dir": self.index_dir, "documents": self.documents, "chunks": self.chunks,
                "skipped": [item.to_dict() for item in self.skipped], "wall_s": round(self.wall_s, 3),
                "added": self.added, "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged,
                "embedded": self.embedded, "reused": self.reused, "rebuilt": self.rebuilt,
                "warnings": self.warnings, **self.store}


def embed_text(span: ChunkSpan | Chunk, contextual: bool) -> str:
    """The text the embedding model sees for a chunk: title and heading path first when ``contextual``."""
    if not contextual:
        return span.text
    path = [span.title, *[heading for heading in span.headings if heading != span.title]]
    return " > ".join(path) + "\n" + span.text


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------------------------
# The knowledge base
# --------------------------------------------------------------------------------------------------------------------


class KnowledgeBase:
    """Chunks, their vector store and the manifest, in memory. Thread-safe for concurrent searches.

    A Qdrant server store (``index_config.qdrant_url``) without a ``collection`` takes ``tune-arena-<folder name>``.
    """

    def __init__(self, embedder: Embedder, *, index_config: IndexConfig | None = None,
                 chunking: ChunkingConfig | None = None, folder: Path | None = None,
                 store: VectorStore | None = None) -> None:
        self.embedder = embedder
        self.index_config = index_config or IndexConfig()
        if self.index_config.qdrant_url and not self.index_config.collection and folder is not None:
            self.index_config = replace(self.index_config, collection=default_collection(folder))
        self.chunking = chunking or ChunkingConfig()
        self.folder = folder
        self.chunks: dict[int, Chunk] = {}
        self.documents: dict[str, dict[str, Any]] = {}  # source -> {doc_id, sha256, title, chunk_ids}
        self.store: VectorStore = store or new_store(self.index_config, embedder.dimension)
        self.trained_on = 0
        self.next_id = 0
        self.created = time.time()
        self.updated = self.created
        self.build_s = 0.0
        self._lock = threading.RLock()
        self._bm25: tuple[BM25, list[int]] | None = None

    # ---- persistence -------------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "embedding_model": self.embedder.name, "dimension": self.embedder.dimension,
            "index": self.index_config.to_dict(), "chunking": self.chunking.to_dict(),
            "documents": self.documents,
            "counts": {"documents": len(self.documents), "chunks": len(self.chunks)},
            "trained_on": self.trained_on, "next_id": self.next_id,
            "created": self.created, "updated": self.updated, "build_s": round(self.build_s, 3),
        }

    def save(self, folder: str | Path | None = None) -> Path:
        """Write the three files to a temporary sibling folder, then swap it in. Returns the folder."""
        target = Path(folder or self.folder or "").expanduser()
        if not str(target) or target == Path("."):
            raise ConfigError("save: no folder given")
        if target.exists() and not target.is_dir():
            raise IndexFolderError(f"{target} exists and is not a folder")
        if target.is_dir() and any(target.iterdir()) and not (target / "manifest.json").exists():
            raise IndexFolderError(f"{target} exists, is not empty and is not an index folder; choose another --out")
        writable_folder(target.parent)  # a read-only place is the person's to fix (ConfigError), not a bug
        with self._lock, atomic_folder(target) as tmp:  # fsynced, then swapped in: never half an index
            self.store.save(tmp)
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as handle:
                for chunk_id in sorted(self.chunks):
                    handle.write(json.dumps(self.chunks[chunk_id].to_dict(), ensure_ascii=False) + "\n")
            (tmp / "manifest.json").write_text(json.dumps(self.manifest(), indent=1) + "\n", encoding="utf-8")
        self.folder = target
        logger.info("saved index %s (%d chunks)", target, len(self.chunks))
        return target

    @classmethod
    def load(cls, folder: str | Path, embedder: Embedder | Callable[[str], Embedder]) -> KnowledgeBase:
        """Load an index folder. ``embedder`` is the model to query with, or a function name -> Embedder that is
        called with the manifest's model once the files have been read and checked (a broken index fails before any
        model loads). An embedder of another model is refused. Every problem is an IndexFolderError naming the file.
        """
        folder = Path(folder).expanduser()
        manifest = read_manifest(folder)
        manifest_path = folder / "manifest.json"
        try:
            index_config = IndexConfig(**manifest.get("index", {}))
            chunking = ChunkingConfig(**manifest.get("chunking", {}))
        except (TypeError, ValueError) as err:
            raise IndexFolderError(f"{manifest_path}: bad settings: {err}") from None
        if index_config.qdrant_url and not index_config.collection:
            raise IndexFolderError(f"{manifest_path}: bad settings: backend qdrant with a qdrant_url needs its "
                                   "collection")
        chunks = read_chunks(folder / "chunks.jsonl")
        store = load_store(folder, index_config, manifest["dimension"])  # FAISS's format, safetensors: no pickle
        try:
            held = store.count  # a server: one request
            if held != len(chunks):
                raise IndexFolderError(
                    f"{folder}: {store.label} holds {held} vectors but chunks.jsonl has {len(chunks)} chunks; "
                    "rebuild the index")
            ids = store.ids()
            if ids is not None and set(ids.tolist()) != set(chunks):
                raise IndexFolderError(f"{folder}: the ids in {store.label} and chunks.jsonl differ; rebuild the "
                                       "index")
            documents = manifest.get("documents", {})
            counts = manifest.get("counts", {})
            listed = {chunk_id for doc in documents.values() for chunk_id in doc["chunk_ids"]}
            if (counts.get("chunks", len(chunks)) != len(chunks) or not listed <= set(chunks)
                    or counts.get("documents", len(documents)) != len(documents)):
                raise IndexFolderError(
                    f"{manifest_path}: counts {counts.get('documents')} documents / {counts.get('chunks')} chunks do "
                    f"not match the index ({len(documents)} documents, {len(chunks)} chunks); rebuild the index")
            if callable(embedder) and not hasattr(embedder, "embed"):
                embedder = embedder(manifest["embedding_model"])
            if embedder.name != manifest["embedding_model"] or embedder.dimension != manifest["dimension"]:
                raise IndexFolderError(
                    f"index {folder} was built with embedding model {manifest['embedding_model']} "
                    f"(dimension {manifest['dimension']}), not {embedder.name} (dimension {embedder.dimension}); "
                    "query it with the same model or rebuild it")
        except BaseException:
            store.close()
            raise
        kb = cls(embedder, index_config=index_config, chunking=chunking, folder=folder, store=store)
        kb.chunks = chunks
        kb.documents = documents
        kb.trained_on = manifest.get("trained_on", len(chunks))
        kb.next_id = manifest.get("next_id", max(chunks, default=-1) + 1)
        kb.created = float(manifest.get("created", time.time()))
        kb.updated = float(manifest.get("updated", kb.created))
        kb.build_s = float(manifest.get("build_s", 0.0))
        return kb

    # ---- contents ----------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and settings for display."""
        tokens = [chunk.n_tokens for chunk in self.chunks.values()]
        return {"folder": str(self.folder) if self.folder else None, "embedding_model": self.embedder.name,
                "dimension": self.embedder.dimension, "index_type": self.index_config.index_type,
                **self.store.describe(), "documents": len(self.documents), "chunks": len(self.chunks),
                "mean_chunk_tokens": round(float(np.mean(tokens)), 1) if tokens else 0,
                "chunk_size": self.chunking.chunk_size, "overlap": self.chunking.overlap,
                "updated": self.updated, "index_bytes": folder_bytes(self.folder) if self.folder else None}

    @property
    def index(self) -> Any:
        """The FAISS index itself (backend faiss); for any backend, ``store`` is the way in."""
        if not isinstance(self.store, FaissStore):
            raise AttributeError(f"a {self.store.backend} knowledge base has no FAISS index; use .store")
        return self.store.index

    def vectors(self, ids: Iterable[int]) -> np.ndarray:
        """Stored vectors of chunk ``ids`` (k, d)."""
        ids = list(ids)
        if not ids:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return self.store.reconstruct(ids)

    def close(self) -> None:
        """Release the store's connections (a Qdrant client); the knowledge base is unusable afterwards."""
        self.store.close()

    # ---- building and updating ---------------------------------------------------------------------------------

    def sync(self, documents: list[Document], *, on_progress: Progress | None = None, batch_size: int = 64,
             vector_cache: dict[str, np.ndarray] | None = None, max_chunks: int | None = None) -> dict[str, int]:
        """Make the index hold exactly ``documents``: add new ones, re-chunk changed ones, drop missing ones.

        Vectors of chunks whose embedded text is already in the index (or in ``vector_cache``, hash -> vector) are
        reused, not re-embedded. Returns counts: added, changed, removed, unchanged, embedded, reused.
        IndexLimitError, before anything is embedded or changed, if the index would hold over ``max_chunks`` chunks.
        """
        with self._lock:
            wanted = {document.source: document for document in documents}
            removed_sources = [source for source in self.documents if source not in wanted]
            changed = [doc for source, doc in wanted.items()
                       if source in self.documents and self.documents[source]["sha256"] != doc.sha256]
            added = [doc for source, doc in wanted.items() if source not in self.documents]
            unchanged = len(wanted) - len(changed) - len(added)

            # vectors already in the index, by hash of the embedded text
            by_hash: dict[str, int] = {}
            for chunk in self.chunks.values():
                by_hash.setdefault(chunk.hash, chunk.id)

            new_spans: list[tuple[Document, list[ChunkSpan]]] = []
            todo = changed + added
            for number, document in enumerate(todo, start=1):
                new_spans.append((document, chunk_document(document, self.embedder, self.chunking)))
                if on_progress:
                    on_progress("chunk", number, len(todo))
            if max_chunks is not None:
                kept = sum(len(self.documents[source]["chunk_ids"]) for source in self.documents
                           if source in wanted and self.documents[source]["sha256"] == wanted[source].sha256)
                total = kept + sum(len(spans) for _, spans in new_spans)
                if total > max_chunks:
                    raise IndexLimitError(
                        f"the documents make {total} chunks at chunk_size {self.chunking.chunk_size}, over the "
                        f"{max_chunks} one index takes; index fewer documents, use a larger chunk_size or raise "
                        "TUNE_ARENA_MAX_CHUNKS")
            texts = [embed_text(span, self.index_config.contextual) for _, spans in new_spans for span in spans]
            hashes = [_hash(text) for text in texts]
            cache = vector_cache or {}
            missing = sorted({h: i for i, h in enumerate(hashes) if h not in by_hash and h not in cache}.items(),
                             key=lambda pair: pair[1])
            new_vectors: dict[str, np.ndarray] = {}
            if missing:
                report = (lambda done, total: on_progress("embed", done, total)) if on_progress else None
                fresh = self.embedder.embed([texts[i] for _, i in missing], batch_size=batch_size, on_progress=report)
                new_vectors = {h: fresh[row] for row, (h, _) in enumerate(missing)}
            stored_hashes = sorted(h for h in set(hashes) if h in by_hash)
            stored = self.store.reconstruct([by_hash[h] for h in stored_hashes])  # one batch (a server: one request)
            reused = {h: cache[h] for h in set(hashes) if h not in by_hash and h in cache}
            reused.update({h: stored[row] for row, h in enumerate(stored_hashes)})

            # chunk records: drop the old chunks of changed and removed documents, add the new ones
            drop_ids = [cid for source in removed_sources + [doc.source for doc in changed]
                        for cid in self.documents[source]["chunk_ids"]]
            for source in removed_sources:
                del self.documents[source]
            add_ids: list[int] = []
            add_vectors: list[np.ndarray] = []
            position = 0
            for document, spans in new_spans:
                ids = []
                for span in spans:
                    text_hash = hashes[position]
                    position += 1
                    chunk = Chunk(**vars(span), id=self.next_id, hash=text_hash)
                    self.next_id += 1
                    ids.append(chunk.id)
                    add_ids.append(chunk.id)
                    add_vectors.append(new_vectors[text_hash] if text_hash in new_vectors else reused[text_hash])
                    self.chunks[chunk.id] = chunk
                self.documents[document.source] = {"doc_id": document.doc_id, "sha256": document.sha256,
                                                   "title": document.title, "chunk_ids": ids}
            kept_vectors = None
            rebuild = (bool(drop_ids) and not self.store.supports_removal) or self._needs_retrain(add_ids)
            if rebuild:
                kept_ids = [cid for cid in self.chunks if cid not in set(drop_ids) and cid not in set(add_ids)]
                kept_vectors = self.vectors(kept_ids)
            for cid in drop_ids:
                self.chunks.pop(cid, None)
            if on_progress:
                on_progress("index", 0, 1)
            add_matrix = (np.stack(add_vectors).astype(np.float32) if add_vectors
                          else np.zeros((0, self.embedder.dimension), dtype=np.float32))
            if rebuild:
                all_ids = np.array(kept_ids + add_ids, dtype=np.int64)
                all_vectors = np.concatenate([kept_vectors, add_matrix]) if len(all_ids) else add_matrix
                self.store = new_store(self.index_config, self.embedder.dimension, all_vectors)
                self.trained_on = len(all_ids)
                self.store.add(all_ids, all_vectors)
            else:
                self.store.remove(drop_ids)
                self.store.add(add_ids, add_matrix)
            if on_progress:
                on_progress("index", 1, 1)
            self._bm25 = None
            self.updated = time.time()
            return {"added": len(added), "changed": len(changed), "removed": len(removed_sources),
                    "unchanged": unchanged, "embedded": len(missing), "reused": len(hashes) - len(missing),
                    "rebuilt": rebuild}

    def _needs_retrain(self, add_ids: list[int]) -> bool:
        """IVF centroids are trained once; retrain when the corpus outgrew them 4x (or they were never trained)."""
        return self.store.needs_retrain(len(self.chunks), self.trained_on)

    # ---- search ------------------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 5, *, mmr_lambda: float | None = None, hybrid: bool = True,
               fetch_k: int | None = None) -> list[SearchHit]:
        """Top ``k`` chunks for ``query``. ``mmr_lambda`` (0..1) turns on MMR diversity over ``fetch_k`` candidates;
        ``hybrid`` (default) fuses the dense and BM25 rankings by reciprocal rank: on the demo's 209 train+validation
        questions it raised hit@3 from 0.90 to 0.96. ``score`` is the cosine similarity, or the fused score when
        hybrid (``dense_score`` then holds the cosine)."""
        if not query or not query.strip():
            raise ConfigError("query: is empty")
        if k < 1:
            raise ConfigError(f"k: must be at least 1, got {k}")
        if mmr_lambda is not None and not 0.0 <= mmr_lambda <= 1.0:
            raise ConfigError(f"mmr_lambda: must be between 0 and 1, got {mmr_lambda}")
        with self._lock:
            total = len(self.chunks)
            if total == 0:
                return []
            fetch = min(total, max(fetch_k or 0, k * 4 if (mmr_lambda is not None or hybrid) else k, k))
            query_vector = self.embedder.embed([query])  # (1, d)
            ids, scores = self.store.search(query_vector[0], fetch)  # (fetch',) each, best first
            dense = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]
            stray = next((i for i, _ in dense if i not in self.chunks), None)
            if stray is not None:  # a server's collection changed behind the index folder's back
                raise IndexFolderError(f"{self.folder}: {self.store.label} holds chunk id {stray}, which chunks.jsonl "
                                       "does not; rebuild the index")
            dense_score = dict(dense)
            ranked: list[tuple[int, float]] = dense
            if hybrid:
                bm25, order = self._bm25_index()
                lexical = bm25.scores(query)
                top = np.argsort(-lexical, kind="stable")[:fetch]
                lexical_ids = [order[i] for i in top if lexical[i] > 0]
                ranked = reciprocal_rank_fusion([[i for i, _ in dense], lexical_ids])[:fetch]
            if mmr_lambda is not None:
                candidate_ids = [i for i, _ in ranked]
                picked = mmr(query_vector[0], self.vectors(candidate_ids), k, mmr_lambda)
                ranked = [ranked[p] for p in picked]
            hits = []
            for rank, (chunk_id, score) in enumerate(ranked[:k], start=1):
                chunk = self.chunks[chunk_id]
                cosine = dense_score.get(chunk_id)
                if cosine is None:
                    cosine = float(self.vectors([chunk_id])[0] @ query_vector[0])
                hits.append(SearchHit(rank, cosine if not hybrid else score, chunk, cosine if hybrid else None))
            return hits

    def _bm25_index(self) -> tuple[BM25, list[int]]:
        if self._bm25 is None:
            order = sorted(self.chunks)
            texts = [embed_text(self.chunks[i], True) for i in order]
            self._bm25 = (BM25.build(texts), order)
        return self._bm25
