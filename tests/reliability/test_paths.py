"""Names and paths a user hands over never lead out of the workspace.

Uploads: hostile file names (``..``, absolute paths, NUL, very long, unicode look-alikes of ``/``, only dots, Windows
device names), symlinks as sources, a symlinked uploads folder, and two files of the same name. Run, index and eval
names through the Engine, the RunStore and the UI handlers (called directly, as Gradio would call them): ``../x``,
``/etc``, ``a/b``, ``.hidden``, NUL, 300 characters, empty, and symlinks inside the workspace that lead out. Finally
the served app: its file route reads the workspace and nothing else (traversal, URL-encoded and symlinked variants).

Nothing here loads a model: indexes use the fake embedder, runs are plain folders.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import urllib.parse
from pathlib import Path

import pytest
from app_helpers import free_port
from retrieval_helpers import FakeEmbedder, words, write

from core.engine import Engine
from core.engine.uploads import MAX_NAME_CHARS, UploadError, list_uploads, safe_name, store_upload
from core.limits import check_name
from core.runs import RunStore
from retrieval import build_index

ROOT = Path(__file__).resolve().parents[2]
SECRET = "top-secret-3f9c1e"  # the content of every file the app must not hand out

BAD_NAMES = ["../x", "..", ".", "/etc", "/", "a/b", "a\\b", ".hidden", "a\x00b", "x" * 300, "", " x", "x\n",
             "~/.ssh", "..\\..\\x", "runs/../../x"]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---- uploads ---------------------------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../../etc/passwd.md", "/etc/passwd.md", "..\\..\\windows\\win.ini.txt", "C:\\Users\\me\\data.md",
    "a\x00b.md", "evil.md\x00.exe", "x" * 5000 + ".md", "a." + "x" * 500, "...", ".", "..", "....md", ".md",
    "CON.md", "con.txt", "NUL.csv", "lpt1.md", "Com9.backup.md", "ünïcödé.md", "数据.jsonl",
    "..\uff0f..\uff0fetc\uff0fpasswd.md", "a\u2215b.md", "\u202egnp.md", "a\nb.md", " spaced .md", "-rf.md",
    "$(rm -rf ~).md", "a;b|c&d.md", "%2e%2e%2fetc.md", "~/.ssh/id_rsa.md", "\x00", "", "report.md.",
    "report.MD", "re\u0301sume\u0301.txt", "\t.txt",
]
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_names_are_one_plain_ascii_component(name):
    cleaned = safe_name(name)
    assert SAFE.fullmatch(cleaned), cleaned
    assert len(cleaned) <= MAX_NAME_CHARS and ".." not in cleaned.split(".")[0]
    assert cleaned.split(".")[0].lower() not in {"con", "prn", "aux", "nul", "com9", "lpt1"}
    assert Path(cleaned).name == cleaned and not cleaned.endswith(".")


@pytest.mark.parametrize(("name", "expected"), [
    ("..\uff0f..\uff0fetc\uff0fpasswd.md", "passwd.md"),  # full-width solidus folds to "/" before the split
    ("a." + "x" * 500, "a." + "x" * 98),  # a 500-character "extension" is no extension (so no file type)
    ("CON.md", "CON_.md"), ("lpt1.md", "lpt1_.md"), ("Com9.backup.md", "Com9_.backup.md"),
    ("evil.md\x00.exe", "evil.md.exe"), ("....md", "file.md"), ("\x00", "file"),
    ("re\u0301sume\u0301.txt", "resume.txt"),
])
def test_safe_name_cases(name, expected):
    assert safe_name(name) == expected


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_stored_inside_the_kind_folder_or_refused(tmp_path, name):
    source = write(tmp_path / "incoming" / "upload-1", "# A note\n\nPlain text.\n")
    uploads = tmp_path / "ws" / "uploads"
    before = _tree(tmp_path)
    try:
        stored = store_upload(uploads, source, "documents", name=name)
    except UploadError as err:
        assert "not a supported file type" in str(err) and "\n" not in str(err)
        assert _tree(tmp_path) - before <= {"ws", "ws/uploads", "ws/uploads/documents"}  # nothing stored
        return
    assert stored.parent == uploads / "documents" and stored.name == safe_name(name)
    assert stored.read_text() == source.read_text()
    kinds = {"ws", "ws/uploads", "ws/uploads/documents"}
    assert _tree(tmp_path) - before == kinds | {f"ws/uploads/documents/{stored.name}"}


def test_a_symlink_is_not_an_upload(tmp_path):
    secret = write(tmp_path / "secret.md", SECRET)
    link = tmp_path / "incoming.md"
    link.symlink_to(secret)
    with pytest.raises(UploadError, match=r"^incoming.md: is a symbolic link"):
        store_upload(tmp_path / "uploads", link, "documents")
    assert list_uploads(tmp_path / "uploads", "documents") == []


def test_a_folder_or_a_fifo_is_not_an_upload(tmp_path):
    (tmp_path / "folder.md").mkdir()
    with pytest.raises(UploadError, match="folder.md: not a regular file"):
        store_upload(tmp_path / "uploads", tmp_path / "folder.md", "documents")
    os.mkfifo(tmp_path / "pipe.md")  # reading it would block forever
    with pytest.raises(UploadError, match="pipe.md: not a regular file"):
        store_upload(tmp_path / "uploads", tmp_path / "pipe.md", "documents")


def test_the_size_limit_is_exact(tmp_path):
    at = write(tmp_path / "at.md", b"x" * 1000)
    over = write(tmp_path / "over.md", b"x" * 1001)
    assert store_upload(tmp_path / "uploads", at, "documents", max_bytes=1000).stat().st_size == 1000
    with pytest.raises(UploadError, match="^over.md: 1001 bytes, over the 1000-byte limit for an upload$"):
        store_upload(tmp_path / "uploads", over, "documents", max_bytes=1000)
    assert [p.name for p in list_uploads(tmp_path / "uploads", "documents")] == ["at.md"]


def test_a_symlinked_uploads_folder_is_not_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "documents").symlink_to(outside)
    source = write(tmp_path / "a.md", "text")
    with pytest.raises(UploadError, match="leads out of"):
        store_upload(tmp_path / "uploads", source, "documents")
    assert list(outside.iterdir()) == []


def test_a_stored_symlink_of_the_same_name_is_never_written_through(tmp_path):
    secret = write(tmp_path / "secret.md", SECRET)
    folder = tmp_path / "uploads" / "documents"
    folder.mkdir(parents=True)
    (folder / "report.md").symlink_to(secret)
    stored = store_upload(tmp_path / "uploads", write(tmp_path / "new.md", "new text"), "documents", name="report.md")
    assert stored == folder / "report-2.md" and stored.read_text() == "new text"
    assert secret.read_text() == SECRET


def test_two_documents_of_the_same_name_are_both_kept(tmp_path):
    uploads = tmp_path / "uploads"
    first = store_upload(uploads, write(tmp_path / "a" / "report.md", "first"), "documents")
    again = store_upload(uploads, write(tmp_path / "b" / "report.md", "first"), "documents")
    second = store_upload(uploads, write(tmp_path / "c" / "report.md", "second"), "documents")
    third = store_upload(uploads, write(tmp_path / "d" / "report.md", "third"), "documents")
    assert again == first  # the same file uploaded twice is stored once
    assert [p.name for p in (first, second, third)] == ["report.md", "report-2.md", "report-3.md"]
    assert [p.read_text() for p in (first, second, third)] == ["first", "second", "third"]
    assert sorted(p.name for p in (uploads / "documents").iterdir()) == ["report-2.md", "report-3.md", "report.md"]
    replaced = store_upload(uploads, write(tmp_path / "e" / "report.md", "fourth"), "documents", replace=True)
    assert replaced == first and first.read_text() == "fourth"


def test_numbered_copies_of_a_long_name_stay_within_the_limit(tmp_path):
    name = "n" * 300 + ".md"
    stored = [store_upload(tmp_path / "u", write(tmp_path / f"s{i}", f"v{i}"), "documents", name=name)
              for i in range(3)]
    assert [len(p.name) for p in stored] == [MAX_NAME_CHARS] * 3
    assert [p.name[-5:] for p in stored] == ["nn.md", "-2.md", "-3.md"]


def test_concurrent_uploads_of_one_name_lose_nothing(tmp_path):
    sources = [write(tmp_path / f"src{i}", f"version {i}") for i in range(8)]
    stored: list[Path] = []
    lock = threading.Lock()

    def upload(source: Path) -> None:
        path = store_upload(tmp_path / "uploads", source, "documents", name="same.md")
        with lock:
            stored.append(path)

    threads = [threading.Thread(target=upload, args=(source,)) for source in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(stored)) == 8
    assert sorted(p.read_text() for p in stored) == [f"version {i}" for i in range(8)]
    assert len(list((tmp_path / "uploads" / "documents").iterdir())) == 8  # no temporary file left


# ---- names of runs, indexes and evaluations -------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses_in_one_line(name):
    with pytest.raises(ValueError) as caught:
        check_name(name, "index")
    message = str(caught.value)
    assert message.startswith("index: ") and "\n" not in message and len(message) < 200


@pytest.mark.parametrize("name", ["demo", "20261130-125042-lora-49fd", "kb_2", "v1.2", "a..b", "x" * 64])
def test_check_name_keeps_plain_names(name):
    assert check_name(name, "index") == name


@pytest.mark.parametrize("name", ["My Docs", "ü-docs", "a:b", "x" * 65])
def test_check_name_is_one_rule_of_64_plain_characters(name):
    """Spaces, non-ASCII letters and punctuation other than _ - . are refused, as is a 65th character: the rule the
    CLI and every tab share (it was 128 of almost anything in the engine and 64 of [A-Za-z0-9_.-] in one tab)."""
    with pytest.raises(ValueError, match=r"^index: .*(not a plain name|longer than 64 characters)"):
        check_name(name, "index")


def _fake_index(folder: Path, docs: Path) -> Path:
    write(docs / "a.md", f"# Alpha\n\n{SECRET} " + words(40))
    build_index([docs], folder, FakeEmbedder())
    return folder


def _fake_run(folder: Path) -> Path:
    write(folder / "config.json", json.dumps({"method": "lora", "data": "x.jsonl"}))
    write(folder / "status.json", json.dumps({"state": "completed"}))
    return folder


@pytest.fixture
def outside(tmp_path) -> dict[str, Path]:
    """A valid index and a run folder beside the workspace, and links to them from inside it."""
    ws = tmp_path / "ws"
    engine = Engine(ws)
    found = {"index": _fake_index(tmp_path / "elsewhere" / "kb", tmp_path / "elsewhere" / "docs"),
             "run": _fake_run(tmp_path / "elsewhere" / "run")}
    (engine.workspace.indexes / "linked").symlink_to(found["index"])
    (engine.workspace.runs / "linked").symlink_to(found["run"])
    (engine.workspace.evals / "linked").symlink_to(tmp_path / "elsewhere")
    write(tmp_path / "elsewhere" / "results.json", json.dumps({"data": SECRET, "n": 1, "summary": {}}))
    return found


@pytest.fixture
def confined(tmp_path, outside, monkeypatch) -> Engine:
    """The app's kind of engine over ``tmp_path/ws``, its embedding model replaced by the fake."""
    engine = Engine(tmp_path / "ws", confined=True)
    monkeypatch.setattr(engine, "embedder", lambda name=None: FakeEmbedder())
    return engine


