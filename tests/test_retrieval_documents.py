"""Document loaders: each format (a real PDF made here), bad files skipped with their reason, folder walking, ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from retrieval_helpers import tiny_pdf, write

from retrieval import load_documents


def load_one(path: Path, **kwargs):
    """The documents of one file, failing the test with the reason if it was skipped."""
    result = load_documents([str(path)], **kwargs)
    assert result.skipped == [], result.skipped
    return result.documents


def skip_reason(path: Path, **kwargs) -> str:
    result = load_documents([str(path)], **kwargs)
    assert result.documents == []
    assert [item.path for item in result.skipped] == [str(path)]
    return result.skipped[0].reason


# --------------------------------------------------------------------------------------------------------------------
# One loader per format
# --------------------------------------------------------------------------------------------------------------------


def test_markdown_title_is_the_first_heading_not_the_first_line(tmp_path):
    path = write(tmp_path / "pump-guide.md", "Draft, do not share\n\n## Priming the Pump ##\n\n# Later heading\n")
    [doc] = load_one(path)
    assert doc.title == "Priming the Pump"  # closing hashes dropped, first heading wins over a later # heading
    assert doc.source == str(path) and doc.text.startswith("Draft, do not share\n")


def test_markdown_without_a_heading_takes_the_file_stem(tmp_path):
    [doc] = load_one(write(tmp_path / "release-notes.md", "Nothing but prose here.\n#hashtag is not a heading\n"))
    assert doc.title == "release-notes"


def test_markdown_title_keeps_a_trailing_hash_that_is_part_of_a_word(tmp_path):
    [doc] = load_one(write(tmp_path / "lang.md", "# Scripting the hub in C#\n\nUse the SDK.\n"))
    assert doc.title == "Scripting the hub in C#"


def test_a_lone_hash_line_does_not_turn_the_next_line_into_the_title(tmp_path):
    [doc] = load_one(write(tmp_path / "notes.md", "#\nsecond line is prose\n"))
    assert doc.title == "notes"


def test_txt_is_read_as_utf8_with_crlf_and_bom_normalised(tmp_path):
    path = write(tmp_path / "care notes.txt", "\ufeffLine one\r\nLine two\rLine three caf\u00e9\r\n".encode())
    [doc] = load_one(path)
    assert doc.text == "Line one\nLine two\nLine three caf\u00e9\n"
    assert doc.title == "care notes"


def test_html_keeps_visible_text_headings_and_title(tmp_path):
    html = """<!doctype html><html><head><title> Hub  Manual </title>
    <meta charset="utf-8"><style>body { color: red }</style><script>var token = "s3cret";</script></head>
    <body><script type="module">import x from "./hidden.js";</script>
    <h1>Wi-Fi setup</h1><p>Hold the <b>pair</b> button &amp; wait.</p>
    <h3>Troubleshooting</h3><ul><li>Use 2.4&nbsp;GHz</li><li>Use WPA2</li></ul>
    <noscript>Please enable JavaScript</noscript><template><p>never shown</p></template>
    <table><tr><td>E22</td><td>Pump dry</td></tr></table></body></html>"""
    [doc] = load_one(write(tmp_path / "page.html", html))
    assert doc.title == "Hub  Manual"
    lines = doc.text.splitlines()
    assert "# Wi-Fi setup" in lines and "### Troubleshooting" in lines
    assert "Hold the pair button & wait." in lines
    assert "- Use 2.4 GHz" in lines  # &nbsp; folded like any space
    assert "- Use WPA2" in lines
    assert "E22" in doc.text and "Pump dry" in doc.text
    for hidden in ("color", "s3cret", "hidden.js", "enable JavaScript", "never shown", "Hub  Manual"):
        assert hidden not in doc.text


def test_html_without_title_uses_its_first_heading(tmp_path):
    [doc] = load_one(write(tmp_path / "faq.htm", "<body><p>Intro</p><h2>Frequently asked</h2><p>Q and A</p></body>"))
    assert doc.title == "Frequently asked"


def test_a_real_pdf_is_extracted_page_by_page(tmp_path):
    path = write(tmp_path / "manual.pdf", tiny_pdf([["Terrace Frame manual", "Probes need calibration yearly."],
                                                    ["Page two covers the solar lid."]], title="Terrace Manual"))
    [doc] = load_one(path)
    assert "Terrace Frame manual" in doc.text and "Probes need calibration yearly." in doc.text
    assert doc.text.index("calibration") < doc.text.index("solar lid")  # pages in order
    assert doc.title == "Terrace Manual" and doc.meta["pages"] == 2


def test_a_pdf_without_metadata_title_takes_the_file_stem(tmp_path):
    [doc] = load_one(write(tmp_path / "leaflet.pdf", tiny_pdf([["Basil sprouts in five days."]])))
    assert doc.title == "leaflet" and "Basil sprouts in five days." in doc.text


def encrypt(source: Path, target: Path, **kwargs) -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(str(source)))
    writer.encrypt(algorithm="RC4-128", **kwargs)  # RC4 needs no extra crypto package
    with open(target, "wb") as handle:
        writer.write(handle)
    return target


def test_a_pdf_locked_with_a_user_password_is_skipped_as_encrypted(tmp_path):
    plain = write(tmp_path / "plain/plans.pdf", tiny_pdf([["Secret plans for the pump"]]))
    locked = encrypt(plain, tmp_path / "locked.pdf", user_password="hunter2")
    assert b"Secret plans" not in locked.read_bytes()
    assert "encrypted" in skip_reason(locked)


def test_a_pdf_with_only_an_owner_password_is_read(tmp_path):
    plain = write(tmp_path / "plain/open.pdf", tiny_pdf([["Anyone may read this"]]))
    [doc] = load_one(encrypt(plain, tmp_path / "owner-only.pdf", user_password="", owner_password="boss"))
    assert "Anyone may read this" in doc.text


@pytest.mark.parametrize("content", [os.urandom(512), b"", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog"],
                         ids=["random-bytes", "empty-file", "truncated"])
def test_a_corrupt_pdf_is_skipped_as_unreadable(tmp_path, content):
    assert skip_reason(write(tmp_path / "broken.pdf", content)).startswith("unreadable PDF")


def test_binary_files_with_text_extensions_are_skipped(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    assert "binary" in skip_reason(write(tmp_path / "image.txt", png))
    assert "not UTF-8" in skip_reason(write(tmp_path / "latin1.md", "caf\xe9 cr\xe8me".encode("latin-1")))
    controls = bytes([1, 2, 3, 4, 5, 6, 7, 8]) * 20 + b"some text"
    assert "control characters" in skip_reason(write(tmp_path / "ctrl.html", controls))


def test_unsupported_extension_is_skipped_with_the_supported_list(tmp_path):
    reason = skip_reason(write(tmp_path / "slides.pptx", b"PK\x03\x04"))
    assert reason.startswith("unsupported file type '.pptx'") and ".md" in reason and ".pdf" in reason
    assert skip_reason(write(tmp_path / "Makefile", "all:\n")).startswith("unsupported file type 'Makefile'")


# --------------------------------------------------------------------------------------------------------------------
# Tables: one document per row
# --------------------------------------------------------------------------------------------------------------------


def test_jsonl_rows_use_a_detected_text_column_and_title_column(tmp_path):
    rows = [{"id": 1, "title": "Nutrients", "content": "Dose FeedBlend every two weeks."},
            {"id": 2, "title": "Lid", "content": "   "},  # empty text: no document
            {"id": 3, "content": "The solar lid charges in daylight."}]
    path = write(tmp_path / "kb.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    docs = load_one(path)
    assert [(doc.source, doc.title, doc.text) for doc in docs] == [
        (f"{path}#1", "Nutrients", "Dose FeedBlend every two weeks.\n"),
        (f"{path}#3", "kb row 3", "The solar lid charges in daylight.\n")]
    assert docs[0].meta == {"row": 1, "file": str(path)}


def test_jsonl_without_a_known_column_picks_the_longest_string_column(tmp_path):
    rows = [{"sku": "TF-1", "blurb": "A compact indoor garden with a pump and grow lights."},
            {"sku": "TF-2", "blurb": "A larger frame for a terrace, with a solar lid and probes."}]
    docs = load_one(write(tmp_path / "products.jsonl", "\n".join(json.dumps(row) for row in rows)))
    assert [doc.text.strip() for doc in docs] == [row["blurb"] for row in rows]


def test_jsonl_named_column_wins_over_a_detected_one(tmp_path):
    rows = [{"text": "ignored column", "answer": "Descale monthly with citric acid."}]
    [doc] = load_one(write(tmp_path / "qa.jsonl", json.dumps(rows[0])), text_column="answer")
    assert doc.text == "Descale monthly with citric acid.\n"


def test_a_missing_named_column_is_skipped_naming_it(tmp_path):
    path = write(tmp_path / "qa.jsonl", json.dumps({"question": "Why?", "text": "Because."}) + "\n")
    reason = skip_reason(path, text_column="answer")
    assert "no column 'answer'" in reason and "question" in reason  # names the columns that exist
    csv_path = write(tmp_path / "qa.csv", "question,text\nWhy?,Because.\n")
    assert "no column 'answer'" in skip_reason(csv_path, text_column="answer")


def test_jsonl_with_a_bad_line_is_skipped_naming_the_line(tmp_path):
    path = write(tmp_path / "rows.jsonl", json.dumps({"text": "fine row"}) + "\n\n{broken\n")
    assert skip_reason(path).startswith("line 3: invalid JSON")
    assert skip_reason(write(tmp_path / "list.jsonl", "[1, 2]\n")).startswith("line 1: expected a JSON object")


def test_a_table_without_a_text_like_column_is_skipped(tmp_path):
    assert "no text column found" in skip_reason(write(tmp_path / "ids.csv", "sku,qty\nTF-1,3\nTF-2,4\n"))


def test_csv_and_tsv_rows_become_documents(tmp_path):
    path = write(tmp_path / "faq.csv", 'title,body\nReturns,"Returns are accepted within 30 days, unused."\n'
                                       "Warranty,Two years on the pump.\n")
    docs = load_one(path)
    assert [(doc.source, doc.title, doc.text) for doc in docs] == [
        (f"{path}#1", "Returns", "Returns are accepted within 30 days, unused.\n"),
        (f"{path}#2", "Warranty", "Two years on the pump.\n")]
    tsv = write(tmp_path / "faq.tsv", "name\tpassage\nHub\tThe hub joins a 2.4 GHz network, only.\n")
    [doc] = load_one(tsv)
    assert (doc.title, doc.text) == ("Hub", "The hub joins a 2.4 GHz network, only.\n")


# --------------------------------------------------------------------------------------------------------------------
# Folders, sources, ids
# --------------------------------------------------------------------------------------------------------------------


def test_a_folder_is_walked_recursively_in_sorted_order_skipping_hidden_entries(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b.md", "# B\n\nbee\n")
    write(root / "a.txt", "ay\n")
    write(root / "sub/deeper/c.md", "# C\n\nsea\n")
    write(root / "sub/.draft.md", "# Hidden file\n")
    write(root / ".git/config.txt", "hidden folder\n")
    write(root / "sub/.cache/d.md", "# Hidden too\n")
    for given in (str(root), str(root) + "/"):
        result = load_documents([given])
        assert result.skipped == []
        assert [doc.source for doc in result.documents] == [f"{root}/a.txt", f"{root}/b.md",
                                                            f"{root}/sub/deeper/c.md"]


def test_a_relative_folder_keeps_the_path_as_given(tmp_path, monkeypatch):
    write(tmp_path / "docs/guide/setup.md", "# Setup\n\nPlug it in.\n")
    monkeypatch.chdir(tmp_path)
    [doc] = load_documents(["docs"]).documents
    assert doc.source == "docs/guide/setup.md"
    assert Path(doc.source).read_text() == "# Setup\n\nPlug it in.\n"  # a caller can open it again


def test_empty_and_missing_paths_are_skipped(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "only-hidden/.DS_Store", b"\x00\x01")
    result = load_documents([str(tmp_path / "empty"), str(tmp_path / "only-hidden"), str(tmp_path / "nope")])
    assert result.documents == []
    assert [(item.path, item.reason) for item in result.skipped] == [
        (str(tmp_path / "empty"), "empty folder"), (str(tmp_path / "only-hidden"), "empty folder"),
        (str(tmp_path / "nope"), "no such file or folder")]


def test_whitespace_only_and_twice_listed_files_are_skipped(tmp_path):
    blank = write(tmp_path / "blank.md", "  \n\n\t\n")
    good = write(tmp_path / "good.md", "# Good\n")
    result = load_documents([str(blank), str(good), str(good)])
    assert [doc.source for doc in result.documents] == [str(good)]
    assert [(item.path, item.reason) for item in result.skipped] == [(str(blank), "no text"),
                                                                     (str(good), "listed twice")]


def test_good_files_load_beside_bad_ones(tmp_path):
    write(tmp_path / "docs/good.md", "# Good\n\nfine\n")
    write(tmp_path / "docs/bad.pdf", b"not a pdf at all")
    write(tmp_path / "docs/bad.txt", b"\x00\x00\x00")
    result = load_documents([str(tmp_path / "docs")])
    assert [Path(doc.source).name for doc in result.documents] == ["good.md"]
    assert sorted(Path(item.path).name for item in result.skipped) == ["bad.pdf", "bad.txt"]


def test_doc_id_is_stable_for_the_same_path_and_content(tmp_path):
    write(tmp_path / "docs/a.md", "# A\n\nalpha\n")
    write(tmp_path / "docs/b.md", "# B\n\nbeta\n")
    first = {doc.source: doc for doc in load_documents([str(tmp_path / "docs")]).documents}
    again = {doc.source: doc for doc in load_documents([str(tmp_path / "docs")]).documents}
    assert {s: d.doc_id for s, d in first.items()} == {s: d.doc_id for s, d in again.items()}
    assert len({doc.doc_id for doc in first.values()}) == 2

    write(tmp_path / "docs/a.md", "# A\n\nalpha, revised\n")
    changed = {doc.source: doc for doc in load_documents([str(tmp_path / "docs")]).documents}
    a, b = str(tmp_path / "docs/a.md"), str(tmp_path / "docs/b.md")
    assert changed[a].doc_id != first[a].doc_id and changed[a].sha256 != first[a].sha256
    assert changed[b].doc_id == first[b].doc_id

    write(tmp_path / "copy/b.md", "# B\n\nbeta\n")  # same content, another path: another document
    [copy] = load_documents([str(tmp_path / "copy")]).documents
    assert copy.sha256 == first[b].sha256 and copy.doc_id != first[b].doc_id
