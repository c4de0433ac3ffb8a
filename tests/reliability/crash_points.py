"""Kill a process with SIGKILL at one chosen file-system write, for tests/reliability/test_crashes.py.

Every write a process makes under ``--root`` is an *event*, numbered in order: opening a file for writing, the
first write into it, a rename (or core.io's exchange of two folders), a recursive removal, a safetensors
``save_file`` and a FAISS ``write_index``. At the
chosen event the process does half of it and sends itself SIGKILL: a file is left with half its bytes, a tree
with one file removed, a rename not done. Nothing is mocked: the code under test runs as in production and dies
as a killed process dies.

    cli   --root DIR [--kill-on REGEX --kill-nth N] [--slow S] [--events FILE] -- <python -m core arguments>
          run the CLI; kill at the N-th event whose label matches REGEX (labels: "save_file checkpoints/x",
          "rename a -> b", paths relative to --root); --slow sleeps S seconds before each metrics.jsonl append
          (one per training step), so another process has time to kill it mid-run; --events writes the labels of
          all events of a run that was not killed.
    sweep index|cache --work DIR --snapshots DIR [--docs DIR] [--gguf FILE [--stale]]
          prepare the state once, then for N = 1, 2, ...: restore the state, fork a child that runs the operation
          and dies at event N, and copy what it left to ``snapshots/N``; stops at the first N the child survives.
          index: update an index (built from --docs, then the docs change to version 2) under work/indexes/kb.
          cache: load a .gguf model, which converts it into the cache under work/home (TUNE_ARENA_HOME);
          with --stale the cache folder already holds an unusable copy (a marker of an older format).
          Prints {"kills", "events"} as JSON.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class KillSwitch:
    """Counts write events under ``root`` and kills this process at the chosen one."""

    def __init__(self) -> None:
        self.root: str | None = None
        self.pattern: re.Pattern[str] | None = None
        self.nth = 0
        self.matched = 0
        self.events: list[str] = []
        self.slow = 0.0

    def arm(self, root: str | Path, pattern: str | None = None, nth: int = 0) -> None:
        self.root = os.path.realpath(root)
        self.pattern = re.compile(pattern) if pattern else None
        self.nth, self.matched, self.events = nth, 0, []

    def relative(self, path: Any) -> str | None:
        """``path`` relative to the root, or None when it is outside (or not a path)."""
        if self.root is None:
            return None
        if isinstance(path, int):
            try:
                path = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return None
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        if real != self.root and not real.startswith(self.root + os.sep):
            return None
        return os.path.relpath(real, self.root)

    def event(self, label: str) -> bool:
        """Record an event; True when this is the one to die at (the caller does half of it, then ``die``)."""
        self.events.append(label)
        if self.pattern is None or not self.pattern.search(label):
            return False
        self.matched += 1
        return self.matched == self.nth

    @staticmethod
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)


SWITCH = KillSwitch()
_WRITE_MODES = set("wax+")


class _WatchedFile:
    """A file opened for writing under the root: its first write is an event (killed: half the data written)."""

    def __init__(self, handle: Any, label: str) -> None:
        self._handle = handle
        self._label = label
        self._first = True

    def write(self, data: Any) -> int:
        if self._first:
            self._first = False
            if SWITCH.event(f"write {self._label}"):
                self._handle.write(data[: len(data) // 2])
                self._handle.flush()
                SWITCH.die()
        return self._handle.write(data)

    def __enter__(self) -> _WatchedFile:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._handle.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self._handle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def install() -> None:
    """Wrap the write primitives. Must run before transformers/peft bind ``safetensors.torch.save_file``."""
    original_open = io.open

    def watched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        relative = SWITCH.relative(file) if _WRITE_MODES & set(mode) else None
        if relative is None:
            return original_open(file, mode, *args, **kwargs)
        if SWITCH.slow and relative.endswith("metrics.jsonl") and "a" in mode:
            time.sleep(SWITCH.slow)
        if SWITCH.event(f"open {relative}"):
            SWITCH.die()
        return _WatchedFile(original_open(file, mode, *args, **kwargs), relative)

    builtins.open = io.open = watched_open

    def rename_wrapper(original: Any) -> Any:
        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            source, target = SWITCH.relative(src), SWITCH.relative(dst)
            if (source is not None or target is not None) and SWITCH.event(f"rename {source} -> {target}"):
                SWITCH.die()
            return original(src, dst, *args, **kwargs)

        return rename

    os.rename = rename_wrapper(os.rename)
    os.replace = rename_wrapper(os.replace)
    original_rmtree = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> Any:
        relative = SWITCH.relative(path)
        if relative is not None and os.path.isdir(path) and SWITCH.event(f"rmtree {relative}"):
            for folder, _, files in os.walk(path):
                if files:
                    os.unlink(os.path.join(folder, sorted(files)[0]))
                    break
            SWITCH.die()
        return original_rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree
    import core.io

    original_exchange = core.io.exchange

    def exchange(a: Any, b: Any) -> bool:  # renameat2(RENAME_EXCHANGE): one step, killed before it happens
        first, second = SWITCH.relative(a), SWITCH.relative(b)
        if (first is not None or second is not None) and SWITCH.event(f"exchange {first} <-> {second}"):
            SWITCH.die()
        return original_exchange(a, b)

    core.io.exchange = exchange

    def torn_writer(original: Any, kind: str, path_index: int) -> Any:
        def write(*args: Any, **kwargs: Any) -> Any:
            path = args[path_index] if len(args) > path_index else kwargs.get("filename")
            relative = SWITCH.relative(path)
            result = original(*args, **kwargs)
            if relative is not None and SWITCH.event(f"{kind} {relative}"):
                os.truncate(path, os.path.getsize(path) // 2)
                SWITCH.die()
            return result

        return write

    import safetensors.torch

    safetensors.torch.save_file = torn_writer(safetensors.torch.save_file, "save_file", 1)
    try:
        import faiss
    except ImportError:
        return
    faiss.write_index = torn_writer(faiss.write_index, "write_index", 1)


# --------------------------------------------------------------------------------------------------------------------
# cli: one CLI process, killed at a chosen event
# --------------------------------------------------------------------------------------------------------------------


def run_cli(args: argparse.Namespace, argv: list[str]) -> int:
    install()
    SWITCH.arm(args.root, args.kill_on, args.kill_nth)
    SWITCH.slow = args.slow
    from core.cli import main

    code = main(argv)
    if args.events:
        Path(args.events).write_text(json.dumps(SWITCH.events))
    return code


# --------------------------------------------------------------------------------------------------------------------
# sweep: every event of one operation in turn, each in a forked child
# --------------------------------------------------------------------------------------------------------------------

DOCS_V1 = {
    "pumps.md": "# Pumps\n\nThe pump of the Orbit 3 garden runs every thirty minutes.\n\n## Noise\n\nA humming "
                "pump is normal; a rattling pump needs cleaning.\n",
    "lights.md": "# Lights\n\nThe full-spectrum LED lights stay on for sixteen hours a day.\n",
}
DOCS_V2 = {
    "pumps.md": "# Pumps\n\nThe pump of the Orbit 3 garden runs every twenty minutes.\n\n## Noise\n\nA humming "
                "pump is normal; a rattling pump needs descaling with vinegar.\n",
    "tank.md": "# Tank\n\nThe tank holds 5.5 litres; clean it every four weeks.\n",
}


CHUNKING = {"chunk_size": 24, "overlap": 4, "min_chunk_tokens": 4}


def write_docs(folder: Path, docs: dict[str, str]) -> None:
    """Make ``folder`` hold exactly ``docs`` (name -> text)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.name not in docs:
            stale.unlink()
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")


