"""Files a user hands to the app: stored under ``<workspace>/uploads/<kind>/`` with safe names and a size limit.

The UI passes Gradio's temporary upload paths here; nothing else in the engine reads an upload from elsewhere.

An upload's name follows core.limits' character rule (``name_chars``) but is a file name, not a run or index name:
it keeps its (lower-cased) extension, runs of other characters become ``_`` and it may be 100 characters long. That
shape is what every stored upload already has, and runs, indexes and evaluations refer to uploads by path: the same
file uploaded again must find its earlier copy under the same name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from core.errors import UploadError
from core.io import fsync_dir, fsync_file
from core.limits import MAX_FILE_BYTES, ascii_text, name_chars, over_size_limit

MAX_UPLOAD_BYTES = MAX_FILE_BYTES  # per file: 50 MB (core.limits), as the messages and the README say
MAX_NAME_CHARS = 100
MAX_EXTENSION_CHARS = 10
MAX_COPIES = 1000  # report-2.md ... report-1000.md
KINDS: dict[str, tuple[str, ...]] = {
    "datasets": (".jsonl", ".json", ".csv", ".tsv"),
    "documents": (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl", ".csv", ".tsv"),
}
# names Windows reserves for devices (with any extension): a copy of the workspace there could not hold them
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_name(name: str) -> str:
    """A file name with no folder part, no control or shell-special characters and at most MAX_NAME_CHARS.

    ``"../../etc/passwd"`` -> ``"passwd"``; ``"my report (v2).PDF"`` -> ``"my_report_v2.pdf"``; accents are
    dropped from letters (``"ü"`` -> ``"u"``), other characters become ``_``. Compatibility forms are folded first,
    so a full-width ``"／"`` is a slash too. Never empty, never starting with a dot, never a Windows device name
    (``"con.md"`` -> ``"con_.md"``); an extension longer than MAX_EXTENSION_CHARS is no extension.
    """
    text = ascii_text(str(name)).replace("\x00", "")  # folded first: a full-width slash is a slash
    base = re.split(r"[\\/]", text)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or len(ext) > MAX_EXTENSION_CHARS:
        stem, ext = base, ""
    stem = name_chars(stem, "_").strip("._-") or "file"
    head, dot, rest = stem.partition(".")
    if head.lower() in WINDOWS_RESERVED:  # reserved before the first dot, whatever follows
        stem = f"{head}_{dot}{rest}"
    ext = re.sub(r"[^A-Za-z0-9]+", "", ext).lower()
    suffix = f".{ext}" if ext else ""
    return stem[: MAX_NAME_CHARS - len(suffix)].rstrip(".") + suffix


def shown_name(name: str) -> str:
    """An upload's name as a message shows it: one line, at most 200 characters, whatever the name holds."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", str(name))[:200]


def check_file_type(name: str, kind: str) -> str:
    """``name``'s stored form (safe_name), after checking its extension is one ``kind`` takes; UploadError
    ``"<name>: not a supported file type here; use one of ..."`` otherwise (and for an unknown ``kind``)."""
    if kind not in KINDS:
        raise UploadError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    target_name = safe_name(name)
    if Path(target_name).suffix not in KINDS[kind]:
        raise UploadError(f"{shown_name(name)}: not a supported file type here; use one of {', '.join(KINDS[kind])}")
    return target_name


def _numbered(name: str, number: int) -> str:
    """``report.md`` -> ``report-2.md`` (the stem shortened so the name stays within MAX_NAME_CHARS)."""
    stem, suffix = os.path.splitext(name)
    tail = f"-{number}{suffix}"
    return stem[: MAX_NAME_CHARS - len(tail)] + tail


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _copy_capped(source: Path, target: Path, max_bytes: int, shown: str) -> None:
    """Copy at most ``max_bytes``; a source that grew past the limit since it was measured is refused."""
    copied = 0
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            copied += len(block)
            if copied > max_bytes:
                raise UploadError(f"{shown}: {over_size_limit(copied, max_bytes)} for an upload")
            writer.write(block)


def _claim(temporary: Path, target: Path) -> None:
    """Give ``temporary`` (fsynced) the name ``target`` unless that name is taken (FileExistsError): a hard link
    where the file system has them, else an exclusive placeholder that the copy then replaces."""
    try:
        os.link(temporary, target)
        fsync_dir(target.parent)
        return
    except FileExistsError:
        raise
    except OSError:  # no hard links here
        pass
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    os.replace(temporary, target)
    fsync_dir(target.parent)


def store_upload(uploads_root: str | Path, source: str | Path, kind: str, *, name: str | None = None,
                 max_bytes: int = MAX_UPLOAD_BYTES, replace: bool = False) -> Path:
    """Copy ``source`` to ``uploads_root/kind/<safe name>`` (``name``: the user's file name, default the source's).

    Refuses an unknown extension, a file over ``max_bytes``, and a source that is not a regular file (a symlink,
    a folder, a device) with one line naming the file. A file of the same name that is already there is never
    overwritten silently (runs, indexes and evaluations refer to uploads by path): the same content gives back the
    stored file, other content is kept as ``<stem>-2<ext>``, ``-3``, ...; ``replace=True`` replaces it instead.
    Either way the copy is written to a temporary file and fsynced (core.io) before it takes its name: a reader, or
    a machine that loses power, never sees half an upload under its real name.
    """
    source = Path(source)
    shown = shown_name(name or source.name)
    target_name = check_file_type(name or source.name, kind)
    if source.is_symlink():
        raise UploadError(f"{shown}: is a symbolic link, not an uploaded file")
    if not source.exists():
        raise UploadError(f"{shown}: the uploaded file is missing")
    if not source.is_file():
        raise UploadError(f"{shown}: not a regular file")
    size = source.stat().st_size
    if size > max_bytes:
        raise UploadError(f"{shown}: {over_size_limit(size, max_bytes)} for an upload")
    root = Path(uploads_root)
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or folder.resolve().parent != root.resolve():
        raise UploadError(f"{shown}: the uploads folder {folder} leads out of {root}; refusing to write there")
    handle, temporary = tempfile.mkstemp(prefix=".tmp-upload-", dir=folder)
    os.close(handle)
    try:
        _copy_capped(source, Path(temporary), max_bytes, shown)
        os.chmod(temporary, 0o644)
        fsync_file(Path(temporary))
        if replace:
            os.replace(temporary, folder / target_name)
            fsync_dir(folder)
            return folder / target_name
        digest = None
        for number in range(1, MAX_COPIES + 1):
            target = folder / (target_name if number == 1 else _numbered(target_name, number))
            try:
                _claim(Path(temporary), target)
            except FileExistsError:
                if not target.is_symlink() and target.is_file() and target.stat().st_size == os.path.getsize(
                        temporary):
                    digest = digest or _digest(Path(temporary))
                    if _digest(target) == digest:
                        return target  # the same file uploaded again
                continue
            return target
        raise UploadError(f"{shown}: {MAX_COPIES} uploads of this name are stored already; delete some first")
    finally:
        Path(temporary).unlink(missing_ok=True)


def list_uploads(uploads_root: str | Path, kind: str) -> list[Path]:
    """Stored uploads of ``kind``, by name."""
    folder = Path(uploads_root) / kind
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
