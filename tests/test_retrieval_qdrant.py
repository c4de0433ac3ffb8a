"""The Qdrant vector store: the same answers as FAISS flat, a knowledge base in Qdrant local mode (save, load without
pickle, search, hybrid, MMR, incremental sync, model check, broken files), server mode against qdrant-client's own
in-memory client standing in for a server (no server is started and no test reaches the network), the CLI, the
engine's refusal for visitors, the tab's helpers, and (integration) the demo corpus in both backends."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse
from retrieval_helpers import FakeEmbedder, words, write

import retrieval.stores as stores
from core.cli import main
from core.errors import ConfigError
from retrieval import (
    ChunkingConfig,
    FaissStore,
    IndexConfig,
    IndexFolderError,
    KnowledgeBase,
    QdrantStore,
    VectorStoreError,
    build_index,
    evaluate_retrieval,
    load_cases,
)

CHUNKING = ChunkingConfig(chunk_size=20, overlap=0, min_chunk_tokens=4)  # two chunks per corpus document
QDRANT = IndexConfig(backend="qdrant")
SERVER_URL = "http://qdrant.invalid:6333"  # never contacted: ``server`` hands out an in-memory client instead
QUERIES = ("pump3 pump4 pump5 pump6", "light104 light105", "wifi2 ret7", "ret103 ret104 ret105 pump1")


def section_doc(title: str, prefix: str, second: str | None = None) -> str:
    """Two sections of 12 words each: exactly two chunks with CHUNKING."""
    return (f"# {title}\n\n{words(12, 0, prefix)}\n\n## More {title}\n\n"
            f"{second if second is not None else words(12, 100, prefix)}\n")


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    write(folder / "pump.md", section_doc("Pump", "pump"))
    write(folder / "lights.md", section_doc("Lights", "light"))
    write(folder / "wifi.md", section_doc("Wifi", "wifi"))
    write(folder / "sub/returns.md", section_doc("Returns", "ret"))
    return folder


class Embedder(FakeEmbedder):
    """FakeEmbedder plus a small fixed jitter per text, so no two chunks tie on a query: FAISS and Qdrant then must
    agree on every rank (ties have no order to agree on)."""

    def embed(self, texts, *, batch_size: int = 64, on_progress=None) -> np.ndarray:
        out = super().embed(texts, batch_size=batch_size, on_progress=on_progress)  # (n, d)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            out[row] += 0.005 * np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def build(corpus: Path, out: Path, embedder: FakeEmbedder | None = None, config: IndexConfig = QDRANT, **kwargs):
    return build_index([str(corpus)], out, embedder or Embedder(), index_config=config, chunking=CHUNKING,
                       **kwargs)


def unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    vectors = rng.standard_normal((n, d)).astype(np.float32)  # (n, d)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def answers(kb: KnowledgeBase, **kwargs) -> list[list[tuple[int, float]]]:
    return [[(hit.chunk.id, round(hit.score, 5)) for hit in kb.search(text, 3, **kwargs)] for text in QUERIES]


# --------------------------------------------------------------------------------------------------------------------
# The stores side by side
# --------------------------------------------------------------------------------------------------------------------


def test_faiss_flat_and_qdrant_give_the_same_top_k_ids_and_scores():
    rng = np.random.default_rng(7)
    n, d = 600, 48
    vectors = unit_vectors(rng, n, d)
    ids = rng.choice(10 * n, size=n, replace=False).astype(np.int64)  # sparse, unordered chunk ids
    faiss_store = FaissStore.create(IndexConfig(), d)
    qdrant_store = QdrantStore.create(QDRANT, d)
    for store in (faiss_store, qdrant_store):
        store.add(ids, vectors)
    queries = unit_vectors(rng, 25, d)

    def same_top_k(k: int) -> None:
        for query in queries:
            faiss_ids, faiss_scores = faiss_store.search(query, k)
            qdrant_ids, qdrant_scores = qdrant_store.search(query, k)
            assert qdrant_ids.tolist() == faiss_ids.tolist()
            np.testing.assert_allclose(qdrant_scores, faiss_scores, atol=1e-5)

    same_top_k(10)
    gone = ids[::3]
    for store in (faiss_store, qdrant_store):
        store.remove(gone)
    assert faiss_store.count == qdrant_store.count == n - len(gone)
    same_top_k(25)
    kept = ids[1:40:3]
    np.testing.assert_allclose(qdrant_store.reconstruct(kept), faiss_store.reconstruct(kept), atol=1e-7)
    assert sorted(qdrant_store.ids().tolist()) == sorted(faiss_store.ids().tolist())
    with pytest.raises(IndexFolderError, match=f"no vector for chunk id {int(gone[0])}"):
        qdrant_store.reconstruct([int(gone[0])])
    ids_out, scores_out = qdrant_store.search(queries[0], 10_000)  # k over the count: all of them
    assert len(ids_out) == len(scores_out) == n - len(gone)


# --------------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "message"), [
    ({"backend": "milvus"}, "backend: must be one of faiss, qdrant, got 'milvus'"),
    ({"backend": "qdrant", "index_type": "ivf"}, "index_type: ivf is a FAISS structure"),
    ({"qdrant_url": "http://localhost:6333"}, "qdrant_url: only for backend qdrant, not faiss"),
    ({"backend": "qdrant", "qdrant_url": "localhost:6333"}, "qdrant_url: must be an http:// or https:// URL"),
    ({"backend": "qdrant", "qdrant_url": "http://a b"}, "qdrant_url: must be an http:// or https:// URL"),
    ({"backend": "qdrant", "collection": "docs"}, "collection: names a collection on a Qdrant server"),
    ({"backend": "qdrant", "qdrant_url": "https://x.io", "collection": "a/b"}, "collection: 1 to 255 letters"),
])
def test_store_settings_are_checked_naming_the_field(settings, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        IndexConfig(**settings)


def test_defaults_are_faiss_and_an_old_manifest_still_loads(corpus, tmp_path):
    assert (IndexConfig().backend, IndexConfig().qdrant_url, IndexConfig().collection) == ("faiss", None, None)
    build(corpus, tmp_path / "kb", config=IndexConfig())
    manifest_path = tmp_path / "kb/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["index"]["backend"] == "faiss"
    for key in ("backend", "qdrant_url", "collection"):  # as written before there were backends
        del manifest["index"][key]
    manifest_path.write_text(json.dumps(manifest))
    kb = KnowledgeBase.load(tmp_path / "kb", Embedder())
    assert isinstance(kb.store, FaissStore) and kb.index.ntotal == len(kb.chunks) == 8


# --------------------------------------------------------------------------------------------------------------------
# Local mode: a knowledge base in Qdrant
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_persistent_qdrant(monkeypatch) -> list[dict]:
    """Every QdrantClient made, as its arguments; a client on disk (``path=``, which pickles points) fails the test."""
    made: list[dict] = []
    original = QdrantClient.__init__

    def record(self, location=None, *args, **kwargs):
        made.append({"location": location, **kwargs})
        assert kwargs.get("path") is None and location in (None, ":memory:"), "Qdrant's on-disk local mode is pickle"
        original(self, location, *args, **kwargs)

    monkeypatch.setattr(QdrantClient, "__init__", record)
    return made


def test_a_qdrant_knowledge_base_saves_loads_and_answers_like_faiss(corpus, tmp_path, no_persistent_qdrant):
    embedder = Embedder()
    result = build(corpus, tmp_path / "kb", embedder)
    assert (result.documents, result.chunks, result.embedded) == (4, 8, 8)
    assert result.contract()["backend"] == "qdrant" and result.contract()["mode"] == "local"
    folder = tmp_path / "kb"
    assert sorted(path.name for path in folder.iterdir()) == ["chunks.jsonl", "manifest.json", "vectors.safetensors"]
    for path in folder.iterdir():  # no pickle anywhere, and none of Qdrant's own storage (collection/, .lock, ...)
        head = path.read_bytes()[:2]
        assert path.is_file() and not (head[:1] == b"\x80" and head[1:] in (b"\x02", b"\x03", b"\x04", b"\x05"))
    assert set(_tensors(folder)) == {"ids", "vectors"}  # safetensors: a JSON header and raw arrays
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["index"]["backend"] == "qdrant" and manifest["index"]["qdrant_url"] is None
    assert manifest["counts"] == {"documents": 4, "chunks": 8}

    kb = KnowledgeBase.load(folder, Embedder())
    assert isinstance(kb.store, QdrantStore) and kb.store.count == 8
    ids = sorted(kb.chunks)
    texts = list(embedder.texts)
    np.testing.assert_allclose(kb.vectors(ids), Embedder().embed(texts), atol=1e-7)  # rebuilt from the file
    with pytest.raises(AttributeError, match="use .store"):
        _ = kb.index
    reference = KnowledgeBase.load(build(corpus, tmp_path / "faiss", config=IndexConfig()).index_dir, Embedder())
    assert answers(kb, hybrid=False) == answers(reference, hybrid=False)
    assert answers(kb) == answers(reference)  # hybrid: BM25 + dense through reciprocal rank fusion
    assert answers(kb, mmr_lambda=0.3, hybrid=False) == answers(reference, mmr_lambda=0.3, hybrid=False)
    assert kb.search("pump3 pump4 pump5 pump6", 1, hybrid=False)[0].chunk.source == f"{corpus}/pump.md"
    assert kb.stats()["backend"] == "qdrant" and kb.stats()["mode"] == "local"
    assert no_persistent_qdrant and all(made["location"] == ":memory:" for made in no_persistent_qdrant)


def test_sync_touches_the_store_only_for_added_changed_and_removed_documents(corpus, tmp_path, monkeypatch):
    embedder = Embedder()
    build(corpus, tmp_path / "kb", embedder)
    calls: list[tuple[str, list[int]]] = []
    original_add, original_remove = QdrantStore.add, QdrantStore.remove

    def add(self, ids, vectors):
        calls.append(("add", sorted(int(i) for i in ids)))
        original_add(self, ids, vectors)

    def remove(self, ids):
        calls.append(("remove", sorted(int(i) for i in ids)))
        original_remove(self, ids)

    monkeypatch.setattr(QdrantStore, "add", add)
    monkeypatch.setattr(QdrantStore, "remove", remove)
    before = KnowledgeBase.load(tmp_path / "kb", Embedder())
    calls.clear()  # loading fills the in-memory collection; from here on only the update counts
    old = {source: doc["chunk_ids"] for source, doc in before.documents.items()}

    write(corpus / "pump.md", section_doc("Pump", "pump", second=words(12, 500, "pump")))  # one section changed
    (corpus / "wifi.md").unlink()
    write(corpus / "seeds.md", section_doc("Seeds", "seed"))
    embedder.reset()
    result = build(corpus, tmp_path / "kb", embedder)
    update = list(calls)
    assert (result.added, result.changed, result.removed, result.unchanged) == (1, 1, 1, 2)
    assert (result.embedded, result.reused, result.rebuilt) == (3, 1, False)  # the unchanged pump section reused
    kb = KnowledgeBase.load(tmp_path / "kb", Embedder())
    added = sorted(set(kb.chunks) - set(before.chunks))
    assert len(added) == 4  # pump.md's two chunks (new ids) and seeds.md's two
    dropped = sorted(old[f"{corpus}/pump.md"] + old[f"{corpus}/wifi.md"])
    assert update == [("add", sorted(before.chunks)),  # loading the index into memory
                      ("remove", dropped), ("add", added)]  # the update: only the touched documents' chunks
    manifest = json.loads((tmp_path / "kb/manifest.json").read_text())
    assert manifest["counts"] == {"documents": 4, "chunks": 8} == {"documents": len(kb.documents),
                                                                   "chunks": kb.store.count}
    assert kb.search("seed3 seed4 seed5", 1, hybrid=False)[0].chunk.source == f"{corpus}/seeds.md"
    assert not any(chunk.source.endswith("wifi.md") for chunk in kb.chunks.values())

    calls.clear()
    embedder.reset()
    again = build(corpus, tmp_path / "kb", embedder)
    assert (again.embedded, again.unchanged) == (0, 4)
    assert [kind for kind, ids in calls if ids] == ["add"]  # the load only: an unchanged corpus touches nothing


def test_switching_backends_reuses_every_vector(corpus, tmp_path):
    embedder = Embedder()
    build(corpus, tmp_path / "kb", embedder, config=IndexConfig())
    embedder.reset()
    moved = build(corpus, tmp_path / "kb", embedder)
    assert (moved.rebuilt, moved.embedded, moved.reused) == (True, 0, 8) and moved.store["backend"] == "qdrant"
    assert not (tmp_path / "kb/index.faiss").exists() and (tmp_path / "kb/vectors.safetensors").is_file()
    back = build(corpus, tmp_path / "kb", embedder, config=IndexConfig())
    assert (back.embedded, back.store) == (0, {"backend": "faiss"}) and (tmp_path / "kb/index.faiss").is_file()


def test_the_embedding_model_is_checked_on_load(corpus, tmp_path):
    build(corpus, tmp_path / "kb", Embedder("fake-bow"))
    with pytest.raises(IndexFolderError, match=r"built with embedding model fake-bow .*not other-model"):
        KnowledgeBase.load(tmp_path / "kb", Embedder("other-model"))
    with pytest.raises(IndexFolderError, match=r"dimension 64.*dimension 32"):
        KnowledgeBase.load(tmp_path / "kb", Embedder("fake-bow", dimension=32))
    with pytest.raises(IndexFolderError, match="fake-bow, not other-model"):
        build(corpus, tmp_path / "kb", Embedder("other-model"))
    assert build(corpus, tmp_path / "kb", Embedder("other-model", dimension=32), rebuild=True).embedded == 8


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "vectors.safetensors"))


def _save_tensors(folder: Path, **tensors: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / "vectors.safetensors"))


def _cut(folder: Path, keep) -> None:
    path = folder / "vectors.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


BROKEN_VECTORS = [
    ("truncated", lambda f: _cut(f, lambda n: n // 2), "vectors.safetensors: not a readable vectors file"),
    ("empty", lambda f: _cut(f, lambda n: 0), "vectors.safetensors: not a readable vectors file"),
    ("pickle", lambda f: (f / "vectors.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64 + b"."),
     "vectors.safetensors: not a readable vectors file"),
    ("garbage", lambda f: (f / "vectors.safetensors").write_bytes(b"not tensors at all\n" * 20),
     "vectors.safetensors: not a readable vectors file"),
    ("missing", lambda f: (f / "vectors.safetensors").unlink(), "is not an index folder (missing vectors.safetensors)"),
    ("no-ids", lambda f: _save_tensors(f, vectors=_tensors(f)["vectors"]), "needs the tensors 'ids' and 'vectors'"),
    ("float64", lambda f: _save_tensors(f, ids=_tensors(f)["ids"], vectors=_tensors(f)["vectors"].astype(np.float64)),
     "ids must be int64 (n,) and vectors float32 (n, d)"),
    ("dimension", lambda f: _save_tensors(f, ids=_tensors(f)["ids"], vectors=_tensors(f)["vectors"][:, :32].copy()),
     "vectors of dimension 32, but manifest.json says 64"),
    ("short", lambda f: _save_tensors(f, ids=_tensors(f)["ids"][:-1].copy(),
                                      vectors=_tensors(f)["vectors"][:-1].copy()),
     "vectors.safetensors holds 7 vectors but chunks.jsonl has 8 chunks"),
    ("renumbered", lambda f: _save_tensors(f, ids=_tensors(f)["ids"] + 100, vectors=_tensors(f)["vectors"]),
     "the ids in vectors.safetensors and chunks.jsonl differ"),
    ("repeated-id", lambda f: _save_tensors(f, ids=np.zeros(8, dtype=np.int64), vectors=_tensors(f)["vectors"]),
     "chunk ids must be distinct and non-negative"),
    ("nan", lambda f: _save_tensors(f, ids=_tensors(f)["ids"], vectors=np.full((8, 64), np.nan, dtype=np.float32)),
     "holds NaN or infinite values"),
]


@pytest.mark.parametrize("case", [case for case, _, _ in BROKEN_VECTORS])
def test_a_broken_vectors_file_is_one_line_naming_it(corpus, tmp_path, case):
    _, change, needle = next(row for row in BROKEN_VECTORS if row[0] == case)
    build(corpus, tmp_path / "kb", Embedder())
    change(tmp_path / "kb")
    asked: list[str] = []

    def embedder(name: str) -> FakeEmbedder:
        asked.append(name)
        return Embedder()

    with pytest.raises(IndexFolderError) as caught:
        KnowledgeBase.load(tmp_path / "kb", embedder)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "kb") in message and needle in message, message
    assert asked == []  # the embedding model is never loaded for a broken index


# --------------------------------------------------------------------------------------------------------------------
# Server mode, with qdrant-client's in-memory client standing in for the server
# --------------------------------------------------------------------------------------------------------------------


class StandInServer(QdrantClient):
    """One in-memory Qdrant shared by every store that asks for ``SERVER_URL``; ``close`` keeps it (a server
    outlives its clients)."""

    def close(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> QdrantClient:
    fake = StandInServer(":memory:")
    real_connect = stores.connect

    def connect(url):
        return fake if url == SERVER_URL else real_connect(url)

    monkeypatch.setattr(stores, "connect", connect)
    return fake


STAND_IN = pytest.mark.filterwarnings("ignore:Local mode performs exact")  # the stand-in ignores search_params


def server_config(**changes) -> IndexConfig:
    return IndexConfig(backend="qdrant", qdrant_url=SERVER_URL, **changes)


@STAND_IN
def test_server_mode_keeps_the_vectors_in_the_collection_and_updates_it_in_place(corpus, tmp_path, server):
    embedder = Embedder()
    result = build(corpus, tmp_path / "kb", embedder, config=server_config())
    contract = result.contract()
    assert (contract["backend"], contract["mode"], contract["qdrant_url"], contract["collection"]) == (
        "qdrant", "server", SERVER_URL, "tune-arena-kb")
    assert sorted(path.name for path in (tmp_path / "kb").iterdir()) == ["chunks.jsonl", "manifest.json"]
    manifest = json.loads((tmp_path / "kb/manifest.json").read_text())
    assert manifest["index"]["qdrant_url"] == SERVER_URL and manifest["index"]["collection"] == "tune-arena-kb"
    assert server.count("tune-arena-kb", exact=True).count == 8 == manifest["counts"]["chunks"]

    kb = KnowledgeBase.load(tmp_path / "kb", Embedder())
    reference = KnowledgeBase.load(build(corpus, tmp_path / "faiss", config=IndexConfig()).index_dir, Embedder())
    assert answers(kb, hybrid=False) == answers(reference, hybrid=False) and answers(kb) == answers(reference)
    assert answers(kb, mmr_lambda=0.3) == answers(reference, mmr_lambda=0.3)
    assert "Qdrant collection tune-arena-kb at" in kb.store.label

    write(corpus / "lights.md", section_doc("Lights", "light", second=words(12, 700, "light")))
    (corpus / "wifi.md").unlink()
    embedder.reset()
    update = build(corpus, tmp_path / "kb", embedder, config=server_config())
    assert (update.changed, update.removed, update.embedded, update.rebuilt) == (1, 1, 1, False)
    kb = KnowledgeBase.load(tmp_path / "kb", Embedder())
    points, _ = server.scroll("tune-arena-kb", limit=100)
    assert sorted(int(point.id) for point in points) == sorted(kb.chunks) and len(kb.chunks) == 6
    assert kb.search("light703 light704", 1, hybrid=False)[0].chunk.source == f"{corpus}/lights.md"


@STAND_IN
def test_server_mode_load_checks_the_collection_against_the_manifest(corpus, tmp_path, server):
    from qdrant_client import models

    build(corpus, tmp_path / "kb", config=server_config(collection="docs"))
    server.delete("docs", points_selector=models.PointIdsList(points=[0]), wait=True)
    with pytest.raises(IndexFolderError, match=r"Qdrant collection docs at .* holds 7 vectors but chunks.jsonl has 8"):
        KnowledgeBase.load(tmp_path / "kb", Embedder())
    server.delete_collection("docs")
    with pytest.raises(IndexFolderError, match=r"Qdrant collection docs at .* does not exist .*--rebuild") as caught:
        KnowledgeBase.load(tmp_path / "kb", Embedder())
    assert "\n" not in str(caught.value)
    with pytest.raises(IndexFolderError, match="does not exist"):  # an update cannot go on from a lost collection
        build(corpus, tmp_path / "kb", config=server_config(collection="docs"))
    rebuilt = build(corpus, tmp_path / "kb", config=server_config(collection="docs"), rebuild=True)
    assert rebuilt.chunks == 8 == server.count("docs", exact=True).count
    server.delete_collection("docs")
    server.create_collection("docs", vectors_config=models.VectorParams(size=32, distance=models.Distance.DOT))
    with pytest.raises(IndexFolderError, match=r"holds vectors of size 32 \(Dot\), but manifest.json says 64"):
        KnowledgeBase.load(tmp_path / "kb", Embedder())


@STAND_IN
def test_a_collection_that_is_not_the_index_folders_own_is_replaced_only_with_rebuild(corpus, tmp_path, server):
    from qdrant_client import models

    server.create_collection("theirs", vectors_config=models.VectorParams(size=64, distance=models.Distance.DOT))
    server.upsert("theirs", points=models.Batch(ids=[1], vectors=[[1.0] + [0.0] * 63]), wait=True)
    embedder = Embedder()
    with pytest.raises(ConfigError, match="^collection: theirs already exists on the Qdrant server .*--rebuild"):
        build(corpus, tmp_path / "kb", embedder, config=server_config(collection="theirs"))
    assert server.count("theirs", exact=True).count == 1 and not (tmp_path / "kb").exists()
    assert embedder.embedded == 0  # refused before anything was embedded
    build(corpus, tmp_path / "kb", config=server_config(collection="theirs"), rebuild=True)
    assert server.count("theirs", exact=True).count == 8

    # a new layout of the same index replaces its own collection without --rebuild
    wider = ChunkingConfig(chunk_size=40, overlap=0, min_chunk_tokens=4)
    result = build_index([str(corpus)], tmp_path / "kb", Embedder(), chunking=wider,
                         index_config=server_config(collection="theirs"))
    assert result.rebuilt and result.chunks == server.count("theirs", exact=True).count

    # moving the index to FAISS leaves the collection on the server, with a warning saying so
    moved = build(corpus, tmp_path / "kb", config=IndexConfig())
    assert any("no longer uses Qdrant collection theirs" in warning for warning in moved.warnings)
    assert server.collection_exists("theirs")


@STAND_IN
def test_server_mode_hnsw_uses_qdrants_graph_settings(corpus, tmp_path, server, monkeypatch):
    from qdrant_client import models

    made, searched = [], []
    create, query = server.create_collection, server.query_points

    def create_collection(*args, **kwargs):
        made.append(kwargs.get("hnsw_config"))
        return create(*args, **kwargs)

    def query_points(*args, **kwargs):
        searched.append(kwargs.get("search_params"))
        return query(*args, **kwargs)

    monkeypatch.setattr(server, "create_collection", create_collection)
    monkeypatch.setattr(server, "query_points", query_points)
    config = server_config(index_type="hnsw", hnsw_m=12, hnsw_ef_construction=50, hnsw_ef_search=70)
    build(corpus, tmp_path / "kb", config=config)
    kb = KnowledgeBase.load(tmp_path / "kb", Embedder())
    assert kb.search("pump3 pump4 pump5 pump6", 1, hybrid=False)[0].chunk.source == f"{corpus}/pump.md"
    assert made == [models.HnswConfigDiff(m=12, ef_construct=50)]
    assert searched == [models.SearchParams(hnsw_ef=70)]
    build(corpus, tmp_path / "flat", config=server_config())
    KnowledgeBase.load(tmp_path / "flat", Embedder()).search("pump3", 1, hybrid=False)
    assert made[-1] is None and searched[-1] == models.SearchParams(exact=True)  # flat: exact, as FAISS flat


def _closed_port() -> int:
    with socket.socket() as probe:  # a loopback port nothing listens on: connection refused, no network
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_is_one_line(corpus, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(VectorStoreError) as caught:
        build(corpus, tmp_path / "kb", config=IndexConfig(backend="qdrant", qdrant_url=url))
    message = str(caught.value)
    assert message.startswith(f"Qdrant server {url} cannot be reached (") and "--qdrant-url" in message
    assert "\n" not in message and not (tmp_path / "kb").exists()


def test_a_refused_request_names_the_status_and_the_api_key(monkeypatch):
    class Refusing:
        def collection_exists(self, name):
            raise UnexpectedResponse(401, "Unauthorized", b'{"status": "must provide an API key"}', None)

    store = QdrantStore(server_config(collection="docs"), 8, client=Refusing())
    with pytest.raises(VectorStoreError, match=r"HTTP 401 Unauthorized: .*must provide an API key.*QDRANT_API_KEY"):
        store.add([1], np.ones((1, 8), dtype=np.float32))


def test_the_collection_defaults_to_the_index_folder_name():
    assert stores.default_collection("/w/indexes/my docs") == "tune-arena-my-docs"
    with pytest.raises(ConfigError, match="^collection: server mode needs a collection name"):
        QdrantStore(server_config(), 8)
    kb = KnowledgeBase(Embedder(), index_config=server_config(), folder=Path("/w/indexes/kb"))
    assert kb.index_config.collection == "tune-arena-kb"


# --------------------------------------------------------------------------------------------------------------------
# CLI, engine, app
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_engine_embedder(tmp_path, monkeypatch) -> Embedder:
    from core.engine import Engine

    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    embedder = Embedder()
    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: embedder)
    return embedder


def test_cli_index_backend_qdrant_then_search_and_retrieval_eval(corpus, tmp_path, capsys, fake_engine_embedder):
    out = tmp_path / "kb"
    assert main(["index", "--docs", str(corpus), "--out", str(out), "--backend", "qdrant", "--chunk-size", "20",
                 "--overlap", "0", "--min-chunk-tokens", "4", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert (built["backend"], built["mode"], built["documents"], built["chunks"]) == ("qdrant", "local", 4, 8)
    assert (out / "vectors.safetensors").is_file() and not (out / "index.faiss").exists()

    assert main(["search", "--index", str(out), "--query", "pump3 pump4 pump5 pump6", "--k", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["results"]
    assert [hit["rank"] for hit in found] == [1, 2] and found[0]["source"].endswith("pump.md")

    cases = write(tmp_path / "cases.jsonl", "".join(json.dumps(row) + "\n" for row in [
        {"question": "pump3 pump4 pump5 pump6", "source": "pump.md"},
        {"question": "light104 light105 light106", "source": "lights.md"},
        {"question": "ret2 ret3 ret4", "source": "sub/returns.md"}]))
    assert main(["retrieval-eval", "--index", str(out), "--data", str(cases), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 3 and report["hit_at"]["1"] == 1.0


@pytest.mark.parametrize(("argv", "needle"), [
    (["--backend", "milvus"], "argument --backend: invalid choice: 'milvus'"),
    (["--backend", "qdrant", "--index-type", "ivf"], "index_type: ivf is a FAISS structure"),
    (["--qdrant-url", "http://localhost:6333"], "qdrant_url: only for backend qdrant"),
    (["--backend", "qdrant", "--collection", "docs"], "collection: names a collection on a Qdrant server"),
])
def test_cli_bad_store_options_exit_2_with_one_line(corpus, tmp_path, capsys, fake_engine_embedder, argv, needle):
    assert main(["index", "--docs", str(corpus), "--out", str(tmp_path / "kb"), *argv, "--json"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err
    assert captured.out == "" and not (tmp_path / "kb").exists() and fake_engine_embedder.embedded == 0


def test_cli_an_unreachable_server_exits_2_with_one_line(corpus, tmp_path, capsys, fake_engine_embedder):
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["index", "--docs", str(corpus), "--out", str(tmp_path / "kb"), "--backend", "qdrant",
                 "--qdrant-url", url, "--json"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Qdrant server {url} cannot be reached")


def test_a_visitors_engine_refuses_a_qdrant_url_but_keeps_local_mode(tmp_path, monkeypatch):
    from core.engine import Engine
    from core.engine.visitors import Visitor, VisitorSettings

    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: Embedder())
    instance = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))
    visitor = instance.visitors.engine(Visitor.anonymous("alice-browser-secret"))
    notes = visitor.store_upload(write(tmp_path / "in/notes.md", section_doc("Notes", "note")), "documents")
    with pytest.raises(ConfigError, match="^qdrant_url: a Qdrant server is not available on a shared app"):
        visitor.build_index([notes], "remote", index_config=server_config(collection="x"))
    assert not (visitor.workspace.indexes / "remote").exists()
    visitor.build_index([notes], "local", index_config=QDRANT)
    assert visitor.search("local", "note3 note4", 1)[0].chunk.source.endswith("notes.md")
    assert [(row["name"], row["backend"]) for row in visitor.list_indexes()] == [("local", "qdrant")]

    # a manifest naming a server (not one a visitor could build) is refused on load too
    manifest_path = visitor.workspace.indexes / "local" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["index"].update(qdrant_url="http://169.254.169.254", collection="x")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="^qdrant_url: a Qdrant server is not available"):
        visitor.search("local", "note3", 1)


def test_the_tab_offers_a_qdrant_url_to_a_single_user_app_only(tmp_path, monkeypatch):
    import gradio as gr

    from core.engine import Engine
    from core.engine.visitors import VisitorSettings
    from ui.knowledge import create_knowledge_tab, index_rows, stats_markdown

    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: Embedder())
    with gr.Blocks():
        single = create_knowledge_tab(Engine(tmp_path / "one"))
    with gr.Blocks():
        shared = create_knowledge_tab(Engine(tmp_path / "many", confined=True,
                                             visitors=VisitorSettings(enabled=True)))
    assert single["backend"].choices == shared["backend"].choices and single["backend"].value == "faiss"
    assert single["qdrant_url"] is not None and shared["qdrant_url"] is None

    rows = index_rows([{"name": "kb", "embedding_model": "m", "index_type": "flat", "backend": "qdrant",
                        "documents": 1, "chunks": 2, "updated": None}])
    assert rows[0][2] == "flat · qdrant"
    stats = {"folder": "/w/kb", "documents": 1, "chunks": 2, "index_type": "flat", "embedding_model": "m",
             "dimension": 8, "backend": "qdrant", "mode": "server", "qdrant_url": "https://q.example:6333",
             "collection": "tune-arena-kb"}
    assert "flat index · Qdrant collection tune-arena-kb at https://q.example:6333" in stats_markdown(stats)
    assert "· FAISS ·" in stats_markdown({**stats, "backend": "faiss"})


def test_the_tab_builds_a_local_qdrant_index(tmp_path, monkeypatch):
    import gradio as gr

    from core.engine import Engine
    from ui.knowledge import create_knowledge_tab

    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: Embedder())
    engine = Engine(tmp_path / "ws")
    with gr.Blocks() as demo:
        create_knowledge_tab(engine)
    on_build = next(fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "on_build")
    doc = write(tmp_path / "notes.md", section_doc("Notes", "note"))
    status, *_ = on_build([str(doc)], "", False, "mine", True, 200, 32, "flat", True, False, lambda *_, **__: None,
                          None, "qdrant", "")
    assert status.startswith("**Built `mine`**")
    assert json.loads((engine.index_dir("mine") / "manifest.json").read_text())["index"]["backend"] == "qdrant"
    with pytest.raises(gr.Error, match="qdrant_url: must be an http"):
        on_build([str(doc)], "", False, "mine", True, 200, 32, "flat", True, False, lambda *_, **__: None, None,
                 "qdrant", "not a url")


# --------------------------------------------------------------------------------------------------------------------
# Integration: the demo corpus in both backends (bundled all-MiniLM-L6-v2)
# --------------------------------------------------------------------------------------------------------------------


class Memo:
    """An Embedder that embeds each distinct text once: both backends then get the very same vectors (and the test
    embeds the corpus and the questions once, not once per backend and command)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.dimension, self.max_tokens = inner, inner.name, inner.dimension, inner.max_tokens
        self.memo: dict[str, np.ndarray] = {}

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.inner.token_spans(text)

    def embed(self, texts, *, batch_size: int = 64, on_progress=None) -> np.ndarray:
        todo = [text for text in dict.fromkeys(texts) if text not in self.memo]
        if todo:
            self.memo.update(zip(todo, self.inner.embed(todo, batch_size=batch_size), strict=True))
        if on_progress:
            on_progress(len(texts), len(texts))
        return np.stack([self.memo[text] for text in texts]) if texts else np.zeros((0, self.dimension), np.float32)


