"""The user's workspace: runs/, indexes/, evals/ and uploads/ under ``$TUNE_ARENA_WORKSPACE`` (default ./workspace)."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

SUBFOLDERS = ("runs", "indexes", "evals", "uploads")
MAX_NAME_CHARS = 128


def check_name(name: object, what: str) -> str:
    """``name`` if it is one plain folder name: not empty, at most MAX_NAME_CHARS, no ``/`` or ``\\``, no control
    characters (NUL included), no leading dot (``.``, ``..``, hidden and temporary folders) and no surrounding spaces.
    ValueError naming ``what`` otherwise; ``"../x"``, ``"/etc"``, ``"a/b"``, ``".hidden"`` and ``""`` are refused."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: a name is required")
    shown = repr(name if len(name) <= 60 else name[:60] + "...")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{what}: {shown} is longer than {MAX_NAME_CHARS} characters")
    if ("/" in name or "\\" in name or name.startswith(".") or name != name.strip()
            or any(unicodedata.category(char) == "Cc" for char in name)):
        raise ValueError(f"{what}: {shown} is not a plain name (no slashes, control characters or leading dot)")
    return name


def child_folder(folder: Path, ref: str | Path, what: str) -> Path:
    """The folder ``ref`` names directly inside ``folder``: a plain name (see check_name), or a path with a slash that
    resolves to a direct child of ``folder``. Symlinks and ``..`` are followed first, so neither leads out.
    ValueError naming ``what`` for anything else."""
    text = str(ref)
    if "/" in text or "\\" in text:
        path = Path(text).expanduser()
        check_name(path.name, what)
    else:
        path = folder / check_name(text, what)
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"{what}: {text[:200]!r} is not a folder of this workspace's {folder.name}/ (give its name)")
    return path


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
            (workspace.root / name).mkdir(parents=True, exist_ok=True)
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