def _index_scenario(args: argparse.Namespace) -> tuple[Path, Any]:
    """Build version 1 of the index (the state every child starts from); the child updates it to version 2."""
    sys.path.insert(0, str(ROOT / "tests"))
    import faiss
    from retrieval_helpers import FakeEmbedder

    from retrieval import ChunkingConfig, build_index

    faiss.omp_set_num_threads(1)  # no OpenMP pool in the parent: children are forked from it
    docs = Path(args.docs)
    chunking = ChunkingConfig(**CHUNKING)
    write_docs(docs, DOCS_V1)
    build_index([docs], Path(args.work) / "indexes" / "kb", FakeEmbedder(), chunking=chunking)
    write_docs(docs, DOCS_V2)
    return Path(args.work) / "indexes", lambda: build_index([docs], Path(args.work) / "indexes" / "kb",
                                                             FakeEmbedder(), chunking=chunking)


def _cache_scenario(args: argparse.Namespace) -> tuple[Path, Any]:
    """An empty model cache; the child loads the .gguf, which converts it into the cache."""
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the parent: children are forked from it
    home = Path(args.work) / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["TUNE_ARENA_HOME"] = str(home)
    from core.models import MARKER, load_causal_lm, resolve_base_model

    warm = Path(args.snapshots) / ".warm-up"  # import everything the conversion needs, outside the root
    os.environ["TUNE_ARENA_HOME"] = str(warm)
    load_causal_lm(args.gguf, device="cpu", dtype="fp32")
    shutil.rmtree(warm)
    os.environ["TUNE_ARENA_HOME"] = str(home)
    if args.stale:
        stale = resolve_base_model(args.gguf).cache_dir
        stale.mkdir(parents=True)
        (stale / "config.json").write_text('{"model_type": "llama"}')
        (stale / "model.safetensors").write_bytes(b"an older layout")
        (stale / MARKER).write_text('{"format": 0}')
    return home, lambda: load_causal_lm(args.gguf, device="cpu", dtype="fp32")


