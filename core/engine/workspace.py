"""The user's workspace: runs/, indexes/, evals/, uploads/ and exports/ under ``$TUNE_ARENA_WORKSPACE``
(default ./workspace)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

SUBFOLDERS = ("runs", "indexes", "evals", "uploads", "exports")


def default_workspace() -> Path:
    """``$TUNE_ARENA_WORKSPACE`` or ``./workspace``."""
    return Path(os.environ.get("TUNE_ARENA_WORKSPACE") or "workspace").expanduser()


@dataclass(frozen=True)
class Workspace:
    """Folders where CLI commands and the app write unless told otherwise."""

    root: Path

    @classmethod
    def open(cls, root: str | Path | None = None) -> Workspace:
        """The workspace at ``root`` (default: ``default_workspace()``), its subfolders created."""
        workspace = cls(Path(root).expanduser() if root else default_workspace())
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
