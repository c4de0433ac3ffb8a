"""A shared instance of the app (a public Hugging Face Space, a showcase machine): every visitor works in a workspace
of their own, within quotas, and anonymous workspaces nobody has touched for a while are swept away.

On when ``$SPACE_ID`` is set (Hugging Face sets it on a Space) or ``TUNE_ARENA_MULTI_USER=1``; ``=0`` turns it off
on a Space too. Off, a local ``python app.py`` has one workspace, as before.

    <workspace>/                      the instance's: the demo run, demo index and demo evaluation (read-only to all)
    <workspace>/visitors/anon-<id>/   an anonymous visitor's runs, indexes, evals, uploads, exports (swept when stale)
    <workspace>/visitors/hf-<user>/   a visitor signed in with Hugging Face (never swept); under
                                      ``$TUNE_ARENA_PERSISTENT_DIR/visitors/`` instead when set (default ``/data/
                                      tune-arena`` on a Space with persistent storage), so it survives restarts

A visitor's engine (``Visitors.engine``) is a view of the instance's engine: the same loaded models, caches and
training queue, its own workspace, confined to it (plus the shared demo items), and its quotas checked before
anything is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.engine.jobs import JobQueue
from core.errors import ConfigError, QuotaError
from core.io import folder_bytes
from core.text import fmt_bytes

if TYPE_CHECKING:
    from core.training import TrainingConfig

ViewFactory = Callable[[Path, str, "VisitorQuota"], Any]
"""(workspace folder, owner, quota) -> a visitor's engine: ``Engine.scoped`` of the instance's engine."""

logger = logging.getLogger(__name__)

VISITORS = "visitors"
ANONYMOUS, SIGNED_IN = "anon-", "hf-"
SEEN_FILE = ".last-seen"  # touched when the visitor works; the sweep reads its time
TOUCH_EVERY_S = 60.0


def _number(env: Mapping[str, str], variable: str, default: float, *, whole: bool = False) -> Any:
    text = env.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ConfigError(f"{variable}: must be a positive {'integer' if whole else 'number'}, got {text!r}")
    return value


SPACE_DATA = Path("/data")  # where a Hugging Face Space mounts its persistent storage


def _persistent_default(env: Mapping[str, str], data: Path) -> Path | None:
    """``<data>/tune-arena`` on a Space whose persistent storage is mounted (``data``, i.e. ``/data``, writable),
    else None."""
    if env.get("SPACE_ID") and data.is_dir() and os.access(data, os.W_OK):
        return data / "tune-arena"
    return None


@dataclass(frozen=True)
class VisitorSettings:
    """How a shared instance treats its visitors (``from_env`` reads them; every number has a default)."""

    enabled: bool = False
    disk_mb: float = 200.0  # TUNE_ARENA_VISITOR_DISK_MB: a visitor's workspace, in MB (10**6 bytes)
    uploads_per_hour: int = 20  # TUNE_ARENA_UPLOADS_PER_HOUR: files one visitor may upload in any hour
    cpu_max_steps: int = 300  # TUNE_ARENA_CPU_MAX_STEPS: optimizer steps of one training job without a GPU
    ttl_hours: float = 24.0  # TUNE_ARENA_VISITOR_TTL_HOURS: an anonymous workspace untouched this long is removed
    queue: int = 8  # TUNE_ARENA_QUEUE: training jobs that may wait behind the running one
    persistent: Path | None = None  # TUNE_ARENA_PERSISTENT_DIR: where signed-in visitors' workspaces live
    sweep_every_s: float = 600.0  # how often the sweep looks for stale workspaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, data: Path = SPACE_DATA) -> VisitorSettings:
        """The settings in ``env`` (default: the process's); ``data`` is where a Space mounts persistent storage."""
        env = os.environ if env is None else env
        switch = env.get("TUNE_ARENA_MULTI_USER", "").strip()
        if switch not in ("", "0", "1"):
            raise ConfigError(f"TUNE_ARENA_MULTI_USER: must be 0 or 1, got {switch!r}")
        enabled = switch == "1" or (switch == "" and bool(env.get("SPACE_ID")))
        persistent = env.get("TUNE_ARENA_PERSISTENT_DIR", "").strip()
        return cls(enabled=enabled, disk_mb=_number(env, "TUNE_ARENA_VISITOR_DISK_MB", cls.disk_mb),
                   uploads_per_hour=_number(env, "TUNE_ARENA_UPLOADS_PER_HOUR", cls.uploads_per_hour, whole=True),
                   cpu_max_steps=_number(env, "TUNE_ARENA_CPU_MAX_STEPS", cls.cpu_max_steps, whole=True),
                   ttl_hours=_number(env, "TUNE_ARENA_VISITOR_TTL_HOURS", cls.ttl_hours),
                   queue=_number(env, "TUNE_ARENA_QUEUE", cls.queue, whole=True),
                   persistent=Path(persistent).expanduser() if persistent else _persistent_default(env, data))

    @property
    def disk_bytes(self) -> int:
        return int(self.disk_mb * 10**6)


@dataclass(frozen=True)
class Visitor:
    """Who is asking: ``key`` names their workspace folder; ``name`` is what the app shows them."""

    key: str
    signed_in: bool
    name: str

    @classmethod
    def signed_in_as(cls, username: str) -> Visitor:
        """A visitor signed in with Hugging Face (their login name: letters, digits, '-', '_', '.')."""
        cleaned = re.sub(r"[^A-Za-z0-9_.-]", "", username or "").strip(".")[:60]
        if not cleaned:
            raise ConfigError(f"visitor: {username[:80]!r} is not a Hugging Face user name")
        return cls(SIGNED_IN + cleaned, True, f"@{cleaned}")

    @classmethod
    def anonymous(cls, token: str) -> Visitor:
        """A visitor known by a secret of their browser (a cookie, or the client's session id). The folder is named
        by a digest of it, so a folder name seen anywhere does not let anyone act as its visitor."""
        if not token or len(token) < 8:
            raise ConfigError("visitor: no browser session to keep your work apart from other visitors'")
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:24]
        return cls(ANONYMOUS + digest, False, "anonymous visitor")


