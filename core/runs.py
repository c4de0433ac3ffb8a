"""The run store: one folder per training run under ``<workspace>/runs/<run-id>/``.

    config.json      the TrainingConfig (and the resolved method settings)
    status.json      {"state": running|completed|stopped|failed, "error", "step", "total_steps", "updated",
                      "owner": {"pid", "host", "started"} while running}
    metrics.jsonl    one row per logged step ({"step","loss","lr",...}) and per evaluation ({"step","val_loss"})
    result.json      the summary (trainable params, adapter bytes, losses, tokens/s, peak memory, wall time)
    adapter/         PEFT methods: adapter_config.json + adapter_model.safetensors
    model/           full fine-tuning: a transformers model folder (safetensors) + tokenizer
    weights/         layer-wise: trained.safetensors (only the trained tensors) + weights.json
    checkpoints/     step-00000N/ trainable.safetensors, optimizer.safetensors, state.json (latest K kept)
    card.md          a readable summary

Every JSON/Markdown file is written to a temporary file and renamed, so a reader never sees half a file.
Nothing here imports torch; loading trained weights lives in core.training.

A process killed mid-run cannot record that it died: its status.json still says running. ``Run.state`` therefore
reads a running run whose owner process is gone (pid not alive on this host, or alive but started at another
time: a reused pid) as ``interrupted`` (resumable and deletable); a status without an owner (older runs, or one
written on another host) is read as interrupted once it has not been updated for ``STALE_S``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, RunStateError
from core.io import append_jsonl, read_json, read_jsonl, remove_folder, write_atomic, write_json
from core.limits import check_name, child_folder, writable_folder

logger = logging.getLogger(__name__)

STATES = ("running", "completed", "stopped", "failed")
"""What status.json may say. ``Run.state`` adds ``interrupted`` (running, but its process is gone) and ``unknown``."""
STALE_S = 15 * 60
"""A running status that names no owner this host can check and is this old (seconds) was probably killed."""


@dataclass(frozen=True)
class SaveFormat:
    """How a method saves its trained weights in the run folder: ``folder``/``weights_file`` (safetensors)."""

    name: str
    folder: str
    weights_file: str
    description: str


PEFT_FORMAT = "peft"
FULL_FORMAT = "full"
PARTIAL_FORMAT = "partial"
SAVE_FORMATS = {fmt.name: fmt for fmt in (
    SaveFormat(PEFT_FORMAT, "adapter", "adapter_model.safetensors", "PeftModel.save_pretrained's adapter folder"),
    SaveFormat(FULL_FORMAT, "model", "model.safetensors", "a whole transformers model folder with its tokenizer"),
    SaveFormat(PARTIAL_FORMAT, "weights", "trained.safetensors", "only the trained tensors of the base model"),
)}
WEIGHT_FOLDERS = tuple(fmt.folder for fmt in SAVE_FORMATS.values())


def _read_saved(path: Path) -> Any:
    """A run's JSON file; a damaged one (cut short, edited by hand) is a ConfigError naming it: the person's to fix
    or delete, not a bug."""
    try:
        return read_json(path)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def new_run_id(method: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{method.replace('_', '-')}-{secrets.token_hex(2)}"


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, 2 decimals; 0.0 when it runs but that cannot be read), or None
    if it is gone or a zombie."""
    try:
        import psutil
    except ImportError:  # without psutil only the pid is checked (a reused pid then reads as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return None
        return round(process.create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # another user's process: it exists
        return 0.0


def process_owner() -> dict[str, Any]:
    """This process as the owner of a running run: pid, host and start time (tells a reused pid apart)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_started(os.getpid())}


def owner_alive(owner: Any) -> bool | None:
    """Whether the process a status names as owner still runs: True/False on this host, None when it cannot be
    told (no owner recorded, or another host)."""
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    if owner.get("host") != socket.gethostname():
        return None
    started = _process_started(owner["pid"])
    if started is None:
        return False
    recorded = owner.get("started")
    if isinstance(recorded, int | float) and recorded and started and abs(started - recorded) > 1.0:
        return False  # the pid now belongs to a later process
    return True


def status_age_s(status: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since status.json was last written (its ``updated`` stamp, local time), None if unknown."""
    updated = status.get("updated")
    if not isinstance(updated, str):
        return None
    try:
        return (now or time.time()) - time.mktime(time.strptime(updated, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def effective_state(status: dict[str, Any], now: float | None = None) -> str:
    """The state a reader should act on: ``interrupted`` for a running status whose owner is gone (or, with no
    owner to check, that has not been updated for ``STALE_S``); otherwise the recorded state."""
    state = status.get("state", "unknown")
    if state != "running":
        return state
    alive = owner_alive(status.get("owner"))
    if alive is False:
        return "interrupted"
    age = status_age_s(status, now)
    if alive is None and age is not None and age > STALE_S:
        return "interrupted"
    return state


@dataclass
class Run:
    """A run folder and what it holds. Cheap: files are read on access."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict[str, Any]:
        return _read_saved(self.path / "config.json")

    @property
    def status(self) -> dict[str, Any]:
        path = self.path / "status.json"
        return _read_saved(path) if path.exists() else {"state": "unknown"}

    @property
    def state(self) -> str:
        """The recorded state, or ``interrupted`` for a running run whose process is gone (see effective_state)."""
        return effective_state(self.status)

    def owned_elsewhere(self) -> int | None:
        """The pid of another live process on this host that is training this run right now, else None."""
        status = self.status
        owner = status.get("owner")
        if status.get("state") != "running" or not owner_alive(owner) or owner["pid"] == os.getpid():
            return None
        return int(owner["pid"])

    def check_resumable(self) -> None:
        """RunStateError unless this run can continue from its checkpoint: a run folder, not completed, not being
        trained by another live process. The one resume rule (CLI ``train --resume`` and the Train tab)."""
        if not (self.path / "config.json").is_file():
            raise RunStateError(f"resume: {self.path} is not a run folder (no config.json)")
        if self.state == "completed":
            raise RunStateError(f"resume: run {self.run_id} already completed; nothing to resume")
        owner = self.owned_elsewhere()
        if owner is not None:
            raise RunStateError(f"resume: run {self.run_id} is still being trained by process {owner}; stop it first")

    @property
    def result(self) -> dict[str, Any] | None:
        path = self.path / "result.json"
        return _read_saved(path) if path.exists() else None

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "metrics.jsonl")

    def train_curve(self) -> list[tuple[int, float]]:
        return [(row["step"], row["loss"]) for row in self.metrics() if "loss" in row]

    def val_curve(self) -> list[tuple[int, float]]:
        return [(row["step"], row["val_loss"]) for row in self.metrics() if "val_loss" in row]

    @property
    def weights_dir(self) -> Path | None:
        """The folder with the trained weights (adapter/, model/ or weights/), if the run saved any."""
        for name in WEIGHT_FOLDERS:
            if (self.path / name).is_dir():
                return self.path / name
        return None

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a checkpoint folder exists only once fully written)."""
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def latest_checkpoint(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    # writers ---------------------------------------------------------------------------------------------------------

    def set_status(self, state: str, **extra: Any) -> None:
        """Write status.json; a running status names this process as its owner."""
        if state not in STATES:
            raise ConfigError(f"state: must be one of {', '.join(STATES)}, got {state!r}")
        owner = {"owner": process_owner()} if state == "running" else {}
        write_json(self.path / "status.json", {"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                **owner, **extra})

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.path / "metrics.jsonl", row)

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only the rows up to ``last_step`` (a resumed run re-logs the steps after its checkpoint)."""
        rows = [row for row in self.metrics() if row.get("step", 0) <= last_step]
        write_atomic(self.path / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


class RunStore:
    """Runs under one folder (``<workspace>/runs``): create, list, get, delete. ``shared``: run folders elsewhere
    that this store lists and finds too but never deletes (a visitor's view of the instance's demo run)."""

    def __init__(self, root: str | Path, shared: tuple[Path, ...] = ()) -> None:
        self.root = Path(root)
        self.shared = tuple(Path(path) for path in shared)

    def shared_run(self, run: str | Path) -> Run | None:
        """The shared run ``run`` names (its id, or its folder's path), if any."""
        text = str(run)
        for path in self.shared:
            if (text == path.name or (("/" in text or "\\" in text) and Path(text).expanduser().resolve()
                                      == path.resolve())) and (path / "config.json").is_file():
                return Run(path)
        return None

    def create(self, config: dict[str, Any], run_dir: str | Path | None = None) -> Run:
        """A new run folder with its config.json and status ``running``. ``run_dir`` must not hold a run yet."""
        path = Path(run_dir) if run_dir else self.root / new_run_id(config.get("method", "run"))
        check_name(path.name, "out")  # the name a run is later found by (resume, delete, merge, --adapter)
        if (path / "config.json").exists():
            raise ConfigError(f"out: {path} already holds a run; resume it with --resume or pick another folder")
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"out: {path} is not empty; pick a new folder for the run")
        writable_folder(path)
        run = Run(path)
        write_json(path / "config.json", config)
        run.set_status("running", step=0)
        return run

    def list(self) -> list[Run]:
        """Runs with a config.json, newest first. Hidden folders (a delete cut short) are left out, and so is a
        run deleted while the list is made."""
        stamped = []
        for path in self.root.iterdir() if self.root.is_dir() else ():
            if path.name.startswith("."):
                continue
            try:
                stamped.append(((path / "config.json").stat().st_mtime, Run(path)))
            except (FileNotFoundError, NotADirectoryError):
                continue
        own = {run.run_id for _, run in stamped}
        for path in self.shared:  # a run of one's own of the same name wins
            if path.name not in own and (path / "config.json").is_file():
                stamped.append(((path / "config.json").stat().st_mtime, Run(path)))
        return [run for _, run in sorted(stamped, key=lambda pair: pair[0], reverse=True)]

    def get(self, run: str | Path) -> Run:
        """A run of this store by id (its folder name under the store) or by the path of that folder. Anything else
        (``..``, another folder, a symlink leading out, a hidden folder) is refused: ValueError."""
        shared = self.shared_run(run)
        if shared is not None and not (self.root / shared.run_id / "config.json").is_file():
            return shared
        path = child_folder(self.root, run, "run")
        if not (path / "config.json").is_file():
            raise RunStateError(f"run: {run} is not a run folder (no config.json)")
        return Run(path)

    def delete(self, run: str | Path) -> None:
        """Remove a run folder. A run still running is refused (stop it first); an interrupted one (its process
        is gone) can go. Folders left by a delete that was itself cut short are swept as well."""
        found = self.get(run)
        if found.path.parent.resolve() != self.root.resolve():
            raise RunStateError(f"run: {found.run_id} is shared by every visitor of this app (read-only)")
        if found.state == "running":
            raise RunStateError(f"run: {found.run_id} is running; stop it before deleting")
        remove_folder(found.path)  # one rename: the run disappears from listings at once


def render_card(config: dict[str, Any], result: dict[str, Any], status: dict[str, Any]) -> str:
    """card.md: what was trained on what, how big, how long, and how the losses went."""

    def fmt(value: Any, digits: int = 4) -> str:
        return "n/a" if value is None else (f"{value:.{digits}g}" if isinstance(value, float) else str(value))

    trainable, total = result.get("trainable_params"), result.get("total_params")
    share = f" ({100 * trainable / total:.3f}%)" if trainable and total else ""
    rows = [
        ("Base model", result.get("base_model") or config.get("base_model") or "default"),
        ("Method", config.get("method")),
        ("Method settings", json.dumps(config.get("method_config", {}))),
        ("Data", f"{config.get('data')} (sha256 {str(result.get('data_sha256', ''))[:12]})"),
        ("Examples", f"{result.get('train_examples')} train, {result.get('val_examples')} validation"),
        ("Trainable parameters", f"{fmt(trainable)} of {fmt(total)}{share}"),
        ("Saved weights", f"{fmt(result.get('adapter_bytes'))} bytes"),
        ("Steps", f"{result.get('steps')} of {result.get('total_steps')}"),
        ("Wall time", f"{fmt(result.get('wall_s'))} s"),
        ("Tokens/s", fmt(result.get("tokens_per_s"))),
        ("Peak memory", f"{fmt(result.get('peak_mem_bytes'))} bytes"),
        ("Device / dtype", f"{result.get('device')} / {result.get('dtype')}"),
        ("Final train loss", fmt(result.get("final_train_loss"))),
        ("Validation loss (first → final)",
         f"{fmt(result.get('first_val_loss'))} → {fmt(result.get('final_val_loss'))}"),
        ("Status", status.get("state") + (f": {status['error']}" if status.get("error") else "")),
    ]
    lines = [f"# Run {result.get('run_id', '')}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += ["", "Training settings:", "", "```json", json.dumps(
        {k: v for k, v in config.items() if k not in ("method_config",)}, indent=2), "```", ""]
    return "\n".join(lines)
