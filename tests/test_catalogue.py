"""The run catalogue: Engine.list_runs (the Runs tab's table and ``python -m core runs``) and run_details, over run
folders on disk; the data behind the Runs tab's headline and trade-off chart."""

from __future__ import annotations

import json

import pytest
from run_helpers import FULL, IA3_RUNNING, LORA, PROMPT, kill_owner, make_eval, make_run

from core.engine import Engine
from core.engine.catalogue import (
    CONTRACT_KEYS,
    ROW_KEYS,
    eval_scores,
    headline_facts,
    pareto_front,
    state_text,
    tradeoff_groups,
)
from core.runs import Run


@pytest.fixture
def engine(tmp_path) -> Engine:
    return Engine(tmp_path / "ws")


def test_a_completed_run_is_one_row_with_the_cli_contract_keys(engine):
    make_run(engine.runs.root, LORA)
    (row,) = engine.list_runs()
    assert tuple(row) == ROW_KEYS and set(CONTRACT_KEYS) <= set(row)
    assert {key: row[key] for key in CONTRACT_KEYS} == {
        "run_id": LORA, "run_dir": str(engine.runs.root / LORA), "method": "lora", "state": "completed", "steps": 30,
        "trainable_params": 1_843_200, "adapter_bytes": 7_372_800, "final_val_loss": 1.6, "wall_s": 125.4}
    assert row["state_text"] == "completed" and row["total_steps"] == 30 and row["first_val_loss"] == 2.5
    assert row["trainable_percent"] == pytest.approx(100 * 1_843_200 / 136_358_400)
    assert row["final_train_loss"] == 1.5 and row["tokens_per_s"] == 175.3
    assert (row["eval"], row["variant"], row["rougeL"]) == (None, None, None)
    json.dumps(row)  # JSON-ready: the CLI prints it as is


def test_each_state_reads_right(engine):
    root = engine.runs.root
    make_run(root, "a-failed", "qlora", state="failed", steps=2, error="RuntimeError: bitsandbytes is not installed",
             result=False, weights=None, val=(2.5,))
    make_run(root, "b-stopped", state="stopped", steps=5)
    make_run(root, "c-running", "ia3", state="running", steps=3, total=10, result=False, weights=None, val=(2.5,))
    killed = make_run(root, "d-killed", state="running", steps=4, total=10, result=False, weights=None)
    kill_owner(killed)
    broken = root / "e-broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    rows = {row["run_id"]: row for row in engine.list_runs()}
    assert rows["a-failed"]["state"] == "failed"
    assert rows["a-failed"]["state_text"] == "failed: RuntimeError: bitsandbytes is not installed"
    assert rows["a-failed"]["steps"] == 2 and rows["a-failed"]["trainable_params"] is None
    assert rows["a-failed"]["first_val_loss"] == 2.5
    assert rows["b-stopped"]["state_text"] == "stopped · step 5/30"
    running = rows["c-running"]  # still training: live numbers from metrics.jsonl
    assert (running["state"], running["state_text"]) == ("running", "running · step 3/10")
    assert (running["tokens_per_s"], running["wall_s"], running["final_train_loss"]) == (173.0, 12.0, 2.55)
    assert rows["d-killed"]["state"] == "interrupted" and rows["d-killed"]["state_text"].startswith(
        "interrupted · step 4/10 (its process ended")
    unreadable = rows["e-broken"]
    assert tuple(unreadable) == ROW_KEYS and unreadable["state"] == "unreadable"
    assert unreadable["state_text"].startswith("unreadable: ") and "not valid JSON" in unreadable["error"]
    assert unreadable["method"] is None and unreadable["run_dir"] == str(broken)


def test_a_running_run_that_stopped_writing_gets_a_hint():
    text = state_text("running", {"step": 3, "total_steps": 10, "updated": "2020-01-01T00:00:00"})
    assert text.startswith("running · step 3/10 · no update for ") and "hung?" in text


