"""Retrieval with a small deterministic fake embedder: loaders (a real PDF made here), chunking boundaries and
offsets, index round trip, incremental update, model mismatch, atomic save, search and hit@k."""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval import (
    ChunkingConfig,
    IndexConfig,
    IndexFolderError,
    KnowledgeBase,
    NothingToIndexError,
    build_index,
    chunk_document,
    evaluate_retrieval,
    load_cases,
    load_documents,
)
from retrieval.documents import make_document
from retrieval.evaluation import RetrievalCase, source_matches
from retrieval.search import BM25, mmr, reciprocal_rank_fusion


class FakeEmbedder:
    """Hashed bag of words (64 dims), unit length; tokens are whitespace-separated words. Counts embedded texts."""

    def __init__(self, name: str = "fake-bow", dimension: int = 64) -> None:
        self.name, self.dimension, self.max_tokens = name, dimension, 256
        self.embedded = 0

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in re.finditer(r"\S+", text)]

    def embed(self, texts, *, batch_size: int = 64, on_progress=None) -> np.ndarray:
        self.embedded += len(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def tiny_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with Helvetica text, built byte by byte with a correct xref table."""
    stream = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def words(n: int, start: int = 0, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(start, start + n))


# --------------------------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------------------------


def test_each_loader_reads_its_format(tmp_path):
    write(tmp_path / "docs/guide.md", "Intro line\n\n# Pump Guide\n\nThe pump runs quietly.\n")
    write(tmp_path / "docs/notes.txt", "Plain text notes about seeds.\r\nSecond line.\n")
    write(tmp_path / "docs/page.html", "<html><head><title>Hub Page</title><style>.x{color:red}</style>"
          "<script>var secret = 1;</script></head><body><h2>Wi-Fi</h2><p>Hold the button &amp; wait.</p>"
          "<noscript>enable js</noscript></body></html>")
    write(tmp_path / "docs/manual.pdf", tiny_pdf(["Terrace Frame manual", "Probes need calibration yearly."]))
    write(tmp_path / "docs/rows.jsonl", json.dumps({"id": 1, "body": "First row text about nutrient dosing."})
          + "\n" + json.dumps({"id": 2, "body": "Second row text about the solar lid."}) + "\n")
    write(tmp_path / "docs/table.csv", "title,content\nReturns,Returns are accepted within 30 days of delivery.\n")
    result = load_documents([str(tmp_path / "docs")])
    assert result.skipped == []
    by_source = {doc.source.removeprefix(str(tmp_path / "docs") + "/"): doc for doc in result.documents}
    assert set(by_source) == {"guide.md", "manual.pdf", "notes.txt", "page.html", "rows.jsonl#1", "rows.jsonl#2",
                              "table.csv#1"}
    assert by_source["guide.md"].title == "Pump Guide"
    assert "\r" not in by_source["notes.txt"].text and by_source["notes.txt"].title == "notes"
    html = by_source["page.html"]
    assert html.title == "Hub Page" and "## Wi-Fi" in html.text and "Hold the button & wait." in html.text
    assert "secret" not in html.text and "color" not in html.text and "enable js" not in html.text
    assert "Probes need calibration yearly." in by_source["manual.pdf"].text
    assert by_source["rows.jsonl#2"].text.strip() == "Second row text about the solar lid."
    assert by_source["table.csv#1"].title == "Returns"


def test_bad_files_are_skipped_with_their_reason(tmp_path):
    from pypdf import PdfReader, PdfWriter

    write(tmp_path / "plain.pdf", tiny_pdf(["Secret plans"]))
    writer = PdfWriter(clone_from=PdfReader(str(tmp_path / "plain.pdf")))
    writer.encrypt("hunter2", algorithm="RC4-128")
    (tmp_path / "docs").mkdir()
    with open(tmp_path / "docs/locked.pdf", "wb") as handle:
        writer.write(handle)
    write(tmp_path / "docs/broken.pdf", os.urandom(400))
    write(tmp_path / "docs/image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(64))
    write(tmp_path / "docs/latin1.md", "caf\xe9".encode("latin-1"))
    write(tmp_path / "docs/data.bin", b"abc")
    write(tmp_path / "docs/rows.jsonl", json.dumps({"text": "x" * 30}) + "\n")
    (tmp_path / "docs/empty").mkdir()
    write(tmp_path / "docs/good.md", "# Good\n\nThis one is fine.\n")
    result = load_documents([str(tmp_path / "docs"), str(tmp_path / "docs/empty"), str(tmp_path / "missing")],
                            text_column="body")
    reasons = {Path(item.path).name: item.reason for item in result.skipped}
    assert [Path(doc.source).name for doc in result.documents] == ["good.md"]
    assert "encrypted" in reasons["locked.pdf"]
    assert reasons["broken.pdf"].startswith("unreadable PDF")
    assert "binary" in reasons["image.txt"]
    assert "not UTF-8" in reasons["latin1.md"]
    assert "unsupported file type '.bin'" in reasons["data.bin"]
    assert "no column 'body'" in reasons["rows.jsonl"]
    assert reasons["empty"] == "empty folder" and reasons["missing"] == "no such file or folder"


def test_doc_id_is_stable_for_path_and_content():
    a = make_document("docs/a.md", "A", "same text\n")
    assert a.doc_id == make_document("docs/a.md", "A", "same text\n").doc_id
    assert a.doc_id != make_document("docs/a.md", "A", "new text\n").doc_id
    assert a.doc_id != make_document("docs/b.md", "A", "same text\n").doc_id


# --------------------------------------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------------------------------------

DOC = (
    "# Guide\n\n" + words(20, 0) + ".\n\n"
    "## Setup\n\n" + words(30, 100) + ".\n\n"
    "### Cables\n\n" + ". ".join(words(9, 200 + 10 * i) for i in range(12)) + ".\n\n"
    "## Care\n\n" + words(25, 400) + "\n\n| a | b |\n| 1 | 2 |\n"
)


def chunks_of(text: str, **config):
    return chunk_document(make_document("d.md", "Guide", text), FakeEmbedder(), ChunkingConfig(**config))


def test_chunks_are_exact_slices_within_size_covering_every_word():
    chunks = chunks_of(DOC, chunk_size=40, overlap=8, min_chunk_tokens=8)
    covered = set()
    for chunk in chunks:
        assert DOC[chunk.start:chunk.end] == chunk.text
        assert chunk.n_tokens == len(chunk.text.split()) <= 40
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, char in enumerate(DOC) if not char.isspace())
    assert not any(re.fullmatch(r"#+ .*", chunk.text) for chunk in chunks)  # never a heading alone


def test_sections_start_new_chunks_with_their_heading_path():
    chunks = chunks_of(DOC, chunk_size=40, overlap=8, min_chunk_tokens=8)
    starts = {chunk.text.split("\n")[0]: chunk.headings for chunk in chunks if chunk.text.startswith("#")}
    assert starts == {"# Guide": ("Guide",), "## Setup": ("Guide", "Setup"), "### Cables": ("Guide", "Setup", "Cables"),
                      "## Care": ("Guide", "Care")}  # ### Cables popped when ## Care came


def test_a_long_paragraph_is_cut_at_sentence_ends_with_overlap():
    chunks = [c for c in chunks_of(DOC, chunk_size=40, overlap=8, min_chunk_tokens=8) if "Cables" in c.headings]
    assert len(chunks) >= 3
    for first, second in zip(chunks, chunks[1:], strict=False):
        assert first.start < second.start < first.end  # the next begins inside the previous one
        assert first.text.endswith(".")  # cut after a sentence
    disjoint = [c for c in chunks_of(DOC, chunk_size=40, overlap=0, min_chunk_tokens=8) if "Cables" in c.headings]
    assert all(a.end <= b.start for a, b in zip(disjoint, disjoint[1:], strict=False))


def test_a_line_without_any_boundary_is_cut_by_tokens():
    text = words(130)
    chunks = chunks_of(text, chunk_size=50, overlap=0)
    assert [c.n_tokens for c in chunks] == [50, 50, 30]
    assert " ".join(c.text for c in chunks) == text


@pytest.mark.parametrize(("field", "values"), [("chunk_size", {"chunk_size": 8}),
                                                ("overlap", {"chunk_size": 100, "overlap": 60}),
                                                ("min_chunk_tokens", {"min_chunk_tokens": -1})])
def test_chunking_config_errors_name_the_field(field, values):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ChunkingConfig(**values)


# --------------------------------------------------------------------------------------------------------------------
# Index: round trip, incremental update, mismatch, atomic save
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    write(folder / "pump.md", "# Pump\n\nThe impeller jams when roots grow into it. Clear the impeller.\n")
    write(folder / "lights.md", "# Lights\n\nThe light bar dims when the driver is hot.\n")
    write(folder / "wifi.md", "# Wi-Fi\n\nThe hub needs a 2.4 GHz network and WPA2.\n")
    write(folder / "sub/returns.md", "# Returns\n\nReturns are accepted within 30 days.\n")
    return folder


def test_build_save_load_round_trip(corpus, tmp_path):
    embedder = FakeEmbedder()
    result = build_index([str(corpus)], tmp_path / "kb", embedder)
    assert (result.documents, result.chunks, result.embedded) == (4, 4, 4)
    assert sorted(p.name for p in (tmp_path / "kb").iterdir()) == ["chunks.jsonl", "index.faiss", "manifest.json"]
    manifest = json.loads((tmp_path / "kb/manifest.json").read_text())
    assert manifest["embedding_model"] == "fake-bow" and manifest["dimension"] == 64
    assert manifest["chunking"] == {"chunk_size": 200, "overlap": 32, "min_chunk_tokens": 32}
    assert manifest["counts"] == {"documents": 4, "chunks": 4}
    assert manifest["documents"][f"{corpus}/pump.md"]["sha256"] == make_document("x", "", (corpus / "pump.md")
                                                                                 .read_text()).sha256
    kb = KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())
    hits = kb.search("impeller roots jams", k=2, hybrid=False)
    assert hits[0].chunk.source == f"{corpus}/pump.md" and [h.rank for h in hits] == [1, 2]
    assert hits[0].score > hits[1].score
    assert hits[0].to_dict()["text"].startswith("# Pump")


def test_incremental_update_touches_only_changed_documents(corpus, tmp_path):
    embedder = FakeEmbedder()
    build_index([str(corpus)], tmp_path / "kb", embedder)
    before = KnowledgeBase.load(tmp_path / "kb", embedder)
    kept_ids = {c.id for c in before.chunks.values() if c.source.endswith(("lights.md", "returns.md"))}
    embedder.embedded = 0
    again = build_index([str(corpus)], tmp_path / "kb", embedder)
    assert (again.embedded, again.unchanged, again.rebuilt) == (0, 4, False)

    write(corpus / "pump.md", "# Pump\n\nA new pump text about priming and airlocks.\n")
    (corpus / "wifi.md").unlink()
    write(corpus / "seeds.md", "# Seeds\n\nBasil seeds sprout in five days.\n")
    update = build_index([str(corpus)], tmp_path / "kb", embedder)
    assert (update.added, update.changed, update.removed, update.unchanged) == (1, 1, 1, 2)
    assert embedder.embedded == 2  # the new pump chunk and the seeds chunk
    kb = KnowledgeBase.load(tmp_path / "kb", embedder)
    assert kb.index.ntotal == len(kb.chunks) == 4
    assert kept_ids <= set(kb.chunks)  # unchanged documents keep their chunk ids
    sources = {c.source.rsplit("/", 1)[-1] for c in kb.chunks.values()}
    assert sources == {"pump.md", "lights.md", "returns.md", "seeds.md"}
    assert kb.search("priming airlocks", k=1, hybrid=False)[0].chunk.source.endswith("pump.md")
    assert all(not h.chunk.source.endswith("wifi.md") for h in kb.search("hub 2.4 GHz WPA2", k=4))


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_other_index_types_update_and_search(corpus, tmp_path, index_type):
    embedder = FakeEmbedder()
    config = IndexConfig(index_type=index_type)
    build_index([str(corpus)], tmp_path / "kb", embedder, index_config=config)
    (corpus / "wifi.md").unlink()
    update = build_index([str(corpus)], tmp_path / "kb", embedder, index_config=config)
    assert update.removed == 1 and update.embedded == 0
    assert update.rebuilt == (index_type == "hnsw")  # HNSW cannot remove in place: rebuilt from stored vectors
    kb = KnowledgeBase.load(tmp_path / "kb", embedder)
    assert kb.index.ntotal == 3
    assert kb.search("light bar driver hot", k=1, hybrid=False)[0].chunk.source.endswith("lights.md")


def test_another_embedding_model_is_refused(corpus, tmp_path):
    build_index([str(corpus)], tmp_path / "kb", FakeEmbedder())
    with pytest.raises(IndexFolderError, match="built with embedding model fake-bow .* not other-model"):
        KnowledgeBase.load(tmp_path / "kb", FakeEmbedder("other-model"))
    with pytest.raises(IndexFolderError, match="fake-bow, not other-model"):
        build_index([str(corpus)], tmp_path / "kb", FakeEmbedder("other-model"))


def test_a_crash_during_save_leaves_the_previous_index_whole(corpus, tmp_path, monkeypatch):
    embedder = FakeEmbedder()
    build_index([str(corpus)], tmp_path / "kb", embedder)
    before = (tmp_path / "kb/chunks.jsonl").read_text()
    write(corpus / "new.md", "# New\n\nSomething new.\n")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        build_index([str(corpus)], tmp_path / "kb", embedder)
    monkeypatch.undo()
    assert (tmp_path / "kb/chunks.jsonl").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left behind
    assert KnowledgeBase.load(tmp_path / "kb", embedder).index.ntotal == 4


def test_a_crash_between_the_two_renames_is_recovered_on_load(corpus, tmp_path):
    embedder = FakeEmbedder()
    build_index([str(corpus)], tmp_path / "kb", embedder)
    os.rename(tmp_path / "kb", tmp_path / ".old-kb-1a2b3c4d")  # the old index moved away, the new one not yet in
    kb = KnowledgeBase.load(tmp_path / "kb", embedder)
    assert kb.index.ntotal == 4 and (tmp_path / "kb/manifest.json").is_file()


def test_damaged_index_folders_give_errors_naming_the_file(corpus, tmp_path):
    embedder = FakeEmbedder()
    build_index([str(corpus)], tmp_path / "kb", embedder)
    faiss_file = tmp_path / "kb/index.faiss"
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFolderError, match="index.faiss: not a readable FAISS index"):
        KnowledgeBase.load(tmp_path / "kb", embedder)
    faiss_file.write_bytes(data)
    lines = (tmp_path / "kb/chunks.jsonl").read_text().splitlines()
    (tmp_path / "kb/chunks.jsonl").write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(IndexFolderError, match="chunks.jsonl line 2: bad chunk record"):
        KnowledgeBase.load(tmp_path / "kb", embedder)
    with pytest.raises(IndexFolderError, match="does not exist"):
        KnowledgeBase.load(tmp_path / "nowhere", embedder)


def test_saving_over_a_folder_that_is_not_an_index_is_refused(corpus, tmp_path):
    write(tmp_path / "mine/keep.txt", "precious")
    with pytest.raises(IndexFolderError, match="not an index folder"):
        build_index([str(corpus)], tmp_path / "mine", FakeEmbedder())
    assert (tmp_path / "mine/keep.txt").read_text() == "precious"


def test_nothing_to_index_and_partly_bad_input(tmp_path, corpus):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NothingToIndexError, match="empty folder"):
        build_index([str(tmp_path / "empty")], tmp_path / "kb", FakeEmbedder())
    assert not (tmp_path / "kb").exists()
    write(corpus / "junk.txt", b"\x00\x01\x02binary")
    result = build_index([str(corpus)], tmp_path / "kb", FakeEmbedder())
    assert result.documents == 4 and [Path(s.path).name for s in result.skipped] == ["junk.txt"]


# --------------------------------------------------------------------------------------------------------------------
# Ranking helpers and retrieval evaluation
# --------------------------------------------------------------------------------------------------------------------


def test_bm25_ranks_the_rare_word_first():
    texts = ["the pump and the tank", "the tank and the lid", "impeller of the pump"]
    scores = BM25.build(texts).scores("impeller")
    assert int(np.argmax(scores)) == 2 and scores[0] == scores[1] == 0.0


def test_reciprocal_rank_fusion_hand_computed():
    fused = dict(reciprocal_rank_fusion([[7, 8], [8, 9]], k=60))
    assert fused[8] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[7] == pytest.approx(1 / 61) and fused[9] == pytest.approx(1 / 62)
    assert list(dict(reciprocal_rank_fusion([[7, 8], [8, 9]], k=60))) == [8, 7, 9]


def test_mmr_skips_duplicates_unless_lambda_is_one():
    query = np.array([1.0, 0.0], dtype=np.float32)
    a = np.array([0.9, 0.436], dtype=np.float32)
    b = np.array([0.6, -0.8], dtype=np.float32)
    candidates = np.stack([a, a, b])
    assert mmr(query, candidates, 2, lambda_=1.0) == [0, 1]
    assert mmr(query, candidates, 2, lambda_=0.3) == [0, 2]


def test_search_modes_return_k_ranked_hits(corpus, tmp_path):
    build_index([str(corpus)], tmp_path / "kb", FakeEmbedder())
    kb = KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())
    for options in ({"hybrid": True}, {"hybrid": False}, {"mmr_lambda": 0.5}):
        hits = kb.search("pump impeller returns", k=3, **options)
        assert [h.rank for h in hits] == [1, 2, 3] and len({h.chunk.id for h in hits}) == 3
    with pytest.raises(ValueError, match="query"):
        kb.search("  ", k=3)
    with pytest.raises(ValueError, match="k: must be at least 1"):
        kb.search("pump", k=0)


def test_source_matching_uses_whole_path_components():
    assert source_matches("assets/demo/corpus/error-codes.md", "error-codes.md")
    assert source_matches("corpus/sub/a.md", "sub/a.md")
    assert source_matches("data/rows.jsonl#4", "rows.jsonl")
    assert not source_matches("corpus/ba.md", "a.md")


def test_hit_at_k_and_mrr_hand_computed(corpus, tmp_path):
    build_index([str(corpus)], tmp_path / "kb", FakeEmbedder())
    kb = KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())
    cases = [RetrievalCase("impeller jams roots", "pump.md"), RetrievalCase("light bar driver hot", "lights.md"),
             RetrievalCase("impeller jams roots", "returns.md")]
    ranks = [next(h.rank for h in kb.search(c.question, 4, hybrid=False) if h.chunk.source.endswith(c.source))
             for c in cases]
    assert ranks[:2] == [1, 1] and ranks[2] > 1
    report = evaluate_retrieval(kb, cases, k=4, hybrid=False)
    assert report.ranks == ranks
    assert report.hit_at[1] == pytest.approx(2 / 3) and report.hit_at[4] == pytest.approx(1.0)
    assert report.mrr == pytest.approx((1 + 1 + 1 / ranks[2]) / 3)


def test_load_cases_skips_rows_without_source_and_names_bad_lines(tmp_path):
    path = write(tmp_path / "q.jsonl", json.dumps({"instruction": "Q1?", "source": "a.md"}) + "\n"
                 + json.dumps({"instruction": "label me", "task": "classification"}) + "\n"
                 + json.dumps({"question": "Q2?", "input": "ctx", "source": "b.md"}) + "\n")
    cases = load_cases(path)
    assert [(c.question, c.source) for c in cases] == [("Q1?", "a.md"), ("Q2?\nctx", "b.md")]
    write(tmp_path / "bad.jsonl", json.dumps({"instruction": "Q", "source": "a.md"}) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl line 2: invalid JSON"):
        load_cases(tmp_path / "bad.jsonl")
