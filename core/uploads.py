"""Files a user hands to the app: stored under ``<workspace>/uploads/<kind>/`` with safe names and a size limit.

The UI passes Gradio's temporary upload paths here; nothing else in the engine reads an upload from elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # per file
MAX_NAME_CHARS = 100
KINDS: dict[str, tuple[str, ...]] = {
    "datasets": (".jsonl", ".json", ".csv", ".tsv"),
    "documents": (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl", ".csv", ".tsv"),
}


class UploadError(ValueError):
    """An upload that cannot be stored (the message names the file)."""


def safe_name(name: str) -> str:
    """A file name with no folder part, no control or shell-special characters and at most MAX_NAME_CHARS.

    ``"../../etc/passwd"`` -> ``"passwd"``; ``"my report (v2).PDF"`` -> ``"my_report_v2.pdf"``; accents are
    dropped from letters (``"ü"`` -> ``"u"``), other characters become ``_``.
    """
    base = re.split(r"[\\/]", str(name))[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii").replace("\x00", "")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = re.sub(r"[^\w.-]+", "_", stem, flags=re.ASCII).strip("._") or "file"
    ext = re.sub(r"[^A-Za-z0-9]+", "", ext).lower()
    suffix = f".{ext}" if ext else ""
    return stem[: MAX_NAME_CHARS - len(suffix)] + suffix


def store_upload(uploads_root: str | Path, source: str | Path, kind: str, *, name: str | None = None,
                 max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Copy ``source`` to ``uploads_root/kind/<safe name>`` (``name``: the user's file name, default the source's).

    Refuses an unknown extension or a file over ``max_bytes`` with one line naming the file. An existing upload of
    the same name is replaced atomically (copy to a temporary file, then rename).
    """
    if kind not in KINDS:
        raise UploadError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    source = Path(source)
    shown = name or source.name
    target_name = safe_name(shown)
    if Path(target_name).suffix not in KINDS[kind]:
        raise UploadError(f"{shown}: not a supported file type here; use one of {', '.join(KINDS[kind])}")
    if not source.is_file():
        raise UploadError(f"{shown}: the uploaded file is missing")
    size = source.stat().st_size
    if size > max_bytes:
        raise UploadError(f"{shown}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB upload limit")
    folder = Path(uploads_root) / kind
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / target_name
    handle, temporary = tempfile.mkstemp(prefix=f".tmp-{target_name}-", dir=folder)
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def list_uploads(uploads_root: str | Path, kind: str) -> list[Path]:
    """Stored uploads of ``kind``, by name."""
    folder = Path(uploads_root) / kind
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