@pytest.mark.parametrize("name", BAD_NAMES)
def test_index_dir_takes_only_names(tmp_path, name):
    engine = Engine(tmp_path / "ws")
    with pytest.raises(ValueError, match="^index: "):
        engine.index_dir(name)


def test_a_confined_engine_opens_only_its_own_indexes(tmp_path, outside, confined):
    refs = [str(outside["index"]), f"{confined.workspace.indexes}/../../elsewhere/kb", "linked",
            str(confined.workspace.indexes / "linked"), *BAD_NAMES]
    for ref in refs:
        with pytest.raises(ValueError, match="^index: ") as caught:
            confined.knowledge_base(ref)
        assert "\n" not in str(caught.value), ref
        with pytest.raises(ValueError, match="^index: "):
            confined.build_index([str(tmp_path / "elsewhere" / "docs")], ref)
    assert sorted(p.name for p in confined.workspace.indexes.iterdir()) == ["linked"]
    assert [row["name"] for row in confined.list_indexes()] == []  # the link is not offered either
    # its own index, by name or by its folder
    _fake_index(confined.workspace.indexes / "mine", tmp_path / "docs")
    assert SECRET in confined.knowledge_base("mine").search(SECRET, 1)[0].chunk.text
    assert confined.knowledge_base(str(confined.workspace.indexes / "mine")).folder.name == "mine"


