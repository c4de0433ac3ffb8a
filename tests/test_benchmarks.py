"""Benchmarks through lm-evaluation-harness (core.benchmarks, Engine.benchmark, the CLI) on tiny models: the bundled
tasks run end to end, deltas are paired over the same examples, a user's own task folder works, and hub tasks or bad
names fail with one line before any model loads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config, write_rows

from core import training
from core.benchmarks import (
    BASE,
    BenchmarkConfig,
    BenchmarkModel,
    BenchmarkStopped,
    check_include,
    list_tasks,
    make_lm,
    paired_delta,
    run_benchmark,
    scores,
)
from core.cli.main import main
from core.engine import Engine
from core.errors import ConfigError
from core.models import load_causal_lm

BUNDLED = {"tune_arena_probe", "tune_arena_probe_mc", "tune_arena_knowledge", "tune_arena_tickets"}


def _loader(folder: Path):
    return lambda: load_causal_lm(str(folder), device="cpu", dtype="fp32")


def _user_task(folder: Path) -> Path:
    """A team's own multiple-choice task: a YAML over a local JSONL file (the harness's format, nothing of ours)."""
    data = folder / "colours.jsonl"
    write_rows(data, [{"q": f"Question {i}: which word is a colour?", "options": ["red", "chair", "seven"],
                       "gold": 0} for i in range(5)])
    (folder / "colours.yaml").write_text(
        "task: team_colours\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{q}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{options}}\"\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------------------


def test_the_bundled_tasks_are_listed_offline_with_their_kind_and_source(tmp_path):
    rows = {row["name"]: row for row in list_tasks()}
    assert BUNDLED <= set(rows)
    assert rows["tune_arena_probe"]["output_type"] == "generate_until"
    assert rows["tune_arena_probe_mc"]["output_type"] == "multiple_choice"
    knowledge = rows["tune_arena_knowledge"]
    assert knowledge["kind"] == "group" and len(knowledge["tasks"]) == 10
    assert all(rows[name]["source"] == "bundled" for name in BUNDLED)
    assert all(row["source"] != "harness" for row in rows.values())  # the harness's catalogue is not indexed
    with_user = {row["name"]: row for row in list_tasks([_user_task(tmp_path)])}
    assert with_user["team_colours"]["source"] == "include"


def test_an_include_that_is_no_task_folder_is_one_line_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="missing-folder is not a folder"):
        check_include([tmp_path / "missing-folder"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty holds no .yaml"):
        check_include([tmp_path / "empty"])


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="^tasks:"):
        BenchmarkConfig(tasks=[" ", ""])
    with pytest.raises(ConfigError, match="^limit:"):
        BenchmarkConfig(tasks=["tune_arena_probe"], limit=0)
    with pytest.raises(ConfigError, match="^backend:"):
        BenchmarkConfig(tasks=["tune_arena_probe"], backend="tgi")
    assert BenchmarkConfig(tasks="tune_arena_probe, tune_arena_tickets,tune_arena_probe").tasks == [
        "tune_arena_probe", "tune_arena_tickets"]


def _never_loaded():
    raise AssertionError("a model was loaded before the tasks were checked")


def test_a_hub_task_offline_fails_with_one_line_before_any_model_loads():
    config = BenchmarkConfig(tasks=["tune_arena_probe", "boolq"], limit=2)
    with pytest.raises(ConfigError) as caught:
        run_benchmark([BenchmarkModel(BASE, _never_loaded)], config)
    message = str(caught.value)
    assert "\n" not in message and "boolq" in message and "Hugging Face Hub" in message


def test_an_unknown_task_is_one_line_with_close_names():
    with pytest.raises(ConfigError, match=r"unknown task 'tune_arena_prob'.*tune_arena_probe"):
        run_benchmark([BenchmarkModel(BASE, _never_loaded)], BenchmarkConfig(tasks=["tune_arena_prob"]))


# --------------------------------------------------------------------------------------------------------------------
# Scores and deltas
# --------------------------------------------------------------------------------------------------------------------


def test_scores_read_the_harness_results_with_filters_and_stderr():
    raw = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.75,
                             "acc_norm_stderr,none": "N/A"},
                       "g": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.05}},
           "n-samples": {"t": {"original": 40, "effective": 8}}}
    out = scores(raw)
    assert out["t"]["metric"] == "acc" and out["t"]["acc"] == 0.5 and out["t"]["stderr"] == 0.1
    assert out["t"]["n"] == 8 and out["t"]["metrics"]["acc_norm"] == {"value": 0.75, "stderr": None}
    assert out["g"]["metric"] == "exact_match (strict-match)" and out["g"]["stderr"] == 0.05


def test_the_delta_is_paired_over_the_examples_both_scored():
    base = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0}
    run = {"a": 0.0, "b": 0.0, "c": 1.0}  # d: not scored for the run
    delta = paired_delta(base, run, seed=0, resamples=200)
    assert delta["n"] == 3 and delta["delta"] == pytest.approx(-1 / 3, abs=1e-6)
    assert delta["low"] <= delta["delta"] <= delta["high"] and 0 < delta["p"] <= 1
    assert paired_delta(base, {}, seed=0, resamples=10)["delta"] is None


# --------------------------------------------------------------------------------------------------------------------
# End to end on tiny models
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny Llama with other random weights: a model that answers differently."""
    from tiny_models import build_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-llama-other")
    build_tiny_llama(len(tiny_tokenizer), seed=3).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_bundled_tasks_run_end_to_end_and_the_same_model_has_no_delta(tiny_model_dir, other_model_dir):
    config = BenchmarkConfig(tasks=["tune_arena_probe", "tune_arena_probe_mc", "tune_arena_tickets"], limit=6,
                             batch_size=4, bootstrap_iters=50)
    seen: list[dict] = []
    models = [BenchmarkModel(BASE, _loader(tiny_model_dir)), BenchmarkModel("same", _loader(tiny_model_dir)),
              BenchmarkModel("other", _loader(other_model_dir))]
    result = run_benchmark(models, config, on_progress=seen.append)
    assert set(result["tasks"]) == {"tune_arena_probe", "tune_arena_probe_mc", "tune_arena_tickets"}
    for task, rows in result["tasks"].items():
        assert set(rows) == {BASE, "same", "other"}, task
        for row in rows.values():
            assert 0.0 <= row[row["metric"]] <= 1.0 and row["n"] == 6 and row["stderr"] is not None
        same = result["deltas"]["same"][task]
        assert same["delta"] == 0.0 and same["n"] == 6  # same weights, same examples: nothing changed
        other = result["deltas"]["other"][task]
        assert other["low"] <= other["delta"] <= other["high"]
        assert other["run"] - other["base"] == pytest.approx(other["delta"], abs=1e-6)
    mc = result["tasks"]["tune_arena_probe_mc"]
    assert mc[BASE]["acc"] == mc["same"]["acc"]
    assert result["tasks"]["tune_arena_probe"][BASE]["metric"] == "contains"
    stages = {(event["model"], event["stage"]) for event in seen}
    assert {(BASE, "loglikelihood"), (BASE, "generate_until"), ("other", "done")} <= stages
    assert all(event["done"] <= event["total"] for event in seen)