def test_eval_scores_are_joined_to_the_run_the_variant_used(engine):
    root, ws = engine.runs.root, engine.workspace.root
    a = make_run(root, LORA)
    b = make_run(root, "20250101-121000-ia3-9999", "ia3")
    make_run(root, "20250101-122000-freeze-7777", "freeze", weights="weights")  # never evaluated
    explicit = make_run(root, "20250101-123000-adalora-5555", "adalora")
    # older: one adapter (given as a folder) -> "finetuned"
    make_eval(ws, "20250102-000000-test-0001", [str(a)],
              {"zero_shot": {"rougeL": 0.1}, "finetuned": {"rougeL": 0.30, "token_f1": 0.31, "accuracy": 0.5},
               "finetuned_rag": {"rougeL": 0.9}})
    # newer: two adapters (an id and a folder) -> finetuned@<id> each; finetuned_rag must never be taken
    make_eval(ws, "20250103-000000-test-0002", [LORA, str(b) + "/"],
              {"finetuned@" + LORA: {"rougeL": 0.41, "token_f1": 0.42},
               "finetuned@20250101-121000-ia3-9999": {"rougeL": 0.22, "token_f1": 0.23, "accuracy": 0.25},
               "finetuned_rag@" + LORA: {"rougeL": 0.99}})
    # a run named in the variant itself, not in config.adapters
    make_eval(ws, "20250101-000000-test-0003", [], {"finetuned@" + explicit.name: {"rougeL": 0.12}})
    (ws / "evals" / "20250104-000000-broken").mkdir()
    (ws / "evals" / "20250104-000000-broken" / "results.json").write_text("{", encoding="utf-8")

    rows = {row["run_id"]: row for row in engine.list_runs()}
    assert (rows[LORA]["rougeL"], rows[LORA]["token_f1"], rows[LORA]["accuracy"]) == (0.41, 0.42, None)
    assert rows[LORA]["eval"] == "20250103-000000-test-0002" and rows[LORA]["variant"] == "finetuned@" + LORA
    assert (rows[b.name]["rougeL"], rows[b.name]["accuracy"]) == (0.22, 0.25)
    assert rows["20250101-122000-freeze-7777"]["rougeL"] is None
    assert rows["20250101-122000-freeze-7777"]["eval"] is None
    assert rows[explicit.name]["rougeL"] == 0.12
    # with only the older evaluation, the single-adapter "finetuned" variant is the one taken
    evals = [row for row in engine.list_evals() if row["name"] == "20250102-000000-test-0001"]
    assert eval_scores(Run(a), evals) == {"eval": "20250102-000000-test-0001", "variant": "finetuned",
                                          "rougeL": 0.30, "token_f1": 0.31, "accuracy": 0.5}
    assert eval_scores(Run(b), evals) is None
    facts = headline_facts(list(rows.values()))
    assert facts["best_by"] == "rougeL" and facts["best"]["run_id"] == LORA and facts["count"] == 4


def test_a_run_with_the_same_id_prefix_is_not_matched(engine):
    a = make_run(engine.runs.root, LORA)
    make_eval(engine.workspace.root, "e1", [LORA + "x"], {"finetuned": {"rougeL": 0.5}})
    assert eval_scores(Run(a), engine.list_evals()) is None


def test_another_runs_folder_is_listed_by_an_unconfined_engine_only(engine, tmp_path):
    make_run(tmp_path / "elsewhere", LORA)
    assert [row["run_id"] for row in engine.list_runs(tmp_path / "elsewhere")] == [LORA]
    assert engine.list_runs(tmp_path / "nothing-here") == []
    assert engine.list_runs() == []
    confined = Engine(tmp_path / "ws", confined=True)
    with pytest.raises(ValueError, match="^runs: .* is not this workspace's runs/ folder"):
        confined.list_runs(tmp_path / "elsewhere")
    assert confined.list_runs(confined.runs.root) == []


def test_run_details_of_one_run(engine):
    path = make_run(engine.runs.root, LORA, method_config={"r": 8, "alpha": 16, "target_modules": "all-linear"})
    (path / ".card.md.123.tmp").write_text("half", encoding="utf-8")
    details = engine.run_details(LORA)
    assert details["row"]["run_id"] == LORA and details["config"]["method"] == "lora"
    assert dict(details["files"]) == {"config.json": (path / "config.json").stat().st_size,
                                      "status.json": (path / "status.json").stat().st_size,
                                      "metrics.jsonl": (path / "metrics.jsonl").stat().st_size,
                                      "result.json": (path / "result.json").stat().st_size,
                                      "card.md": (path / "card.md").stat().st_size,
                                      "adapter/adapter_model.safetensors": 4096}
    assert details["more_files"] is False and details["card"].startswith(f"# Run {LORA}")
    assert len(details["train_curve"]) == 30 and [loss for _, loss in details["val_curve"]] == [2.5, 1.9, 1.6]
    assert details["merge_refusal"] is None and details["exported"] is False
    assert details["export_dir"] == str(engine.workspace.exports / f"{LORA}-merged")
    prompt = engine.run_details(make_run(engine.runs.root, PROMPT, "prompt_tuning", card=False).name)
    assert "virtual tokens" in prompt["merge_refusal"] and prompt["card"] is None


