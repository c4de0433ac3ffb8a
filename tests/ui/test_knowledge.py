"""Knowledge base tab: pure formatting / validation helpers, then build and search through gradio_client."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval import Skipped
from ui.knowledge import (
    INDEX_HEADERS,
    RESULT_HEADERS,
    build_summary,
    check_index_name,
    file_label,
    hits_html,
    index_rows,
    kept_sources,
    overall_progress,
    result_rows,
    skipped_rows,
    typed_paths,
)

# ---- pure helpers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my-docs", "kb_2", "v1.2", "A", "-dash", "x" * 64])
def test_plain_index_names_are_accepted(name):
    assert check_index_name(f"  {name} ") == name


@pytest.mark.parametrize(("name", "message"), [
    ("../escape", "not a plain name"), ("/abs", "not a plain name"), ("a/b", "not a plain name"),
    ("a\\b", "not a plain name"), (".hidden", "not a plain name"), ("..", "not a plain name"),
    ("~user", "not a plain name"), ("with space", "not a plain name"), ("x" * 65, "longer than 64 characters"),
    ("", "a name is required"), ("   ", "a name is required"), (None, "a name is required"),
])
def test_other_index_names_are_refused_in_one_line(name, message):
    with pytest.raises(ValueError, match=message) as caught:
        check_index_name(name)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("index:")


def test_typed_paths_one_per_line():
    assert typed_paths("  docs/a \n\n/b/c\n") == ["docs/a", "/b/c"]
    assert typed_paths(None) == [] and typed_paths("  ") == []


def test_skipped_rows_shorten_uploads_and_keep_other_paths(tmp_path):
    uploads = tmp_path / "uploads"
    rows = skipped_rows([Skipped(f"{uploads}/documents/bad.pdf", "unreadable PDF: EOF marker not found"),
                         {"path": "/data/missing", "reason": "no such file or folder"},
                         ("notes.exe", "not a supported file type here")], uploads)
    assert rows == [["bad.pdf", "unreadable PDF: EOF marker not found"], ["/data/missing", "no such file or folder"],
                    ["notes.exe", "not a supported file type here"]]


def test_kept_sources_collapse_rows_drop_missing_and_given(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("a.md", "b.md", "docs/c.md"):
        (tmp_path / name).write_text("x")
    (tmp_path / "table.csv").write_text("text\nx\n")
    previous = [str(tmp_path / "a.md"), str(tmp_path / "b.md"), str(tmp_path / "gone.md"),
                str(tmp_path / "table.csv#1"), str(tmp_path / "table.csv#2"), str(tmp_path / "docs/c.md")]
    kept = kept_sources(previous, [str(tmp_path / "b.md"), str(tmp_path / "docs")])
    assert kept == [str(tmp_path / "a.md"), str(tmp_path / "table.csv")]


def test_index_rows_show_counts_time_and_errors():
    rows = index_rows([{"name": "kb", "folder": "/w/indexes/kb", "embedding_model": "all-MiniLM-L6-v2",
                        "index_type": "hnsw", "documents": 3, "chunks": 12, "updated": 1_700_000_000.0},
                       {"name": "broken", "folder": "/w/indexes/broken", "error": "manifest.json: not valid JSON"}])
    assert len(rows[0]) == len(INDEX_HEADERS)
    assert rows[0][:5] == ["kb", "all-MiniLM-L6-v2", "hnsw", 3, 12] and rows[0][5].startswith("2023-11-1")
    assert rows[1][0] == "broken" and "not valid JSON" in rows[1][1]


def test_result_rows_and_html_escape_document_text():
    hits = [{"rank": 1, "score": 0.0327868, "dense_score": 0.61234, "source": "/w/uploads/documents/evil.md",
             "title": "Evil <b>", "headings": ["Evil <b>", "Part & parcel"], "start": 0, "end": 40,
             "text": "<script>alert('x')</script>\n\n" + "word " * 60},
            {"rank": 2, "score": 0.5, "source": "/c/table.csv#3", "title": "table row 3", "headings": [],
             "start": 0, "end": 5, "text": "short"}]
    rows = result_rows(hits)
    assert len(rows[0]) == len(RESULT_HEADERS)
    assert rows[0][:5] == [1, 0.0328, 0.612, "evil.md", "Evil <b> › Part & parcel"]
    assert rows[0][5].endswith("…") and len(rows[0][5]) <= 160 and "\n" not in rows[0][5]
    assert rows[1][2] == 0.5 and rows[1][3] == "table.csv#3"  # dense only: cosine is the score
    page = hits_html(hits)
    assert page.count("<details>") == 2
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Evil &lt;b&gt; › Part &amp; parcel" in page and "<b>#1</b>" in page
    assert hits_html([]) == ""
    assert file_label("C:\\docs\\x.md") == "x.md"


def test_build_summary_counts_and_warnings():
    result = {"documents": 3, "chunks": 9, "wall_s": 2.25, "embedded": 2, "reused": 7, "added": 1, "changed": 0,
              "removed": 0, "unchanged": 2, "rebuilt": False, "skipped": [{"path": "x", "reason": "y"}],
              "warnings": ["chunk_size 512 is over the 254 tokens <model> reads"]}
    text = build_summary("kb", result, existed=True, refused=1)
    assert text.startswith("**Updated `kb`**: 3 documents, 9 chunks in 2.2 s")
    assert "embedded: 2 · reused (unchanged text): 7" in text and "added: 1" in text and "unchanged: 2" in text
    assert "2 files skipped" in text and "&lt;model&gt;" in text
    assert build_summary("kb", {**result, "skipped": []}, existed=False).startswith("**Built")
    assert build_summary("kb", {**result, "rebuilt": True}, existed=True).startswith("**Rebuilt")


def test_overall_progress_is_monotonic_over_the_stages():
    steps = [("load", 2, 2), ("chunk", 1, 2), ("chunk", 2, 2), ("embed", 0, 10), ("embed", 10, 10), ("index", 0, 1),
             ("index", 1, 1), ("save", 0, 1), ("save", 1, 1)]
    fractions = [overall_progress(*step)[0] for step in steps]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and 0 <= fractions[0]
    assert overall_progress("embed", 3, 10)[1] == "Embedding chunks 3/10"
    assert overall_progress("embed", 0, 0)[0] == pytest.approx(0.9)  # nothing to embed: the stage is done


# ---- through gradio_client against the real app ---------------------------------------------------------------------

def test_on_a_shared_app_each_visitor_builds_lists_and_reads_only_their_own_indexes(tmp_path, monkeypatch):
    import gradio as gr
    from retrieval_helpers import FakeEmbedder

    from core.engine import Engine
    from core.engine.visitors import VisitorSettings
    from core.errors import ConfigError
    from ui.common import DEMO_INDEX
    from ui.knowledge import create_knowledge_tab
    from ui.visitors import scoped

    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: FakeEmbedder())
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))
    alice, bob = gr.Request(session_hash="alice-browser-secret"), gr.Request(session_hash="bob-browser-secret")
    with gr.Blocks() as demo:
        parts = create_knowledge_tab(engine)
    handlers = {fn.fn.__name__: fn.fn for fn in demo.fns.values()}
    refresh, inputs, outputs = parts["refresh"]
    assert inputs == [parts["picker"]] and outputs == [parts["indexes"], parts["picker"]]
    (tmp_path / "alpha.md").write_text(ALPHA)

    status, _, listing, picker, *_ = handlers["on_build"]([str(tmp_path / "alpha.md")], "", False, "mine", True,
                                                         200, 32, "flat", False, False, lambda *_, **__: None, alice)
    mine = scoped(engine, alice).workspace.indexes / "mine"
    assert status.startswith("**Built `mine`**") and picker["value"] == str(mine)
    assert (scoped(engine, alice).workspace.uploads / "documents" / "alpha.md").is_file()
    assert list(listing["Name"]) == ["mine"] and not list(engine.workspace.indexes.iterdir())
    listing, picker = refresh(str(mine), alice)
    assert list(listing["Name"]) == ["mine"] and picker["value"] == str(mine)
    listing, picker = refresh(str(mine), bob)
    assert listing.empty and picker["value"] is None and [value for _, value in picker["choices"]] == [DEMO_INDEX]
    with pytest.raises(ConfigError, match="needs a browser session"):
        refresh(None, None)
    assert "1 documents" in handlers["describe"](str(mine), alice)[0]
    with pytest.raises(gr.Error, match="is not a folder of this workspace"):
        handlers["describe"](str(mine), bob)
    with pytest.raises(gr.Error, match="is not a folder of this workspace"):
        handlers["on_search"](str(mine), "burrs", 3, True, False, 0.5, lambda *_, **__: None, bob)


ALPHA = """# Zorblax grinder

