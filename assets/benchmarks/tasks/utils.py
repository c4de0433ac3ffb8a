"""Datasets and the probe's scoring for Tune Arena's bundled lm-evaluation-harness tasks (offline, local files).

The harness imports this module by file from the task YAMLs (``!function utils.NAME``); it reads only the JSONL
files shipped beside it in assets/, so the tasks work from any working directory with no network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2]
DATA = ASSETS / "benchmarks" / "data"
DEMO = ASSETS / "demo"
TICKET_LABELS = ["billing", "shipping", "technical", "returns", "account", "feedback"]
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _splits(**splits: list[dict]):
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def load_probe(**_):
    """The forgetting probe: general-knowledge questions the bundled base model answers correctly."""
    rows = [{"id": f"probe-{number:03d}", **row} for number, row in
            enumerate(_rows(DEMO / "forgetting_probe.jsonl"), start=1)]
    return _splits(test=rows)


def load_probe_mc(**_):
    """The forgetting probe's questions as four-option multiple choice."""
    return _splits(test=_rows(DATA / "forgetting_probe_mc.jsonl"))


def load_knowledge(subject: str | None = None, **_):
    """The general-knowledge multiple-choice set, one subject (or all of them)."""
    rows = [row for row in _rows(DATA / "general_knowledge.jsonl") if subject is None or row["subject"] == subject]
    return _splits(test=rows)


def load_tickets(**_):
    """The demo's support-ticket classification as multiple choice over its six labels: test rows to score, train
    rows for few-shot examples."""

    def tickets(name: str) -> list[dict]:
        return [{"id": row.get("id", ""), "message": row["input"], "label": TICKET_LABELS.index(row["output"])}
                for row in _rows(DEMO / name) if row.get("task") == "classification"]

    return _splits(test=tickets("test.jsonl"), train=tickets("train.jsonl"))


def normalise(text: str) -> str:
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(word, word) for word in words if word not in ("the", "a", "an"))


def contains(doc: dict, results: list[str]) -> dict[str, float]:
    """1.0 when the reference answer appears in the generated answer (case, punctuation, articles and number words
    ignored), else 0.0."""
    answer = results[0] if results else ""
    return {"contains": float(f" {normalise(doc['answer'])} " in f" {normalise(answer)} ")}
