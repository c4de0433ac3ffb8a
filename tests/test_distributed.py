"""Data-parallel training (core.distributed, core.cli.launch, the loop's shards): two CPU processes (gloo) train the
tiny model step for step as one process with the doubled batch, also sharded (FSDP, core.training.sharding), only
rank 0 writes the run, a killed two-process run resumes (with the same or another process count, sharded or not) to
the uninterrupted run's weights, and a bad start fails with one line and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import write_rows

from core.distributed import World, all_sum, current, shard

ROOT = Path(__file__).resolve().parent.parent
LOSS_TOL = 1e-4  # per-step loss, 1 vs 2 processes: the same sums in another order (float32)
WEIGHT_TOL = 1e-4  # largest absolute difference of any adapter weight after training


def test_shards_cover_the_batch_in_order_and_differ_by_at_most_one():
    items = list(range(7))
    shares = [shard(items, World(rank, 3)) for rank in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    assert [shard([1], World(rank, 2)) for rank in range(2)] == [[1], []]  # a share may be empty
    assert shard(items, World()) == items


def test_one_process_is_world_size_one_and_sums_are_its_own(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current() == World() and current().is_main and not current().distributed
    assert all_sum([1.5, 2]) == [1.5, 2.0]


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"method": "qlora"}, "method", "quantized"),
    ({"method": "prefix_tuning"}, "method", "virtual tokens"),
    ({"method": "adalora"}, "method", "rank allocator"),
    ({"objective": "classification"}, "objective", "data parallel"),
    ({"method": "freeze", "gradual_unfreezing": 2}, "gradual_unfreezing", "data parallel"),
])
def test_fsdp_refuses_state_it_cannot_shard_in_one_line(values, field, words):
    from core.errors import ConfigError
    from core.training import TrainingConfig

    with pytest.raises(ConfigError) as err:
        TrainingConfig(data="rows.jsonl", fsdp=True, **values)
    assert str(err.value).startswith(f"{field}:") and words in str(err.value) and "\n" not in str(err.value)
    TrainingConfig(data="rows.jsonl", **values)  # unsharded, the same run is fine


def test_an_accelerate_config_asking_for_fsdp_shards_the_run(monkeypatch):
    from core.training import TrainingConfig
    from core.training.sharding import requested

    config = TrainingConfig(data="rows.jsonl")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not requested(config) and requested(TrainingConfig(data="rows.jsonl", fsdp=True))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets from an FSDP config
    assert requested(config)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("dp-data")
    rows = [{"instruction": f"Name colour number {i}", "output": " ".join(["red", "green", "blue"][: 1 + i % 3])}
            for i in range(30)]
    return write_rows(folder / "train.jsonl", rows)


def _train(tmp_path: Path, data: str, model: Path, out: str, *extra: str, timeout: float = 240,
           method: str = "lora") -> dict:
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(tmp_path / "ws")}
    env.pop("WORLD_SIZE", None)
    no_dropout = ["--set", "dropout=0"] if method == "lora" else []
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--data", data, "--model", str(model),
                           "--method", method, "--device", "cpu", "--dtype", "fp32", "--val-fraction", "0",
                           *no_dropout, "--lr", "0.01", "--out", str(tmp_path / out), "--json", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _weights(run: Path, folder: str = "adapter") -> dict:
    from safetensors.torch import load_file

    return load_file(str(next((run / folder).glob("*.safetensors"))))


def _max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def test_two_processes_train_as_one_process_with_the_doubled_batch(tmp_path, data, tiny_model_dir):
    one = _train(tmp_path, data, tiny_model_dir, "one", "--batch-size", "6", "--max-steps", "5")
    # 3 examples per process per micro-batch, 2 micro-batches per step: uneven lengths, accumulation, two ranks
    two = _train(tmp_path, data, tiny_model_dir, "two", "--batch-size", "3", "--grad-accum", "1",
                 "--num-processes", "2", "--max-steps", "5")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["total_steps"] == one["total_steps"] == 5
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=LOSS_TOL)
    assert _max_difference(_weights(tmp_path / "one"), _weights(tmp_path / "two")) < WEIGHT_TOL
    metrics = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in metrics if "loss" in row] == [1, 2, 3, 4, 5]  # written once, by rank 0
    assert json.loads((tmp_path / "two" / "config.json").read_text())["num_processes"] == 2
    assert json.loads((tmp_path / "two" / "status.json").read_text())["state"] == "completed"


@pytest.mark.parametrize(("method", "folder"), [("lora", "adapter"), ("full", "model"), ("freeze", "weights")])
def test_two_sharded_processes_train_as_one_process_with_the_doubled_batch(tmp_path, data, tiny_model_dir, method,
                                                                            folder):
    extra = ["--lr", "0.001"] if method in ("full", "freeze") else []
    one = _train(tmp_path, data, tiny_model_dir, "one", "--batch-size", "6", "--max-steps", "4", "--val-fraction",
                 "0.2", *extra, method=method)
    # 3 + 3 rows per micro-batch, and 24 training rows: the last micro-batch of the epoch is whole, so add a run
    # whose shares run dry (grad accum 2 over 8 rows per process) below
    two = _train(tmp_path, data, tiny_model_dir, "two", "--batch-size", "3", "--num-processes", "2", "--fsdp",
                 "--max-steps", "4", "--val-fraction", "0.2", *extra, method=method)
    assert two["world_size"] == 2 and two["total_steps"] == one["total_steps"] == 4
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=LOSS_TOL)
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], abs=LOSS_TOL)  # every rank validated
    assert two["trainable_params"] == one["trainable_params"]  # counted before sharding
    assert _max_difference(_weights(tmp_path / "one", folder), _weights(tmp_path / "two", folder)) < WEIGHT_TOL
    assert json.loads((tmp_path / "two" / "config.json").read_text())["fsdp"] is True


def test_a_sharded_process_with_no_rows_still_takes_every_step(tmp_path, data, tiny_model_dir):
    """24 training rows, global micro-batch 10 over 4 processes: the third micro-batch holds 4 rows, 1 per process,
    and a batch of 10 over 4 ranks gives shares of 3, 3, 2, 2; with 3 processes and batch 4 the last holds 4 rows
    (2, 1, 1); a rank's empty share must still run its passes or the job hangs."""
    one = _train(tmp_path, data, tiny_model_dir, "one", "--batch-size", "9", "--max-steps", "3", "--val-fraction",
                 "0.2", "--grad-accum", "2")
    three = _train(tmp_path, data, tiny_model_dir, "three", "--batch-size", "3", "--num-processes", "3", "--fsdp",
                   "--max-steps", "3", "--val-fraction", "0.2", "--grad-accum", "2")
    assert three["train_loss"] == pytest.approx(one["train_loss"], abs=LOSS_TOL)
    assert _max_difference(_weights(tmp_path / "one"), _weights(tmp_path / "three")) < WEIGHT_TOL


