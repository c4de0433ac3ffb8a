"""What the product accepts: file sizes, row and chunk counts, and the one rule for names. The CLI and the app both
go through these, so both refuse the same things with the same message.

Sizes are decimal (50 MB = 50 * 10**6 bytes), as every message states them. Counts that a bigger machine can afford
are raised through environment variables (``TUNE_ARENA_MAX_*``). Imports only core.errors and core.text of the project.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
import unicodedata
from pathlib import Path

from core.errors import ConfigError, NameRuleError
from core.text import fmt_bytes

MAX_FILE_BYTES = 50 * 10**6
"""One dataset file, one document, one upload: 50 MB."""
MAX_FIELD_CHARS = 200_000
"""A single text field longer than this is refused (it could not fit any context window we serve)."""
MAX_EVAL_ROWS = 5_000
"""Test-set rows one evaluation takes (5 variants: hours on 2 CPU cores); ``$TUNE_ARENA_MAX_EVAL_ROWS`` overrides."""
MAX_DOCUMENTS = 20_000
"""Documents per index (a .jsonl/.csv row is a document); ``$TUNE_ARENA_MAX_DOCUMENTS`` overrides."""
MAX_CHUNKS = 100_000
"""Chunks per index: ~1.5 h of embedding with all-MiniLM-L6-v2 on 2 CPU cores; ``$TUNE_ARENA_MAX_CHUNKS`` overrides."""
MAX_NAME_CHARS = 64
"""A run, index or evaluation name: at most this many characters of NAME_CHARS."""
NAME_CHARS = "letters, digits, '_', '-' and '.'"


def env_limit(variable: str, default: int) -> int:
    """``$variable`` as a positive integer, or ``default`` when unset; ConfigError naming the variable otherwise."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{variable}: must be a positive integer, got {text!r}")
    return int(text)


def max_eval_rows() -> int:
    return env_limit("TUNE_ARENA_MAX_EVAL_ROWS", MAX_EVAL_ROWS)


def index_limits() -> tuple[int, int]:
    """(documents, chunks) one index may hold."""
    return env_limit("TUNE_ARENA_MAX_DOCUMENTS", MAX_DOCUMENTS), env_limit("TUNE_ARENA_MAX_CHUNKS", MAX_CHUNKS)


def over_size_limit(size: int, limit: int = MAX_FILE_BYTES) -> str | None:
    """``"61.2 MB, over the 50.0 MB limit"`` when ``size`` (bytes) is over ``limit``, else None: the one wording of
    the size limit for datasets, documents and uploads."""
    if size <= limit:
        return None
    shown, most = fmt_bytes(size), fmt_bytes(limit)
    if shown == most:  # 1001 bytes over a 1000-byte limit: both read "1 KB"
        shown, most = f"{size} bytes", f"{limit}-byte"
    return f"{shown}, over the {most} limit"


def _is_name_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char in "_-.")


def check_name(name: object, what: str) -> str:
    """``name`` if it is one plain name: 1 to MAX_NAME_CHARS of NAME_CHARS, not starting with a dot (``.``, ``..``,
    hidden and temporary folders). NameRuleError naming ``what`` otherwise: ``"../x"``, ``"/etc"``, ``"a/b"``,
    ``".hidden"``, ``"a b"`` and ``""`` are refused. The one rule for runs, indexes and evaluations, CLI and app."""
    if not isinstance(name, str) or not name:
        raise NameRuleError(f"{what}: a name is required")
    shown = repr(name if len(name) <= 60 else name[:60] + "...")
    if len(name) > MAX_NAME_CHARS:
        raise NameRuleError(f"{what}: {shown} is longer than {MAX_NAME_CHARS} characters")
    if name.startswith(".") or not all(_is_name_char(char) for char in name):
        raise NameRuleError(f"{what}: {shown} is not a plain name (use {NAME_CHARS}; not starting with '.')")
    return name


def ascii_text(text: str) -> str:
    """``text`` with compatibility forms folded and accents dropped (``"ü"`` -> ``"u"``, a full-width ``"／"`` ->
    ``"/"``); characters with no ASCII form are removed."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def name_chars(text: str, sep: str = "-") -> str:
    """``text`` (see ascii_text) with every run of characters outside NAME_CHARS made one ``sep``: the character
    rule of every name made from a person's text (to_name; upload file names, core.engine.uploads.safe_name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", sep, ascii_text(text))


def to_name(text: str, fallback: str) -> str:
    """A plain name (see check_name) made from ``text``: accents dropped, every run of other characters made one
    '-', leading dots and dashes removed, cut to MAX_NAME_CHARS; ``fallback`` when nothing is left.
    ``"Mes données (v2)"`` -> ``"Mes-donnees-v2"``; ``".hidden"`` -> ``"hidden"``."""
    return name_chars(text).lstrip(".-")[:MAX_NAME_CHARS].rstrip("-") or fallback


def new_id(stem: str, fallback: str) -> str:
    """A new, unique name for a saved evaluation or benchmark: ``<YYYYmmdd-HHMMSS>-<stem>-<4 hex>``, where ``stem`` is
    cut to 40 of [A-Za-z0-9_-] (``fallback`` when nothing is left): at most 61 characters, a plain name (check_name)
    that sorts by time. ``new_id("my data", "eval")`` -> ``"20250105-120000-my-data-ab12"``."""
    cut = re.sub(r"[^A-Za-z0-9_-]+", "-", stem)[:40].strip("-") or fallback
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{cut}-{secrets.token_hex(2)}"


def writable_folder(path: str | Path) -> Path:
    """``path`` created if missing (parents too) and checked writable by making and removing an empty folder in it.
    ConfigError naming the folder otherwise (a read-only place, a file in the way): a folder the person chose, so
    their mistake to fix, not a bug. Called before long work writes its result there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".tmp-probe-", dir=path))
    except OSError as err:
        raise ConfigError(f"{path}: cannot write in this folder ({err.strerror or err})") from None
    return path


def child_folder(folder: Path, ref: str | Path, what: str) -> Path:
    """The folder ``ref`` names directly inside ``folder``: a plain name (see check_name), or a path with a slash that
    resolves to a direct child of ``folder``. Symlinks and ``..`` are followed first, so neither leads out.
    NameRuleError naming ``what`` for anything else."""
    text = str(ref)
    if "/" in text or "\\" in text:
        path = Path(text).expanduser()
        check_name(path.name, what)
    else:
        path = folder / check_name(text, what)
    if path.resolve().parent != folder.resolve():
        raise NameRuleError(f"{what}: {text[:200]!r} is not a folder of this workspace's {folder.name}/ "
                            "(give its name)")
    return path