def test_a_group_is_reported_with_its_tasks_and_a_pooled_delta(tiny_model_dir, other_model_dir):
    config = BenchmarkConfig(tasks=["tune_arena_knowledge"], limit=2, batch_size=8, bootstrap_iters=20)
    result = run_benchmark([BenchmarkModel(BASE, _loader(tiny_model_dir)),
                            BenchmarkModel("other", _loader(other_model_dir))], config)
    members = result["groups"]["tune_arena_knowledge"]
    assert len(members) == 10 and list(result["tasks"])[0] == "tune_arena_knowledge"
    assert list(result["tasks"])[1:] == members  # the group first, then its subjects
    pooled = result["deltas"]["other"]["tune_arena_knowledge"]
    assert pooled["n"] == 20  # two questions per subject, paired across all ten


def test_a_users_own_task_folder_runs_beside_the_bundled_ones(tiny_model_dir, tmp_path):
    config = BenchmarkConfig(tasks=["team_colours"], include=[str(_user_task(tmp_path))], bootstrap_iters=10)
    result = run_benchmark([BenchmarkModel(BASE, _loader(tiny_model_dir))], config)
    assert result["tasks"]["team_colours"][BASE]["n"] == 5


def test_the_engine_decoder_backend_generates_what_the_harness_backend_does(tiny_model_dir):
    from lm_eval.api.instance import Instance

    loaded = load_causal_lm(str(tiny_model_dir), device="cpu", dtype="fp32")
    requests = [("The capital of France is", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}),
                ("What is the Orbit 3", {"until": ["Paris"], "max_gen_toks": 7}),
                ("Summarize the customer's message", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False})]
    answers = {}
    for backend in ("hf", "engine"):
        lm = make_lm(loaded, backend=backend, batch_size=2)
        answers[backend] = lm.generate_until([Instance("generate_until", {}, request, number)
                                              for number, request in enumerate(requests)])
    assert [text.strip() for text in answers["hf"]] == answers["engine"]  # greedy: the same words, stripped
    assert all(answers["engine"]) and len({len(text) for text in answers["engine"]}) > 1