def test_an_unconfined_engine_takes_explicit_paths_and_strict_names(tmp_path, outside, monkeypatch):
    engine = Engine(tmp_path / "ws")
    monkeypatch.setattr(engine, "embedder", lambda name=None: FakeEmbedder())
    assert engine.knowledge_base(str(outside["index"])).folder == outside["index"]  # the CLI's --index DIR
    assert engine.resolve_index("linked") == engine.workspace.indexes / "linked"
    for name in (".hidden", "a\x00b", "x" * 300, ""):
        with pytest.raises(ValueError, match="^index: "):
            engine.knowledge_base(name)


def test_the_run_store_gives_only_its_own_runs(tmp_path, outside):
    store = RunStore(tmp_path / "ws" / "runs")
    _fake_run(store.root / "mine")
    assert store.get("mine").path == store.root / "mine"
    assert store.get(store.root / "mine").path == store.root / "mine"
    refs = [str(outside["run"]), f"{store.root}/../../elsewhere/run", "linked", "../elsewhere/run", *BAD_NAMES]
    for ref in refs:
        with pytest.raises(ValueError, match="^run: ") as caught:
            store.get(ref)
        assert "\n" not in str(caught.value)
        with pytest.raises(ValueError, match="^run: "):
            store.delete(ref)
    assert (outside["run"] / "config.json").is_file()


