"""The CLI and the app refuse the same things with the same one line: both go through the Engine, which asks the one
rule (core.limits for names and sizes, Run.check_resumable, core.inference.merge_refusal, the evaluation row limit).

Each case runs the command line in this process (``python -m core ... --json``: exit 2, ``error: <line>``) and the
tab's handler on a confined engine over the same workspace (a gr.Error with ``<line>``), and compares the lines.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from retrieval_helpers import FakeEmbedder, write

from core.cli import main
from core.engine import Engine
from core.runs import RunStore


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    workspace = tmp_path / "ws"
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(workspace))
    return workspace


@pytest.fixture
def app_engine(ws, monkeypatch) -> Engine:
    engine = Engine(ws, confined=True)
    monkeypatch.setattr(engine, "embedder", lambda name=None: FakeEmbedder())
    return engine


def handlers(build) -> dict:
    """A tab's event handlers by api name (what the browser calls)."""
    import gradio as gr

    with gr.Blocks() as demo:
        build()
    return {str(fn.api_name): fn.fn for fn in demo.fns.values() if fn.api_name}


def cli_refusal(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ")


def ui_refusal(handler, *args) -> str:
    import gradio as gr

    with pytest.raises(gr.Error) as caught:
        handler(*args)
    message = caught.value.message
    assert "\n" not in message
    return message


def fake_run(ws: Path, name: str, method: str, state: str, weights: str | None) -> Path:
    """A run folder as training leaves it (config, status, the weights folder of its method), no model needed:
    every refusal below happens before any weights load."""
    run = RunStore(ws / "runs").create({"format": 1, "method": method, "method_config": {}, "data": "d.jsonl"},
                                       ws / "runs" / name)
    if weights:
        (run.path / weights).mkdir()
        (run.path / weights / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    if state != "running":  # create() leaves it running, owned by this (live) process
        run.set_status(state, step=3, total_steps=3)
    return run.path


@pytest.mark.parametrize(("method", "state", "weights", "starts"), [
    ("prompt_tuning", "completed", "adapter", "merge: Prompt tuning learns virtual tokens"),
    ("full", "completed", "model", "merge: full fine-tuning already saved a standalone model"),
    ("lora", "running", None, "merge: r1 is still training"),
    ("lora", "completed", None, "merge: "),  # no weights saved
])
def test_merge_is_refused_alike(ws, app_engine, capsys, method, state, weights, starts):
    fake_run(ws, "r1", method, state, weights)
    from ui.runs import create_runs_tab

    through_cli = cli_refusal(["runs", "--merge", "r1"], capsys)
    through_app = ui_refusal(handlers(lambda: create_runs_tab(app_engine))["merge_run"], "r1")
    assert through_cli == through_app and through_cli.startswith(starts)
    assert not (ws / "exports" / "r1-merged").exists()


def test_merging_a_run_that_is_not_there_is_refused_alike(ws, app_engine, capsys):
    from ui.runs import create_runs_tab

    through_cli = cli_refusal(["runs", "--merge", "nope"], capsys)
    assert through_cli == ui_refusal(handlers(lambda: create_runs_tab(app_engine))["merge_run"], "nope")
    assert through_cli.startswith("run: nope")


@pytest.mark.parametrize("name", ["My Docs", ".hidden", "ü-docs", "x" * 65])
def test_index_names_follow_one_rule(ws, app_engine, tmp_path, capsys, name):
    docs = ws / "uploads" / "documents"
    write(docs / "a.md", "# Alpha\n\nThe pump runs every thirty minutes.\n")
    from ui.knowledge import create_knowledge_tab

    through_cli = cli_refusal(["index", "--docs", str(docs), "--out", str(ws / "indexes" / name)], capsys)
    build = handlers(lambda: create_knowledge_tab(app_engine))["build_index"]
    through_app = ui_refusal(build, None, str(docs), False, name, True, 200, 32, "flat", True, False)
    assert through_cli == through_app and through_cli.startswith("index: ")
    assert sorted(p.name for p in (ws / "indexes").iterdir()) == []


def runs_tree(ws: Path) -> list[str]:
    return sorted(str(path.relative_to(ws)) for path in (ws / "runs").rglob("*")) if (ws / "runs").exists() else []


@pytest.mark.parametrize(("state", "run", "starts"), [
    ("completed", "r1", "resume: run r1 already completed"),
    ("running", "r1", "resume: run r1 is still being trained by process {pid}; stop it first"),
    (None, "nope", "run: nope"),  # no run of that name
    ("not a run", "r1", "run: r1"),  # a folder of runs/ without config.json
])
def test_resume_is_refused_alike(ws, app_engine, capsys, state, run, starts):
    if state == "running":  # trained right now by another live process (this one's parent stands in for it)
        folder = fake_run(ws, "r1", "lora", "completed", "adapter")
        status = json.loads((folder / "status.json").read_text())
        status.update(state="running", owner={"pid": os.getppid(), "host": socket.gethostname()})
        (folder / "status.json").write_text(json.dumps(status))
    elif state == "not a run":
        (ws / "runs" / "r1").mkdir(parents=True)
    elif state is not None:
        fake_run(ws, "r1", "lora", state, "adapter")
    before = runs_tree(ws)
    from ui.train import create_train_tab

    through_cli = cli_refusal(["train", "--resume", run], capsys)
    through_app = ui_refusal(handlers(lambda: create_train_tab(app_engine))["train_resume"], run)
    assert through_cli == through_app and through_cli.startswith(starts.format(pid=os.getppid()))
    assert not app_engine.jobs.snapshot().active
    assert runs_tree(ws) == before  # nothing written under runs/


def test_a_dataset_over_the_size_limit_is_refused_alike(ws, app_engine, tmp_path, capsys):
    from core.limits import MAX_FILE_BYTES
    from ui.train import create_train_tab

    big = tmp_path / "big.jsonl"
    with open(big, "wb") as handle:  # sparse: no 50 MB written
        handle.truncate(MAX_FILE_BYTES + 1)
    through_cli = cli_refusal(["train", "--data", str(big)], capsys)
    through_app = ui_refusal(handlers(lambda: create_train_tab(app_engine))["train_upload"], str(big))
    assert through_cli == through_app == f"big.jsonl: file is {MAX_FILE_BYTES + 1} bytes, over the " \
                                         f"{MAX_FILE_BYTES}-byte limit"
    assert not list((ws / "runs").iterdir()) and not (ws / "uploads" / "datasets" / "big.jsonl").exists()


def evaluate_upload_warning(engine: Engine, path: Path) -> str:
    """The Evaluate tab's upload refuses with a warning (the form stays as it was), not an error: its one line."""
    import warnings

    from ui.evaluate import create_evaluate_tab

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handlers(lambda: create_evaluate_tab(engine))["eval_upload"](str(path))
    shown = [str(warning.message) for warning in caught if str(warning.message).startswith(path.name)]
    assert len(shown) == 1 and "\n" not in shown[0], shown
    return shown[0]


@pytest.mark.parametrize(("name", "content", "line"), [
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n',
     "bad.jsonl line 2: invalid JSON"),
    ("no-answer.csv", "instruction,output\nWhat is 2+2?,\n", "no-answer.csv line 2: "),
])
def test_a_bad_dataset_is_refused_alike_by_the_cli_and_both_uploads(ws, app_engine, tmp_path, capsys, name,
                                                                     content, line):
    from ui.train import create_train_tab

    bad = write(tmp_path / name, content)
    through_cli = cli_refusal(["data", "--data", str(bad)], capsys)
    through_train = ui_refusal(handlers(lambda: create_train_tab(app_engine))["train_upload"], str(bad))
    through_evaluate = evaluate_upload_warning(app_engine, bad)
    assert through_cli == through_train == through_evaluate and through_cli.startswith(line)
    assert not list(app_engine.workspace.uploads.rglob("*.*"))  # nothing stored


def test_a_file_no_dataset_has_is_refused_alike_by_both_uploads(app_engine, tmp_path):
    from ui.train import create_train_tab

    notes = write(tmp_path / "notes.txt", '{"instruction": "a", "output": "b"}\n')
    through_train = ui_refusal(handlers(lambda: create_train_tab(app_engine))["train_upload"], str(notes))
    assert through_train == evaluate_upload_warning(app_engine, notes) == \
        "notes.txt: not a supported file type here; use one of .jsonl, .json, .csv, .tsv"
    assert not list(app_engine.workspace.uploads.rglob("*.*"))


def test_an_evaluation_over_the_row_limit_is_refused_alike(ws, app_engine, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_MAX_EVAL_ROWS", "2")
    rows = [{"instruction": f"question {i}", "output": "answer"} for i in range(3)]
    data = write(tmp_path / "three.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    stored = app_engine.store_upload(data, "datasets")  # the Evaluate tab offers uploaded test sets
    from ui.evaluate import create_evaluate_tab

    through_cli = cli_refusal(["eval", "--data", str(stored), "--variants", "zero_shot"], capsys)
    run = handlers(lambda: create_evaluate_tab(app_engine))["evaluate"]
    through_app = ui_refusal(run, str(stored), None, None, ["zero_shot"], [], None, 3, 3, 16)
    assert through_cli == through_app and through_cli.startswith("data: three.jsonl has 3 examples to evaluate")
    assert app_engine.models.loaded() == []  # refused before any model loads