def last_active(folder: Path) -> float:
    """When the visitor last worked in ``folder``: the newest time of its last-seen mark and of the folder."""
    times = [folder.stat().st_mtime]
    seen = folder / SEEN_FILE
    if seen.is_file():
        times.append(seen.stat().st_mtime)
    return max(times)


class VisitorQuota:
    """One visitor's limits, checked before anything is written (a QuotaError of one line otherwise)."""

    def __init__(self, visitors: Visitors, visitor: Visitor, folder: Path) -> None:
        self.visitors, self.visitor, self.folder = visitors, visitor, folder

    @property
    def settings(self) -> VisitorSettings:
        return self.visitors.settings

    def check_disk(self, adding: int = 0, what: str = "this file") -> None:
        """Refused once the workspace holds the quota (or would, with ``adding`` bytes more for ``what``)."""
        used, most = folder_bytes(self.folder), self.settings.disk_bytes
        if used + adding > most:
            more = f" (+{fmt_bytes(adding)} for {what})" if adding else ""
            raise QuotaError(f"disk quota: your workspace holds {fmt_bytes(used)}{more} of its {fmt_bytes(most)}; "
                             "delete runs in the Runs tab (or indexes, evaluations) to make room")

    def check_upload(self, size: int) -> None:
        """An upload of ``size`` bytes: within the disk quota and the uploads of the last hour; counted."""
        self.check_disk(size)
        self.visitors.count_upload(self.visitor)

    def step_limit(self) -> int | None:
        """Optimizer steps one training job may take: ``cpu_max_steps`` without a GPU, else no limit."""
        return None if self.visitors.has_gpu() else self.settings.cpu_max_steps

    def check_training(self, config: TrainingConfig) -> None:
        """Before a job is queued: the disk quota, and on a CPU instance an explicit --max-steps within the limit
        (a run by epochs is checked once its data is read, before it trains)."""
        self.check_disk()
        most = self.step_limit()
        if most is not None and config.max_steps and config.max_steps > most:
            raise QuotaError(f"max_steps: {config.max_steps} is over the {most} steps a training job may take on "
                             "this CPU instance; lower Max steps")


