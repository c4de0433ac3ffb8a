"""Batch evaluation: the summary and its bootstrap intervals on fixed rows, run_eval's files on a host with known
answers (hand-computed means), label sets, and `python -m core eval` in-process on the tiny model."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest
from arena_helpers import EchoHost, FakeEncoder, FakeKB, one_torch_thread, talkative_model_dir

from core.arena import ArenaConfig, ArenaContext
from core.arena.evals import dataset_label_set, load_eval, run_eval, summarise
from core.cli import main
from core.data import Example


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


# --------------------------------------------------------------------------------------------------------------------
# summarise
# --------------------------------------------------------------------------------------------------------------------

ROWS = [
    {"variant": "a", "task": "qa", "metrics": {"rougeL": 0.2, "accuracy": None}, "generate_s": 1.0, "new_tokens": 4},
    {"variant": "a", "task": "qa", "metrics": {"rougeL": 0.4}, "generate_s": 3.0, "new_tokens": 6},
    {"variant": "a", "task": "cls", "metrics": {"rougeL": 0.9, "accuracy": 1.0}, "generate_s": None},
    {"variant": "a", "task": "cls", "metrics": {"rougeL": 0.5, "accuracy": 0.0}},
    {"variant": "a", "task": None, "metrics": {"rougeL": 0.0}},
    {"variant": "b", "task": "qa", "metrics": {"rougeL": 0.7}, "available": True},
    {"variant": "b", "task": "qa", "metrics": {"rougeL": 0.1}, "available": False},
    {"variant": "c", "task": "qa", "metrics": {}, "available": False, "generate_s": 2.0},
]


def test_summary_means_per_variant_and_task():
    summary = summarise(ROWS, n_resamples=200)
    a = summary["a"]
    assert set(a) == {"qa", "cls", "default", "all"}  # a row without a task counts as "default"
    assert a["qa"]["rougeL"]["mean"] == pytest.approx(0.3) and a["qa"]["rougeL"]["n"] == 2
    assert a["cls"]["rougeL"]["mean"] == pytest.approx(0.7) and a["cls"]["accuracy"]["mean"] == pytest.approx(0.5)
    assert a["default"]["rougeL"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 1}
    assert a["all"]["rougeL"]["mean"] == pytest.approx(0.4) and a["all"]["rougeL"]["n"] == 5  # (.2+.4+.9+.5+0)/5
    assert "accuracy" not in a["qa"]  # None values are left out, not counted as 0
    assert a["all"]["accuracy"]["n"] == 2
    assert a["qa"]["generate_s"]["mean"] == pytest.approx(2.0) and a["qa"]["new_tokens"]["mean"] == pytest.approx(5.0)
    assert "generate_s" not in a["cls"]
    assert summary["b"]["all"]["rougeL"]["mean"] == pytest.approx(0.7)  # the unavailable row is left out
    assert summary["b"]["all"]["rougeL"]["n"] == 1
    assert "c" not in summary  # no available row at all


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    summary = summarise(ROWS, n_resamples=500, seed=3)
    for variant in summary.values():
        for metrics in variant.values():
            for stats in metrics.values():
                assert stats["low"] <= stats["mean"] <= stats["high"]
    spread = summary["a"]["all"]["rougeL"]
    assert spread["low"] < spread["mean"] < spread["high"]  # five different values: a real interval
    assert 0.0 <= spread["low"] and spread["high"] <= 0.9  # inside the range of the values
    assert summarise(ROWS, n_resamples=500, seed=3) == summary
    assert summarise(ROWS, n_resamples=500, seed=4)["a"]["all"]["rougeL"] != spread


def test_dataset_label_set():
    def row(output, task="classification"):
        return Example(instruction="Classify.", output=output, task=task)

    examples = [row("shipping "), row("billing"), row("shipping"), row("Paris.", task="qa"), row(None)]
    assert dataset_label_set(examples) == ["billing", "shipping"]
    assert dataset_label_set([row("Paris.", task="qa")]) is None
    assert dataset_label_set([row(f"label{i}") for i in range(31)]) is None  # too many to be labels
    assert dataset_label_set([row(f"label{i}") for i in range(3)], limit=3) == ["label0", "label1", "label2"]


# --------------------------------------------------------------------------------------------------------------------
# run_eval on a host with known answers
# --------------------------------------------------------------------------------------------------------------------

CLS = "Classify the message into one category: billing, shipping, technical."
EXAMPLES = [
    Example(instruction="What is the capital of France?", output="Paris.", task="qa", uid="q1"),
    Example(instruction="How many pod slots has the Orbit 3 garden?", output="Twelve pod slots.", task="qa",
            uid="q2"),
    Example(instruction=CLS, input="Where is my parcel?", output="shipping", task="classification", uid="c1"),
    Example(instruction=CLS, input="I was charged twice.", output="billing", task="classification", uid="c2"),
]
RAG_ANSWERS = {"q1": "Paris.", "q2": "I do not know.", "c1": "I do not know.", "c2": "It is billing."}


def known_answer(prompt: str, adapter: str | None) -> str:
    """zero_shot: the reference itself; rag (its prompt has passages): RAG_ANSWERS."""
    question = prompt.rsplit("Question: ", 1)[-1] if "Passages:" in prompt else prompt
    for example in EXAMPLES:
        if example.user_text in question:
            return RAG_ANSWERS[example.uid] if "Passages:" in prompt else example.output
    raise AssertionError(f"unknown prompt {prompt!r}")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from core.arena.metrics import Scorer

    out = tmp_path_factory.mktemp("evals") / "eval-1"
    config = ArenaConfig(variants=["zero_shot", "few_shot", "rag"], rag_k=2)
    context = ArenaContext(host=EchoHost(known_answer), scorer=Scorer(), knowledge_base=FakeKB(),
                           similarity_embedder=FakeEncoder())
    progress: list[tuple[str, int, int]] = []
    result = run_eval(EXAMPLES, config, context, out, data_path="test.jsonl",
                      on_progress=lambda stage, done, total: progress.append((stage, done, total)))
    return result, out, progress


def test_run_eval_summary_has_the_hand_computed_means(evaluated):
    result, _, _ = evaluated
    zero, rag = result.summary["zero_shot"], result.summary["rag"]
    assert set(result.summary) == {"zero_shot", "rag"}  # few_shot had no pool: unavailable, not summarised
    assert result.variants == ["zero_shot", "few_shot", "rag"] and result.n == 4
    assert {task: zero[task]["exact_match"]["mean"] for task in zero} == {"qa": 1.0, "classification": 1.0,
                                                                          "all": 1.0}
    assert {task: rag[task]["exact_match"]["mean"] for task in rag} == {"qa": 0.5, "classification": 0.0,
                                                                        "all": 0.25}
    assert rag["all"]["contains"]["mean"] == 0.5  # q1 "Paris." and c2 "... billing."
    assert zero["classification"]["accuracy"]["mean"] == 1.0 and rag["classification"]["accuracy"]["mean"] == 0.5
    assert "accuracy" not in zero["qa"] and zero["all"]["accuracy"]["n"] == 2
    assert zero["all"]["similarity"]["mean"] == pytest.approx(1.0)
    assert zero["all"]["rougeL"]["mean"] == pytest.approx(1.0) and rag["qa"]["rougeL"]["mean"] == pytest.approx(0.5)
    assert zero["all"]["new_tokens"]["mean"] == pytest.approx(6 / 4)  # 1 + 3 + 1 + 1 words
    assert rag["classification"]["new_tokens"]["mean"] == pytest.approx(3.5)  # 4 + 3 words
    assert zero["all"]["generate_s"]["mean"] == pytest.approx(0.02)
    assert result.means()["rag"]["exact_match"] == 0.25 and result.means("qa")["zero_shot"]["exact_match"] == 1.0
    assert result.generate_s >= 0 and result.metrics_s > 0


def test_run_eval_reports_progress(evaluated):
    _, _, progress = evaluated
    assert [p for p in progress if p[0] == "retrieve"] == [("retrieve", n, 4) for n in (1, 2, 3, 4)]
    assert [p for p in progress if p[0] == "generate"][-1] == ("generate", 8, 8)  # 4 examples x 2 available


def test_run_eval_writes_every_file(evaluated):
    result, out, _ = evaluated
    assert sorted(p.name for p in out.iterdir()) == ["chart.png", "examples.csv", "report.html", "report.md",
                                                     "results.json", "summary.csv"]
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"comparisons", "verdict", "slices", "cost", "provenance"}
    page = (out / "report.html").read_text()
    assert saved["verdict"] and all(html.escape(verdict["sentence"]) in page for verdict in saved["verdict"].values())
    assert (out / "chart.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    with open(out / "examples.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12  # one per example x variant, unavailable ones included
    assert [(r["id"], r["variant"]) for r in rows[:3]] == [("q1", "zero_shot"), ("q1", "few_shot"), ("q1", "rag")]
    assert {r["available"] for r in rows if r["variant"] == "few_shot"} == {"False"}
    assert all(r["error"].startswith("no few-shot examples") for r in rows if r["variant"] == "few_shot")
    c2_rag = next(r for r in rows if r["id"] == "c2" and r["variant"] == "rag")
    assert c2_rag["answer"] == "It is billing." and c2_rag["reference"] == "billing"
    assert float(c2_rag["accuracy"]) == 1.0 and float(c2_rag["exact_match"]) == 0.0

    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        summary_rows = list(csv.DictReader(handle))
    assert len(summary_rows) == sum(len(m) for tasks in result.summary.values() for m in tasks.values())
    row = next(r for r in summary_rows if (r["variant"], r["task"], r["metric"]) == ("rag", "all", "exact_match"))
    assert float(row["mean"]) == 0.25 and int(row["n"]) == 4 and float(row["low"]) <= 0.25 <= float(row["high"])

    saved = load_eval(out)
    assert saved["n"] == 4 and saved["data"] == "test.jsonl" and len(saved["rows"]) == 12
    assert saved["summary"]["rag"]["exact_match"] == 0.25 and saved["config"]["rag_k"] == 2
    assert saved["by_task"]["zero_shot"]["qa"]["exact_match"]["n"] == 2
    assert next(r for r in saved["rows"] if r["id"] == "q1" and r["variant"] == "rag")["sources"] == [
        "corpus/doc0.md", "corpus/doc1.md"]


def test_report_has_a_table_per_task_and_the_unavailable_reasons(evaluated):
    _, out, _ = evaluated
    report = (out / "report.md").read_text(encoding="utf-8")
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections == ["## classification", "## qa", "## all", "## Unavailable"]
    qa = report.split("## qa")[1].split("## all")[0]
    assert "| zero_shot | 1.000 [1.000, 1.000]" in qa
    assert "| few_shot | unavailable" in qa
    assert "accuracy" not in qa.splitlines()[2]  # the qa table has no accuracy column
    assert "- few_shot: no few-shot examples" in report
    assert "![scores by variant](chart.png)" in report


def test_run_eval_and_load_eval_refuse_bad_input(tmp_path):
    with pytest.raises(ValueError, match="^data: no examples"):
        run_eval([], ArenaConfig(variants=["zero_shot"]), ArenaContext(host=EchoHost(known_answer)), tmp_path)
    with pytest.raises(ValueError, match="has no results.json"):
        load_eval(tmp_path)


def test_unscored_eval_still_saves_and_summarises_timings(tmp_path):
    examples = [Example(instruction="What is the capital of France?", uid="q", task="qa")]  # no reference
    result = run_eval(examples, ArenaConfig(variants=["zero_shot"]), ArenaContext(host=EchoHost(lambda p, a: "Paris.")),
                      tmp_path / "e")
    assert set(result.summary["zero_shot"]["all"]) == {"generate_s", "new_tokens"}
    assert (tmp_path / "e" / "report.md").is_file() and not (tmp_path / "e" / "chart.png").exists()


# --------------------------------------------------------------------------------------------------------------------
# `python -m core eval` in-process
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


@pytest.fixture
def fake_embedder(monkeypatch):
    """The engine's embedding model (all-MiniLM-L6-v2, loaded for the similarity metric) replaced by a fake."""
    from core.models import ModelManager

    monkeypatch.setattr(ModelManager, "embedder", lambda self, name=None: FakeEncoder())