def test_engine_runs_by_name_and_paths_only_unconfined(tmp_path, outside, confined):
    for ref in (str(outside["run"]), "linked", "../elsewhere/run", *BAD_NAMES):
        with pytest.raises(ValueError, match="^run: "):
            confined.resolve_run(ref)
        with pytest.raises(ValueError, match="^run: "):
            confined.resume(ref)
    assert Engine(tmp_path / "ws").resolve_run(str(outside["run"])) == outside["run"]  # the CLI's --adapter DIR


def test_eval_output_stays_in_evals_for_a_confined_engine(tmp_path, confined):
    data = write(tmp_path / "test.jsonl", json.dumps({"instruction": "Q?", "output": "A."}) + "\n")
    before = _tree(tmp_path)
    for out in ("../x", "/tmp/x", "a/b", ".hidden", "a\x00b", "x" * 300, str(tmp_path / "elsewhere"), "linked"):
        with pytest.raises(ValueError, match="^eval: "):
            confined.evaluate(data, out=out)
    assert _tree(tmp_path) == before
    assert confined.eval_dir("mine") == confined.workspace.evals / "mine"
    assert [row["name"] for row in confined.list_evals()] == []  # the linked folder's results are not listed


def test_the_arena_refuses_other_folders_before_loading_a_model(tmp_path, outside, confined):
    from core.arena import ArenaConfig

    for config in (ArenaConfig(variants=["rag"], index=str(outside["index"])),
                   ArenaConfig(variants=["finetuned"], adapters=[str(outside["run"])]),
                   ArenaConfig(variants=["finetuned"], adapters=["linked"])):
        with pytest.raises(ValueError, match="^(index|run): "):
            confined.arena("What?", config)
    assert confined.models.loaded() == []


# ---- the UI handlers, called directly --------------------------------------------------------------------------------


