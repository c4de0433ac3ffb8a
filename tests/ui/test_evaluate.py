"""Evaluate tab: its formatting functions on fixed results, and one tiny real evaluation through gradio_client."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import pytest

from core.arena.evals import summarise
from core.data import demo_path
from ui.evaluate import (
    build_config,
    dataset_choices,
    describe_test_set,
    download_paths,
    example_choices,
    examples_table,
    format_interval,
    lead_line,
    load_test_set,
    plan_text,
    render_example,
    status_line,
    summary_table,
)

INTERVAL = re.compile(r"^\d\.\d{2} \[\d\.\d{2}, \d\.\d{2}\]$")


def _row(uid: str, task: str, variant: str, answer: str, metrics: dict | None, *, available: bool = True,
         error: str | None = None) -> dict:
    """One row as results.json holds it (core.arena.evals._row: VariantResult.to_dict plus the example's fields)."""
    return {"variant": variant, "strategy": variant, "adapter": None, "available": available, "error": error,
            "answer": answer if available else "", "new_tokens": 5 if available else 0, "prompt_tokens": 40,
            "generate_s": 0.5 if available else None, "metrics": metrics or {}, "id": uid, "task": task,
            "instruction": f"Question {uid}?", "input": "", "reference": f"Reference <b>{uid}</b> & more",
            "sources": ["assets/demo/corpus/error-codes.md"] if variant == "rag" and available else []}


def _qa(rouge: float, f1: float) -> dict:
    return {"rougeL": rouge, "bleu": rouge / 2, "token_f1": f1, "similarity": 0.5, "accuracy": None}


@pytest.fixture
def saved() -> dict:
    """A results.json-like dict: 3 examples (2 qa, 1 classification) x zero_shot, rag and an unavailable finetuned;
    its summary comes from the engine's own summarise over these rows."""
    why = "no fine-tuned run chosen (train one, or pass --adapter RUN_DIR)"
    rows = [
        _row("q1", "qa", "zero_shot", "No idea.", _qa(0.1, 0.2)),
        _row("q1", "qa", "rag", "E15 <script>alert(1)</script> means jammed", _qa(0.7, 0.8)),
        _row("q1", "qa", "finetuned", "", None, available=False, error=why),
        _row("q2", "qa", "zero_shot", "Maybe.", _qa(0.3, 0.3)),
        _row("q2", "qa", "rag", "Yes.", _qa(0.5, 0.6)),
        _row("q2", "qa", "finetuned", "", None, available=False, error=why),
        _row("c1", "classification", "zero_shot", "billing", {**_qa(0.0, 0.0), "accuracy": 0.0}),
        _row("c1", "classification", "rag", "technical", {**_qa(1.0, 1.0), "accuracy": 1.0}),
        _row("c1", "classification", "finetuned", "", None, available=False, error=why),
    ]
    by_task = summarise(rows, n_resamples=200)
    return {"data": "/somewhere/test.jsonl", "n": 3, "wall_s": 12.3, "by_task": by_task, "rows": rows,
            "summary": {v: {m: s["mean"] for m, s in t["all"].items()} for v, t in by_task.items()}}


def test_format_interval():
    assert format_interval({"mean": 0.41234, "low": 0.3, "high": 0.525, "n": 4}) == "0.412 [0.300, 0.525]"
    assert format_interval({"mean": 0.5, "low": None, "high": None}) == "0.500"
    assert format_interval(None) == "—" and format_interval({"mean": None}) == "—"


def test_summary_table_has_every_task_and_variant_with_intervals(saved):
    headers, rows = summary_table(saved)
    assert headers[:3] == ["task", "variant", "n"] and headers[-1] == "s / answer"
    assert {"ROUGE-L", "BLEU", "token F1", "similarity", "accuracy"} <= set(headers)  # core.arena.metrics names
    assert "contains" not in headers  # measured nowhere in these rows
    table = {(row[0], row[1]): dict(zip(headers, row, strict=True)) for row in rows}
    # "all" first, then the tasks by name; the unavailable variant keeps one row saying why
    assert [row[0] for row in rows] == ["all"] * 3 + ["classification"] * 2 + ["qa"] * 2
    assert table[("all", "finetuned")]["n"] == "0"
    assert table[("all", "finetuned")]["s / answer"].startswith("unavailable: no fine-tuned run chosen")
    assert ("qa", "finetuned") not in table
    rag = table[("all", "rag")]
    assert rag["n"] == "3"
    stats = saved["by_task"]["rag"]["all"]["rougeL"]
    assert rag["ROUGE-L"] == format_interval(stats, 2) and INTERVAL.match(rag["ROUGE-L"])
    assert stats["mean"] == pytest.approx((0.7 + 0.5 + 1.0) / 3) and stats["low"] <= stats["mean"] <= stats["high"]
    assert rag["s / answer"] == "0.50"
    # accuracy applies to classification only
    assert table[("qa", "rag")]["accuracy"] == "—"
    assert table[("classification", "rag")]["accuracy"] == "1.00 [1.00, 1.00]"
    assert table[("qa", "zero_shot")]["n"] == "2"


def test_lead_line_names_the_leader_and_whether_intervals_separate(saved):
    line = lead_line(saved)
    # rag's lowest resampled mean (>= 0.5) is above zero_shot's highest (<= 0.3)
    assert line == "Best ROUGE-L: **rag** 0.733, ahead of zero_shot (0.133) beyond the 95% intervals."
    close = {"by_task": {"a": {"all": {"rougeL": {"mean": 0.5, "low": 0.3, "high": 0.7, "n": 5}}},
                         "b": {"all": {"rougeL": {"mean": 0.4, "low": 0.2, "high": 0.6, "n": 5}}}}}
    assert lead_line(close).endswith("ahead of b (0.400) but within the 95% intervals (more rows would tell).")
    accuracy_only = {"by_task": {"a": {"all": {"accuracy": {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 2}}}}}
    assert lead_line(accuracy_only) == "Best accuracy: **a** 1.000."
    assert lead_line({"by_task": {}}) == "No scores: no variant answered."
    status = status_line(saved, "/ws/evals/20250101-000000-test-abcd")
    assert status.startswith("**20250101-000000-test-abcd**: 3 rows of `test.jsonl` × 3 variants in 12 s.")


def test_example_choices_and_overview_keep_test_set_order(saved):
    choices = example_choices(saved["rows"])
    assert [value for _, value in choices] == ["q1", "q2", "c1"]
    assert choices[2][0] == "c1 · classification · Question c1?"
    headers, rows = examples_table(saved)
    assert headers == ["id", "task", "score", "instruction", "zero_shot", "rag", "finetuned"]
    assert rows[0] == ["q1", "qa", "ROUGE-L", "Question q1?", "0.10", "0.70", "—"]
    assert rows[2][:3] == ["c1", "classification", "accuracy"] and rows[2][4:] == ["0.00", "1.00", "—"]


def test_render_example_escapes_and_shows_every_variant(saved):
    page = render_example(saved["rows"], "q1")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Reference &lt;b&gt;q1&lt;/b&gt; &amp; more" in page
    assert all(f"<b>{variant}</b>" in page for variant in ("zero_shot", "rag", "finetuned"))
    assert page.count("<tr") == 4  # header + one row per variant
    assert "Unavailable: no fine-tuned run chosen" in page
    assert "No idea." in page and "sources: error-codes.md" in page
    # the best ROUGE-L (rag's 0.70) is the highlighted one
    assert "ta-best'>ROUGE-L 0.70" in page and "ta-best'>ROUGE-L 0.10" not in page
    assert "q2" not in page
    assert "Pick an example" in render_example(saved["rows"], None)
    assert "Pick an example" in render_example(saved["rows"], "missing")


def test_test_sets_on_offer_and_uploads(tmp_path):
    from core.engine import Engine

    engine = Engine(tmp_path / "ws")
    values = [value for _, value in dataset_choices(engine)]
    assert values == [str(demo_path("test.jsonl")), str(demo_path("forgetting_probe.jsonl"))]
    assert "100 rows" in dataset_choices(engine)[0][0]
    info = describe_test_set(load_test_set(demo_path("test.jsonl")))
    assert info.startswith("**100 rows**") and "qa 45" in info and "classification 30" in info

    bad = tmp_path / "my set.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"^my set\.jsonl line 2: invalid JSON"):
        engine.store_dataset(bad, "test")
    # the Train tab's message too (core.engine.uploads): one rule for a dataset's file types
    with pytest.raises(ValueError, match=r"^notes\.txt: not a supported file type here; use one of \.jsonl, "):
        engine.store_dataset(tmp_path / "notes.txt", "test")
    pairs = tmp_path / "pairs.jsonl"  # preference pairs train the dpo objective but have no reference answer
    pairs.write_text('{"prompt": "p", "chosen": "yes", "rejected": "no"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"^pairs\.jsonl line 1: "):
        engine.store_dataset(pairs, "test")
    assert len(dataset_choices(engine)) == 2  # nothing bad was stored

    good = tmp_path / "upload-temp"
    good.mkdir()
    (good / "mine.csv").write_text("instruction,output,task\nWhat is 2+2?,4,math\nCapital of Peru?,Lima,geo\n",
                                   encoding="utf-8")
    stored = engine.store_dataset(good / "mine.csv", "test")
    assert stored.parent == engine.workspace.uploads / "datasets" and stored.read_text().startswith("instruction")
    assert dataset_choices(engine)[-1] == ("Uploaded: mine.csv", str(stored))
    assert "**2 rows**" in describe_test_set(load_test_set(stored))


def test_build_config_and_plan():
    with pytest.raises(ValueError, match="variants: choose at least one"):
        build_config([], [], "demo", 3, 3, 64)
    with pytest.raises(ValueError, match="rag_k"):
        build_config(["rag"], [], "demo", 3, 0, 64)
    config = build_config(["zero_shot", "finetuned"], ["runs/a", "runs/b"], "demo", 2.0, 4.0, 16.0)
    assert [spec.name for spec in config.specs()] == ["zero_shot", "finetuned@a", "finetuned@b"]
    assert (config.few_shot_k, config.rag_k, config.generation.max_new_tokens) == (2, 4, 16)
    assert config.generation.temperature == 0.0
    path = str(demo_path("test.jsonl"))
    assert plan_text(path, [], 20, ["zero_shot", "rag"], [], 64).startswith("Will generate **40 answers** (20 rows")
    assert "(30 rows × 1 variants)" in plan_text(path, ["classification"], None, ["rag"], [], 8)
    assert plan_text(path, [], 20, [], [], 64) == ""


def test_download_paths_outside_cwd_and_temp_are_copied(tmp_path, monkeypatch):
    folder = tmp_path / "evals" / "e1"
    folder.mkdir(parents=True)
    for name in ("results.json", "examples.csv", "report.md"):
        (folder / name).write_text(name, encoding="utf-8")
    assert [Path(p).name for p in download_paths(folder)] == ["examples.csv", "results.json", "report.md"]
    assert download_paths(folder)[0] == str((folder / "examples.csv").resolve())  # under the temp dir: as is
    elsewhere = tmp_path / "other-temp"
    elsewhere.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(elsewhere))
    monkeypatch.chdir(elsewhere)
    copied = download_paths(folder)
    assert all(Path(p).is_relative_to(elsewhere) for p in copied)
    assert [Path(p).read_text() for p in copied] == ["examples.csv", "results.json", "report.md"]
    # under a workspace the app serves (its allowed_paths): as is, no copy left behind in the temp dir
    assert download_paths(folder, [tmp_path / "evals"]) == [str((folder / name).resolve())
                                                            for name in ("examples.csv", "results.json", "report.md")]


def test_building_the_tab_loads_no_model(tmp_path):
    import gradio as gr

    from core.engine import Engine
    from ui.evaluate import create_evaluate_tab

    engine = Engine(tmp_path / "ws")
    with gr.Blocks():
        parts = create_evaluate_tab(engine)
    assert engine.models.loaded() == []
    assert {"data", "variants", "adapter", "index", "run", "summary", "chart", "pick", "drill", "downloads",
            "past"} <= set(parts)
    assert parts["data"].value == str(demo_path("test.jsonl"))


@pytest.mark.integration
def test_evaluate_through_gradio_client(live_app):
    from gradio_client import Client

    client = Client(live_app, verbose=False)
    data = str(demo_path("test.jsonl"))
    status, report, verdict, details, summary, chart, downloads, comparisons, overview, pick, drill, past = \
        client.predict(data, [], 2, ["zero_shot", "rag"], [], "demo", 3, 3, 8, api_name="/evaluate")
    assert re.match(r"\*\*\d{8}-\d{6}-test-[0-9a-f]{4}\*\*: 2 rows of `test.jsonl` × 2 variants", status)

    table = [dict(zip(summary["headers"], row, strict=True)) for row in summary["data"]]
    overall = {row["variant"]: row for row in table if row["task"] == "all"}
    assert set(overall) == {"zero_shot", "rag"}
    assert all(row["n"] == "2" and INTERVAL.match(row["ROUGE-L"]) for row in overall.values())
    assert {row["task"] for row in table} == {"all", "qa", "summarization"}  # test-001 is qa, test-002 summarization

    assert Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = {Path(path).name: Path(path) for path in downloads}
    assert set(files) == {"examples.csv", "summary.csv", "results.json", "report.md", "report.html"}
    assert "class='ta-verdict" in verdict  # the cards, or the line saying this evaluation has none
    report = report.get("value", report) if isinstance(report, dict) else report  # a gr.update comes as a dict
    report = Path(report["path"] if isinstance(report, dict) else report)
    assert report.name == "report.html" and report.read_text(encoding="utf-8").startswith("<!DOCTYPE")
    assert all(path.stat().st_size > 0 for path in files.values())
    with open(files["examples.csv"], newline="", encoding="utf-8") as handle:
        examples = list(csv.DictReader(handle))
    assert sorted((row["id"], row["variant"]) for row in examples) == [
        ("test-001", "rag"), ("test-001", "zero_shot"), ("test-002", "rag"), ("test-002", "zero_shot")]
    results = json.loads(files["results.json"].read_text(encoding="utf-8"))
    assert results["n"] == 2 and results["config"]["generation"]["max_new_tokens"] == 8
    assert all(row["new_tokens"] <= 8 for row in results["rows"])
    assert "| rag |" in files["report.md"].read_text(encoding="utf-8")

    assert pick["value"] == "test-001" and [value for _, value in pick["choices"]] == ["test-001", "test-002"]
    assert [row[0] for row in overview["data"]] == ["test-001", "test-002"]
    assert "amber ring means" in drill and "<b>zero_shot</b>" in drill and "<b>rag</b>" in drill
    assert "sources: " in drill  # rag's retrieved files

    assert Path(past["value"]).name in status and past["value"] in [value for _, value in past["choices"]]
    reopened = client.predict(past["value"], api_name="/open_eval")
    assert reopened[0] == status and reopened[4]["data"] == summary["data"] and reopened[2] == verdict

    with pytest.raises(Exception, match="Choose at least one variant"):
        client.predict(data, [], 2, [], [], "demo", 3, 3, 8, api_name="/evaluate")
    with pytest.raises(Exception, match="is not on offer"):
        client.predict("/etc/passwd", [], 2, ["zero_shot"], [], "demo", 3, 3, 8, api_name="/evaluate")


# --------------------------------------------------------------------------------------------------------------------
# The verdict: cards, slice and cost tables, report.html, and the demo evaluation open on first launch
# --------------------------------------------------------------------------------------------------------------------


def _handler(blocks, api_name: str):
    return next(fn.fn for fn in blocks.fns.values() if fn.api_name == api_name)


def test_result_views_show_the_verdict_and_write_report_html(tmp_path):
    from verdict_helpers import SENTENCES, install_eval

    from core.arena.evals import load_eval
    from core.engine import Engine
    from ui.evaluate import result_views

    folder = install_eval(tmp_path / "ws")
    engine = Engine(tmp_path / "ws", confined=True)
    found = result_views(engine, load_eval(folder), folder)
    assert all(html.escape(sentence) in found["verdict"] for sentence in SENTENCES.values())
    assert found["verdict"].index(html.escape(SENTENCES["qa"])) < found["verdict"].index("Winner <b>few_shot</b>")
    assert "tie: no significant difference" in found["verdict"] and "winner (significant)" in found["verdict"]
    assert "<h4>Knowledge vs behaviour</h4>" in found["details"] and "<h4>Cost per variant</h4>" in found["details"]
    assert "mcnemar" in found["comparisons"] and "&lt;script&gt;" in found["drill"]
    report = Path(found["report"])
    assert report.name == "report.html" and report == (folder / "report.html").resolve()
    assert html.escape(SENTENCES["classification"]) in report.read_text(encoding="utf-8")
    assert str(report) in found["downloads"]
    assert found["status"].startswith(f"**{folder.name}**: 6 rows of `test.jsonl` × 3 variants")
    assert "Best ROUGE-L" not in found["status"]  # the verdict says who leads, by a paired test

    report.write_text("the lead's own report", encoding="utf-8")  # an existing report.html is left as it is
    assert Path(result_views(engine, load_eval(folder), folder)["report"]).read_text() == "the lead's own report"

    old = install_eval(tmp_path / "ws", "old-eval", with_verdict=False)
    found = result_views(engine, load_eval(old), old)
    assert "No verdict in this evaluation" in found["verdict"] and found["details"] == ""
    assert "Best ROUGE-L: **few_shot**" in found["status"]
    assert "No paired comparisons" in found["comparisons"]
    assert "No verdict in this evaluation" in (old / "report.html").read_text(encoding="utf-8")


def test_eval_report_when_the_folder_cannot_take_it(tmp_path, monkeypatch):
    from verdict_helpers import install_eval

    import core.engine.arena
    from core.engine import Engine
    from core.errors import NameRuleError

    folder = install_eval(tmp_path / "ws")
    engine = Engine(tmp_path / "ws", confined=True)

    def refuse(path, data, **_):
        raise PermissionError(f"{path}: read-only file system")

    monkeypatch.setattr(core.engine.arena, "write_atomic", refuse)
    assert engine.eval_report(folder) is None  # the evaluation still shows, without its report
    monkeypatch.undo()
    assert engine.eval_report(folder) == folder / "report.html" and (folder / "report.html").is_file()
    assert engine.eval_report(folder.name) == folder / "report.html"  # by name, as the engine names evaluations
    assert engine.eval_report(engine.workspace.evals / "nowhere") is None  # no results.json to render it from
    with pytest.raises(NameRuleError, match="not a folder of this workspace's evals/"):
        engine.eval_report(tmp_path / "elsewhere" / "evals" / folder.name)  # a confined engine: its own only


def test_the_tab_opens_on_the_demo_evaluation_and_reopens_past_ones(tmp_path):
    import gradio as gr
    from verdict_helpers import SENTENCES, install_eval

    from core.arena import DEFAULT_VARIANTS, STRATEGIES
    from core.engine import Engine
    from ui.evaluate import create_evaluate_tab

    workspace = tmp_path / "ws"
    demo = install_eval(workspace, "demo-eval")
    old = install_eval(workspace, "20240101-000000-test-abcd", with_verdict=False)
    engine = Engine(workspace, confined=True)
    with gr.Blocks() as blocks:
        parts = create_evaluate_tab(engine)
    assert engine.models.loaded() == []
    assert html.escape(SENTENCES["qa"]) in parts["verdict"].value  # shown without any click
    assert parts["past"].value == str(demo) and parts["pick"].value == "q0"
    assert "Cost per variant" in parts["details"].value and "Winner" in parts["verdict"].value
    assert Path(parts["report"].value["path"] if isinstance(parts["report"].value, dict)
                else parts["report"].value).name == "report.html"
    assert (demo / "report.html").is_file()
    assert [value for value, *_ in parts["variants"].choices] == list(STRATEGIES)
    assert parts["variants"].value == [name for name in DEFAULT_VARIANTS if not STRATEGIES[name].uses_adapter]

    opened = _handler(blocks, "open_eval")(str(old))
    status, report, verdict, details, *_ = opened
    assert status.startswith(f"**{old.name}**") and "No verdict in this evaluation" in verdict and details == ""
    assert report["value"].endswith("report.html") and report["interactive"] is True
    with pytest.raises(gr.Error, match="No saved evaluation"):
        _handler(blocks, "open_eval")(str(tmp_path / "elsewhere"))


def test_without_the_demo_evaluation_the_tab_opens_empty(tmp_path):
    import gradio as gr

    from core.engine import Engine
    from ui.evaluate import create_evaluate_tab

    with gr.Blocks():
        parts = create_evaluate_tab(Engine(tmp_path / "ws"))
    assert parts["verdict"].value == "" and parts["past"].value is None and parts["report"].value is None


def test_on_a_shared_app_each_visitor_has_their_own_test_sets_and_evaluations(tmp_path):
    import gradio as gr
    from verdict_helpers import install_eval

    from core.engine import Engine
    from core.engine.visitors import VisitorSettings
    from ui.evaluate import create_evaluate_tab
    from ui.visitors import scoped

    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))
    demo = install_eval(engine.workspace.root, "demo-eval")  # the instance's, shared with every visitor
    alice, bob = gr.Request(session_hash="alice-browser-secret"), gr.Request(session_hash="bob-browser-secret")
    hers = install_eval(scoped(engine, alice).workspace.root, "20250101-000000-test-abcd")
    with gr.Blocks() as blocks:
        parts = create_evaluate_tab(engine)
    assert parts["past"].value == str(demo)  # a new visitor opens on the shared demo evaluation

    made = tmp_path / "mine.jsonl"
    made.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n", encoding="utf-8")
    stored, _ = _handler(blocks, "eval_upload")(str(made), alice)
    assert Path(stored["value"]).is_relative_to(scoped(engine, alice).workspace.uploads)

    refresh, inputs, outputs = parts["refresh"]
    assert inputs is None and outputs == [parts["data"], parts["adapter"], parts["index"], parts["past"]]
    data, _, _, past = refresh(alice)
    assert stored["value"] in [value for _, value in data["choices"]]
    assert [value for _, value in past["choices"]] == [str(hers), str(demo)]
    data, _, _, past = refresh(bob)
    assert stored["value"] not in [value for _, value in data["choices"]]
    assert [value for _, value in past["choices"]] == [str(demo)]

    with pytest.raises(gr.Error, match="is not on offer"):  # bob cannot evaluate alice's upload…
        _handler(blocks, "evaluate")(stored["value"], [], 1, ["zero_shot"], [], None, 3, 3, 8, gr.Progress(), bob)
    with pytest.raises(gr.Error, match="No saved evaluation"):  # …nor open her evaluation
        _handler(blocks, "open_eval")(str(hers), bob)
    assert _handler(blocks, "open_eval")(str(demo), bob)[0].startswith("**demo-eval**")
    assert _handler(blocks, "open_eval")(str(hers), alice)[0].startswith(f"**{hers.name}**")


