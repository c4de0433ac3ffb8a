"""Chunking: exact slices within the token budget that cover the whole document, heading paths, section and
sentence boundaries, overlap, and the config's validation."""

from __future__ import annotations

import re

import pytest
from retrieval_helpers import FakeEmbedder, count_tokens, sentences, words, write

from retrieval import ChunkingConfig, chunk_document, load_documents
from retrieval.chunking import HEADING
from retrieval.documents import make_document

TABLE = "| code | meaning |\n|------|---------|\n" + "".join(f"| E{i:02d} | fault number {i} of the pump |\n"
                                                            for i in range(40))

DOCUMENTS = {
    "sections": (
        "# Guide\n\n" + sentences(3, 7, 0) + "\n\n"
        "## Setup\n\n" + sentences(4, 8, 100) + "\n\n"
        "### Cables\n\n" + sentences(12, 9, 200) + "\n\n"
        "### Mounting\n\n" + sentences(2, 6, 400) + "\n\n"
        "## Care\n\n" + sentences(5, 7, 500) + "\n"
    ),
    "long-paragraphs": "\n\n".join(sentences(15, 11, 1000 * i, prefix=f"p{i}x") for i in range(3)) + "\n",
    "one-long-line": words(333) + "\n",
    "table": "# Fault codes\n\nThe table lists every code.\n\n" + TABLE,
    "short-sections": "".join(f"## Part {i}\n\n{words(3, 10 * i)}\n\n" for i in range(30)),
    "lines": "\n".join(words(7, 10 * i) for i in range(60)) + "\n",
    "empty-last-section": "# Notes\n\n" + sentences(6, 8) + "\n\n## To do\n",
    "skipped-levels": "# A\n\n" + words(30) + "\n\n### A.x.1\n\n" + words(30, 100) + "\n\n## B\n\n"
                      + words(30, 200) + "\n\n#### B.x.x.1\n\n" + words(30, 300) + "\n",
}

CONFIGS = [
    ChunkingConfig(),
    ChunkingConfig(chunk_size=40, overlap=8, min_chunk_tokens=8),
    ChunkingConfig(chunk_size=16, overlap=0, min_chunk_tokens=0),
    ChunkingConfig(chunk_size=24, overlap=12, min_chunk_tokens=24),
    ChunkingConfig(chunk_size=64, overlap=16, min_chunk_tokens=32),
]


def chunk(text: str, config: ChunkingConfig | None = None, source: str = "docs/d.md", title: str = "Doc"):
    return chunk_document(make_document(source, title, text), FakeEmbedder(), config)


def is_heading_only(text: str) -> bool:
    return all(HEADING.match(line.strip()) for line in text.splitlines() if line.strip())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.chunk_size}-{c.overlap}-{c.min_chunk_tokens}")
@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_chunks_are_exact_slices_within_budget_covering_every_character(name, config):
    text = DOCUMENTS[name]
    document = make_document("docs/d.md", "Doc", text)
    chunks = chunk_document(document, FakeEmbedder(), config)
    assert chunks
    covered = [False] * len(text)
    for number, piece in enumerate(chunks):
        assert text[piece.start:piece.end] == piece.text
        assert piece.text == piece.text.strip() and piece.text  # trimmed, never empty
        assert piece.n_tokens == count_tokens(piece.text) <= config.chunk_size
        assert (piece.doc_id, piece.source, piece.title) == (document.doc_id, "docs/d.md", "Doc")
        if is_heading_only(piece.text):  # only an empty last section that the chunk before has no room for
            assert number == len(chunks) - 1 and number > 0 and not text[piece.end:].strip(), piece.text
            assert count_tokens(text[chunks[-2].start:piece.end]) > config.chunk_size
        for i in range(piece.start, piece.end):
            covered[i] = True
    lost = [i for i, char in enumerate(text) if not char.isspace() and not covered[i]]
    assert lost == [], text[lost[0]:lost[0] + 40] if lost else ""
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)  # in document order


def test_heading_paths_push_and_pop_by_level():
    config = ChunkingConfig(chunk_size=40, overlap=0, min_chunk_tokens=8)
    chunks = chunk(DOCUMENTS["sections"] + "# Appendix\n\n" + words(20, 900) + "\n", config)
    first_line_path = {c.text.split("\n")[0]: c.headings for c in chunks if c.text.startswith("#")}
    assert first_line_path == {
        "# Guide": ("Guide",), "## Setup": ("Guide", "Setup"), "### Cables": ("Guide", "Setup", "Cables"),
        "### Mounting": ("Guide", "Setup", "Mounting"), "## Care": ("Guide", "Care"), "# Appendix": ("Appendix",)}
    for piece in chunks:  # every chunk of a section sits under that section's path
        if "s250" in piece.text:
            assert piece.headings == ("Guide", "Setup", "Cables")
        if "s510" in piece.text:
            assert piece.headings == ("Guide", "Care")


