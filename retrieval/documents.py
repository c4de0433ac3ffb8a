"""Document loaders: files and folders -> ``Document`` objects with a stable id, a title and their source path.

Supported: .md/.markdown, .txt, .html/.htm (visible text only), .pdf (pypdf), .jsonl and .csv/.tsv (one document per
row, from a named or detected text column). A folder is walked recursively in sorted order. A file that cannot be
read becomes a ``Skipped(path, reason)`` entry; the caller indexes the rest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from core.errors import TuneArenaError
from core.io import JsonTextError, parse_json
from core.limits import MAX_FILE_BYTES, over_size_limit

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "content", "body", "document", "passage", "context", "article", "page_content")
TITLE_COLUMNS = ("title", "name", "heading", "subject")


class DocumentError(TuneArenaError):
    """A file that cannot become a document; the message is the reason shown in ``skipped``."""


@dataclass(frozen=True)
class Document:
    """One text document. ``doc_id`` is stable: derived from the source path and the content hash."""

    doc_id: str
    source: str  # the file path as given (plus ``#row`` for table rows)
    title: str
    text: str
    sha256: str  # of ``text``
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _valid_unicode(text: str) -> str:
    """``text`` with any unpaired surrogate (a JSON escape like ``"\\ud800"`` that is no character) replaced by
    ``?``, so it can be hashed, embedded and written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def make_document(source: str, title: str, text: str, meta: dict | None = None) -> Document:
    """A Document whose id is ``sha256(source + content hash)`` cut to 16 hex digits."""
    title, text = _valid_unicode(title), _valid_unicode(text)
    digest = text_sha256(text)
    doc_id = hashlib.sha256(f"{source}\0{digest}".encode()).hexdigest()[:16]
    return Document(doc_id=doc_id, source=source, title=title.strip() or Path(source).stem, text=text,
                    sha256=digest, meta=meta or {})