@pytest.mark.integration
def test_a_users_own_test_set_gets_its_verdict(bundled_home, tmp_path):
    """As a new user would: a test set made here (12 ticket classification rows), uploaded in the Evaluate tab,
    evaluated with zero-shot, few-shot and the copying baseline; the tab shows the classification verdict and
    results.json holds it with the paired McNemar comparison behind it."""
    from gradio_client import Client, handle_file

    texts = {"billing": ["I was charged twice for my Orbit order.", "My invoice shows the wrong VAT number.",
                         "Please refund the extra shipping fee I paid.", "The card payment failed but money left.",
                         "Can I change the plan I am billed for?", "Why did my subscription price go up?"],
             "technical": ["The pump makes a rattling noise.", "My Hub shows E22 after a router change.",
                           "The lights stay off in the morning.", "The app cannot find my garden.",
                           "Water is not reaching the top tray.", "The sensor reads zero all the time."]}
    rows = [{"task": "classification", "instruction": "Classify the message. Categories: billing, technical.",
             "input": text, "output": label} for label, items in texts.items() for text in items]
    made = tmp_path / "my tickets.jsonl"
    made.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    from app_helpers import served_app

    with served_app(bundled_home, tmp_path / "workspace", tmp_path / "app.log") as url:  # its own uploads folder
        saved, verdict, details = _evaluate_own_set(Client(url, verbose=False), handle_file(str(made)))
    card = saved["verdict"]["classification"]
    assert card["metric"] == "accuracy" and card["n"] == 12 and card["status"] in ("win", "tie")
    assert html.escape(card["sentence"]) in verdict and card["sentence"].startswith("classification: ")
    pair = next(c for c in saved["comparisons"] if {c["a"], c["b"]} == {"zero_shot", "nearest_answer"})
    assert pair["test"] == "mcnemar" and pair["n"] == 12
    assert "Cost per variant" in details and saved["provenance"]["data_sha256"]


def _evaluate_own_set(client, upload) -> tuple[dict, str, str]:
    """Upload a test set in the Evaluate tab and evaluate it: (results.json, the verdict cards, the tables)."""
    stored, _ = client.predict(upload, api_name="/eval_upload")
    stored = stored.get("value", stored) if isinstance(stored, dict) else stored  # the picker's gr.update
    assert Path(stored).name == "my_tickets.jsonl"
    status, _, verdict, details, *_, past = client.predict(
        stored, [], 12, ["zero_shot", "few_shot", "nearest_answer"], [], "demo", 3, 3, 8, api_name="/evaluate")
    assert "12 rows of `my_tickets.jsonl`" in status
    return json.loads((Path(past["value"]) / "results.json").read_text(encoding="utf-8")), verdict, details
