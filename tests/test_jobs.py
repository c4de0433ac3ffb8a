"""core.engine.jobs: one background training at a time, live state, stop and resume — on fakes and on the tiny model."""

from __future__ import annotations

import threading

import pytest

from core.engine import Engine
from core.engine.jobs import TrainingJobs
from core.errors import JobBusyError
from core.training import TrainResult
from tests.training_helpers import ROWS, tiny_config, write_rows


def result(state: str = "completed", **extra) -> TrainResult:
    values = dict(run_dir="r", run_id="r", method="lora", state=state, steps=3, total_steps=3, trainable_params=1,
                  total_params=10, adapter_bytes=1, train_loss=[1.0], final_train_loss=1.0, first_val_loss=2.0,
                  final_val_loss=1.5, tokens_per_s=9.0, peak_mem_bytes=1, wall_s=0.1, train_examples=3,
                  val_examples=1, data_sha256="x", device="cpu", dtype="fp32")
    return TrainResult(**{**values, **extra})


class Scripted:
    """A fake train(): reports steps, then waits on ``release`` (or the stop event) before returning."""

    def __init__(self, steps: int = 3, fail: Exception | None = None) -> None:
        self.steps, self.fail = steps, fail
        self.go = threading.Event()
        self.go.set()
        self.release = threading.Event()
        self.reported = threading.Event()
        self.calls: list[dict] = []

    def __call__(self, *args, on_step=None, on_eval=None, stop_event=None, **kwargs):
        self.calls.append({"args": args, **kwargs})
        self.go.wait(5)
        on_eval(0, 3.0)
        for step in range(1, self.steps + 1):
            on_step(step, self.steps, 3.0 - step * 0.5, 1e-3, 100.0, float(self.steps - step))
        on_eval(self.steps, 1.5)
        self.reported.set()
        while not self.release.wait(0.01):
            if stop_event.is_set():
                return result("stopped")
        if self.fail:
            raise self.fail
        return result()


def test_a_job_reports_live_curves_and_completes(tmp_path):
    fake = Scripted()
    fake.go.clear()  # hold the fake before its first step
    jobs = TrainingJobs(fake, fake, tmp_path)
    first = jobs.start(tiny_config("data.jsonl", "base"))
    assert first.state == "preparing" and first.active and first.run_dir.startswith(str(tmp_path))
    fake.go.set()
    assert fake.reported.wait(5)
    live = jobs.snapshot()
    assert live.state == "running" and (live.step, live.total) == (3, 3) and live.loss == pytest.approx(1.5)
    assert live.train_curve == [(1, 2.5), (2, 2.0), (3, 1.5)] and live.val_curve == [(0, 3.0), (3, 1.5)]
    assert live.eta_s == 0.0 and live.tokens_per_s == 100.0
    live.train_curve.append((9, 9.0))  # a snapshot is a copy
    assert len(jobs.snapshot().train_curve) == 3
    fake.release.set()
    done = jobs.wait(5)
    assert done.state == "completed" and not done.active and done.result["final_val_loss"] == 1.5
    assert fake.calls[0]["run_dir"] == tmp_path / first.run_id


def test_a_second_start_is_refused_while_one_runs(tmp_path):
    fake = Scripted()
    jobs = TrainingJobs(fake, fake, tmp_path)
    jobs.start(tiny_config("data.jsonl", "base"))
    assert fake.reported.wait(5)
    with pytest.raises(JobBusyError, match="still running; stop it or wait"):
        jobs.start(tiny_config("data.jsonl", "base"))
    fake.release.set()
    jobs.wait(5)
    jobs.start(tiny_config("data.jsonl", "base"))  # allowed once the first ended
    fake.release.set()
    assert jobs.wait(5).state == "completed" and len(fake.calls) == 2


def test_stop_ends_the_job_as_stopped(tmp_path):
    fake = Scripted()
    jobs = TrainingJobs(fake, fake, tmp_path)
    assert jobs.stop() is False  # nothing runs yet
    jobs.start(tiny_config("data.jsonl", "base"))
    assert fake.reported.wait(5)
    assert jobs.stop() is True and jobs.snapshot().state == "stopping"
    assert jobs.wait(5).state == "stopped"


def test_a_failure_is_kept_as_one_line(tmp_path):
    fake = Scripted(fail=RuntimeError("out of memory\ntraceback lines"))
    fake.release.set()
    jobs = TrainingJobs(fake, fake, tmp_path)
    jobs.start(tiny_config("data.jsonl", "base"))
    done = jobs.wait(5)
    assert done.state == "failed" and done.error == "out of memory" and not done.active


def test_resume_refuses_what_cannot_continue(tmp_path):
    jobs = TrainingJobs(Scripted(), Scripted(), tmp_path)
    with pytest.raises(ValueError, match="not a run folder"):
        jobs.resume(tmp_path / "nothing")
    done = tmp_path / "done"
    done.mkdir()
    (done / "config.json").write_text('{"method": "lora"}')
    (done / "status.json").write_text('{"state": "completed"}')
    with pytest.raises(ValueError, match="already completed"):
        jobs.resume(done)


def test_real_training_stops_then_resumes_to_the_end(tmp_path, tiny_model_dir):
    """The engine's worker on the tiny model: stop after the first steps, resume, finish; curves continue."""
    engine = Engine(tmp_path / "ws", device="cpu", dtype="fp32")
    data = write_rows(tmp_path / "train.jsonl", ROWS * 4)
    config = tiny_config(data, tiny_model_dir, max_steps=12, batch_size=2, checkpoint_every=2, eval_every=4,
                         val_fraction=0.25)
    first = engine.jobs.start(config)
    # stop as soon as a step is reported: the loop checkpoints at the next step boundary and ends
    for _ in range(500):
        if engine.jobs.snapshot().step >= 1:
            break
        threading.Event().wait(0.02)
    engine.jobs.stop()
    stopped = engine.jobs.wait(60)
    assert stopped.state == "stopped" and 1 <= stopped.step < 12
    run = engine.runs.get(first.run_id)
    assert run.state == "stopped" and run.latest_checkpoint() is not None
    engine.jobs.resume(run.path)
    finished = engine.jobs.wait(120)
    assert finished.state == "completed" and finished.step == 12 and finished.result["steps"] == 12
    steps = [step for step, _ in finished.train_curve]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # each step once, in order, across the resume
    assert engine.runs.get(first.run_id).state == "completed"