## Burrs
The Zorblax 9000 coffee grinder uses conical ceramic burrs and has forty grind settings.

## Cleaning
Brush the burrs weekly; never wash them with water.
"""
BETA = """# Quokka kettle

## Boiling
The Quokka kettle boils one litre of water in ninety seconds and switches itself off at 100 degrees.
"""
GAMMA = """# Wombat toaster

The Wombat toaster has six browning levels and a bagel button that heats one side only.
"""


def _rows(value) -> list[list]:
    """A Dataframe output as rows (gradio_client gives {"headers", "data", "metadata"}), blank rows dropped."""
    data = value["data"] if isinstance(value, dict) else value
    return [row for row in data if any(cell not in ("", None) for cell in row)]


def _build(client, files, name, *, folders="", keep=True):
    return client.predict(files, folders, False, name, keep, 200, 32, "flat", True, False, api_name="/build_index")


def _search(client, index, query, k=3):
    return client.predict(index, query, k, True, False, 0.5, api_name="/search_index")


@pytest.mark.integration
def test_build_search_and_update_an_index_through_gradio_client(live_app, tmp_path):
    from gradio_client import Client, handle_file

    (tmp_path / "alpha.md").write_text(ALPHA)
    (tmp_path / "beta.md").write_text(BETA)
    (tmp_path / "gamma.md").write_text(GAMMA)
    (tmp_path / "broken.pdf").write_text("this is not a PDF at all\n")  # passes the upload check, fails to load
    (tmp_path / "tool.exe").write_bytes(b"MZ\x00\x01")  # refused by the upload check
    client = Client(live_app, verbose=False)
    uploads = [handle_file(str(tmp_path / name)) for name in ("alpha.md", "beta.md", "broken.pdf", "tool.exe")]
    status, skipped, indexes, picked, stats, documents = _build(client, uploads, "kb-test")

    assert status.startswith("**Built `kb-test`**: 2 documents,"), status
    assert "chunks embedded: " in status and "2 files skipped" in status
    reasons = dict(map(tuple, _rows(skipped)))
    assert set(reasons) == {"broken.pdf", "tool.exe"}, reasons
    assert reasons["broken.pdf"].startswith("unreadable PDF")
    assert reasons["tool.exe"].startswith("not a supported file type here")
    assert ["kb-test", "all-MiniLM-L6-v2", "flat", 2] in [row[:4] for row in _rows(indexes)]
    folder = Path(picked["value"])  # the picker now points at the new index
    assert folder.name == "kb-test" and folder.parent.name == "indexes" and (folder / "manifest.json").is_file()
    assert "kb-test" in [label.split(" ")[0] for label, _ in picked["choices"]]
    assert stats.startswith("**kb-test**: 2 documents") and "flat index" in stats
    assert sorted(row[0] for row in _rows(documents)) == ["alpha.md", "beta.md"]
    workspace = folder.parent.parent
    stored = workspace / "uploads" / "documents"
    assert sorted(p.name for p in stored.iterdir()) == ["alpha.md", "beta.md"]  # a skipped upload is not kept

    status, results, full = _search(client, str(folder), "How long does the kettle take to boil water?")
    rows = _rows(results)
    assert rows[0][3] == "beta.md" and rows[0][4].startswith("Quokka kettle"), rows
    assert {row[3] for row in rows} == {"alpha.md", "beta.md"} and status.startswith(f"{len(rows)} results from 3")
    assert "ninety seconds" in full and full.count("<details>") == len(rows)

    # an update that uploads one more file keeps the others: only the new file's chunks are embedded
    status, skipped, *_ = _build(client, [handle_file(str(tmp_path / "gamma.md"))], "kb-test")
    assert status.startswith("**Updated `kb-test`**: 3 documents,"), status
    assert "reused (unchanged text): 0" in status and "added: 1" in status and "unchanged: 2" in status
    assert _rows(skipped) == []
    _, results, _ = _search(client, "kb-test", "bagel button browning levels", k=1)  # a bare name works too
    assert [row[3] for row in _rows(results)] == ["gamma.md"]

    # a bad name is refused before anything is stored or created
    (tmp_path / "delta.md").write_text(GAMMA.replace("Wombat", "Numbat"))
    for bad in ("../escape", "/tmp/escape-kb", ".hidden"):
        with pytest.raises(Exception, match="not a plain name"):
            _build(client, [handle_file(str(tmp_path / "delta.md"))], bad)
    assert not (workspace.parent / "escape").exists() and not Path("/tmp/escape-kb").exists()
    assert not (stored / "delta.md").exists()
    assert {p.name for p in (workspace / "indexes").iterdir()} <= {"demo", "kb-test"}
    with pytest.raises(Exception, match="Nothing to index: upload documents"):
        _build(client, None, "empty-kb")
    with pytest.raises(Exception, match="Nothing to index: every upload was refused"):
        _build(client, [handle_file(str(tmp_path / "tool.exe"))], "exe-only")
    assert {p.name for p in (workspace / "indexes").iterdir()} <= {"demo", "kb-test"}
    with pytest.raises(Exception, match="Type a query first"):
        _search(client, str(folder), "  ")