def run_sweep(args: argparse.Namespace) -> int:
    install()
    work, snapshots = Path(args.work), Path(args.snapshots)
    snapshots.mkdir(parents=True, exist_ok=True)
    root, operation = {"index": _index_scenario, "cache": _cache_scenario}[args.scenario](args)
    pristine = snapshots / ".pristine"
    shutil.copytree(work, pristine, symlinks=True)
    kills = 0
    for n in range(1, args.max_events + 1):
        shutil.rmtree(work)
        shutil.copytree(pristine, work, symlinks=True)
        events_file = snapshots / ".events.json"
        pid = os.fork()
        if pid == 0:  # the child: run the operation, die at event n
            code = 1
            try:
                SWITCH.arm(root, ".", n)
                operation()
                SWITCH.root = None
                events_file.write_text(json.dumps(SWITCH.events))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            kills += 1
            shutil.copytree(work, snapshots / str(n), symlinks=True)
            continue
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            print(json.dumps({"kills": kills, "events": json.loads(events_file.read_text())}))
            return 0
        print(f"event {n}: the child ended with status {status}, not SIGKILL", file=sys.stderr)
        return 1
    print(f"the operation still wrote after {args.max_events} events", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    at = argv.index("--") if "--" in argv else len(argv)
    own, rest = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(prog="crash_points.py")
    sub = parser.add_subparsers(dest="mode", required=True)
    cli = sub.add_parser("cli")
    cli.add_argument("--root", required=True)
    cli.add_argument("--kill-on")
    cli.add_argument("--kill-nth", type=int, default=1)
    cli.add_argument("--slow", type=float, default=0.0)
    cli.add_argument("--events")
    sweep = sub.add_parser("sweep")
    sweep.add_argument("scenario", choices=("index", "cache"))
    sweep.add_argument("--work", required=True)
    sweep.add_argument("--snapshots", required=True)
    sweep.add_argument("--docs")
    sweep.add_argument("--gguf")
    sweep.add_argument("--stale", action="store_true")
    sweep.add_argument("--max-events", type=int, default=200)
    args = parser.parse_args(own)
    return run_cli(args, rest) if args.mode == "cli" else run_sweep(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
