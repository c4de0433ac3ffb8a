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
