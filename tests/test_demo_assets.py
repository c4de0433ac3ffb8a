"""The shipped demo workspace loads through the data layer and meets the issue's counts and rules."""

from __future__ import annotations

import re
from collections import Counter

from core.data import demo_path, load_demo_splits, load_examples

TASKS = {"qa", "summarization", "classification"}
LABELS = {"billing", "shipping", "technical", "returns", "account", "feedback"}


def _key(example) -> str:
    return re.sub(r"\W+", " ", example.user_text.lower()).strip()


def test_splits_have_the_counts_and_task_mix():
    splits = load_demo_splits()
    assert len(splits.train) >= 300 and len(splits.test) >= 60 and len(splits.validation) > 0
    for part in (splits.train, splits.test):
        counts = Counter(ex.task for ex in part)
        assert set(counts) == TASKS
        assert min(counts.values()) / len(part) >= 0.20, counts


def test_no_test_or_validation_row_is_in_train_and_ids_are_unique():
    splits = load_demo_splits()
    train = {_key(ex) for ex in splits.train}
    assert len(train) == len(splits.train)
    assert not train & {_key(ex) for ex in splits.test}
    assert not train & {_key(ex) for ex in splits.validation}
    uids = [ex.uid for part in (splits.train, splits.validation, splits.test) for ex in part]
    assert len(uids) == len(set(uids))


def test_qa_rows_cite_an_existing_corpus_document():
    corpus = {path.name for path in demo_path("corpus").glob("*.md")}
    splits = load_demo_splits()
    qa = [ex for part in (splits.train, splits.validation, splits.test) for ex in part if ex.task == "qa"]
    assert qa and all(ex.source in corpus for ex in qa)
    assert {ex.source for ex in splits.test if ex.task == "qa"} <= corpus


def test_classification_labels_are_the_fixed_set_and_balanced():
    splits = load_demo_splits()
    for part in (splits.train, splits.test):
        labels = Counter(ex.output for ex in part if ex.task == "classification")
        assert set(labels) == LABELS
        assert max(labels.values()) - min(labels.values()) <= 2


def test_corpus_size_and_headings():
    docs = sorted(demo_path("corpus").glob("*.md"))
    assert 25 <= len(docs) <= 40
    words = sum(len(doc.read_text(encoding="utf-8").split()) for doc in docs)
    assert 15_000 <= words <= 30_000
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        assert text.startswith("# ") and "\n## " in text, doc.name


def test_forgetting_probe_is_a_qa_set_of_forty_or_more():
    probe = load_examples(demo_path("forgetting_probe.jsonl"))
    assert probe.shape == "qa" and len(probe) >= 40
    assert all(ex.output and len(ex.output.split()) <= 4 for ex in probe)


# ---- the shipped demo evaluation (assets/demo/eval-demo) ------------------------------------------------------------


def _demo_eval() -> dict:
    import json

    return json.loads((demo_path("eval-demo") / "results.json").read_text(encoding="utf-8"))


def test_the_demo_verdict_is_what_its_own_rows_say():
    """The shipped evidence is computed from the shipped rows (never written by hand, never stale): weighing the rows
    again (core.arena.evidence.reweigh, the fine-tuned variants priced from the shipped run) gives the same summary,
    comparisons, verdict, slices and cost, field for field; the report carries each sentence and one chart per task.
    After a change to how evidence is computed: python assets/demo/eval-demo/reweigh.py"""
    import html

    from core.arena.evals import summarise
    from core.arena.evidence import reweigh
    from core.runs import Run

    saved = _demo_eval()
    rows = saved["rows"]
    assert saved["n"] == len(load_examples(demo_path("test.jsonl")).examples)
    assert {row["variant"] for row in rows} == {"zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag",
                                               "finetuned_few_shot", "nearest_answer"}
    run = {**Run(demo_path("run-quick-lora")).result, "run_id": "run-quick-lora"}
    again = reweigh(saved, runs={variant: run for variant in saved["provenance"]["runs"]})
    assert again["verdict"] == saved["verdict"]  # the whole dict: copying's numbers, margins, p-values, sentences
    assert again["comparisons"] == saved["comparisons"] and again["slices"] == saved["slices"]
    assert again["cost"] == saved["cost"] and saved["cost"]["finetuned"]["train_wall_s"] == run["wall_s"]
    assert summarise(rows, seed=saved["config"]["seed"]) == saved["by_task"]
    assert set(saved["verdict"]) == TASKS
    assert all(part["leaders"] and part["comparisons"] for part in saved["slices"].values())
    report = (demo_path("eval-demo") / "report.html").read_text(encoding="utf-8")
    assert all(html.escape(v["sentence"]) in report for v in saved["verdict"].values())
    assert all(f"<img class='ta-rep-task-chart' alt='scores by variant ({task})'" in report for task in TASKS)
    assert "significantly above" in report or "no significant difference between" in report  # the slices' pairs
    assert saved["provenance"]["command"].startswith("python -m core eval --data assets/demo/test.jsonl")
    assert "/tmp/" not in saved["provenance"]["command"]