def test_skipped_heading_levels_are_popped_by_a_higher_heading():
    chunks = chunk(DOCUMENTS["skipped-levels"], ChunkingConfig(chunk_size=40, overlap=0, min_chunk_tokens=8))
    paths = {c.text.split("\n")[0]: c.headings for c in chunks}
    assert paths == {"# A": ("A",), "### A.x.1": ("A", "A.x.1"), "## B": ("A", "B"),
                     "#### B.x.x.1": ("A", "B", "B.x.x.1")}


def test_a_heading_whose_text_ends_in_a_hash_keeps_it():
    [piece] = chunk("## Scripting in C#\n\nUse the SDK. ## not a heading\n")
    assert piece.headings == ("Scripting in C#",)
    [piece] = chunk("## Closed heading ##\n\nText.\n")
    assert piece.headings == ("Closed heading",)


def test_a_section_starts_a_new_chunk_at_its_heading_once_the_previous_is_long_enough():
    text = "# Pump\n\n" + words(12) + "\n\n# Lights\n\n" + words(5, 100) + "\n"
    one, two = chunk(text, ChunkingConfig(chunk_size=100, overlap=10, min_chunk_tokens=10))
    assert one.text == "# Pump\n\n" + words(12) and one.headings == ("Pump",)
    assert two.text == "# Lights\n\n" + words(5, 100) and two.headings == ("Lights",)
    assert one.end <= two.start  # no overlap across sections
    # the same text with a higher minimum: the short first section is joined with the next one
    [joined] = chunk(text, ChunkingConfig(chunk_size=100, overlap=10, min_chunk_tokens=20))
    assert joined.text == text.strip() and joined.headings == ("Pump",)


def test_the_section_after_a_short_joined_one_keeps_its_own_heading_and_path():
    # "Intro" (5 tokens) is below min_chunk_tokens, so "## Details" joins it; the details do not fit beside it
    text = "# Intro\n\n" + words(3) + "\n\n## Details\n\n" + words(45, 100) + "\n"
    chunks = chunk(text, ChunkingConfig(chunk_size=32, overlap=4, min_chunk_tokens=8))
    assert chunks[0].text == "# Intro\n\n" + words(3) and chunks[0].headings == ("Intro",)
    assert chunks[1].text.startswith("## Details\n\nw100")  # the heading leads its own text
    assert [c.headings for c in chunks[1:]] == [("Intro", "Details")] * (len(chunks) - 1)
    # with a long intro the heading still moves on instead of dangling at the end of the intro's chunk
    text = "# Intro\n\n" + words(7) + "\n\n## Details\n\n" + words(45, 100) + "\n"
    chunks = chunk(text, ChunkingConfig(chunk_size=32, overlap=4, min_chunk_tokens=8))
    assert chunks[0].text == "# Intro\n\n" + words(7)
    assert chunks[1].text.startswith("## Details\n\nw100") and chunks[1].headings == ("Intro", "Details")


def test_no_chunk_is_only_a_heading_even_with_no_minimum():
    text = "## Setup\n\n" + words(60) + "\n"
    chunks = chunk(text, ChunkingConfig(chunk_size=40, overlap=8, min_chunk_tokens=0))
    assert chunks[0].text.startswith("## Setup\n\nw0 w1")
    assert all(c.headings == ("Setup",) for c in chunks)


def test_an_empty_last_section_ends_the_previous_chunk():
    text = "# Notes\n\n" + words(20) + "\n\n## To do\n"
    [piece] = chunk(text, ChunkingConfig(chunk_size=40, overlap=0, min_chunk_tokens=8))
    assert piece.text == text.strip()


def test_a_heading_never_pushes_a_chunk_over_the_budget():
    text = words(15) + "\n\n# " + words(10, 100) + "\n\n" + words(5, 200) + "\n"
    chunks = chunk(text, ChunkingConfig(chunk_size=16, overlap=0, min_chunk_tokens=16))
    assert max(c.n_tokens for c in chunks) <= 16
    assert chunks[0].text == words(15)


def test_a_heading_longer_than_a_chunk_is_cut_like_text():
    text = "# " + words(30) + "\n\n" + words(5, 200) + "\n"
    chunks = chunk(text, ChunkingConfig(chunk_size=16, overlap=0, min_chunk_tokens=8))
    assert max(c.n_tokens for c in chunks) <= 16
    assert " ".join(c.text for c in chunks).replace("\n\n", " ") == text.strip().replace("\n\n", " ")


