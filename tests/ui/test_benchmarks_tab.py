"""Benchmarks tab: a saved benchmark as the summary and the table (pure helpers over a result dict built here), each
run's forgetting in the Runs tab, and the tab's handlers where no model is needed (past results reopened from JSON
written into a temp workspace, the run's progress, stop and refusals through a stand-in for engine.benchmark, a
visitor's view)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from run_helpers import LORA, make_run

from core.engine import Engine
from core.io import write_json
from ui import bench_views as views
from ui import runs as runs_tab
from ui.benchmarks import create_benchmarks_tab

RUN = "demo-quick-lora"
SKIPPED = "20250101-120000-classify-0001"
SUBJECTS = ("tune_arena_knowledge_biology", "tune_arena_knowledge_history")


def _score(value: float, stderr: float | None, metric: str = "acc", n: int = 8) -> dict[str, Any]:
    return {metric: value, "stderr": stderr, "metric": metric, "n": n,
            "metrics": {metric: {"value": value, "stderr": stderr}}}


def _delta(delta: float, low: float, high: float, metric: str = "acc", n: int = 8) -> dict[str, Any]:
    return {"metric": metric, "base": 0.5, "run": 0.5 + delta, "delta": delta, "low": low, "high": high, "p": 0.2,
            "n": n}


def benchmark(benchmark_id: str = "20250105-120000-probe-ab12", run: str = RUN,
              created: str = "2025-01-05T12:00:00") -> dict[str, Any]:
    """A saved benchmark as core.engine.benchmarks writes it: a group (knowledge) then its subtasks, two tasks, the
    base and one run scored, one run skipped."""
    tasks = {"tune_arena_probe": {"base": _score(0.417, 0.072, "contains"), run: _score(0.271, 0.065, "contains")},
             "tune_arena_knowledge": {"base": _score(0.55, 0.05, n=16), run: _score(0.53, 0.05, n=16)},
             SUBJECTS[0]: {"base": _score(0.6, 0.1), run: _score(0.5, 0.1)},
             SUBJECTS[1]: {"base": _score(0.5, 0.1), run: _score(0.56, 0.1)},
             "tune_arena_tickets": {"base": _score(0.25, 0.08), run: _score(0.35, 0.08)}}
    deltas = {run: {"tune_arena_probe": _delta(-0.146, -0.312, 0.0, "contains"),
                    "tune_arena_knowledge": _delta(-0.02, -0.09, 0.05, n=16),
                    SUBJECTS[0]: _delta(-0.1, -0.3, 0.1), SUBJECTS[1]: _delta(0.06, -0.1, 0.2),
                    "tune_arena_tickets": _delta(0.1, 0.02, 0.18)}}
    return {"id": benchmark_id, "path": f"/somewhere/benchmarks/{benchmark_id}.json", "model": "SmolLM2-135M-Instruct",
            "created": created, "tasks": tasks, "deltas": deltas, "groups": {"tune_arena_knowledge": list(SUBJECTS)},
            "models": {"base": {"base_model": "SmolLM2-135M-Instruct"},
                       run: {"method": "lora", "objective": "sft"},
                       SKIPPED: {"method": "lora", "objective": "classification",
                                 "skipped": "a classification head picks one of its labels"}},
            "config": {"tasks": ["tune_arena_probe", "tune_arena_knowledge", "tune_arena_tickets"], "limit": 8,
                       "shots": None, "backend": "hf", "batch_size": 16, "chat_template": True},
            "wall_s": 65.2, "per_model_s": {"base": 30.1, run: 33.0}}


def save(engine: Engine, saved: dict[str, Any]) -> Path:
    path = engine.workspace.benchmarks / f"{saved['id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**saved, "path": str(path)})
    return path


@pytest.fixture
def engine(tmp_path) -> Engine:
    return Engine(tmp_path / "ws", confined=True)


def _tab(engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    with gr.Blocks() as demo:
        parts = create_benchmarks_tab(engine)
    return parts, {fn.fn.__name__: fn.fn for fn in demo.fns.values()}


# --------------------------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------------------------


def test_a_delta_reads_with_its_interval_and_is_marked_only_when_the_interval_excludes_zero():
    assert views.delta_cell(_delta(-0.146, -0.312, 0.0)) == "−0.146 [−0.312, +0.000]"  # touches 0: not marked
    assert views.delta_cell(_delta(-0.146, -0.312, -0.01)) == "−0.146 [−0.312, −0.010] ↓"
    assert views.delta_cell(_delta(0.1, 0.02, 0.18)) == "+0.100 [+0.020, +0.180] ↑"
    assert views.delta_cell(_delta(0.4, 0.1, 0.7, "word_perplexity")) == "+0.400 [+0.100, +0.700] ↓"  # lower is better
    assert views.delta_cell(None) == "—" and views.delta_cell({**_delta(0, 0, 0), "delta": None}) == "—"
    assert views.signed(-0.0001, 3) == "+0.000" and views.signed(-0.0001, 2, zero_sign=False) == "0.00"


def test_the_table_has_a_row_per_task_subtasks_under_their_group_and_a_value_and_delta_per_run():
    headers, rows = views.result_table(benchmark())
    assert headers == ["task", "metric", "n", "base", RUN, f"Δ {RUN}"]  # the skipped run has no column
    table = {row[0].strip("\u00a0· "): dict(zip(headers, row, strict=True)) for row in rows}
    assert [row[0] for row in rows] == ["tune_arena_probe", "tune_arena_knowledge",
                                        *(views.SUBTASK + subject for subject in SUBJECTS), "tune_arena_tickets"]
    probe = table["tune_arena_probe"]
    assert probe == {"task": "tune_arena_probe", "metric": "contains", "n": "8", "base": "0.417 ± 0.072",
                     RUN: "0.271 ± 0.065", f"Δ {RUN}": "−0.146 [−0.312, +0.000]"}
    assert table["tune_arena_tickets"][f"Δ {RUN}"].endswith("↑") and table["tune_arena_knowledge"]["n"] == "16"


def test_a_run_missing_on_a_task_shows_dashes_and_a_base_only_benchmark_has_four_columns():
    saved = benchmark()
    del saved["tasks"]["tune_arena_tickets"][RUN]
    del saved["deltas"][RUN]["tune_arena_tickets"]
    headers, rows = views.result_table(saved)
    assert rows[-1][-2:] == ["—", "—"]
    alone = {**benchmark(), "models": {"base": {}}, "deltas": {},
             "tasks": {"tune_arena_probe": {"base": _score(0.4, None, "contains")}}}
    headers, rows = views.result_table(alone)
    assert headers == views.BASE_HEADERS and rows == [["tune_arena_probe", "contains", "8", "0.400"]]
    assert "choose fine-tuned runs" in views.summary_text(alone)


def test_the_summary_names_model_examples_time_skipped_runs_and_one_sentence_per_run():
    text = views.summary_text(benchmark())
    assert "model `SmolLM2-135M-Instruct`" in text and "at most 8 examples per task" in text
    assert "1m 05s (base 30 s, demo-quick-lora 33 s)" in text
    assert f"Skipped **{SKIPPED}**: a classification head" in text
    sentence = next(line for line in text.split("  \n") if line.startswith(f"{RUN}:"))
    assert sentence == (f"{RUN}: tune_arena_probe −0.15 [−0.31, 0.00] (not significant); tune_arena_knowledge −0.02 "
                        "[−0.09, +0.05] (not significant); tune_arena_tickets +0.10 [+0.02, +0.18] (better)")
    assert "biology" not in text  # a group's subtasks are in the table, not in the sentence
    unlimited = views.summary_text({**benchmark(), "config": {"limit": None}})
    assert "every example of each task" in unlimited


def test_the_offered_tasks_are_the_bundled_top_level_ones_with_readable_labels(engine):
    choices = views.task_choices(engine.benchmark_tasks())
    names = [name for _, name in choices]
    assert sorted(names) == ["tune_arena_knowledge", "tune_arena_probe", "tune_arena_probe_mc", "tune_arena_tickets"]
    labels = dict((name, label) for label, name in choices)
    assert labels["tune_arena_knowledge"] == "General knowledge, 10 subjects (tune_arena_knowledge)"
    assert views.default_tasks(choices) == ["tune_arena_probe", "tune_arena_knowledge", "tune_arena_tickets"]
    rows = [{"name": "mine", "kind": "task", "source": "bundled", "description": "my task: details"},
            {"name": "t", "kind": "tag", "source": "bundled", "tasks": ["mine"]},
            {"name": "other", "kind": "task", "source": "harness", "description": ""}]
    assert views.task_choices(rows) == [("My task (mine)", "mine")]
    assert views.parse_extra(" mmlu, boolq  hellaswag,,mmlu ") == ["mmlu", "boolq", "hellaswag"]


def test_progress_events_read_as_model_stage_and_count():
    event = {"model": RUN, "index": 1, "models": 3, "stage": "generate_until", "done": 12, "total": 48}
    assert views.progress_line(event) == f"Model 2 of 3 ({RUN}) · generating answers · 12/48"
    assert views.progress_line({**event, "stage": "loading", "done": 0, "total": 1}) == \
        f"Model 2 of 3 ({RUN}) · loading the model"


def test_past_results_are_labelled_created_tasks_models():
    row = {"id": "x", "created": "2025-01-05T12:00:00", "tasks": ["tune_arena_probe", "boolq"],
           "models": ["base", RUN]}
    assert views.past_label(row) == f"2025-01-05 12:00:00 · probe, boolq · base, {RUN}"
    assert views.past_choices([row, {"id": "bad", "error": "unreadable bad.json"}]) == [
        (views.past_label(row), "x"), ("bad (unreadable)", "bad")]


# --------------------------------------------------------------------------------------------------------------------
# Forgetting in the Runs tab
# --------------------------------------------------------------------------------------------------------------------


def test_the_runs_table_and_overview_show_a_runs_forgetting_from_the_newest_benchmark(engine):
    make_run(engine.runs.root, LORA)
    save(engine, benchmark("20250101-000000-old-0001", LORA))
    newer = benchmark("20250105-120000-probe-ab12", LORA)
    save(engine, newer)
    rows = {row["run_id"]: row for row in engine.list_runs()}
    shown = dict(zip(runs_tab.COLUMNS, runs_tab.table_rows([rows[LORA]])[0], strict=True))
    assert shown["forgetting"] == "probe −0.15 · knowledge −0.02 · tickets +0.10 ↑"  # subtasks left out
    assert views.forgetting_cell(None) == "—"
    with gr.Blocks() as demo:
        runs_tab.create_runs_tab(engine)
    on_show = next(fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "on_show")
    overview = on_show(LORA, None)[0]
    assert "Forgetting (benchmark `20250105-120000-probe-ab12`" in overview
    assert "tune_arena_probe −0.146 [−0.312, +0.000] · tune_arena_knowledge −0.020 [−0.090, +0.050]" in overview
    assert "tune_arena_tickets +0.100 [+0.020, +0.180] ↑" in overview


# --------------------------------------------------------------------------------------------------------------------
# The tab's handlers
# --------------------------------------------------------------------------------------------------------------------


def test_the_tab_opens_on_the_newest_benchmark_and_reopens_a_past_one(engine):
    save(engine, benchmark("20250101-000000-old-0001", created="2025-01-01T00:00:00"))
    newest = benchmark("20250105-120000-probe-ab12")
    del newest["deltas"][RUN]["tune_arena_tickets"]
    save(engine, newest)
    parts, handlers = _tab(engine)
    assert parts["past"].value == "20250105-120000-probe-ab12"
    assert "**20250105-120000-probe-ab12**" in parts["summary"].value
    ids = [value for _, value in parts["past"].choices]
    assert ids[:2] == ["20250105-120000-probe-ab12", "20250101-000000-old-0001"]
    summary, table, download = handlers["on_open"]("20250101-000000-old-0001", None)
    assert "**20250101-000000-old-0001**" in summary and "2025-01-01 00:00:00" in summary
    assert list(table.columns) == ["task", "metric", "n", "base", RUN, f"Δ {RUN}"]
    assert table.iloc[-1].tolist()[-1] == "+0.100 [+0.020, +0.180] ↑"  # this one has the tickets delta
    workspace = engine.workspace.root.resolve()
    assert not Path(download).resolve().is_relative_to(workspace)  # a copy: no workspace path is served
    assert json.loads(Path(download).read_text(encoding="utf-8"))["id"] == "20250101-000000-old-0001"
    with pytest.raises(gr.Error, match="no saved benchmark"):
        handlers["on_open"]("20991231-000000-none-0000", None)
    with pytest.raises(gr.Error, match="not a benchmark id"):
        handlers["on_open"]("../runs/x", None)


def test_the_demo_run_is_preselected_and_the_refresh_keeps_a_chosen_run(engine):
    engine.install_demo_run()
    parts, handlers = _tab(engine)
    assert [Path(value).name for value in parts["runs"].value] == [RUN]
    assert parts["limit"].value == 50 and parts["extra"].visible is True
    assert parts["tasks"].value == ["tune_arena_probe", "tune_arena_knowledge", "tune_arena_tickets"]
    fn, inputs, outputs = parts["refresh"]
    assert inputs == [parts["runs"]] and outputs == [parts["runs"], parts["past"]]
    save(engine, benchmark())
    runs, past = fn([*parts["runs"].value, "/gone/run"], None)
    assert [Path(value).name for value in runs["value"]] == [RUN]  # a run no longer offered is dropped
    assert [value for _, value in past["choices"]][0] == benchmark()["id"]


def test_a_run_streams_progress_and_a_stop_saves_nothing(engine, monkeypatch):
    parts, handlers = _tab(engine)
    calls: dict[str, Any] = {}
    reached = threading.Event()

    def stand_in(tasks, *, adapters, limit, shots, backend, batch_size, chat_template, on_progress, stop):
        from core.benchmarks import BenchmarkStopped

        calls.update(tasks=tasks, adapters=adapters, limit=limit, shots=shots, backend=backend,
                     batch_size=batch_size, chat_template=chat_template)
        on_progress({"model": "base", "index": 0, "models": 2, "stage": "loglikelihood", "done": 3, "total": 10})
        reached.set()
        assert stop.wait(30)
        raise BenchmarkStopped("benchmark: stopped")

    monkeypatch.setattr(engine, "benchmark", stand_in)
    assert handlers["on_stop"](None) == "No benchmark running."
    steps = handlers["on_run"](["tune_arena_probe"], "boolq, mmlu", [], 0, None, 8, False, "engine", None)
    assert next(steps)[0].startswith("Checking")
    assert next(steps)[0] == "Model 1 of 2 (base) · scoring answer options · 3/10"
    assert reached.is_set() and handlers["on_stop"](None).startswith("Stopping")
    rest = list(steps)
    assert rest[-1][0] == "**Stopped**: nothing saved." and all(isinstance(v, dict) for v in rest[-1][1:])
    assert calls == {"tasks": ["tune_arena_probe", "boolq", "mmlu"], "adapters": [], "limit": None, "shots": None,
                     "backend": "engine", "batch_size": 8, "chat_template": False}
    assert engine.list_benchmarks() == [] or all(row["id"] == "demo-benchmark" for row in engine.list_benchmarks())


def test_a_finished_run_shows_its_result_and_selects_it_in_the_past_results(engine, monkeypatch):
    parts, handlers = _tab(engine)

    def stand_in(tasks, *, on_progress, stop, **settings):
        on_progress({"model": RUN, "index": 1, "models": 2, "stage": "done", "done": 1, "total": 1})
        saved = {**benchmark(), "config": {**benchmark()["config"], "limit": settings["limit"]}}
        save(engine, saved)
        return saved

    monkeypatch.setattr(engine, "benchmark", stand_in)
    steps = list(handlers["on_run"](["tune_arena_probe"], "", [], 8, 0, 16, True, "hf", None))
    status, summary, table, download, past = steps[-1]
    assert status.startswith("**Done** in 1m 05s: saved as `20250105-120000-probe-ab12`")
    assert "at most 8 examples per task" in summary and table.iloc[0, 0] == "tune_arena_probe"
    assert past["value"] == "20250105-120000-probe-ab12"
    assert json.loads(Path(download).read_text(encoding="utf-8"))["tasks"].keys() == benchmark()["tasks"].keys()
    with pytest.raises(gr.Error, match="Choose at least one task"):
        next(handlers["on_run"]([], " ", [], 8, 0, 16, True, "hf", None))


def test_an_engine_refusal_is_one_line_and_a_visitor_has_no_extra_task_box(tmp_path):
    from core.engine.visitors import VisitorSettings
    from ui.visitors import scoped

    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))
    alice, bob = gr.Request(session_hash="alice-browser-secret"), gr.Request(session_hash="bob-browser-secret")
    save(scoped(engine, alice), benchmark())
    parts, handlers = _tab(engine)
    assert parts["extra"].visible is False
    fn, _, _ = parts["refresh"]
    assert benchmark()["id"] in [value for _, value in fn([], alice)[1]["choices"]]
    assert benchmark()["id"] not in [value for _, value in fn([], bob)[1]["choices"]]  # only one's own
    with pytest.raises(gr.Error, match="no saved benchmark"):
        handlers["on_open"](benchmark()["id"], bob)
    with pytest.raises(gr.Error, match="boolq is not bundled"):  # the API can still send one: the engine refuses
        list(handlers["on_run"](["tune_arena_probe"], "boolq", [], 8, None, 16, True, "hf", bob))
