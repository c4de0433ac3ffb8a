"""The user's workspace: runs/, indexes/, evals/, uploads/, exports/, feedback/ and benchmarks/ under
``$TUNE_ARENA_WORKSPACE`` (default ./workspace).

On a shared instance (core.engine.visitors) each visitor has a workspace of their own under ``visitors/<id>/``;
its ``shared`` root is the instance's workspace, whose demo run, demo index and demo evaluation every visitor reads
(and none may change)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from core.io import folder_bytes

SUBFOLDERS = ("runs", "indexes", "evals", "uploads", "exports", "feedback", "benchmarks")
DEMO_RUN = "demo-quick-lora"  # runs/demo-quick-lora: the shipped demo adapter (assets/demo/run-quick-lora)
DEMO_INDEX = "demo"  # indexes/demo: the demo corpus, built on first use
DEMO_EVAL = "demo-eval"  # evals/demo-eval: the shipped demo evaluation (assets/demo/eval-demo)


def default_workspace() -> Path:
    """``$TUNE_ARENA_WORKSPACE`` or ``./workspace``."""
    return Path(os.environ.get("TUNE_ARENA_WORKSPACE") or "workspace").expanduser()


@dataclass(frozen=True)
class Workspace:
    """Folders where CLI commands and the app write unless told otherwise."""

    root: Path
    shared: Path | None = None  # a visitor's workspace: the instance's root, where the shared demo items live

    @classmethod
    def open(cls, root: str | Path | None = None, *, shared: str | Path | None = None) -> Workspace:
        """The workspace at ``root`` (default: ``default_workspace()``), its subfolders created."""
        workspace = cls(Path(root).expanduser() if root else default_workspace(),
                        Path(shared).expanduser() if shared else None)
        for name in SUBFOLDERS:
            try:
                (workspace.root / name).mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a read-only place, a file in the way: the person's setting to fix
                raise ConfigError(f"workspace: cannot create {workspace.root / name} ({err.strerror or err}); set "
                                  "TUNE_ARENA_WORKSPACE to a folder you can write") from None
        return workspace

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def exports(self) -> Path:
        """Merged models (``<run id>-merged``) exported from the Runs tab."""
        return self.root / "exports"

    @property
    def feedback(self) -> Path:
        """People's votes on arena answers (``votes.jsonl``) and the preference pairs exported from them."""
        return self.root / "feedback"

    @property
    def benchmarks(self) -> Path:
        """Saved lm-evaluation-harness benchmarks, one ``<id>.json`` each."""
        return self.root / "benchmarks"

    @property
    def demo_root(self) -> Path:
        """Where the demo run, index and evaluation live: the shared root of a visitor's workspace, else this one."""
        return self.shared or self.root

    @property
    def demo_run(self) -> Path:
        return self.demo_root / "runs" / DEMO_RUN

    @property
    def demo_index(self) -> Path:
        return self.demo_root / "indexes" / DEMO_INDEX

    @property
    def demo_eval(self) -> Path:
        return self.demo_root / "evals" / DEMO_EVAL

    def bytes_of(self, folder: str | Path | None = None) -> int:
        """Bytes of the files under ``folder`` (default: this whole workspace), links not followed."""
        return folder_bytes(Path(folder) if folder is not None else self.root)

    def is_shared(self, folder: str | Path) -> bool:
        """True for the shared demo items of a visitor's workspace (read-only to the visitor)."""
        if self.shared is None:
            return False
        resolved = Path(folder).resolve()
        return resolved in (self.demo_run.resolve(), self.demo_index.resolve(), self.demo_eval.resolve())