def test_a_long_paragraph_is_cut_at_sentence_ends_and_consecutive_chunks_overlap():
    text = "# Cables\n\n" + sentences(12, 9) + "\n"
    config = ChunkingConfig(chunk_size=40, overlap=12, min_chunk_tokens=8)
    chunks = chunk(text, config)
    assert len(chunks) >= 4
    for first, second in zip(chunks, chunks[1:], strict=False):
        assert first.text.endswith(".")  # cut after a sentence
        assert first.start < second.start < first.end  # the next begins inside the previous one
        assert re.match(r"s\d+ ", second.text) and text[second.start - 2:second.start] == ". "  # at a sentence start
    assert all(c.headings == ("Cables",) for c in chunks)
    disjoint = chunk(text, ChunkingConfig(chunk_size=40, overlap=0, min_chunk_tokens=8))
    assert len(disjoint) < len(chunks)
    for first, second in zip(disjoint, disjoint[1:], strict=False):
        assert first.end < second.start and first.text.endswith(".")
    assert sum(c.n_tokens for c in disjoint) == count_tokens(text)  # disjoint: every token exactly once


def test_paragraphs_that_fit_share_a_chunk_and_the_next_one_repeats_the_overlap():
    paragraphs = [sentences(2, 6, 100 * i) for i in range(6)]  # 12 tokens each
    text = "\n\n".join(paragraphs) + "\n"
    chunks = chunk(text, ChunkingConfig(chunk_size=30, overlap=6, min_chunk_tokens=8))
    assert chunks[0].text == paragraphs[0] + "\n\n" + paragraphs[1]  # 24 tokens, a third would not fit
    for first, second in zip(chunks, chunks[1:], strict=False):
        assert first.start < second.start < first.end
        assert second.text.startswith(text[second.start:first.end])


def test_a_long_line_without_punctuation_is_cut_between_words():
    text = words(333)
    chunks = chunk(text, ChunkingConfig(chunk_size=50, overlap=10, min_chunk_tokens=8))
    for first, second in zip(chunks, chunks[1:], strict=False):
        assert first.start < second.start < first.end
        assert text[second.start - 1] == " " and text[first.end] == " "  # never inside a word
    assert chunks[-1].text.endswith("w332")
    disjoint = chunk(text, ChunkingConfig(chunk_size=50, overlap=0))
    assert " ".join(c.text for c in disjoint) == text
    assert all(c.n_tokens <= 50 for c in disjoint) and len(disjoint) == 7


def test_a_long_table_is_cut_at_row_ends():
    chunks = chunk(DOCUMENTS["table"], ChunkingConfig(chunk_size=60, overlap=0, min_chunk_tokens=8))
    assert len(chunks) > 3
    assert chunks[0].text.startswith("# Fault codes\n\nThe table lists every code.")
    assert all(piece.headings == ("Fault codes",) for piece in chunks)
    for piece in chunks[1:]:
        assert piece.text.endswith("|") and piece.text.split("\n")[-1].startswith("| ")  # whole rows only


def test_crlf_documents_from_the_loader_chunk_with_exact_offsets(tmp_path):
    path = write(tmp_path / "crlf.md", ("# Title\r\n\r\n" + sentences(8, 8) + "\r\n\r\n## Part\r\n\r\n"
                                        + sentences(3, 5, 500) + "\r\n").encode())
    [document] = load_documents([str(path)]).documents
    chunks = chunk_document(document, FakeEmbedder(), ChunkingConfig(chunk_size=30, overlap=5, min_chunk_tokens=8))
    assert "\r" not in document.text
    assert all(document.text[c.start:c.end] == c.text for c in chunks)
    assert chunks[-1].headings == ("Title", "Part") and chunks[-1].text.startswith("## Part\n\ns")


def test_whitespace_only_document_gives_no_chunks():
    assert chunk(" \n\n\t\n") == []


@pytest.mark.parametrize(("values", "field"), [
    ({"chunk_size": 15}, "chunk_size"), ({"chunk_size": 9000}, "chunk_size"), ({"chunk_size": 64.0}, "chunk_size"),
    ({"chunk_size": True}, "chunk_size"), ({"overlap": -1}, "overlap"), ({"chunk_size": 100, "overlap": 51}, "overlap"),
    ({"overlap": "8"}, "overlap"), ({"min_chunk_tokens": -1}, "min_chunk_tokens"),
    ({"chunk_size": 40, "overlap": 8, "min_chunk_tokens": 41}, "min_chunk_tokens"),
])
def test_chunking_config_errors_name_the_field(values, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ChunkingConfig(**values)


def test_chunking_config_accepts_its_bounds():
    assert ChunkingConfig(chunk_size=16, overlap=8, min_chunk_tokens=16).to_dict() == {
        "chunk_size": 16, "overlap": 8, "min_chunk_tokens": 16}
