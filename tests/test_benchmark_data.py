"""The bundled benchmark data (assets/benchmarks/data): well-formed, balanced four-option multiple choice, the probe's
multiple-choice form faithful to the probe, and reproducible from build_data.py byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "assets" / "benchmarks" / "data"
BUILD = DATA / "build_data.py"
PROBE = ROOT / "assets" / "demo" / "forgetting_probe.jsonl"
FILES = ("general_knowledge.jsonl", "forgetting_probe_mc.jsonl")
SUBJECTS = ("geography", "history", "physics", "chemistry", "biology", "mathematics", "computing", "economics",
            "literature_and_arts", "health")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def knowledge() -> list[dict]:
    return rows(DATA / "general_knowledge.jsonl")


@pytest.fixture(scope="module")
def probe_mc() -> list[dict]:
    return rows(DATA / "forgetting_probe_mc.jsonl")


def assert_balanced(answers: list[int], where: str) -> None:
    counts = Counter(answers)
    for index in range(4):
        share = counts[index] / len(answers)
        assert 0.15 <= share <= 0.35, f"{where}: answer index {index} is correct for {share:.0%} of rows"
    cycle = [number % 4 for number in range(len(answers))]
    assert answers != cycle, f"{where}: answers repeat 0, 1, 2, 3 instead of being shuffled"


@pytest.mark.parametrize("name", FILES)
def test_files_are_utf8_jsonl_ending_with_a_newline(name):
    text = (DATA / name).read_bytes().decode("utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert all(line.strip() for line in text.split("\n")[:-1]), "blank line"


@pytest.mark.parametrize("name", FILES)
def test_every_row_is_four_distinct_options_with_one_answer_in_range(name):
    for row in rows(DATA / name):
        choices, answer = row["choices"], row["answer"]
        assert isinstance(choices, list) and len(choices) == 4, row["id"]
        assert all(isinstance(c, str) and c.strip() == c and c for c in choices), row["id"]
        assert len({c.lower() for c in choices}) == 4, f"{row['id']}: repeated option {choices}"
        assert type(answer) is int and 0 <= answer < 4, row["id"]
        assert not any("of the above" in c.lower() for c in choices), f"{row['id']}: 'all/none of the above'"
        question = row["question"]
        assert isinstance(question, str) and question.strip() == question and "\n" not in question, row["id"]
        assert question.endswith("?"), f"{row['id']}: {question!r}"


@pytest.mark.parametrize("name", FILES)
def test_ids_and_questions_are_unique(name):
    data = rows(DATA / name)
    ids = [row["id"] for row in data]
    questions = [row["question"].strip().lower() for row in data]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    assert len(set(questions)) == len(questions), [q for q, n in Counter(questions).items() if n > 1]


def test_general_knowledge_covers_ten_subjects_with_at_least_24_each(knowledge):
    assert len(knowledge) >= 240
    assert {row["subject"] for row in knowledge} == set(SUBJECTS)
    per_subject = Counter(row["subject"] for row in knowledge)
    assert all(per_subject[s] >= 24 for s in SUBJECTS), per_subject
    assert set(knowledge[0]) == {"id", "subject", "question", "choices", "answer"}
    for subject in SUBJECTS:
        ids = [row["id"] for row in knowledge if row["subject"] == subject]
        assert ids == [f"gk-{subject}-{n:03d}" for n in range(1, len(ids) + 1)]


def test_general_knowledge_answer_positions_are_balanced(knowledge):
    assert_balanced([row["answer"] for row in knowledge], "general_knowledge")
    for subject in SUBJECTS:
        assert_balanced([row["answer"] for row in knowledge if row["subject"] == subject], subject)


def test_probe_mc_asks_the_probe_questions_in_order_with_the_probe_answers(probe_mc):
    probe = rows(PROBE)
    assert len(probe) == 48 and len(probe_mc) == len(probe)
    assert [row["question"] for row in probe_mc] == [row["question"] for row in probe]
    assert [row["id"] for row in probe_mc] == [f"probe-{n:03d}" for n in range(1, len(probe) + 1)]
    for mc, original in zip(probe_mc, probe, strict=True):
        assert mc["choices"][mc["answer"]] == original["answer"], mc["id"]
        assert mc["choices"].count(original["answer"]) == 1, mc["id"]


def test_probe_mc_answer_positions_are_balanced(probe_mc):
    assert_balanced([row["answer"] for row in probe_mc], "forgetting_probe_mc")


def test_build_script_reproduces_the_committed_files(tmp_path):
    source = BUILD.read_text(encoding="utf-8")
    assert "from core" not in source and "import core" not in source and "import retrieval" not in source
    result = subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name} is stale: rerun {BUILD.name}"