def test_tradeoff_groups_split_evaluated_runs_from_the_rest_with_their_pareto_fronts(engine):
    root = engine.runs.root
    make_run(root, LORA)
    make_run(root, FULL, "full", trainable=134_515_008, wall_s=900.0, weights="model")
    make_run(root, PROMPT, "prompt_tuning", trainable=11_520, wall_s=80.0, val=(2.9, 2.4))
    make_run(root, IA3_RUNNING, "ia3", state="running", steps=3, total=10, result=False)
    make_eval(engine.workspace.root, "e1", [LORA, FULL],
              {f"finetuned@{LORA}": {"rougeL": 0.4}, f"finetuned@{FULL}": {"rougeL": 0.45}})
    evaluated, by_loss = tradeoff_groups(engine.list_runs())
    assert (evaluated.key, evaluated.higher_better) == ("rougeL", True)
    assert sorted(row["run_id"] for row in evaluated.points) == [FULL, LORA]
    assert evaluated.fronts == {"trainable_params": [(1_843_200.0, 0.4), (134_515_008.0, 0.45)],
                                "wall_s": [(125.4, 0.4), (900.0, 0.45)]}
    assert (by_loss.key, [row["run_id"] for row in by_loss.points]) == ("final_val_loss", [PROMPT])
    running = [row for row in engine.list_runs() if row["run_id"] == IA3_RUNNING]
    assert tradeoff_groups([]) == [] and tradeoff_groups(running) == []  # a running run has no result yet


def test_pareto_front_and_headline_without_evaluations():
    assert pareto_front([(1, 0.2), (2, 0.1), (3, 0.5)], True) == [(1, 0.2), (3, 0.5)]
    assert pareto_front([(1, 2.0), (2, 2.5), (3, 1.5)], False) == [(1, 2.0), (3, 1.5)]
    rows = [{"run_id": "a", "state": "completed", "final_val_loss": 1.5}, {"run_id": "b", "state": "completed",
                                                                           "final_val_loss": 1.2},
            {"run_id": "c", "state": "running", "final_val_loss": 0.1}]
    facts = headline_facts(rows)
    assert facts["states"] == [("completed", 2), ("running", 1)]
    assert facts["best_by"] == "final_val_loss" and facts["best"]["run_id"] == "b"  # a running run is not a result
    assert headline_facts([]) == {"count": 0, "states": [], "best": None, "best_by": None}


def test_tradeoff_groups_never_put_two_objectives_quality_measures_on_one_axis():
    """A head's accuracy, an SFT loss and a distillation loss are different measures: each gets its own group."""
    def row(run_id: str, objective: str, **values) -> dict:
        return {"run_id": run_id, "state": "completed", "objective": objective, "trainable_params": 1000,
                "wall_s": 10.0, "rougeL": None, "accuracy": None, "final_val_loss": 2.0, **values}

    rows = [row("sft-a", "sft"), row("sft-b", "sft", rougeL=0.3), row("kd", "distillation", final_val_loss=0.7),
            row("head", "classification", final_val_loss=0.4, val_accuracy=0.8),
            row("head-eval", "classification", accuracy=0.83, rougeL=0.05)]
    groups = {group.title.split(":")[0]: (group.key, [r["run_id"] for r in group.points])
              for group in tradeoff_groups(rows)}
    assert groups == {
        "Evaluated runs": ("rougeL", ["sft-b"]),  # a head's ROUGE-L of a bare label is no measure of it
        "Runs not evaluated yet (distillation)": ("final_val_loss", ["kd"]),
        "Runs not evaluated yet": ("final_val_loss", ["sft-a"]),
        "Classification heads": ("accuracy", ["head-eval"]),
        "Classification heads not evaluated yet": ("val_accuracy", ["head"]),
    }


def test_benchmarked_runs_get_a_chart_group_per_task_set_with_their_mean_delta():
    from core.engine.catalogue import benchmark_groups

    def row(run_id: str, deltas: dict[str, float] | None) -> dict:
        forgetting = None if deltas is None else {"benchmark": "b", "deltas": {
            task: {"metric": "acc", "delta": value} for task, value in deltas.items()}}
        return {"run_id": run_id, "method": "lora", "trainable_params": 10, "wall_s": 5.0, "state": "completed",
                "forgetting": forgetting}

    groups = benchmark_groups([row("a", {"tune_arena_probe": -0.2, "tune_arena_tickets": 0.1}),
                               row("b", {"tune_arena_tickets": 0.1, "tune_arena_probe": 0.0}),
                               row("c", {"tune_arena_probe": -0.4}), row("d", None)])
    assert len(groups) == 2  # {probe, tickets} and {probe} are not compared on one axis
    pair = next(group for group in groups if len(group.points) == 2)
    assert "probe, tickets" in pair.title and pair.key == "benchmark_delta" and pair.higher_better
    assert {point["run_id"]: round(point["benchmark_delta"], 6) for point in pair.points} == {"a": -0.05, "b": 0.05}
