"""Vector stores: where a knowledge base keeps its chunk vectors and how it finds the nearest ones.

Over 500 lines: the interface and both backends in one place, since each backend is read against the other (the
same ids, scores and checks), and a split would only move half of that comparison away.

A store holds unit-length float32 vectors under integer chunk ids and ranks them by inner product (= cosine). Two
backends, picked by ``IndexConfig.backend`` (registry ``STORES``):

    faiss   index.faiss in the index folder: flat (exact IndexFlatIP), hnsw or ivf; FAISS's own binary format.
    qdrant  Qdrant through qdrant-client, exact search (``flat``) or Qdrant's HNSW (``hnsw``, on a server). Local mode
            (no ``qdrant_url``): the index folder keeps the vectors in vectors.safetensors and ``load`` puts them into
            an in-memory Qdrant collection. Server mode (``qdrant_url``): the collection lives on the Qdrant server or
            cluster (API key from ``$QDRANT_API_KEY``); the folder keeps chunks.jsonl and manifest.json, and an update
            upserts and deletes points by chunk id.

Never pickled: qdrant-client's persistent local mode (``QdrantClient(path=...)``) stores its points with pickle, so
it is never used; an index folder holds FAISS's format, safetensors and JSON only. qdrant-client is imported on first
use (about 0.8 s), so FAISS users never pay for it.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import faiss
import numpy as np

from core.errors import ConfigError, TuneArenaError
from retrieval.folder import (
    FAISS_FILE,
    VECTORS_FILE,
    IndexFolderError,
    check_index_kind,
    faiss_ids,
    faiss_reason,
    read_vectors,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

logger = logging.getLogger(__name__)

T = TypeVar("T")
API_KEY_ENV = "QDRANT_API_KEY"  # a Qdrant Cloud (or secured) cluster's API key; never written to the index folder
LOCAL_COLLECTION = "chunks"  # the in-memory collection of local mode
COLLECTION_PREFIX = "tune-arena-"  # server mode's default collection: tune-arena-<index folder name>
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
BATCH = 256  # points per upsert / retrieve request


class VectorStoreError(TuneArenaError):
    """A Qdrant server that cannot be reached or refuses a request; the message names the server and what to do."""


class IndexConfig(Protocol):
    """The settings a store reads (retrieval.index.IndexConfig has them; declared here so that this module, which
    retrieval.index imports, never imports it back)."""

    backend: str
    index_type: str
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nlist: int
    ivf_nprobe: int
    qdrant_url: str | None
    collection: str | None


def default_collection(folder: str | Path) -> str:
    """Server mode's collection for an index folder: ``tune-arena-<folder name>``, other characters as ``-``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(folder).expanduser().name or "index")
    return (COLLECTION_PREFIX + name)[:255]


def _as_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).reshape(-1)


