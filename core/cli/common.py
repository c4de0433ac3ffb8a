"""What every command module shares: the Command record, CliError and the progress printers (stderr)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.engine import Engine

Result = dict[str, Any]
EngineFactory = Callable[[], "Engine"]


class CliError(ConfigError):
    """A bad argument: a ConfigError (so a core.errors.TuneArenaError: one line, exit code 2), raised by the CLI."""


class Delegated(Exception):  # noqa: N818 - not an error: the command ran elsewhere
    """The command ran in other processes (``--num-processes``), which printed its result: exit with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Command:
    """One ``python -m core <name>`` command: its arguments, and ``run(args, engine) -> result`` (the ``--json``
    document), where ``engine()`` gives the process's one unconfined Engine: a command checks its arguments and builds
    its configs first, so bad flags fail before the workspace is opened or a model loads. ``human`` prints the
    result without ``--json`` (default: ``key: value`` lines)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, EngineFactory], Result]
    human: Callable[[Result], None] | None = None


class StepProgress:
    """A training progress bar on stderr (redrawn in place on a terminal, a line per ~5% otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_line_step = 0

    def step(self, step: int, total: int, loss: float, lr: float, tokens_per_s: float, eta_s: float) -> None:
        filled = int(24 * step / total)
        text = (f"[{'#' * filled}{'.' * (24 - filled)}] step {step}/{total} loss {loss:.4f} lr {lr:.2e} "
                f"{tokens_per_s:.0f} tok/s eta {int(eta_s) // 60}m{int(eta_s) % 60:02d}s")
        if self.tty:
            sys.stderr.write("\r" + text + ("\n" if step == total else ""))
            sys.stderr.flush()
        elif step == total or step - self.last_line_step >= max(1, total // 20):
            self.last_line_step = step
            print(text, file=sys.stderr, flush=True)

    def eval(self, step: int, val_loss: float) -> None:
        print(("\n" if self.tty else "") + f"step {step}: validation loss {val_loss:.4f}", file=sys.stderr, flush=True)


class StageProgress:
    """``stage done/total`` lines on stderr, at most one per stage per ~10%."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done - self.last.get(stage, -step) >= step:
            self.last[stage] = done
            print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)