# --------------------------------------------------------------------------------------------------------------------
# Reading bytes as text
# --------------------------------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a binary file (NUL bytes, invalid UTF-8) raises DocumentError with the reason."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DocumentError(f"file is {over_size_limit(size)}")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DocumentError("binary file (NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DocumentError(f"not UTF-8 text (invalid byte at offset {err.start})") from None
    controls = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > 0.05 * min(len(text), 8192):
        raise DocumentError("binary file (control characters), not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _first_heading(text: str) -> str | None:
    # one line only ([ \t], not \s, which would run on into the next line); a closing run of #s needs a space before
    # it, so "# Using C#" keeps its "#"
    match = re.search(r"^#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else None


# --------------------------------------------------------------------------------------------------------------------
# Loaders by extension
# --------------------------------------------------------------------------------------------------------------------


def load_markdown(path: Path, source: str, **_: object) -> list[Document]:
    text = read_text(path)
    return [make_document(source, _first_heading(text) or path.stem, text)]


def load_txt(path: Path, source: str, **_: object) -> list[Document]:
    text = read_text(path)
    return [make_document(source, path.stem, text)]


class _VisibleText(HTMLParser):
    """HTML -> text with headings as Markdown ``#`` lines and block elements as paragraph breaks."""

    HIDDEN = {"script", "style", "noscript", "template", "head", "svg", "iframe", "object"}
    BLOCKS = {"p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "ul", "ol", "table",
              "blockquote", "pre", "form", "figure", "figcaption", "dl", "hr", "br", "li", "tr", "dt", "dd"}
    HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden_depth = 0
        self.in_title = False
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in self.HIDDEN:
            self.hidden_depth += 1
        elif tag in self.HEADINGS:
            self.parts.append("\n\n" + "#" * self.HEADINGS[tag] + " ")
        elif tag in {"li", "dt", "dd"}:
            self.parts.append("\n- ")
        elif tag in {"td", "th"}:
            self.parts.append(" | ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n" if tag not in {"br", "tr"} else "\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"br", "hr"}:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in self.HIDDEN:
            self.hidden_depth = max(0, self.hidden_depth - 1)
        elif tag in self.HEADINGS or tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        if self.hidden_depth:
            return
        self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        joined = "".join(self.parts)
        lines = [line.strip() for line in joined.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def html_to_text(html: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page; scripts, styles and the head are dropped."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    text = parser.text()
    return parser.title.strip(), text


def load_html(path: Path, source: str, **_: object) -> list[Document]:
    title, text = html_to_text(read_text(path))
    return [make_document(source, title or _first_heading(text) or path.stem, text)]


def load_pdf(path: Path, source: str, **_: object) -> list[Document]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except Exception:  # pypdf raises several types for unsupported encryption
                unlocked = 0
            if not unlocked:
                raise DocumentError("encrypted PDF (needs a password)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as err:
        raise DocumentError(f"unreadable PDF: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    except Exception as err:  # pypdf parses untrusted bytes: a damaged file can fail in any of its layers
        logger.debug("pypdf failed on %s", path, exc_info=True)
        raise DocumentError(f"unreadable PDF ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                            ) from None
    text = "\n\n".join(page for page in pages if page)
    if not text.strip():
        raise DocumentError("PDF has no extractable text (scanned images?)")
    meta_title = ""
    try:
        meta_title = (reader.metadata.title or "") if reader.metadata else ""
    except Exception:  # broken metadata must not lose the text
        meta_title = ""
    return [make_document(source, meta_title or path.stem, text + "\n", {"pages": len(pages)})]


def _pick_column(columns: list[str], rows: list[dict], wanted: str | None, where: str) -> str:
    if wanted:
        if wanted not in columns:
            raise DocumentError(f"no column '{wanted}' (columns: {', '.join(columns[:12])})")
        return wanted
    lowered = {column.lower(): column for column in columns}
    for name in TEXT_COLUMNS:
        if name in lowered:
            return lowered[name]
    # otherwise the string column with the longest average value
    best, best_len = None, 0.0
    for column in columns:
        values = [row.get(column) for row in rows[:200]]
        strings = [value for value in values if isinstance(value, str)]
        if len(strings) < max(1, len(values) // 2):
            continue
        average = sum(len(value) for value in strings) / len(strings)
        if average > best_len:
            best, best_len = column, average
    if best is None or best_len < 20:
        raise DocumentError(f"no text column found in {where}; name one (e.g. --text-column)")
    return best


def _row_documents(rows: list[dict], source: str, text_column: str | None, where: str) -> list[Document]:
    if not rows:
        raise DocumentError("no rows")
    columns = list(dict.fromkeys(key for row in rows[:200] for key in row))
    column = _pick_column(columns, rows, text_column, where)
    lowered = {name.lower(): name for name in columns}
    title_column = next((lowered[name] for name in TITLE_COLUMNS if name in lowered and lowered[name] != column), None)
    documents = []
    for number, row in enumerate(rows, start=1):
        text = row.get(column)
        if not isinstance(text, str) or not text.strip():
            continue
        title = str(row.get(title_column) or "") if title_column else ""
        documents.append(make_document(f"{source}#{number}", title or f"{Path(source).stem} row {number}",
                                       text.strip() + "\n", {"row": number, "file": source}))
    if not documents:
        raise DocumentError(f"column '{column}' is empty in every row")
    return documents


def load_jsonl(path: Path, source: str, text_column: str | None = None, **_: object) -> list[Document]:
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except JsonTextError as err:
            raise DocumentError(f"line {number}: invalid JSON ({err.reason})") from None
        if not isinstance(row, dict):
            raise DocumentError(f"line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return _row_documents(rows, source, text_column, path.name)


def load_csv(path: Path, source: str, text_column: str | None = None, **_: object) -> list[Document]:
    text = read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FILE_BYTES))  # one long article is a document, not an error
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        # cells beyond the header's columns land under the key None: they belong to no column, so they are dropped
        rows = [{key: value for key, value in row.items() if key is not None} for row in reader]
    except csv.Error as err:
        raise DocumentError(f"line {reader.line_num + 1}: invalid CSV ({err})") from None
    return _row_documents(rows, source, text_column, path.name)


Loader = Callable[..., list[Document]]
LOADERS: dict[str, Loader] = {
    ".md": load_markdown, ".markdown": load_markdown, ".txt": load_txt, ".text": load_txt, ".rst": load_txt,
    ".html": load_html, ".htm": load_html, ".pdf": load_pdf,
    ".jsonl": load_jsonl, ".csv": load_csv, ".tsv": load_csv,
}


def supported_extensions() -> list[str]:
    return sorted(LOADERS)


# --------------------------------------------------------------------------------------------------------------------
# Files and folders
# --------------------------------------------------------------------------------------------------------------------


def iter_files(paths: Iterable[str | Path], skipped: list[Skipped]) -> list[tuple[Path, str]]:
    """(path, source as given) for each file under ``paths``; folders walked recursively, hidden entries skipped."""
    found: list[tuple[Path, str]] = []
    for given in paths:
        raw = str(given)
        path = Path(raw).expanduser()
        if path.is_file():
            found.append((path, raw))
        elif path.is_dir():
            before = len(found)
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    file = Path(root) / name
                    rel = file.relative_to(path).as_posix()
                    found.append((file, raw.rstrip("/") + "/" + rel))
            if len(found) == before:
                skipped.append(Skipped(raw, "empty folder"))
        else:
            skipped.append(Skipped(raw, "no such file or folder"))
    return found


def load_documents(paths: Iterable[str | Path], *, text_column: str | None = None) -> LoadResult:
    """Load every supported file under ``paths``. Unsupported or unreadable files are listed in ``skipped``."""
    result = LoadResult()
    seen: set[str] = set()
    for path, source in iter_files(paths, result.skipped):
        loader = LOADERS.get(path.suffix.lower())
        if loader is None:
            result.skipped.append(Skipped(source, f"unsupported file type '{path.suffix or path.name}'"
                                                  f" (supported: {' '.join(supported_extensions())})"))
            continue
        try:
            documents = loader(path, source, text_column=text_column)
        except DocumentError as err:
            result.skipped.append(Skipped(source, str(err)))
            continue
        except OSError as err:
            result.skipped.append(Skipped(source, f"cannot read: {err.strerror or err}"))
            continue
        except Exception as err:  # a loader bug must not stop the other files from being indexed; the log keeps it
            logger.exception("loading %s failed", source)
            detail = (str(err).splitlines() or [""])[0][:200]
            result.skipped.append(Skipped(source, f"could not be loaded (internal error: {type(err).__name__}: "
                                                  f"{detail})"))
            continue
        for document in documents:
            if not document.text.strip():
                result.skipped.append(Skipped(document.source, "no text"))
            elif document.source in seen:
                result.skipped.append(Skipped(document.source, "listed twice"))
            else:
                seen.add(document.source)
                result.documents.append(document)
    # nothing loaded: the caller raises with the reasons, so no second line on a CLI's stderr
    logger.log(logging.INFO if result.documents else logging.DEBUG, "loaded %d documents, skipped %d files",
               len(result.documents), len(result.skipped))
    return result
