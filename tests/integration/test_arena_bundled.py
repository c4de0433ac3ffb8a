"""The arena and batch evaluation end to end on the bundled SmolLM2 and MiniLM: every variant answers and is scored,
through the CLI as scripts call it. The adapter is a real LoRA run of a few steps (seconds), not a trained demo."""

from __future__ import annotations

import csv
import json

import pytest

from core.cli import main
from core.data import demo_path
from core.training import TrainingConfig, train

pytestmark = pytest.mark.integration
VARIANTS = ["zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag"]


@pytest.fixture(scope="module")
def workspace(bundled_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("workspace")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_ARENA_HOME", str(bundled_home))
        mp.setenv("TUNE_ARENA_WORKSPACE", str(root))
        yield root


@pytest.fixture(scope="module")
def short_lora(workspace):
    config = TrainingConfig(data=str(demo_path("train.jsonl")), method="lora", max_steps=2, batch_size=2,
                            max_length=256, eval_every=0, max_eval_examples=4, seed=3)
    return train(config, runs_root=workspace / "runs")


def test_arena_json_gives_every_variant_an_answer_and_scores(workspace, short_lora, demo_index, capsys):
    folder, _ = demo_index
    code = main(["arena", "--query", "What does error code E15 mean on an Orbit garden?",
                 "--reference", "E15 means the pump motor current is too high because the impeller is jammed.",
                 "--index", str(folder), "--adapter", short_lora.run_dir, "--max-new-tokens", "32", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["variant"] for row in result["results"]] == VARIANTS
    for row in result["results"]:
        assert row["available"], row["error"]
        assert row["answer"].strip() and 0 < row["new_tokens"] <= 32
        assert row["latency_s"] > 0 and row["prompt"].startswith("<|im_start|>")
        assert all(isinstance(row["metrics"][m], float) for m in ("rouge1", "rouge2", "rougeL", "bleu"))
        assert 0.0 <= row["metrics"]["similarity"] <= 1.0
    by_name = {row["variant"]: row for row in result["results"]}
    for name in ("rag", "finetuned_rag"):
        assert len(by_name[name]["retrieved"]) == 3
        assert {"text", "source", "score"} <= set(by_name[name]["retrieved"][0])
        assert "(source: " + by_name[name]["retrieved"][0]["source"].rsplit("/", 1)[-1] + ")" in by_name[name]["prompt"]
    assert by_name["zero_shot"]["retrieved"] == [] and "Passages:" not in by_name["zero_shot"]["prompt"]


def test_missing_index_leaves_rag_unavailable_and_the_rest_running(workspace, capsys):
    code = main(["arena", "--query", "Is the Orbit Mini tank removable?", "--index", str(workspace / "nowhere"),
                 "--variants", "zero_shot,rag", "--max-new-tokens", "8", "--json"])
    assert code == 0
    rows = {row["variant"]: row for row in json.loads(capsys.readouterr().out)["results"]}
    assert rows["zero_shot"]["available"] and rows["zero_shot"]["answer"]
    assert not rows["rag"]["available"] and "does not exist" in rows["rag"]["error"]
    assert all(value is None for value in rows["zero_shot"]["metrics"].values())  # no reference: n/a, not 0


def test_eval_writes_reports_for_a_slice_of_the_test_set(workspace, short_lora, demo_index, capsys, tmp_path):
    folder, _ = demo_index
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(demo_path("test.jsonl")), "--limit", "6", "--index", str(folder),
                 "--adapter", short_lora.run_dir, "--max-new-tokens", "24", "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval_dir"] == str(out) and result["n"] == 6
    assert set(result["summary"]) == set(VARIANTS)
    assert all(0.0 <= result["summary"][v]["rougeL"] <= 1.0 for v in VARIANTS)
    with open(out / "examples.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6 * len(VARIANTS)
    assert (out / "chart.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert "## all" in report and "finetuned_rag" in report