class VectorStore(ABC):
    """Vectors by chunk id. ``search`` ranks by inner product; ``reconstruct`` returns stored vectors (MMR, reuse)."""

    backend: ClassVar[str]
    supports_removal: ClassVar[bool] = True

    def __init__(self, config: IndexConfig, dimension: int) -> None:
        self.config = config
        self.dimension = dimension

    # ---- contents ----------------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def count(self) -> int:
        """Vectors held."""

    @property
    def label(self) -> str:
        """Where the vectors are, as an error message names it (``index.faiss``, a collection on a server)."""
        return self.backend

    @abstractmethod
    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` (n, d) under chunk ``ids`` (n,)."""

    @abstractmethod
    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        """Drop the vectors of chunk ``ids`` (ids not held are ignored)."""

    @abstractmethod
    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best chunks for query ``vector`` (d,): (ids (k',) int64, scores (k',) float32), best first."""

    @abstractmethod
    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored vectors of chunk ``ids``, (n, d) float32, in the order given."""

    def ids(self) -> np.ndarray | None:
        """Every chunk id held, or None where listing them is not cheap (a server's collection)."""
        return None

    def needs_retrain(self, total: int, trained_on: int) -> bool:
        """Whether a store trained on ``trained_on`` vectors must be rebuilt to hold ``total`` well."""
        return False

    def describe(self) -> dict[str, Any]:
        """Backend facts for stats and the CLI: backend (and mode, qdrant_url, collection for Qdrant)."""
        return {"backend": self.backend}

    # ---- persistence -------------------------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def create(cls, config: IndexConfig, dimension: int, train_vectors: np.ndarray | None = None) -> VectorStore:
        """An empty store (IVF: trained on ``train_vectors``)."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the store's files into ``folder`` (the temporary folder a save swaps in)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, config: IndexConfig, dimension: int) -> VectorStore:
        """The store of index folder ``folder``; IndexFolderError (one line, naming the file) if it is unusable."""

    def close(self) -> None:  # noqa: B027 - a no-op unless a store holds a connection
        """Release connections (a no-op for in-process stores)."""


# --------------------------------------------------------------------------------------------------------------------
# FAISS
# --------------------------------------------------------------------------------------------------------------------


def new_faiss_index(config: IndexConfig, dimension: int, train_vectors: np.ndarray | None = None) -> faiss.Index:
    """An empty index with external ids, trained on ``train_vectors`` for IVF."""
    if config.index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    if config.index_type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dimension, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = config.hnsw_ef_construction
        hnsw.hnsw.efSearch = config.hnsw_ef_search
        return faiss.IndexIDMap2(hnsw)
    n = 0 if train_vectors is None else len(train_vectors)
    nlist = config.ivf_nlist or int(4 * np.sqrt(max(n, 1)))
    nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
    quantizer = faiss.IndexFlatIP(dimension)
    ivf = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.own_fields = True
    quantizer.this.disown()
    if n:
        ivf.train(train_vectors)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    ivf.nprobe = min(config.ivf_nprobe, nlist)
    return ivf


def configure_search(index: faiss.Index, config: IndexConfig) -> None:
    """Search-time settings a saved FAISS index does not keep: HNSW efSearch, IVF nprobe."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSWFlat):
        inner.hnsw.efSearch = config.hnsw_ef_search
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = min(config.ivf_nprobe, index.nlist)


class FaissStore(VectorStore):
    """A FAISS index with external ids (IDMap2 over flat or HNSW; IVF with a hash-table direct map): index.faiss."""

    backend = "faiss"

    def __init__(self, config: IndexConfig, dimension: int, index: faiss.Index) -> None:
        super().__init__(config, dimension)
        self.index = index

    @property
    def supports_removal(self) -> bool:  # type: ignore[override]  # HNSW graphs cannot drop nodes
        return self.config.index_type in ("flat", "ivf")

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def label(self) -> str:
        return FAISS_FILE

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        ids = _as_ids(ids)
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        ids = _as_ids(ids)
        if len(ids):
            self.index.remove_ids(ids)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)  # (1, d)
        scores, ids = self.index.search(query, k)  # (1, k) each; id -1 where fewer than k
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = _as_ids(ids)
        if not len(ids):
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def ids(self) -> np.ndarray | None:
        return faiss_ids(self.index)

    def needs_retrain(self, total: int, trained_on: int) -> bool:
        """IVF centroids are trained once; retrain when the corpus outgrew them 4x (or they were never trained)."""
        if self.config.index_type != "ivf":
            return False
        return not self.index.is_trained or trained_on == 0 or total > 4 * max(trained_on, 1)

    @classmethod
    def create(cls, config: IndexConfig, dimension: int, train_vectors: np.ndarray | None = None) -> FaissStore:
        return cls(config, dimension, new_faiss_index(config, dimension, train_vectors))

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / FAISS_FILE))

    @classmethod
    def load(cls, folder: Path, config: IndexConfig, dimension: int) -> FaissStore:
        try:  # FAISS's own binary format: read_index never unpickles
            index = faiss.read_index(str(folder / FAISS_FILE))
        except RuntimeError as err:
            reason = faiss_reason(err)
            raise IndexFolderError(f"{folder / FAISS_FILE}: not a readable FAISS index ({reason})") from None
        check_index_kind(folder, index, config.index_type, dimension)
        configure_search(index, config)
        return cls(config, dimension, index)


# --------------------------------------------------------------------------------------------------------------------
# Qdrant
# --------------------------------------------------------------------------------------------------------------------


def connect(url: str | None) -> QdrantClient:
    """A client of the Qdrant server at ``url`` (API key from ``$QDRANT_API_KEY``; no request is made yet), or of a
    new in-memory collection store when ``url`` is None (never ``path=``: that local mode pickles points to disk)."""
    from qdrant_client import QdrantClient

    if url is None:
        return QdrantClient(":memory:")
    return QdrantClient(url=url, api_key=os.environ.get(API_KEY_ENV) or None, timeout=30, check_compatibility=False)


class QdrantStore(VectorStore):
    """A Qdrant collection of chunk vectors (point id = chunk id, no payload), dot product on unit vectors (= FAISS
    flat IP). Local mode: an in-memory collection filled from vectors.safetensors. Server mode: a collection on
    ``config.qdrant_url``; a new store creates it on its first write, and replaces one already there only when
    ``replace`` is set (the index folder's own collection, or ``--rebuild``)."""

    backend = "qdrant"

    def __init__(self, config: IndexConfig, dimension: int, client: QdrantClient | None = None) -> None:
        super().__init__(config, dimension)
        self.url = config.qdrant_url
        self.collection = config.collection or LOCAL_COLLECTION
        if self.url and not config.collection:
            raise ConfigError("collection: server mode needs a collection name (build_index names it after the "
                              "index folder)")
        self.replace = False
        self._client = client
        self._ready = False  # the collection exists (and is ours)

    # ---- the client and the collection -------------------------------------------------------------------------

    @property
    def server(self) -> bool:
        return bool(self.url)

    @property
    def label(self) -> str:
        return f"Qdrant collection {self.collection} at {self.url}" if self.server else VECTORS_FILE

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; a server that cannot be reached or refuses is one VectorStoreError line."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            return fn(*args, **kwargs)
        except UnexpectedResponse as err:
            detail = " ".join(err.content.decode("utf-8", "replace").split())[:200] if err.content else ""
            hint = f"; set ${API_KEY_ENV} to the cluster's API key" if err.status_code in (401, 403) else ""
            raise VectorStoreError(f"Qdrant server {self.url}: {what} refused (HTTP {err.status_code} "
                                   f"{err.reason_phrase}{': ' + detail if detail else ''}){hint}") from None
        except (ResponseHandlingException, OSError) as err:
            reason = " ".join(str(getattr(err, "source", None) or err).split())[:160] or type(err).__name__
            raise VectorStoreError(f"Qdrant server {self.url} cannot be reached ({reason}); check --qdrant-url "
                                   "and that the server is up") from None

    def _create_collection(self) -> None:
        from qdrant_client import models

        hnsw = (models.HnswConfigDiff(m=self.config.hnsw_m, ef_construct=self.config.hnsw_ef_construction)
                if self.server and self.config.index_type == "hnsw" else None)
        self._call("creating the collection", self.client.create_collection, self.collection,
                   vectors_config=models.VectorParams(size=self.dimension, distance=models.Distance.DOT),
                   hnsw_config=hnsw)

    def preflight(self) -> None:
        """For a new server store, before anything is embedded: refuse (ConfigError) a collection of its name that
        it may not replace. Nothing is deleted or created yet: that waits for the first write."""
        if self.server and not self._ready and not self.replace and self._call(
                "looking up the collection", self.client.collection_exists, self.collection):
            raise ConfigError(f"collection: {self.collection} already exists on the Qdrant server {self.url} and is "
                              "not this index folder's; choose another --collection, or pass --rebuild to replace it")

    def _ensure(self) -> None:
        """The collection exists: created now for a new store (a server's old one replaced only if allowed)."""
        if self._ready:
            return
        self.preflight()
        if self.server and self._call("looking up the collection", self.client.collection_exists, self.collection):
            logger.info("replacing Qdrant collection %s at %s", self.collection, self.url)
            self._call("deleting the old collection", self.client.delete_collection, self.collection)
        self._create_collection()
        self._ready = True

    # ---- contents ----------------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        if not self._ready:
            return 0
        return int(self._call("counting points", self.client.count, self.collection, exact=True).count)

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        from qdrant_client import models

        ids = _as_ids(ids)
        self._ensure()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, d)
        for begin in range(0, len(ids), BATCH):
            batch = models.Batch(ids=ids[begin:begin + BATCH].tolist(), vectors=vectors[begin:begin + BATCH].tolist())
            self._call("upserting points", self.client.upsert, self.collection, points=batch, wait=True)

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        from qdrant_client import models

        ids = _as_ids(ids)
        if not len(ids) or not self._ready:
            return
        for begin in range(0, len(ids), BATCH * 4):
            selector = models.PointIdsList(points=ids[begin:begin + BATCH * 4].tolist())
            self._call("deleting points", self.client.delete, self.collection, points_selector=selector, wait=True)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        if not self._ready:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        query = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()  # (d,)
        options: dict[str, Any] = {}
        if self.server:  # local mode always searches exactly (and warns if given search params)
            options["search_params"] = (models.SearchParams(exact=True) if self.config.index_type == "flat" else
                                        models.SearchParams(hnsw_ef=self.config.hnsw_ef_search))
        found = self._call("searching", self.client.query_points, self.collection, query=query, limit=k,
                           with_payload=False, with_vectors=False, **options).points
        return (np.array([int(point.id) for point in found], dtype=np.int64),
                np.array([point.score for point in found], dtype=np.float32))

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = _as_ids(ids)
        if not len(ids):
            return np.zeros((0, self.dimension), dtype=np.float32)
        wanted = ids.tolist()
        found: dict[int, list[float]] = {}
        if self._ready:
            for begin in range(0, len(wanted), BATCH * 4):
                records = self._call("reading vectors", self.client.retrieve, self.collection,
                                     ids=sorted(set(wanted[begin:begin + BATCH * 4])), with_payload=False,
                                     with_vectors=True)
                found.update({int(record.id): record.vector for record in records})
        missing = [i for i in wanted if i not in found]
        if missing:
            raise IndexFolderError(f"{self.label}: holds no vector for chunk id {missing[0]}; rebuild the index")
        return np.array([found[i] for i in wanted], dtype=np.float32).reshape(len(wanted), self.dimension)

    def _all(self, with_vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids (n,), vectors (n, d) or None) of every point, ascending ids."""
        if not self._ready:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dimension), dtype=np.float32)
        records, offset = [], None
        while True:
            page, offset = self._call("listing points", self.client.scroll, self.collection, limit=BATCH * 16,
                                      offset=offset, with_payload=False, with_vectors=with_vectors)
            records += page
            if offset is None:
                break
        records.sort(key=lambda record: int(record.id))
        ids = np.array([int(record.id) for record in records], dtype=np.int64)
        if not with_vectors:
            return ids, None
        vectors = np.array([record.vector for record in records], dtype=np.float32).reshape(len(ids), self.dimension)
        return ids, vectors

    def ids(self) -> np.ndarray | None:
        return None if self.server else self._all(with_vectors=False)[0]

    def describe(self) -> dict[str, Any]:
        row: dict[str, Any] = {"backend": self.backend, "mode": "server" if self.server else "local"}
        if self.server:
            row.update(qdrant_url=self.url, collection=self.collection)
        return row

    # ---- persistence -------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, config: IndexConfig, dimension: int, train_vectors: np.ndarray | None = None) -> QdrantStore:
        store = cls(config, dimension)
        if not store.server:  # in memory: nothing to ask; a server's collection is made on the first write
            store._ensure()
        return store

    def save(self, folder: Path) -> None:
        """Local mode: every point into vectors.safetensors. Server mode: the points are on the server already;
        only make sure the collection exists (an index of empty documents still has one)."""
        self._ensure()
        if self.server:
            return
        from safetensors.numpy import save_file

        ids, vectors = self._all(with_vectors=True)
        save_file({"ids": ids, "vectors": vectors}, str(folder / VECTORS_FILE))

    @classmethod
    def load(cls, folder: Path, config: IndexConfig, dimension: int) -> QdrantStore:
        store = cls(config, dimension)
        if not store.server:
            ids, vectors = read_vectors(folder / VECTORS_FILE, dimension)
            store._ensure()
            store.add(ids, vectors)
            return store
        if not store._call("looking up the collection", store.client.collection_exists, store.collection):
            raise IndexFolderError(f"{folder}: {store.label} does not exist (deleted on the server?); rebuild the "
                                   "index with --rebuild")
        info = store._call("reading the collection", store.client.get_collection, store.collection)
        params = info.config.params.vectors
        size = getattr(params, "size", None)
        distance = str(getattr(getattr(params, "distance", None), "value", getattr(params, "distance", "")))
        if size != dimension or distance != "Dot":
            raise IndexFolderError(f"{folder}: {store.label} holds vectors of size {size} ({distance}), but "
                                   f"manifest.json says {dimension} (Dot); rebuild the index with --rebuild")
        store._ready = True
        return store

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._ready = self.server and self._ready  # an in-memory collection is gone with its client


STORES: dict[str, type[VectorStore]] = {"faiss": FaissStore, "qdrant": QdrantStore}


def new_store(config: IndexConfig, dimension: int, train_vectors: np.ndarray | None = None) -> VectorStore:
    """An empty store of ``config.backend``."""
    return STORES[config.backend].create(config, dimension, train_vectors)


def probe_store(config: IndexConfig) -> None:
    """Fail fast, before any model loads or anything is embedded, if ``config`` names a Qdrant server that cannot be
    reached or refuses the API key (VectorStoreError, one line). No-op for in-process stores."""
    if config.backend == "qdrant" and config.qdrant_url:
        store = QdrantStore(config, 1)
        try:
            store._call("looking up the collection", store.client.collection_exists, store.collection)
        finally:
            store.close()


def load_store(folder: Path, config: IndexConfig, dimension: int) -> VectorStore:
    """The store of index folder ``folder`` (its manifest's ``config``)."""
    return STORES[config.backend].load(folder, config, dimension)
