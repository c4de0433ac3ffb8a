"""The knowledge base with a fake embedder: build/load round trip, incremental updates for each index type, model
mismatch, atomic save and crash recovery, damaged folders, bad input; then search, ranking helpers and hit@k/MRR."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from retrieval_helpers import FakeEmbedder, words, write

import core.io
from retrieval import (
    ChunkingConfig,
    IndexConfig,
    IndexFolderError,
    KnowledgeBase,
    NothingToIndexError,
    build_index,
    chunk_document,
    evaluate_retrieval,
    is_index_folder,
    load_cases,
    load_documents,
)
from retrieval.documents import text_sha256
from retrieval.evaluation import RetrievalCase, source_matches
from retrieval.index import embed_text
from retrieval.search import BM25, mmr, reciprocal_rank_fusion

CHUNKING = ChunkingConfig(chunk_size=20, overlap=0, min_chunk_tokens=4)  # two chunks per corpus document


def section_doc(title: str, prefix: str, second: str | None = None) -> str:
    """Two sections of 12 words each, all words starting with ``prefix``: exactly two chunks with CHUNKING."""
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


def build(corpus: Path, out: Path, embedder: FakeEmbedder, **kwargs):
    kwargs.setdefault("chunking", CHUNKING)
    return build_index([str(corpus)], out, embedder, **kwargs)


def query(prefix: str, section: int = 0) -> str:
    """Four words of one chunk of a ``section_doc``: its first (0) or second (1) section."""
    return " ".join(f"{prefix}{100 * section + i}" for i in range(3, 7))


def load(out: Path, embedder: FakeEmbedder | None = None) -> KnowledgeBase:
    kb = KnowledgeBase.load(out, embedder or FakeEmbedder())
    assert kb.index.ntotal == len(kb.chunks)  # after every operation
    assert sorted(cid for doc in kb.documents.values() for cid in doc["chunk_ids"]) == sorted(kb.chunks)
    return kb


def top_source(kb: KnowledgeBase, query: str, **kwargs) -> str:
    return kb.search(query, 1, hybrid=False, **kwargs)[0].chunk.source


def hidden_entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# --------------------------------------------------------------------------------------------------------------------
# Build, save, load
# --------------------------------------------------------------------------------------------------------------------


def test_build_then_load_round_trip_keeps_chunks_vectors_and_manifest(corpus, tmp_path):
    embedder = FakeEmbedder()
    config = IndexConfig(hnsw_m=16, ivf_nprobe=3)
    result = build(corpus, tmp_path / "kb", embedder, index_config=config)
    assert (result.documents, result.chunks, result.embedded, result.reused, result.added) == (4, 8, 8, 0, 4)
    assert result.skipped == [] and result.contract()["chunks"] == 8
    assert sorted(p.name for p in (tmp_path / "kb").iterdir()) == ["chunks.jsonl", "index.faiss", "manifest.json"]

    kb = load(tmp_path / "kb")
    documents = {doc.source: doc for doc in load_documents([str(corpus)]).documents}
    assert len(kb.chunks) == 8
    for source, document in documents.items():  # the stored chunks are exactly the document's chunks
        spans = chunk_document(document, embedder, CHUNKING)
        stored = sorted((c for c in kb.chunks.values() if c.source == source), key=lambda c: c.start)
        assert [(c.start, c.end, c.text, c.headings, c.doc_id) for c in stored] == [
            (s.start, s.end, s.text, s.headings, document.doc_id) for s in spans]
        assert all(document.text[c.start:c.end] == c.text for c in stored)
    for chunk in kb.chunks.values():  # the vector is the embedding of title > headings + text
        expected = FakeEmbedder().embed([embed_text(chunk, True)])[0]
        np.testing.assert_allclose(kb.vectors([chunk.id])[0], expected, atol=1e-6)
    pump_more = next(c for c in kb.chunks.values() if c.text.startswith("## More Pump"))
    assert embed_text(pump_more, True) == "Pump > More Pump\n" + pump_more.text  # the title is not repeated

    manifest = json.loads((tmp_path / "kb/manifest.json").read_text())
    assert (manifest["embedding_model"], manifest["dimension"]) == ("fake-bow", 64)
    assert manifest["chunking"] == {"chunk_size": 20, "overlap": 0, "min_chunk_tokens": 4}
    assert manifest["index"]["index_type"] == "flat"
    assert (manifest["index"]["hnsw_m"], manifest["index"]["ivf_nprobe"]) == (16, 3)
    assert manifest["counts"] == {"documents": 4, "chunks": 8}
    assert manifest["documents"][f"{corpus}/pump.md"]["sha256"] == text_sha256((corpus / "pump.md").read_text())
    assert set(manifest["documents"]) == set(documents)


def test_a_loaded_index_answers_like_the_one_that_was_saved(corpus, tmp_path):
    embedder = FakeEmbedder()
    kb = KnowledgeBase(embedder, chunking=CHUNKING)
    kb.sync(load_documents([str(corpus)]).documents)
    kb.save(tmp_path / "kb")
    loaded = load(tmp_path / "kb")
    assert loaded.chunks == kb.chunks and loaded.documents == kb.documents
    for query in ("pump3 pump105", "light7 wifi2 ret101", "Returns"):
        for options in ({"hybrid": False}, {"hybrid": True}, {"mmr_lambda": 0.4}):
            before = [(h.chunk.id, round(h.score, 5)) for h in kb.search(query, 4, **options)]
            after = [(h.chunk.id, round(h.score, 5)) for h in loaded.search(query, 4, **options)]
            assert before == after


def test_the_embedder_can_be_given_as_a_factory_called_with_the_manifest_model(corpus, tmp_path):
    build(corpus, tmp_path / "kb", FakeEmbedder("fake-bow"))
    asked = []
    kb = KnowledgeBase.load(tmp_path / "kb", lambda name: asked.append(name) or FakeEmbedder(name))
    assert asked == ["fake-bow"] and len(kb.chunks) == 8


def test_progress_reports_every_stage(corpus, tmp_path):
    seen: list[tuple[str, int, int]] = []
    build(corpus, tmp_path / "kb", FakeEmbedder(), on_progress=lambda *event: seen.append(event))
    stages = list(dict.fromkeys(stage for stage, _, _ in seen))
    assert stages == ["load", "chunk", "embed", "index", "save"]
    assert ("chunk", 4, 4) in seen and ("embed", 8, 8) in seen and seen[-1] == ("save", 1, 1)


# --------------------------------------------------------------------------------------------------------------------
# Incremental updates
# --------------------------------------------------------------------------------------------------------------------


def test_rebuilding_unchanged_documents_embeds_nothing(corpus, tmp_path):
    embedder = FakeEmbedder()
    build(corpus, tmp_path / "kb", embedder)
    before = load(tmp_path / "kb")
    embedder.reset()
    again = build(corpus, tmp_path / "kb", embedder)
    assert embedder.embedded == 0
    assert (again.embedded, again.reused, again.unchanged, again.added, again.rebuilt) == (0, 0, 4, 0, False)
    after = load(tmp_path / "kb")
    assert after.chunks == before.chunks


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_update_adds_changes_and_removes_exactly_the_touched_documents(corpus, tmp_path, index_type):
    embedder = FakeEmbedder()
    config = IndexConfig(index_type=index_type)
    build(corpus, tmp_path / "kb", embedder, index_config=config)
    before = load(tmp_path / "kb")
    assert top_source(before, query("wifi")) == f"{corpus}/wifi.md"
    kept = {c.id: c for c in before.chunks.values() if c.source.endswith(("lights.md", "returns.md"))}
    pump_first = next(c for c in before.chunks.values() if c.source.endswith("pump.md") and "pump0" in c.text)

    write(corpus / "pump.md", section_doc("Pump", "pump", second="priming airlock " + words(10, 500, "pump")))
    (corpus / "wifi.md").unlink()
    write(corpus / "seeds.md", section_doc("Seeds", "seed"))
    embedder.reset()
    update = build(corpus, tmp_path / "kb", embedder, index_config=config)
    assert (update.added, update.changed, update.removed, update.unchanged) == (1, 1, 1, 2)
    assert (update.documents, update.chunks) == (4, 8)
    assert update.rebuilt == (index_type == "hnsw")  # HNSW cannot remove in place: rebuilt from stored vectors
    # only the pump's changed second section and the two seeds chunks went to the model
    assert embedder.embedded == update.embedded == 3 and update.reused == 1
    assert sum("priming airlock" in text for text in embedder.texts) == 1
    assert sum("seed0" in text or "seed100" in text for text in embedder.texts) == 2
    assert not any(word in text for text in embedder.texts for word in ("pump0 ", "light", "ret", "wifi"))

    kb = load(tmp_path / "kb")
    assert {cid: kb.chunks[cid] for cid in kept} == kept  # unchanged documents keep their chunk ids
    pump_chunks = [c for c in kb.chunks.values() if c.source.endswith("pump.md")]
    assert pump_first.id not in kb.chunks and any(c.text == pump_first.text for c in pump_chunks)
    assert {Path(c.source).name for c in kb.chunks.values()} == {"pump.md", "lights.md", "returns.md", "seeds.md"}
    assert top_source(kb, "priming airlock") == f"{corpus}/pump.md"
    assert top_source(kb, query("seed", 1)) == f"{corpus}/seeds.md"
    for options in ({"hybrid": False}, {"hybrid": True}):
        assert all("wifi" not in h.chunk.source for h in kb.search("wifi3 wifi104 Wifi", 8, **options))


def test_hnsw_adding_only_updates_in_place(corpus, tmp_path):
    embedder = FakeEmbedder()
    config = IndexConfig(index_type="hnsw")
    build(corpus, tmp_path / "kb", embedder, index_config=config)
    write(corpus / "seeds.md", section_doc("Seeds", "seed"))
    update = build(corpus, tmp_path / "kb", embedder, index_config=config)
    assert (update.added, update.rebuilt, update.chunks) == (1, False, 10)
    assert top_source(load(tmp_path / "kb"), query("seed")) == f"{corpus}/seeds.md"


def test_ivf_is_retrained_once_the_corpus_outgrows_its_centroids(corpus, tmp_path):
    embedder = FakeEmbedder()
    config = IndexConfig(index_type="ivf")
    build(corpus, tmp_path / "kb", embedder, index_config=config)
    assert json.loads((tmp_path / "kb/manifest.json").read_text())["trained_on"] == 8
    for i in range(20):  # 8 -> 48 chunks: over 4x the 8 it was trained on
        write(corpus / f"extra/doc{i}.md", section_doc(f"Extra {i}", f"x{i}y"))
    embedder.reset()
    update = build(corpus, tmp_path / "kb", embedder, index_config=config)
    assert (update.added, update.rebuilt, update.embedded) == (20, True, 40)
    kb = load(tmp_path / "kb")
    assert kb.trained_on == 48 and kb.index.ntotal == 48
    assert top_source(kb, query("x17y", 1)) == f"{corpus}/extra/doc17.md"
    assert top_source(kb, query("pump")) == f"{corpus}/pump.md"


def test_changing_the_layout_rebuilds_but_reuses_identical_vectors(corpus, tmp_path):
    embedder = FakeEmbedder()
    build(corpus, tmp_path / "kb", embedder)
    embedder.reset()
    moved = build(corpus, tmp_path / "kb", embedder, index_config=IndexConfig(index_type="hnsw"))
    assert (moved.rebuilt, moved.embedded, moved.reused, moved.unchanged) == (True, 0, 8, 4)
    assert json.loads((tmp_path / "kb/manifest.json").read_text())["index"]["index_type"] == "hnsw"
    rechunked = build(corpus, tmp_path / "kb", embedder, chunking=ChunkingConfig(chunk_size=40, overlap=0))
    assert rechunked.rebuilt and rechunked.chunks == 4 and embedder.embedded == 4  # new chunk texts only
    assert top_source(load(tmp_path / "kb"), query("ret", 1)) == f"{corpus}/sub/returns.md"


# --------------------------------------------------------------------------------------------------------------------
# Embedding model mismatch
# --------------------------------------------------------------------------------------------------------------------


def test_loading_with_another_embedding_model_is_refused_naming_both(corpus, tmp_path):
    build(corpus, tmp_path / "kb", FakeEmbedder("fake-bow"))
    with pytest.raises(IndexFolderError, match=r"built with embedding model fake-bow .*not other-model"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder("other-model"))
    with pytest.raises(IndexFolderError, match=r"dimension 64.*dimension 32"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder("fake-bow", dimension=32))


def test_building_into_an_index_of_another_model_is_refused_unless_rebuilt(corpus, tmp_path):
    build(corpus, tmp_path / "kb", FakeEmbedder("fake-bow"))
    before = (tmp_path / "kb/chunks.jsonl").read_bytes()
    with pytest.raises(IndexFolderError, match="fake-bow, not other-model"):
        build(corpus, tmp_path / "kb", FakeEmbedder("other-model"))
    assert (tmp_path / "kb/chunks.jsonl").read_bytes() == before
    other = FakeEmbedder("other-model", dimension=32)
    result = build(corpus, tmp_path / "kb", other, rebuild=True)
    assert result.embedded == 8  # nothing reused from another model's vectors
    assert json.loads((tmp_path / "kb/manifest.json").read_text())["embedding_model"] == "other-model"
    assert len(load(tmp_path / "kb", FakeEmbedder("other-model", dimension=32)).chunks) == 8


# --------------------------------------------------------------------------------------------------------------------
# Atomic save and recovery
# --------------------------------------------------------------------------------------------------------------------


def answers(kb: KnowledgeBase) -> list[list[int]]:
    return [[h.chunk.id for h in kb.search(q, 3, hybrid=False)] for q in ("pump3", "light104", "ret2 wifi7")]


def test_a_failing_index_write_leaves_the_previous_index(corpus, tmp_path, monkeypatch):
    embedder = FakeEmbedder()
    build(corpus, tmp_path / "kb", embedder)
    expected = answers(load(tmp_path / "kb"))
    write(corpus / "seeds.md", section_doc("Seeds", "seed"))

    def half_written(index, path):
        Path(path).write_bytes(b"IxMp partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        build(corpus, tmp_path / "kb", embedder)
    monkeypatch.undo()
    assert hidden_entries(tmp_path) == []  # no temporary folder left behind
    kb = load(tmp_path / "kb")
    assert answers(kb) == expected and len(kb.chunks) == 8


def test_a_failing_swap_puts_the_previous_index_back(corpus, tmp_path, monkeypatch):
    embedder = FakeEmbedder()
    build(corpus, tmp_path / "kb", embedder)
    expected = answers(load(tmp_path / "kb"))
    write(corpus / "seeds.md", section_doc("Seeds", "seed"))
    real_rename, calls = os.rename, []

    def rename(source, target):
        calls.append((Path(source).name, Path(target).name))
        if len(calls) == 2:  # the old index has moved aside; the new one fails to move in
            raise OSError("rename failed")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(core.io, "exchange", lambda a, b: False)  # a file system without renameat2's exchange
    with pytest.raises(OSError, match="rename failed"):
        build(corpus, tmp_path / "kb", embedder)
    monkeypatch.undo()
    assert calls[0][0] == "kb" and calls[0][1].startswith(".old-kb-") and calls[1][1] == "kb"
    assert is_index_folder(tmp_path / "kb")  # in place again, even before anything loads it
    assert hidden_entries(tmp_path) == []
    kb = load(tmp_path / "kb")
    assert answers(kb) == expected and len(kb.chunks) == 8


def test_a_crash_between_the_two_renames_is_recovered(corpus, tmp_path):
    embedder = FakeEmbedder()
    build(corpus, tmp_path / "kb", embedder)
    expected = answers(load(tmp_path / "kb"))
    os.rename(tmp_path / "kb", tmp_path / ".old-kb-1a2b3c4d")  # the name save() gives the previous index
    assert not is_index_folder(tmp_path / "kb")
    assert answers(load(tmp_path / "kb")) == expected
    assert hidden_entries(tmp_path) == []
    os.rename(tmp_path / "kb", tmp_path / ".old-kb-0f0f0f0f")  # build_index recovers too, and updates in place
    embedder.reset()
    again = build(corpus, tmp_path / "kb", embedder)
    assert (again.embedded, again.unchanged, again.rebuilt) == (0, 4, False)


def test_recovery_never_touches_a_sibling_index_with_a_longer_name(corpus, tmp_path):
    embedder = FakeEmbedder()
    build(corpus, tmp_path / "kb", embedder)
    other = tmp_path / "other-corpus"
    write(other / "seeds.md", section_doc("Seeds", "seed"))
    build_index([str(other)], tmp_path / "kb-2", embedder, chunking=CHUNKING)
    os.rename(tmp_path / "kb-2", tmp_path / ".old-kb-2-1a2b3c4d")  # kb-2 crashed between its renames

    assert len(load(tmp_path / "kb").chunks) == 8  # loading kb ...
    assert (tmp_path / ".old-kb-2-1a2b3c4d/manifest.json").is_file()  # ... leaves kb-2's saved copy alone
    shutil.rmtree(tmp_path / "kb")
    with pytest.raises(IndexFolderError, match="does not exist"):
        KnowledgeBase.load(tmp_path / "kb", embedder)  # kb-2's copy is not taken for kb
    restored = load(tmp_path / "kb-2")
    assert {Path(c.source).name for c in restored.chunks.values()} == {"seeds.md"}


# --------------------------------------------------------------------------------------------------------------------
# Damaged or foreign folders
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["truncated", "empty"])
def test_a_damaged_faiss_file_is_named(corpus, tmp_path, keep):
    build(corpus, tmp_path / "kb", FakeEmbedder())
    path = tmp_path / "kb/index.faiss"
    path.write_bytes(path.read_bytes()[: int(len(path.read_bytes()) * keep)])
    with pytest.raises(IndexFolderError, match=r"kb/index\.faiss: not a readable FAISS index"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())


@pytest.mark.parametrize("bad", [b"{not json", b'{"id": 3, "text": "no other fields"}', b"[1, 2]",
                                 b'{"id": "\xff\xfe"}'], ids=["json", "fields", "list", "not-utf8"])
def test_a_bad_line_in_chunks_jsonl_is_named(corpus, tmp_path, bad):
    build(corpus, tmp_path / "kb", FakeEmbedder())
    path = tmp_path / "kb/chunks.jsonl"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], lines[1], bad, *lines[3:]]) + b"\n")
    with pytest.raises(IndexFolderError, match=r"chunks\.jsonl line 3: bad chunk record"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())


def test_chunks_and_vectors_out_of_step_are_refused(corpus, tmp_path):
    build(corpus, tmp_path / "kb", FakeEmbedder())
    path = tmp_path / "kb/chunks.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(IndexFolderError, match="holds 8 vectors .* has 7 chunks"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())


def test_missing_files_and_a_bad_manifest_are_named(corpus, tmp_path):
    build(corpus, tmp_path / "kb", FakeEmbedder())
    (tmp_path / "kb/manifest.json").write_text("{broken")
    with pytest.raises(IndexFolderError, match=r"manifest\.json: not valid JSON"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())
    (tmp_path / "kb/chunks.jsonl").unlink()
    with pytest.raises(IndexFolderError, match="missing chunks.jsonl"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())
    with pytest.raises(IndexFolderError, match="does not exist"):
        KnowledgeBase.load(tmp_path / "nowhere", FakeEmbedder())


def test_saving_into_a_folder_that_is_not_an_index_is_refused(corpus, tmp_path):
    write(tmp_path / "mine/keep.txt", "precious")
    embedder = FakeEmbedder()
    with pytest.raises(IndexFolderError, match="not empty and is not an index folder"):
        build(corpus, tmp_path / "mine", embedder)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]
    write(tmp_path / "a-file", "x")
    with pytest.raises(IndexFolderError, match="is not a folder"):
        build(corpus, tmp_path / "a-file", embedder)
    (tmp_path / "empty").mkdir()
    assert build(corpus, tmp_path / "empty", embedder).chunks == 8  # an empty folder is fine
    assert hidden_entries(tmp_path) == []


def test_nothing_to_index_raises_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "junk/a.txt", b"\x00\x01\x02")
    write(tmp_path / "junk/b.pptx", b"PK")
    with pytest.raises(NothingToIndexError, match="empty folder"):
        build_index([str(tmp_path / "empty")], tmp_path / "kb", FakeEmbedder())
    with pytest.raises(NothingToIndexError, match=r"a\.txt: binary.*b\.pptx: unsupported"):
        build_index([str(tmp_path / "junk")], tmp_path / "kb", FakeEmbedder())
    with pytest.raises(NothingToIndexError, match="no paths given"):
        build_index([], tmp_path / "kb", FakeEmbedder())
    assert not (tmp_path / "kb").exists()


def test_bad_files_are_skipped_and_good_ones_indexed(corpus, tmp_path):
    write(corpus / "broken.pdf", os.urandom(300))
    write(corpus / "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00")
    result = build(corpus, tmp_path / "kb", FakeEmbedder())
    assert (result.documents, result.chunks) == (4, 8)
    contract = result.contract()
    reasons = {Path(item["path"]).name: item["reason"] for item in contract["skipped"]}
    assert set(reasons) == {"broken.pdf", "image.txt"}
    assert reasons["broken.pdf"].startswith("unreadable PDF") and reasons["image.txt"].startswith("binary file")
    assert set(contract) >= {"index_dir", "documents", "chunks", "skipped", "wall_s"}
    assert all(not c.source.endswith((".pdf", ".txt")) for c in load(tmp_path / "kb").chunks.values())


# --------------------------------------------------------------------------------------------------------------------
# Search and ranking helpers
# --------------------------------------------------------------------------------------------------------------------


def test_bm25_ranks_the_text_with_the_rare_query_word_first():
    texts = ["the pump and the tank and the pump", "tank lid tank lid", "impeller inside the pump", "tank"]
    scores = BM25.build(texts).scores("pump impeller")
    assert list(np.argsort(-scores, kind="stable")[:2]) == [2, 0]  # the rare word outweighs a repeated common one
    assert scores[1] == scores[3] == 0.0
    assert BM25.build([]).scores("pump").shape == (0,)
    assert not BM25.build(texts).scores("the and of").any()  # stopwords only


def test_reciprocal_rank_fusion_matches_hand_computed_scores():
    fused = reciprocal_rank_fusion([[7, 8, 9], [9, 7]], k=1)
    assert fused == [(7, pytest.approx(1 / 2 + 1 / 3)), (9, pytest.approx(1 / 4 + 1 / 2)), (8, pytest.approx(1 / 3))]
    assert [item for item, _ in reciprocal_rank_fusion([[1, 2], [2, 1]], k=60)] == [1, 2]  # a tie: lower id first
    assert reciprocal_rank_fusion([[5], []]) == [(5, pytest.approx(1 / 61))]


def test_mmr_with_lambda_one_is_relevance_order_and_low_lambda_avoids_duplicates():
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(6, 8)).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    candidates[3] = candidates[1]  # an exact duplicate
    query = candidates[1] + 0.3 * candidates[4]
    query /= np.linalg.norm(query)
    relevance_order = list(np.argsort(-(candidates @ query), kind="stable"))
    assert mmr(query, candidates, 6, lambda_=1.0) == relevance_order
    picked = mmr(query, candidates, 3, lambda_=0.2)
    assert len(picked) == 3 and not {1, 3} <= set(picked)
    assert picked[0] in (1, 3)  # the first pick is still the most relevant
    assert mmr(query, candidates[:0], 3) == [] and mmr(query, candidates, 0) == []


@pytest.fixture
def kb(corpus, tmp_path) -> KnowledgeBase:
    build(corpus, tmp_path / "kb", FakeEmbedder())
    return load(tmp_path / "kb")


@pytest.mark.parametrize("options", [{"hybrid": False}, {"hybrid": True}, {"mmr_lambda": 0.3},
                                     {"hybrid": False, "mmr_lambda": 1.0}])
def test_search_returns_k_ranked_distinct_hits(kb, options):
    hits = kb.search("pump3 light104 wifi Returns", 5, **options)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert len({h.chunk.id for h in hits}) == 5
    query = FakeEmbedder().embed(["pump3 light104 wifi Returns"])[0]
    for hit in hits:
        cosine = float(kb.vectors([hit.chunk.id])[0] @ query)
        if options.get("hybrid", True):
            assert hit.dense_score == pytest.approx(cosine, abs=1e-5)
        else:
            assert hit.score == pytest.approx(cosine, abs=1e-5) and hit.dense_score is None
    if options.get("hybrid", True) and "mmr_lambda" not in options:
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    row = hits[0].to_dict()
    assert {"rank", "score", "text", "doc_id", "source", "title"} <= set(row) and row["rank"] == 1


def test_dense_search_puts_the_chunk_with_the_query_words_first(kb, corpus):
    hit = kb.search("light105 light106 light107", 3, hybrid=False)[0]
    assert hit.chunk.source == f"{corpus}/lights.md" and "light105" in hit.chunk.text
    assert hit.chunk.headings == ("Lights", "More Lights")


def test_search_with_k_over_the_chunk_count_returns_every_chunk(kb):
    assert [h.rank for h in kb.search("pump", 50, hybrid=False)] == list(range(1, 9))


@pytest.mark.parametrize(("query", "k", "options", "message"), [
    ("", 3, {}, "query"), ("   \n", 3, {}, "query"), ("pump", 0, {}, "k: must be at least 1"),
    ("pump", -2, {}, "k: must be at least 1"), ("pump", 3, {"mmr_lambda": 1.5}, "mmr_lambda")])
def test_bad_search_arguments_raise_value_error(kb, query, k, options, message):
    with pytest.raises(ValueError, match=message):
        kb.search(query, k, **options)


# --------------------------------------------------------------------------------------------------------------------
# Retrieval evaluation
# --------------------------------------------------------------------------------------------------------------------


def test_source_matches_whole_trailing_path_components():
    assert source_matches("assets/demo/corpus/error-codes.md", "error-codes.md")
    assert source_matches("assets/demo/corpus/error-codes.md", "corpus/error-codes.md")
    assert source_matches("error-codes.md", "error-codes.md")
    assert source_matches("data/faq.jsonl#4", "faq.jsonl")  # a row of the named table
    assert source_matches("data\\sub\\a.md", "sub/a.md")
    assert not source_matches("corpus/ba.md", "a.md")
    assert not source_matches("corpus/a.md.bak", "a.md")
    assert not source_matches("other/a.md", "corpus/a.md")


def test_a_wanted_table_row_matches_only_that_row():
    assert source_matches("data/faq.jsonl#4", "faq.jsonl#4")
    assert not source_matches("data/faq.jsonl#5", "faq.jsonl#4")
    assert not source_matches("data/faq.jsonl#44", "faq.jsonl#4")


@pytest.fixture
def fruit_kb(tmp_path) -> KnowledgeBase:
    vectors = FakeEmbedder().embed(["apple", "banana", "cherry", "date"])
    assert np.allclose(vectors @ vectors.T, np.eye(4))  # the four words do not collide in the fake's hash
    for name, text in {"a": "apple", "b": "apple banana", "c": "cherry", "d": "cherry date"}.items():
        write(tmp_path / f"fruit/{name}.txt", text + "\n")
    build_index([str(tmp_path / "fruit")], tmp_path / "kb", FakeEmbedder(),
                index_config=IndexConfig(contextual=False))
    return load(tmp_path / "kb")


@pytest.mark.parametrize("hybrid", [False, True])
def test_hit_at_k_and_mrr_match_hand_computed_ranks(fruit_kb, hybrid):
    # "apple": a (cos 1) then b (cos 0.71); "cherry": c then d; with k=2, a is not found for "cherry"
    cases = [RetrievalCase("apple", "a.txt"), RetrievalCase("apple", "b.txt"), RetrievalCase("cherry", "fruit/d.txt"),
             RetrievalCase("cherry", "a.txt")]
    progress = []
    report = evaluate_retrieval(fruit_kb, cases, k=2, hybrid=hybrid, on_progress=lambda *p: progress.append(p))
    assert report.ranks == [1, 2, 2, None]
    assert report.hit_at == {1: pytest.approx(1 / 4), 2: pytest.approx(3 / 4)}
    assert report.mrr == pytest.approx((1 + 1 / 2 + 1 / 2 + 0) / 4)
    assert progress[-1] == (4, 4)
    summary = report.to_dict(per_question=True)
    assert summary["hit@2"] == 0.75 and summary["n"] == 4
    assert [q["rank"] for q in summary["questions"]] == [1, 2, 2, None]
    with pytest.raises(ValueError, match="k: must be at least 1"):
        evaluate_retrieval(fruit_kb, cases, k=0)


def test_load_cases_keeps_rows_with_a_source_and_names_bad_lines(tmp_path):
    rows = [{"instruction": "What is E22?", "source": "error-codes.md", "id": "q1"},
            {"instruction": "Classify this", "output": "billing"},  # no source: left out
            {"question": "Which network?", "input": "the hub", "source": "wifi.md"},
            {"query": "Return window?", "source": "returns.md", "source_note": "x"}]
    path = write(tmp_path / "q.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    cases = load_cases(path)
    assert [(c.question, c.source, c.id) for c in cases] == [
        ("What is E22?", "error-codes.md", "q1"), ("Which network?\nthe hub", "wifi.md", "3"),
        ("Return window?", "returns.md", "4")]
    bad = {"json": '{"instruction": "Q", "source": "a.md"}\n{oops\n',
           "object": '{"instruction": "Q", "source": "a.md"}\n["a"]\n',
           "source-type": '{"instruction": "Q", "source": 5}\n',
           "no-question": '{"output": "A", "source": "a.md"}\n'}
    messages = {"json": "line 2: invalid JSON", "object": "line 2: expected a JSON object",
                "source-type": "line 1: field 'source' must be a string", "no-question": "line 1: no question"}
    for name, content in bad.items():
        with pytest.raises(ValueError, match=f"{name}.jsonl {messages[name]}"):
            load_cases(write(tmp_path / f"{name}.jsonl", content))
    with pytest.raises(ValueError, match="no rows with a 'source'"):
        load_cases(write(tmp_path / "none.jsonl", json.dumps({"instruction": "Q"}) + "\n"))
    with pytest.raises(ValueError, match="no such file"):
        load_cases(tmp_path / "missing.jsonl")