class Visitors:
    """The visitors of one instance: their workspaces and engines, upload counts, the training queue and the sweep.
    Owned by the instance's engine (``Engine.visitors``)."""

    def __init__(self, instance_root: Path, settings: VisitorSettings, make_view: ViewFactory) -> None:
        self.instance_root = Path(instance_root)  # the instance's workspace: the shared demo items live here
        self.settings = settings
        self.root = self.instance_root / VISITORS
        self.queue = JobQueue(waiting=settings.queue)
        self._make_view = make_view
        self._lock = threading.Lock()
        self._engines: dict[str, Any] = {}
        self._uploads: dict[str, deque[float]] = {}
        self._touched: dict[str, float] = {}
        self._gpu: bool | None = None

    def folder(self, visitor: Visitor) -> Path:
        """Where ``visitor``'s workspace lives (signed in: in persistent storage when there is one)."""
        if visitor.signed_in and self.settings.persistent is not None:
            return self.settings.persistent / VISITORS / visitor.key
        return self.root / visitor.key

    def engine(self, visitor: Visitor) -> Any:
        """``visitor``'s engine (made on their first request, then kept); marks them as active."""
        with self._lock:
            view = self._engines.get(visitor.key)
        if view is None:
            folder = self.folder(visitor)
            view = self._make_view(folder, visitor.key, VisitorQuota(self, visitor, folder))
            with self._lock:
                view = self._engines.setdefault(visitor.key, view)
        self.touch(visitor.key, view.workspace.root)
        return view

    def touch(self, key: str, folder: Path, now: float | None = None) -> None:
        """Mark the visitor's workspace as in use (at most once a minute: a file's time, read by the sweep)."""
        now = time.time() if now is None else now
        with self._lock:
            if now - self._touched.get(key, 0.0) < TOUCH_EVERY_S:
                return
            self._touched[key] = now
        try:
            (folder / SEEN_FILE).touch()
            os.utime(folder / SEEN_FILE, (now, now))
        except OSError as err:  # a full or read-only disk: the sweep then goes by the folder's time
            logger.warning("cannot mark %s as in use: %s", folder, err)

    def count_upload(self, visitor: Visitor, now: float | None = None) -> None:
        """One more upload by ``visitor``; QuotaError when they have had their uploads of the last hour."""
        now = time.time() if now is None else now
        most = self.settings.uploads_per_hour
        with self._lock:
            times = self._uploads.setdefault(visitor.key, deque())
            while times and now - times[0] >= 3600:
                times.popleft()
            if len(times) >= most:
                wait_min = max(1, round((3600 - (now - times[0])) / 60))
                raise QuotaError(f"uploads: {most} files an hour is this app's limit per visitor; try again in "
                                 f"{wait_min} min")
            times.append(now)

    def has_gpu(self) -> bool:
        if self._gpu is None:
            import torch

            self._gpu = bool(torch.cuda.is_available())
        return self._gpu

    def sweep(self, now: float | None = None) -> list[Path]:
        """Remove anonymous workspaces under ``visitors/`` untouched for ``ttl_hours``; never a signed-in visitor's,
        the shared items, anything else, or a workspace whose visitor has a job queued or running. Returns what
        was removed (each removal is logged)."""
        now = time.time() if now is None else now
        if not self.root.is_dir():
            return []
        removed = []
        for folder in sorted(self.root.iterdir()):
            if not folder.name.startswith(ANONYMOUS) or folder.is_symlink() or not folder.is_dir():
                continue
            job, _ = self.queue.current(folder.name)
            if job is not None and job.state.active:
                continue
            try:
                idle_h = (now - last_active(folder)) / 3600
            except OSError:
                continue
            if idle_h < self.settings.ttl_hours:
                continue
            with self._lock:
                self._engines.pop(folder.name, None)
                self._touched.pop(folder.name, None)
                self._uploads.pop(folder.name, None)
            size = folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("swept %s: anonymous, untouched for %.1f h (%s)", folder.name, idle_h, fmt_bytes(size))
            removed.append(folder)
        return removed

    def start_sweeper(self, stop: threading.Event | None = None) -> threading.Thread:
        """Run ``sweep`` now and every ``sweep_every_s`` in a daemon thread (until ``stop`` is set)."""
        stop = stop or threading.Event()

        def loop() -> None:
            while True:
                try:
                    self.sweep()
                except Exception as err:  # a sweep that fails is logged and tried again later
                    logger.warning("visitor sweep failed: %s", err)
                if stop.wait(self.settings.sweep_every_s):
                    return

        thread = threading.Thread(target=loop, name="visitor-sweep", daemon=True)
        thread.start()
        return thread