def test_the_demo_verdict_says_only_what_its_numbers_support():
    """Rules on the shipped verdict, checked against its own rows and comparisons: the winner has the highest mean
    of its task (the copying baseline aside), "beats" is said only for a significant pair (Holm p < 0.05 and an
    interval that excludes 0), the cheapest equivalent is not significantly worse than the winner."""
    import numpy as np

    from core.arena.verdict import ALPHA, THIN_N, is_baseline

    saved = _demo_eval()
    rows = [row for row in saved["rows"] if row.get("available", True)]
    pairs = saved["comparisons"]

    def pair(task: str, a: str, b: str) -> dict:
        """a vs b on task, turned so that diff = a - b."""
        found = next(p for p in pairs if p["task"] == task and {p["a"], p["b"]} == {a, b})
        low, high = found["ci"]
        return found if found["a"] == a else {**found, "diff": -found["diff"], "ci": [-high, -low]}

    def called(found: dict) -> bool:
        return found["p_holm"] < ALPHA and (found["ci"][0] > 0 or found["ci"][1] < 0)

    assert all(p["significant"] == called(p) for p in pairs)
    for task, v in saved["verdict"].items():
        scores: dict[str, list[float]] = {}
        for row in rows:
            if row["task"] == task and row["metrics"].get(v["metric"]) is not None:
                scores.setdefault(row["variant"], []).append(row["metrics"][v["metric"]])
        means = {variant: float(np.mean(values)) for variant, values in scores.items()}
        assert means == v["means"]
        contenders = {variant: mean for variant, mean in means.items() if not is_baseline(variant)}
        assert v["winner"] == max(contenders, key=contenders.get) and not is_baseline(v["winner"])
        head = pair(task, v["winner"], v["runner_up"])
        assert v["n"] == head["n"] >= THIN_N and v["margin"] == head["diff"] and v["ci"] == head["ci"]
        assert (v["status"] == "win") == (called(head) and head["diff"] > 0) and v["status"] in ("win", "tie")
        sentence = v["sentence"]
        assert (" beats " in sentence) == (v["status"] == "win")
        assert sentence.startswith(f"{task}: no significant difference between ") == (v["status"] == "tie")
        cheapest = v["cheapest_equivalent"]
        if cheapest != v["winner"]:
            versus = pair(task, v["winner"], cheapest)
            assert not (called(versus) and versus["diff"] > 0) and versus["n"] >= THIN_N
        copying = pair(task, v["winner"], "nearest_answer")
        assert v["copying"]["beaten"] == (called(copying) and copying["diff"] > 0)
        assert ("does not beat copying" in sentence) == (not v["copying"]["beaten"])
        assert not (called(copying) and copying["diff"] < 0)  # copying never significantly better on the demo
    assert {name: part["n"] for name, part in saved["slices"].items()} == {"knowledge": 45, "behaviour": 55}


def test_install_demo_eval_copies_it_once_where_the_evaluate_tab_finds_it(tmp_path):
    from core.engine import DEMO_EVAL, Engine

    engine = Engine(tmp_path / "ws")
    folder = engine.install_demo_eval()
    assert folder == engine.workspace.evals / DEMO_EVAL
    installed = __import__("json").loads((folder / "results.json").read_text())
    assert installed["eval_dir"] == str(folder) and installed["report"] == str(folder / "report.html")
    assert installed["verdict"] == _demo_eval()["verdict"] and (folder / "report.html").is_file()
    (folder / "note.txt").write_text("kept")
    assert engine.install_demo_eval() == folder and (folder / "note.txt").read_text() == "kept"  # once only
    assert [row["name"] for row in engine.list_evals()] == [DEMO_EVAL]
