"""Training jobs in background threads, observed by polling: the app's Train tab sits on this.

One job trains at a time per process (one model in memory on a small machine). ``JobQueue`` holds them in the
order they were asked for; ``TrainingJobs`` is one owner's handle on it: ``start(config)`` returns at once,
``snapshot()`` gives the live state (step, loss curves, tokens/s, ETA, or the place in the queue), ``stop()`` asks
the running job to checkpoint and end (or takes a queued one out of the queue), ``resume(run)`` continues a stopped
or killed run.

A single-user engine has a queue that keeps no one waiting: a second start while a job runs is refused with
``JobBusyError``, as before. A shared instance (core.engine.visitors) gives every visitor a handle on one queue that
lets jobs wait their turn ("starts after 1 other job"); each visitor has at most one job queued or running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import JobBusyError
from core.runs import Run, new_run_id
from core.training import TrainingConfig, TrainResult, release_memory

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "preparing", "running", "stopping")
LOCAL = "local"  # the owner of every job of a single-user engine


@dataclass
class JobState:
    """What the UI shows of one owner's current (or last) training job. Times in seconds."""

    state: str = "idle"  # idle, queued, preparing, running, stopping, completed, stopped, failed, cancelled
    run_id: str | None = None
    run_dir: str | None = None
    method: str | None = None
    step: int = 0
    total: int = 0
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    result: dict[str, Any] | None = None
    started: float | None = None  # time.time() the job was asked for
    finished: float | None = None
    ahead: int = 0  # while queued: the jobs that go first (the running one included)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


@dataclass
class _Job:
    owner: str
    state: JobState
    work: Callable[..., TrainResult]
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class JobQueue:
    """The jobs of one process, first asked first trained, one at a time. ``waiting``: how many may wait behind
    the running one (0: a start while one runs is refused)."""

    def __init__(self, waiting: int = 0) -> None:
        self.waiting = waiting
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []  # the running job (if any) first, then the queued ones in order
        self._last: dict[str, _Job] = {}  # owner -> their newest job, ended or not
        self._worker: threading.Thread | None = None

    def submit(self, job: _Job) -> None:
        """Queue ``job``; refused (JobBusyError) when its owner has a job queued or running, or the queue is full."""
        with self._lock:
            mine = next((queued for queued in self._jobs if queued.owner == job.owner), None)
            if mine is not None:
                raise JobBusyError(f"training: run {mine.state.run_id} is still {mine.state.state}; stop it or wait "
                                   "for it to finish before starting another")
            if self._jobs and len(self._jobs) > self.waiting:
                running = self._jobs[0].state
                if not self.waiting:
                    raise JobBusyError(f"training: run {running.run_id} is still {running.state}; stop it or wait "
                                       "for it to finish before starting another")
                raise JobBusyError(f"training: {len(self._jobs)} jobs are queued or running on this app, its "
                                   "most; try again when one has finished")
            self._jobs.append(job)
            self._last[job.owner] = job
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, name="training-jobs", daemon=True)
                self._worker.start()

    def current(self, owner: str) -> tuple[_Job | None, int]:
        """(``owner``'s queued or running job, else their last one, else None; the jobs ahead of it)."""
        with self._lock:
            for position, job in enumerate(self._jobs):
                if job.owner == owner:
                    return job, position
            return self._last.get(owner), 0

    def cancel(self, job: _Job) -> bool:
        """Take a job that has not started out of the queue. False when it has started (or ended)."""
        with self._lock:
            if job not in self._jobs or job.state.state != "queued":
                return False
            self._jobs.remove(job)
            job.state.state, job.state.finished = "cancelled", time.time()
        job.done.set()
        logger.info("training job %s cancelled while queued", job.state.run_id)
        return True

    def stop(self, job: _Job) -> bool:
        """Ask a job that has started to checkpoint and end. False when it is not preparing or running."""
        with self._lock:
            if job.state.state not in ("preparing", "running"):
                return job.state.state == "stopping"
            job.state.state = "stopping"
        job.stop.set()
        return True

    def copy_state(self, job: _Job, ahead: int) -> JobState:
        with self._lock:
            state = JobState(**asdict(job.state))
            state.train_curve = list(job.state.train_curve)
            state.val_curve = list(job.state.val_curve)
            state.ahead = ahead if state.state == "queued" else 0
            return state

    # internals -------------------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                job = self._jobs[0] if self._jobs else None
                if job is None:
                    self._worker = None
                    return
                job.state.state = "preparing"
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._jobs.remove(job)
                job.done.set()

    def _run(self, job: _Job) -> None:
        def on_step(step: int, total: int, loss: float, lr: float, rate: float, eta: float) -> None:
            with self._lock:
                state = job.state
                if state.state == "preparing":
                    state.state = "running"
                state.step, state.total, state.loss, state.lr = step, total, loss, lr
                state.tokens_per_s, state.eta_s = rate, eta
                state.train_curve.append((step, loss))

        def on_eval(step: int, val_loss: float) -> None:
            with self._lock:
                if job.state.state == "preparing":  # the first validation pass: the model is loaded
                    job.state.state = "running"
                job.state.val_curve.append((step, val_loss))

        try:
            result = job.work(on_step=on_step, on_eval=on_eval, stop_event=job.stop)
        except Exception as err:  # the run's status already says failed; keep one line for the UI
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            logger.warning("training job failed: %s", message)
            with self._lock:
                job.state.state, job.state.error, job.state.finished = "failed", message, time.time()
        else:
            with self._lock:
                job.state.state = "completed" if result.state == "completed" else "stopped"
                job.state.result = result.contract()
                job.state.finished = time.time()
        finally:
            release_memory()  # the run's model, optimizer and activations are unreachable now: free them first