def _kill_after_first_checkpoint(tmp_path: Path, data: str, model: Path, out: str, *extra: str) -> None:
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(tmp_path / "ws")}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--data", data, "--model", str(model),
                             "--method", "lora", "--device", "cpu", "--dtype", "fp32", "--val-fraction", "0",
                             "--set", "dropout=0", "--lr", "0.01", "--out", str(tmp_path / out), "--json", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    checkpoints = tmp_path / out / "checkpoints"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and not (checkpoints.is_dir() and any(
                not path.name.startswith(".") for path in checkpoints.iterdir())):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    finally:
        proc.wait(timeout=30)
    status = json.loads((tmp_path / out / "status.json").read_text())
    assert status["state"] == "running" and 0 < status["step"] < 60


STEPS = ["--max-steps", "60", "--checkpoint-every", "10"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, data, tiny_model_dir) -> tuple[dict, Path]:
    """The uninterrupted one-process run (batch 6) the resumed runs must end as."""
    folder = tmp_path_factory.mktemp("whole")
    return _train(folder, data, tiny_model_dir, "whole", "--batch-size", "6", *STEPS), folder / "whole"


@pytest.fixture(scope="module")
def taught(tmp_path_factory, data, tiny_model_dir) -> str:
    """A tiny run taught to answer with colours: texts to compare across process counts."""
    folder = tmp_path_factory.mktemp("taught")
    return _train(folder, data, tiny_model_dir, "taught", "--batch-size", "6", "--max-steps", "40", "--lr",
                  "0.02")["run_dir"]


@pytest.mark.parametrize(("resume_processes", "sharded"), [("2", False), ("1", False), ("1", True)])
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path, data, tiny_model_dir, whole,
                                                                       resume_processes, sharded):
    """Also a sharded (FSDP) run, resumed by one unsharded process: its checkpoint holds whole tensors."""
    steps = [*STEPS, "--fsdp"] if sharded else STEPS
    whole, whole_dir = whole
    _kill_after_first_checkpoint(tmp_path, data, tiny_model_dir, "killed", "--batch-size", "3",
                                 "--num-processes", "2", *steps)
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(tmp_path / "ws")}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(tmp_path / "killed"),
                           "--num-processes", resume_processes, "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads(proc.stdout)
    assert resumed["state"] == "completed" and resumed["world_size"] == int(resume_processes)
    assert resumed["train_loss"][-1] == pytest.approx(whole["train_loss"][-1], abs=LOSS_TOL)
    assert _max_difference(_weights(whole_dir), _weights(tmp_path / "killed")) < WEIGHT_TOL


