"""One training job at a time in a background thread, observed by polling: the app's Train tab sits on this.

``TrainingJobs.start(config)`` returns at once; ``snapshot()`` gives the live state (step, loss curves, tokens/s,
ETA); ``stop()`` asks the loop to checkpoint and end; ``resume(run)`` continues a stopped or killed run. A second
start while a job runs is refused with ``JobBusyError``.
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

ACTIVE = ("preparing", "running", "stopping")


@dataclass
class JobState:
    """What the UI shows of the current (or last) training job. Times in seconds."""

    state: str = "idle"  # idle, preparing, running, stopping, completed, stopped, failed
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
    started: float | None = None  # time.time()
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


class TrainingJobs:
    """The background trainer of one engine. ``train``/``resume`` are the engine's (run folder in its workspace)."""

    def __init__(self, train: Callable[..., TrainResult], resume: Callable[..., TrainResult], runs_root: Path) -> None:
        self._train = train
        self._resume = resume
        self._runs_root = Path(runs_root)
        self._lock = threading.Lock()
        self._state = JobState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()

    def snapshot(self) -> JobState:
        """A copy of the current state (safe to read while the job runs)."""
        with self._lock:
            state = JobState(**{**asdict(self._state)})
            state.train_curve = list(self._state.train_curve)
            state.val_curve = list(self._state.val_curve)
            return state

    def start(self, config: TrainingConfig, *, run_dir: str | Path | None = None) -> JobState:
        """Start training ``config`` in the background; returns the first state (``preparing``)."""
        folder = Path(run_dir) if run_dir else self._runs_root / new_run_id(config.method)
        return self._launch(lambda **callbacks: self._train(config, run_dir=folder, **callbacks), folder,
                            config.method, [], [])

    def resume(self, run_dir: str | Path) -> JobState:
        """Continue a stopped or killed run from its latest checkpoint, in the background."""
        run = Run(Path(run_dir))
        run.check_resumable()
        checkpoint = run.latest_checkpoint()
        last = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
        train_curve = [point for point in run.train_curve() if point[0] <= last]
        val_curve = [point for point in run.val_curve() if point[0] <= last]
        return self._launch(lambda **callbacks: self._resume(run.path, **callbacks), run.path,
                            run.config.get("method"), train_curve, val_curve)

    def stop(self) -> bool:
        """Ask the running job to save a checkpoint and end. False when no job runs."""
        with self._lock:
            if not self._state.active:
                return False
            self._state.state = "stopping"
        self._stop.set()
        return True

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the current job ends (or ``timeout`` seconds pass); returns the state."""
        self._done.wait(timeout)
        return self.snapshot()

    # internals -------------------------------------------------------------------------------------------------------

    def _launch(self, work: Callable[..., TrainResult], folder: Path, method: str | None,
                train_curve: list[tuple[int, float]], val_curve: list[tuple[int, float]]) -> JobState:
        with self._lock:
            if self._state.active:
                raise JobBusyError(f"training: run {self._state.run_id} is still {self._state.state}; "
                                   "stop it or wait for it to finish before starting another")
            self._state = JobState(state="preparing", run_id=folder.name, run_dir=str(folder), method=method,
                                   train_curve=train_curve, val_curve=val_curve, started=time.time())
            self._stop = threading.Event()
            self._done.clear()
            stop = self._stop
        self._thread = threading.Thread(target=self._body, args=(work, stop), name=f"train-{folder.name}",
                                        daemon=True)
        self._thread.start()
        return self.snapshot()

    def _body(self, work: Callable[..., TrainResult], stop: threading.Event) -> None:
        def on_step(step: int, total: int, loss: float, lr: float, rate: float, eta: float) -> None:
            with self._lock:
                state = self._state
                if state.state == "preparing":
                    state.state = "running"
                state.step, state.total, state.loss, state.lr = step, total, loss, lr
                state.tokens_per_s, state.eta_s = rate, eta
                state.train_curve.append((step, loss))

        def on_eval(step: int, val_loss: float) -> None:
            with self._lock:
                if self._state.state == "preparing":  # the first validation pass: the model is loaded
                    self._state.state = "running"
                self._state.val_curve.append((step, val_loss))

        try:
            result = work(on_step=on_step, on_eval=on_eval, stop_event=stop)
        except Exception as err:  # the run's status already says failed; keep one line for the UI
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            logger.warning("training job failed: %s", message)
            with self._lock:
                self._state.state, self._state.error, self._state.finished = "failed", message, time.time()
        else:
            with self._lock:
                state = self._state
                state.state = "completed" if result.state == "completed" else "stopped"
                state.result = result.contract()
                state.finished = time.time()
        finally:
            release_memory()  # the run's model, optimizer and activations are unreachable now: free them first
            self._done.set()