class TrainingJobs:
    """One owner's handle on a job queue. ``train``/``resume`` are the owner's engine's (run folders in its
    workspace); ``check`` (optional) refuses a config before it is queued (a visitor's quotas)."""

    def __init__(self, train: Callable[..., TrainResult], resume: Callable[..., TrainResult], runs_root: Path, *,
                 queue: JobQueue | None = None, owner: str = LOCAL,
                 check: Callable[[TrainingConfig], None] | None = None) -> None:
        self._train = train
        self._resume = resume
        self._runs_root = Path(runs_root)
        self.queue = queue or JobQueue()
        self.owner = owner
        self._check = check

    def snapshot(self) -> JobState:
        """A copy of the owner's current (or last) job's state, safe to read while it runs."""
        job, ahead = self.queue.current(self.owner)
        return JobState() if job is None else self.queue.copy_state(job, ahead)

    def start(self, config: TrainingConfig, *, run_dir: str | Path | None = None) -> JobState:
        """Train ``config`` in the background; returns the first state (``preparing``, or ``queued`` behind
        another owner's job)."""
        if self._check is not None:
            self._check(config)
        folder = Path(run_dir) if run_dir else self._runs_root / new_run_id(config.method)
        return self._submit(lambda **callbacks: self._train(config, run_dir=folder, **callbacks), folder,
                            config.method, [], [])

    def resume(self, run_dir: str | Path) -> JobState:
        """Continue a stopped or killed run from its latest checkpoint, in the background."""
        run = Run(Path(run_dir))
        run.check_resumable()
        checkpoint = run.latest_checkpoint()
        last = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
        train_curve = [point for point in run.train_curve() if point[0] <= last]
        val_curve = [point for point in run.val_curve() if point[0] <= last]
        return self._submit(lambda **callbacks: self._resume(run.path, **callbacks), run.path,
                            run.config.get("method"), train_curve, val_curve)

    def stop(self) -> bool:
        """Ask the owner's running job to save a checkpoint and end, or take their queued job out of the queue.
        False when they have neither."""
        job, _ = self.queue.current(self.owner)
        if job is None:
            return False
        return self.queue.cancel(job) or self.queue.stop(job)

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the owner's current job ends (or ``timeout`` seconds pass); returns the state."""
        job, _ = self.queue.current(self.owner)
        if job is not None:
            job.done.wait(timeout)
        return self.snapshot()

    def _submit(self, work: Callable[..., TrainResult], folder: Path, method: str | None,
                train_curve: list[tuple[int, float]], val_curve: list[tuple[int, float]]) -> JobState:
        state = JobState(state="queued", run_id=folder.name, run_dir=str(folder), method=method,
                         train_curve=train_curve, val_curve=val_curve, started=time.time())
        self.queue.submit(_Job(self.owner, state, work))
        snapshot = self.snapshot()
        if snapshot.state == "queued" and not snapshot.ahead:  # the worker has not picked it up yet
            snapshot.state = "preparing"
        return snapshot
