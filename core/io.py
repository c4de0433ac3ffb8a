"""Files and folders written so that a reader never sees half of one, and a kill at any moment loses nothing saved.

One module for every write of the project (runs, checkpoints, weights, indexes, evaluations, caches, uploads):

- ``write_atomic`` / ``write_json``: a temporary file in the same folder, flushed and fsynced, then renamed over.
- ``atomic_folder(final)``: build a folder in a temporary sibling; on success its files are fsynced and it takes
  ``final``'s place. An existing ``final`` is swapped out with one ``renameat2(RENAME_EXCHANGE)`` where the kernel
  has it (Linux), so there is never a moment without the folder; elsewhere the old folder is renamed aside first and
  ``recover_folder`` brings it back if a kill falls between the two renames.
- ``remove_folder``: one rename to a hidden name, then the delete: a kill mid-delete never leaves half a folder
  under its real name.

Temporary names start with ``.tmp-`` (and ``.old-`` for a folder set aside): loaders skip hidden names, and
``sweep_stale`` removes what a killed writer left. Imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STALE_TMP_S = 3600.0
"""A ``.tmp-*`` folder or file older than this (seconds) is what a killed writer left, not a write in progress."""


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Persist a folder's entries (a rename inside it) where the platform allows opening a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folders themselves."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            fsync_file(path)
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink())]:
        fsync_dir(path)


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; results are meant to be read and shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, *, indent: int | None = 2) -> None:
    """``value`` as JSON (``default=str`` for paths and dates), written atomically."""
    write_atomic(path, json.dumps(value, indent=indent, default=str) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ValueError naming the file if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a process killed mid-append) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class JsonTextError(ValueError):
    """Text that is not valid JSON: ``reason`` is one short phrase, ``line`` the line of ``text`` where it failed."""

    def __init__(self, reason: str, line: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` whose every failure (a syntax error, nesting deeper than the parser goes, an integer longer
    than ``int()`` converts) is one JsonTextError with a short reason and the line: the one JSON reading rule of
    dataset files, document files and retrieval test sets."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise JsonTextError(f"{err.msg} at column {err.colno}", err.lineno) from None
    except RecursionError:
        raise JsonTextError("nested too deeply") from None
    except UnicodeDecodeError as err:
        raise JsonTextError(f"not valid UTF-8 (byte 0x{err.object[err.start]:02x})") from None
    except ValueError as err:  # an integer of more digits than int() converts
        raise JsonTextError(str(err).split(":")[0].lower()) from None


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (a kill mid-append leaves a torn last line, which ``read_jsonl`` skips)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (0 when it does not exist). Symbolic links are neither followed
    nor counted, and a file removed while the folder is walked is skipped."""
    total = 0
    for path, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.lstat(os.path.join(path, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(path, name)):
                total += stat.st_size
    return total


# --------------------------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()
CAN_EXCHANGE = _RENAMEAT2 is not None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``). False where not supported."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def replace_folder(new: Path, final: Path) -> None:
    """Put folder ``new`` (a sibling of ``final``) in ``final``'s place; the previous ``final`` is deleted.

    With an exchange, ``final`` always exists; without one, the old folder waits as ``.old-<name>-<hex>`` between two
    renames and ``recover_folder(final)`` puts it back if a kill falls between them.
    """
    new, final = Path(new), Path(final)
    if not final.exists():
        os.rename(new, final)
    elif exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
    else:
        old = final.parent / f".old-{final.name}-{secrets.token_hex(4)}"
        os.rename(final, old)
        try:
            os.rename(new, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def recover_folder(final: Path) -> None:
    """After a kill between the two renames of ``replace_folder``: bring back ``.old-<name>-<hex>`` when ``final`` is
    missing; remove older copies and temporary folders that writers killed over ``STALE_TMP_S`` ago left."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    own = re.compile(rf"\.old-{re.escape(final.name)}-[0-9a-f]{{8}}")
    siblings = list(final.parent.iterdir())
    sweep_stale(final.parent, final.name)
    olds = sorted((p for p in siblings if own.fullmatch(p.name) and p.exists()), key=lambda p: p.stat().st_mtime)
    if olds and not final.exists():
        os.rename(olds.pop(), final)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def sweep_stale(parent: Path, name: str | None = None, older_than_s: float = STALE_TMP_S) -> None:
    """Remove ``.tmp-<name>-*`` entries (any name when None) in ``parent`` older than ``older_than_s``."""
    pattern = re.compile(rf"\.tmp-{re.escape(name)}-.+" if name else r"\.tmp-.+")
    cutoff = time.time() - older_than_s
    for path in Path(parent).iterdir():
        with contextlib.suppress(OSError):
            if pattern.fullmatch(path.name) and path.lstat().st_mtime < cutoff:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()


@contextlib.contextmanager
def atomic_folder(final: Path, *, replace: bool | Callable[[Path], bool] = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block ends without error it becomes ``final``.

    ``replace``: what to do when ``final`` exists by then: True swaps it out (``replace_folder``), False keeps it
    and drops the new copy (another process won a race to build the same thing), a function of the existing folder
    decides (e.g. True for a cache of an older format). A kill inside the block leaves a ``.tmp-`` folder only.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        fsync_tree(tmp)
        existed = final.exists()
        if existed and not (replace(final) if callable(replace) else replace):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            replace_folder(tmp, final)
        except OSError:
            if existed or not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a race: another writer's folder moved in first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_folder(folder: Path) -> None:
    """Delete ``folder``: renamed to a hidden ``.tmp-`` name first (gone from listings at once), then removed."""
    folder = Path(folder)
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-deleting-", dir=folder.parent))
    os.rename(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)
    for leftover in folder.parent.glob(".tmp-*-deleting-*"):  # deletes that a kill cut short
        shutil.rmtree(leftover, ignore_errors=True)