def _same_top3(faiss_hits, qdrant_hits) -> bool:
    """Same top-3 sources, or differing only where dense scores tie (within 1e-5)."""
    if [hit.chunk.source for hit in faiss_hits] == [hit.chunk.source for hit in qdrant_hits]:
        return True
    faiss_scores = [hit.dense_score if hit.dense_score is not None else hit.score for hit in faiss_hits]
    qdrant_scores = [hit.dense_score if hit.dense_score is not None else hit.score for hit in qdrant_hits]
    return np.allclose(sorted(faiss_scores), sorted(qdrant_scores), atol=1e-5)


@pytest.mark.integration
def test_the_demo_corpus_answers_the_same_in_faiss_and_qdrant(tmp_path, capsys, monkeypatch):
    from core.data import demo_path
    from core.engine import Engine
    from core.models import default_embedding_model, load_embedding_model
    from retrieval import SentenceTransformerEmbedder

    embedder = Memo(SentenceTransformerEmbedder(load_embedding_model(), default_embedding_model()))
    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: embedder)  # the CLI's engine: the same model
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    for backend in ("faiss", "qdrant"):
        assert main(["index", "--docs", str(demo_path("corpus")), "--out", str(tmp_path / backend), "--backend",
                     backend, "--json"]) == 0
        built = json.loads(capsys.readouterr().out)
        assert (built["backend"], built["documents"]) == (backend, 30)
    assert not (tmp_path / "qdrant/index.faiss").exists() and (tmp_path / "qdrant/vectors.safetensors").is_file()

    reports = {}
    for backend in ("faiss", "qdrant"):
        assert main(["retrieval-eval", "--index", str(tmp_path / backend), "--data", str(demo_path("test.jsonl")),
                     "--json"]) == 0
        reports[backend] = json.loads(capsys.readouterr().out)
    logging.getLogger(__name__).warning("demo retrieval-eval hit@3 / MRR: faiss %.4f / %.4f, qdrant %.4f / %.4f "
                                        "(%d questions)", reports["faiss"]["hit@3"], reports["faiss"]["mrr"],
                                        reports["qdrant"]["hit@3"], reports["qdrant"]["mrr"], reports["faiss"]["n"])
    assert reports["faiss"]["n"] == reports["qdrant"]["n"] == 45
    assert abs(reports["faiss"]["hit@3"] - reports["qdrant"]["hit@3"]) <= 0.02

    faiss_kb = KnowledgeBase.load(tmp_path / "faiss", embedder)
    qdrant_kb = KnowledgeBase.load(tmp_path / "qdrant", embedder)
    cases = load_cases(demo_path("test.jsonl"))
    for hybrid in (True, False):
        for case in cases:
            assert _same_top3(faiss_kb.search(case.question, 3, hybrid=hybrid),
                              qdrant_kb.search(case.question, 3, hybrid=hybrid)), (hybrid, case.question)
        assert (evaluate_retrieval(faiss_kb, cases, k=3, hybrid=hybrid).hit_at
                == evaluate_retrieval(qdrant_kb, cases, k=3, hybrid=hybrid).hit_at)
