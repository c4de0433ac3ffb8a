"""core.engine.uploads: safe names, allowed types, size limit, atomic replacement."""

from __future__ import annotations

import pytest

from core.engine.uploads import MAX_NAME_CHARS, UploadError, list_uploads, safe_name, store_upload


@pytest.mark.parametrize(("name", "expected"), [
    ("../../etc/passwd.jsonl", "passwd.jsonl"),
    ("/abs/path/data.csv", "data.csv"),
    ("C:\\Users\\me\\data.JSONL", "data.jsonl"),
    ("my report (v2).PDF", "my_report_v2.pdf"),
    ("nul\x00byte.md", "nulbyte.md"),
    ("..", "file"),
    (".hidden.md", "hidden.md"),
    ("spaces and ümlauts.txt", "spaces_and_umlauts.txt"),
])
def test_safe_name(name, expected):
    assert safe_name(name) == expected


def test_long_names_are_cut_keeping_the_extension():
    name = safe_name("x" * 500 + ".jsonl")
    assert len(name) == MAX_NAME_CHARS and name.endswith(".jsonl")


def test_store_keeps_the_file_under_the_kind_folder(tmp_path):
    source = tmp_path / "upload-123"
    source.write_text('{"instruction": "a", "output": "b"}\n')
    stored = store_upload(tmp_path / "uploads", source, "datasets", name="../../evil name.jsonl")
    assert stored == tmp_path / "uploads" / "datasets" / "evil_name.jsonl"
    assert stored.read_text() == source.read_text()
    assert list_uploads(tmp_path / "uploads", "datasets") == [stored]
    source.write_text("second version\n")
    assert store_upload(tmp_path / "uploads", source, "datasets", name="evil name.jsonl", replace=True) \
        .read_text() == "second version\n"
    assert [p.name for p in (tmp_path / "uploads" / "datasets").iterdir()] == ["evil_name.jsonl"]  # no temp left


@pytest.mark.parametrize(("kind", "name", "size", "needle"), [
    ("datasets", "model.pkl", 10, "model.pkl: not a supported file type here"),
    ("datasets", "notes.md", 10, "notes.md: not a supported file type"),
    ("documents", "big.md", 2048, "big.md: 2 KB, over the 1 KB limit for an upload"),
    ("weights", "a.md", 10, "kind: must be one of"),
])
def test_refusals_name_the_file(tmp_path, kind, name, size, needle):
    source = tmp_path / "source"
    source.write_bytes(b"x" * size)
    with pytest.raises(UploadError, match=needle.replace("(", r"\(")):
        store_upload(tmp_path / "uploads", source, kind, name=name, max_bytes=1024)
    assert list_uploads(tmp_path / "uploads", "documents") == list_uploads(tmp_path / "uploads", "datasets") == []


def test_a_missing_source_is_refused(tmp_path):
    with pytest.raises(UploadError, match="gone.md: the uploaded file is missing"):
        store_upload(tmp_path, tmp_path / "gone.md", "documents")