def test_a_bad_start_is_one_line_and_a_failing_rank_ends_the_job(tmp_path, data, tiny_model_dir):
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(tmp_path / "ws")}
    env.pop("WORLD_SIZE", None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{not json\n', encoding="utf-8")
    base = [sys.executable, "-m", "core", "train", "--model", str(tiny_model_dir), "--device", "cpu",
            "--num-processes", "2", "--max-steps", "2", "--json"]
    proc = subprocess.run([*base, "--data", str(bad)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "bad.jsonl line 2" in errors[0] and proc.stdout == ""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}", encoding="utf-8")  # rank 0 refuses this folder
    start = time.monotonic()
    proc = subprocess.run([*base, "--data", data, "--out", str(tmp_path / "taken")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "already holds a run" in errors[0]
    assert time.monotonic() - start < 100  # rank 1, waiting for the folder, was ended rather than left waiting


# how long, where, and how many rows shared a generation batch: facts of the run, not of the results
TIMES = {"generate_s", "latency_s", "batch_s", "wall_s", "metrics_s", "eval_dir", "report", "batch_size"}


def _without_times(value):
    if isinstance(value, dict):
        return {key: _without_times(item) for key, item in value.items() if key not in TIMES}
    if isinstance(value, list):
        return [_without_times(item) for item in value]
    if isinstance(value, float):  # embedding similarity: the same vectors, batched differently (~1e-8)
        return round(value, 6)
    return value


def test_an_evaluation_over_two_processes_writes_the_one_process_results(tmp_path, data, tiny_model_dir, taught):
    test = write_rows(tmp_path / "test.jsonl", [{"instruction": f"Name colour number {i}", "task": "qa",
                                                 "output": ["red", "green blue", "blue"][i % 3]} for i in range(9)])
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(tmp_path / "ws")}
    env.pop("WORLD_SIZE", None)
    saved = {}
    for processes in ("1", "2"):
        out = tmp_path / f"eval-{processes}"
        proc = subprocess.run([sys.executable, "-m", "core", "eval", "--data", test, "--model", str(tiny_model_dir),
                               "--variants", "finetuned,few_shot", "--adapter", taught,
                               "--few-shot", data, "--max-new-tokens", "8",
                               "--out", str(out), "--num-processes", processes, "--json"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["n"] == 9  # one document, from rank 0
        saved[processes] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    one, two = saved["1"], saved["2"]
    assert [row["id"] for row in two["rows"]] == [row["id"] for row in one["rows"]]  # example order kept
    assert sum(bool(row["answer"]) for row in one["rows"]) >= 9  # the taught run answers: texts to compare
    for key in ("rows", "summary", "by_task", "comparisons", "verdict", "cost"):
        assert _without_times(two[key]) == _without_times(one[key]), key


def test_a_benchmark_over_two_processes_scores_as_one_process(tmp_path, tiny_model_dir, taught):
    run = taught
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(tmp_path / "ws")}
    env.pop("WORLD_SIZE", None)
    results = {}
    for processes in ("1", "2"):
        proc = subprocess.run([sys.executable, "-m", "core", "benchmark", "--tasks",
                               "tune_arena_probe,tune_arena_probe_mc", "--model", str(tiny_model_dir), "--adapter",
                               run, "--limit", "10", "--num-processes", processes, "--json"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[processes] = json.loads(proc.stdout)
    one, two = results["1"], results["2"]
    assert _without_times(two["tasks"]) == _without_times(one["tasks"])
    assert two["deltas"] == one["deltas"]
    assert len(list((tmp_path / "ws" / "benchmarks").glob("*.json"))) == 2  # one file per benchmark, by rank 0


def test_an_fsdp_accelerate_config_refuses_a_method_it_cannot_shard(tmp_path, data, tiny_model_dir, monkeypatch):
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP: the run is sharded whatever its config
    says, so what cannot shard is refused before a run folder exists."""
    from training_helpers import tiny_config

    from core import training
    from core.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="^method: prompt_tuning's virtual tokens .* \\(without fsdp\\)"):
        training.train(tiny_config(data, tiny_model_dir, method="prompt_tuning"), runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