def test_a_stop_event_ends_the_benchmark_between_chunks(tiny_model_dir):
    stop = threading.Event()
    stop.set()
    with pytest.raises(BenchmarkStopped):
        run_benchmark([BenchmarkModel(BASE, _loader(tiny_model_dir))],
                      BenchmarkConfig(tasks=["tune_arena_probe_mc"], limit=2), stop=stop)


def test_prompt_tuning_logits_line_up_with_the_input_tokens(tiny_model_dir):
    import peft

    loaded = load_causal_lm(str(tiny_model_dir), device="cpu", dtype="fp32")
    model = peft.get_peft_model(loaded.model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    lm = make_lm(type(loaded)(model.eval(), loaded.tokenizer, loaded.resolved, "cpu", torch.float32, 0.0))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    logits = lm._model_call(ids)
    assert logits.shape[:2] == (1, 5)  # the 4 virtual positions cut
    with torch.no_grad():
        full = model(input_ids=ids).logits  # (1, 4 + 5, vocab)
    assert torch.equal(logits, full[:, 4:])


# --------------------------------------------------------------------------------------------------------------------
# The engine and the CLI
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("bench-ws")
    data = write_rows(root / "train.jsonl", [{"instruction": f"Say colour {i}", "output": "red"} for i in range(8)])
    result = training.train(tiny_config(data, tiny_model_dir, method="lora", max_steps=2), runs_root=root / "runs")
    return Path(result.run_dir)


def test_the_engine_saves_a_benchmark_and_reads_back_each_runs_forgetting(tmp_path, tiny_model_dir, lora_run):
    engine = Engine(tmp_path / "ws", device="cpu", dtype="fp32")
    result = engine.benchmark(["tune_arena_probe_mc"], adapters=[str(lora_run)], model=str(tiny_model_dir), limit=4,
                              batch_size=4)
    run_id = lora_run.name
    saved = json.loads(Path(result["path"]).read_text(encoding="utf-8"))
    assert Path(result["path"]).parent == engine.workspace.benchmarks and saved["id"] == result["id"]
    assert set(saved["tasks"]["tune_arena_probe_mc"]) == {BASE, run_id}
    assert saved["models"][run_id]["method"] == "lora"
    assert engine.list_benchmarks()[0]["id"] == result["id"]
    assert engine.load_benchmark(result["id"])["deltas"] == saved["deltas"]
    forgetting = engine.forgetting(run_id)
    assert forgetting["benchmark"] == result["id"]
    assert forgetting["deltas"]["tune_arena_probe_mc"]["n"] == 4
    with pytest.raises(ConfigError, match="no saved benchmark"):
        engine.load_benchmark("20990101-nothing")


def test_benchmark_ids_are_made_and_checked_by_the_one_name_rule(tmp_path):
    """core.limits.new_id makes a benchmark's id as it makes an evaluation's; load_benchmark takes any id it makes
    (the longest: 61 characters) and the demo's, and refuses what check_name refuses, in the same words as before."""
    import re

    from core.arena.evals import new_eval_id
    from core.io import write_json
    from core.limits import check_name, new_id

    engine = Engine(tmp_path / "ws")
    def shape(stem: str) -> str:
        return r"\d{8}-\d{6}-" + stem + "-[0-9a-f]{4}"

    longest = new_id("tune_arena_probe_mc_" + "x" * 40, "benchmark")  # the stem is cut to 40 characters
    assert re.fullmatch(shape("tune_arena_probe_mc_" + "x" * 20), longest)
    assert re.fullmatch(shape("tune_arena_probe_mc-tune_arena_probe_mc"), new_id("-".join(["tune_arena_probe_mc"] * 3),
                                                                                  "benchmark"))
    assert len(longest) == 61 and check_name(longest, "benchmark") == longest
    assert re.fullmatch(shape("benchmark"), new_id(" ./ ", "benchmark"))
    assert re.fullmatch(shape("my-data"), new_id("my data", "eval"))
    assert new_eval_id("folder/my data.jsonl")[16:-5] == new_id("my data", "eval")[16:-5] == "my-data"
    write_json(engine.benchmarks_dir / f"{longest}.json", {"id": longest, "deltas": {}})
    assert engine.load_benchmark(longest)["id"] == longest
    assert engine.load_benchmark("demo-benchmark")["id"] == "demo-benchmark"
    for bad in ("../runs/x", ".hidden", "a/b", "x" * 65, "", "a b", None):
        with pytest.raises(ConfigError, match=r"^benchmark: .* is not a benchmark id$"):
            engine.load_benchmark(bad)


def test_a_visitor_runs_only_bundled_tasks_and_no_task_folders(tmp_path, tiny_model_dir):
    engine = Engine(tmp_path / "ws")
    visitor = engine.scoped(tmp_path / "ws" / "visitors" / "anon-1", owner="anon-1")
    with pytest.raises(ConfigError, match="only the bundled tasks"):
        visitor.benchmark(["boolq"], model=str(tiny_model_dir))
    with pytest.raises(ConfigError, match="^include:"):
        visitor.benchmark(["tune_arena_probe"], include=[str(tmp_path)], model=str(tiny_model_dir))


def test_cli_lists_the_offline_tasks_as_json(capsys):
    assert main(["benchmark", "--list", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)["tasks"]}
    assert BUNDLED <= names


@pytest.mark.parametrize("argv, needle", [
    (["benchmark", "--json"], "--tasks"),
    (["benchmark", "--tasks", "tune_arena_probe", "--limit", "0", "--json"], "limit:"),
    (["benchmark", "--tasks", "hellaswag", "--limit", "5", "--json"], "hellaswag needs its dataset"),
])
def test_cli_bad_benchmarks_exit_2_with_one_error_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and captured.out == ""


def test_a_classification_head_takes_the_multiple_choice_task_over_its_labels(tmp_path, tiny_model_dir):
    labels = ["billing", "shipping", "technical", "returns", "account", "feedback"]
    data = write_rows(tmp_path / "tickets.jsonl", [{"text": f"{label} question number {i}", "label": label}
                                                    for label in labels for i in range(2)])
    run = training.train(tiny_config(data, tiny_model_dir, objective="classification", method="full", max_steps=2,
                                     val_fraction=0.0, val_data=data), runs_root=tmp_path / "runs")
    engine = Engine(tmp_path / "ws", device="cpu", dtype="fp32")
    result = engine.benchmark(["tune_arena_tickets", "tune_arena_probe"], adapters=[run.run_dir],
                              model=str(tiny_model_dir), limit=4, batch_size=4)
    run_id = Path(run.run_dir).name
    tickets = result["tasks"]["tune_arena_tickets"]
    assert set(tickets) == {BASE, run_id} and tickets[run_id]["n"] == 4 and 0 <= tickets[run_id]["acc"] <= 1
    assert run_id not in result["tasks"]["tune_arena_probe"]  # a head writes no text
    assert "generate_until" in result["models"][run_id]["not_applicable"]["tune_arena_probe"]
    assert result["deltas"][run_id]["tune_arena_tickets"]["n"] == 4


def test_a_users_task_over_a_missing_local_file_is_named_as_such(tmp_path):
    (tmp_path / "lost.yaml").write_text(
        "task: team_lost\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'nowhere.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{options}}\"\n"
        "doc_to_target: gold\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        run_benchmark([BenchmarkModel(BASE, _never_loaded)],
                      BenchmarkConfig(tasks=["team_lost"], include=[str(tmp_path)]))
    message = str(caught.value)
    assert message.startswith("tasks: team_lost could not be loaded") and "Hugging Face Hub" not in message
