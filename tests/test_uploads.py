"""core.engine.uploads: safe names (core.limits' character rule), allowed types, size limit, atomic (fsynced)
replacement."""

from __future__ import annotations

import pytest

from core.engine.uploads import MAX_NAME_CHARS, UploadError, list_uploads, safe_name, store_upload
from core.limits import MAX_NAME_CHARS as MAX_PLAIN_NAME
from core.limits import check_name, name_chars


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


@pytest.mark.parametrize("name", ["my report (v2).PDF", "Mes données (v2).csv", "../../x/.hidden.md", "a\x00b.tsv",
                                  "ＡＢ／ｃｄ.txt", "con.md", "--x--.jsonl", "日本語.md"])
def test_upload_names_follow_the_name_rule_of_core_limits(name):
    """The characters of a stored name are core.limits' NAME_CHARS (one rule); the name keeps its extension."""
    stored = safe_name(name)
    stem, _, ext = stored.rpartition(".")
    assert check_name(stored[:MAX_PLAIN_NAME], "upload") and ext.isalnum() and ext == ext.lower()
    assert name_chars(stem, "_") == stem  # nothing left for the rule to replace


def test_a_file_uploaded_again_finds_its_stored_copy_by_name(tmp_path):
    """Runs, indexes and evaluations name uploads by path: the names stored files already have are the names a new
    upload of the same file gets, so it is found, not copied again as -2."""
    folder = tmp_path / "uploads" / "documents"
    folder.mkdir(parents=True)
    (folder / "my_report_v2.pdf").write_bytes(b"%PDF same")  # stored before
    (folder / "spaces_and_umlauts.txt").write_text("before")
    source = tmp_path / "upload-1"
    source.write_bytes(b"%PDF same")
    assert store_upload(tmp_path / "uploads", source, "documents", name="my report (v2).PDF") == \
        folder / "my_report_v2.pdf"
    source.write_text("after")
    assert store_upload(tmp_path / "uploads", source, "documents", name="spaces and ümlauts.txt") == \
        folder / "spaces_and_umlauts-2.txt"  # other content: kept beside it, the stored one untouched
    assert (folder / "spaces_and_umlauts.txt").read_text() == "before"
    assert sorted(p.name for p in folder.iterdir()) == ["my_report_v2.pdf", "spaces_and_umlauts-2.txt",
                                                       "spaces_and_umlauts.txt"]


@pytest.mark.parametrize("replace", [False, True])
def test_the_copy_is_fsynced_before_it_takes_its_name(tmp_path, monkeypatch, replace):
    """core.io's fsync, on the whole temporary copy, before the rename or link gives it the real name."""
    import core.engine.uploads as uploads

    source = tmp_path / "upload-1"
    source.write_bytes(b"x" * 3_000_000)
    target = tmp_path / "uploads" / "documents" / "big.txt"
    seen: list[tuple[str, int, bool]] = []

    def fsync_file(path):
        seen.append((path.name, path.stat().st_size, target.exists()))

    monkeypatch.setattr(uploads, "fsync_file", fsync_file)
    assert store_upload(tmp_path / "uploads", source, "documents", name="big.txt", replace=replace) == target
    assert len(seen) == 1 and seen[0][0].startswith(".tmp-") and seen[0][1:] == (3_000_000, False)
    assert target.read_bytes() == source.read_bytes()