def _handlers(build) -> dict[str, object]:
    """Every event handler of the tab ``build()`` lays out, by api name and by function name."""
    import gradio as gr

    with gr.Blocks() as demo:
        build()
    found: dict[str, object] = {}
    for block_fn in demo.fns.values():
        found[block_fn.fn.__name__] = block_fn.fn
        if block_fn.api_name:
            found[str(block_fn.api_name)] = block_fn.fn
    return found


def test_knowledge_tab_handlers_stay_in_the_workspace(tmp_path, outside, confined):
    import gradio as gr

    from ui.knowledge import create_knowledge_tab

    handlers = _handlers(lambda: create_knowledge_tab(confined))
    for ref in (str(outside["index"]), f"{confined.workspace.indexes}/../../elsewhere/kb", "linked", "../x",
                "a\x00b", "x" * 300):
        with pytest.raises(gr.Error) as caught:
            handlers["search_index"](ref, SECRET, 3, True, False, 0.5)
        assert caught.value.message.startswith("index: ") and "\n" not in caught.value.message
        with pytest.raises(gr.Error):
            handlers["describe"](ref)
    for name in ("../escape", "/tmp/escape-kb", ".hidden", "a\x00b", "x" * 300):
        with pytest.raises(gr.Error) as caught:
            handlers["build_index"](None, str(tmp_path / "elsewhere" / "docs"), False, name, True, 200, 32, "flat",
                                    True, False)
        assert caught.value.message.startswith("index: ")
    assert not Path("/tmp/escape-kb").exists() and not (tmp_path / "escape").exists()


def test_evaluate_tab_handlers_stay_in_the_workspace(tmp_path, outside, confined):
    import gradio as gr

    from core.data import demo_path
    from ui.evaluate import create_evaluate_tab

    handlers = _handlers(lambda: create_evaluate_tab(confined))
    data = str(demo_path("test.jsonl"))
    for variants, adapters, index in ((["rag"], [], str(outside["index"])), (["rag"], [], "../../elsewhere/kb"),
                                      (["finetuned"], [str(outside["run"])], None), (["finetuned"], ["linked"], None)):
        with pytest.raises(gr.Error) as caught:
            handlers["evaluate"](data, [], 1, variants, adapters, index, 0, 3, 8)
        assert re.match(r"(index|run): .* is not a (folder|run) ", caught.value.message), caught.value.message
    with pytest.raises(gr.Error, match="No saved evaluation"):
        handlers["open_eval"](str(tmp_path / "elsewhere"))
    assert confined.models.loaded() == [] and list(confined.workspace.evals.iterdir()) == [
        confined.workspace.evals / "linked"]


def test_train_tab_resumes_only_runs_of_the_workspace(tmp_path, outside, confined):
    import gradio as gr

    from ui.train import create_train_tab

    handlers = _handlers(lambda: create_train_tab(confined))
    for ref in (str(outside["run"]), "linked", "../elsewhere/run", "/etc", "a\x00b", "x" * 300):
        with pytest.raises(gr.Error) as caught:
            handlers["train_resume"](ref)
        assert caught.value.message.startswith("run: ") and "\n" not in caught.value.message
    assert not confined.jobs.snapshot().active
    assert sorted(p.name for p in outside["run"].iterdir()) == ["config.json", "status.json"]


def test_runs_tab_never_deletes_or_merges_through_a_link(tmp_path, outside, confined):
    import gradio as gr

    from ui.runs import create_runs_tab

    handlers = _handlers(lambda: create_runs_tab(confined))
    for ref in ("linked", "../elsewhere/run", str(outside["run"]), "a\x00b", "x" * 300):
        for name, args in (("delete_run", (ref, True)), ("merge_run", (ref,))):
            with pytest.raises(gr.Error) as caught:
                handlers[name](*args)
            assert caught.value.message.startswith("run: ") and "\n" not in caught.value.message
    assert (outside["run"] / "config.json").is_file()


# ---- the served app's file route -----------------------------------------------------------------------------------