@pytest.fixture
def data_file(tmp_path):
    rows = [{"instruction": "What is the capital of France?", "output": "Paris.", "task": "qa", "id": "q1"},
            {"instruction": CLS, "input": "Where is my parcel?", "output": "shipping", "task": "classification",
             "id": "c1"},
            {"instruction": "Tank?", "output": "5.5 litres.", "task": "qa", "id": "q2"}]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def talkative_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return talkative_model_dir(tmp_path_factory, tiny_tokenizer)


@pytest.mark.parametrize(("extra", "needle"), [
    (["--data", "{data}", "--variants", "zero_shot,best"], "unknown variant 'best'"),
    (["--data", "{missing}", "--variants", "zero_shot"], "missing.jsonl"),
    (["--data", "{data}", "--variants", "zero_shot", "--tasks", "summarization"], "has no examples to evaluate"),
    (["--data", "{data}", "--variants", "zero_shot", "--limit", "0"], "limit: must be at least 1"),
    (["--data", "{data}", "--variants", "zero_shot", "--k", "50"], "rag_k:"),
    (["--data", "{data}", "--variants", "zero_shot", "--limit", "-1"], "limit: must be at least 1"),
])
def test_eval_cli_bad_arguments_exit_2_with_one_line(workspace, data_file, talkative_dir, fake_embedder, tmp_path,
                                                      capsys, extra, needle):
    argv = [a.format(data=data_file, missing=tmp_path / "missing.jsonl") for a in extra]
    assert main(["eval", *argv, "--model", str(talkative_dir), "--max-new-tokens", "1", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("error: ") and needle in captured.err


def test_eval_cli_json_follows_the_contract(workspace, data_file, talkative_dir, fake_embedder, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = ["eval", "--data", str(data_file), "--model", str(talkative_dir), "--variants", "zero_shot,rag",
            "--out", str(out_dir), "--max-new-tokens", "4", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    assert {"eval_dir", "summary", "n"} <= set(data)
    assert data["eval_dir"] == str(out_dir) and data["n"] == 3
    assert list(data["summary"]) == ["zero_shot"]  # rag: no index, so unavailable and not summarised
    means = data["summary"]["zero_shot"]
    assert {"rouge1", "rougeL", "bleu", "exact_match", "token_f1", "similarity", "accuracy"} <= set(means)
    assert all(0.0 <= means[m] <= 1.0 for m in ("rouge1", "rougeL", "bleu", "token_f1", "accuracy"))
    assert means["new_tokens"] <= 4
    saved = load_eval(out_dir)
    assert len(saved["rows"]) == 6 and {r["error"] for r in saved["rows"] if r["variant"] == "rag"} == {
        "no knowledge base chosen (build one, or pass --index DIR)"}
    assert (out_dir / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_eval_cli_default_out_is_under_the_workspace(workspace, data_file, talkative_dir, fake_embedder, capsys):
    argv = ["eval", "--data", str(data_file), "--model", str(talkative_dir), "--variants", "zero_shot",
            "--limit", "1", "--max-new-tokens", "2", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert Path(data["eval_dir"]).parent == workspace / "evals" and data["n"] == 1
    assert (Path(data["eval_dir"]) / "results.json").is_file()