def _get(port: int, raw_path: str) -> tuple[int, bytes]:
    """GET ``raw_path`` exactly as written (no client-side normalisation of ``..`` or escapes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", raw_path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app as ``python app.py`` configures it (build_app + launch_options), over a temporary workspace, without
    the warm-up (nothing loads a model)."""
    from app import build_app, launch_options

    base = tmp_path_factory.mktemp("served")
    engine = Engine(base / "ws")
    demo = build_app(engine)
    options = {**launch_options(engine), "server_port": free_port(), "server_name": "127.0.0.1"}
    demo.launch(prevent_thread_lock=True, quiet=True, **options)
    try:
        yield base, engine, options["server_port"]
    finally:
        demo.close()


def test_the_app_serves_only_files_of_its_workspace(served):
    base, engine, port = served
    assert engine.confined  # build_app confines the engine it serves
    secret = write(base / "secret.txt", SECRET)
    report = write(engine.workspace.evals / "e1" / "report.md", "# Report\n\nserved\n")
    (engine.workspace.uploads / "documents").mkdir(parents=True, exist_ok=True)
    (engine.workspace.uploads / "documents" / "link.md").symlink_to(secret)
    ws = str(engine.workspace.root.resolve())

    status, body = _get(port, f"/gradio_api/file={report.resolve()}")
    assert status == 200 and body == report.read_bytes()  # the workspace is served

    quote = urllib.parse.quote
    attacks = [
        str(secret), "/etc/passwd", str(ROOT / "app.py"), str(ROOT / "core" / "engine.py"), "/proc/self/environ",
        f"{ws}/../secret.txt", f"{ws}/evals/../../secret.txt", f"{ws}/uploads/documents/link.md",
        quote(str(secret), safe=""), quote(f"{ws}/../secret.txt", safe=""), f"{ws}/%2e%2e/secret.txt",
        f"{ws}%2F..%2Fsecret.txt", f"{ws}/%252e%252e/secret.txt", quote(quote(f"{ws}/../secret.txt", safe=""), safe=""),
        f"{ws}/..%5csecret.txt", f"{ws}\\..\\secret.txt", "../secret.txt", "app.py", "./app.py", "~/.bashrc",
        f"{ws}/../secret.txt%00.md", f"{ws}//..//secret.txt", f"{ws}/./../secret.txt",
        f"file://{secret}", f"{ws}/evals/e1/report.md/../../../secret.txt",
    ]
    for attack in attacks:
        status, body = _get(port, f"/gradio_api/file={attack}")
        assert status in (400, 403, 404), (attack, status)
        assert SECRET.encode() not in body and b"root:" not in body and b"def build_app" not in body, attack
    status, body = _get(port, f"/gradio_api/file={ws}/evals/e1/../e1/report.md")  # dots that stay inside: fine
    assert status == 200 and body == report.read_bytes()


def test_a_confined_engine_indexes_only_documents_it_may_read(tmp_path, confined, monkeypatch):
    """Typed server paths in the Knowledge base tab: a remote user cannot index (and then search) files elsewhere."""
    elsewhere = tmp_path / "elsewhere" / "docs"  # holds SECRET (the outside fixture wrote it)
    inside = confined.workspace.root / "uploads" / "documents"
    write(inside / "b.md", "# Beta\n\n" + words(40))
    (inside / "link").symlink_to(elsewhere)
    for ref in (elsewhere, elsewhere / "a.md", inside / "link", inside / ".." / ".." / ".." / "elsewhere" / "docs"):
        with pytest.raises(ValueError, match="^documents: .* outside the folders this app may read") as caught:
            confined.build_index([inside / "b.md", ref], "mine")
        assert "\n" not in str(caught.value)
        assert not (confined.workspace.indexes / "mine").exists()  # refused before anything was written
    confined.build_index([inside / "b.md"], "mine")  # its own uploads
    assert confined.knowledge_base("mine").search("Beta", 1)
    monkeypatch.setenv("TUNE_ARENA_DOC_ROOTS", str(elsewhere))  # what the person running the app chose to share
    confined.build_index([elsewhere], "shared")
    assert SECRET in confined.knowledge_base("shared").search(SECRET, 1)[0].chunk.text
    unconfined = Engine(confined.workspace.root)
    assert unconfined.check_sources([elsewhere]) == [elsewhere]  # the CLI and Python API read any path
