"""Reading a dataset file into rows, each with the line it starts on: JSONL, a JSON array (or ``{"data": [...]}``),
CSV and TSV. Every failure is a DataError naming the file and line; size limits from core.limits."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.io import JsonTextError, parse_json
from core.limits import MAX_FILE_BYTES, over_size_limit

EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv")


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters: user data quoted inside a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."




def _read_text(path: Path, max_bytes: int) -> str:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a .jsonl, .json or .csv file")
    try:
        size = path.stat().st_size
        too_big = over_size_limit(size, max_bytes)
        if too_big:
            raise DataError(path, f"file is {too_big}")
        raw = path.read_bytes()
    except OSError as err:  # unreadable: permissions, a device, a broken link
        raise DataError(path, f"cannot read the file ({err.strerror or type(err).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(path, f"not valid UTF-8 (byte 0x{raw[err.start]:02x}); save the file as UTF-8", line) from None
    if not text.strip():  # also a file holding only a byte-order mark
        raise DataError(path, "file is empty")
    return text


def _loads(path: Path, text: str, line: int | None, what: str = "JSON") -> Any:
    """``json.loads`` whose every failure is a DataError naming the file and line (``line``: where ``text`` starts)."""
    try:
        return parse_json(text)
    except JsonTextError as err:
        where = (line or 1) + err.line - 1
        raise DataError(path, f"invalid {what} ({err.reason})", where) from None


def _rows_jsonl(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    # split on "\n" only: str.splitlines would also cut at U+2028, U+0085 and the like, which JSON strings may hold
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        yield number, _loads(path, line, number)


_JSON_SPACE = " \t\r\n"


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_SPACE:
        pos += 1
    return pos


def _data_array_start(text: str) -> int:
    """Index of the ``[`` of the top-level object's last ``"data"`` value (the one ``json.loads`` keeps).

    ``text`` is a JSON object already parsed once, so every step below is on valid JSON; keys are decoded, so an
    escaped ``"d\\u0061ta"`` or a ``"data"`` string among the values is not mistaken for the key.
    """
    decoder = json.JSONDecoder()
    pos, start = _skip_space(text, 0) + 1, -1  # just after "{"
    while True:
        pos = _skip_space(text, pos)
        if text[pos] == "}":
            return start
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip_space(text, _skip_space(text, pos) + 1)  # past ":"
        if key == "data":
            start = pos
        _, pos = decoder.raw_decode(text, pos)
        pos = _skip_space(text, pos)
        if text[pos] == ",":
            pos += 1


def _rows_json(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    """Items of a top-level JSON array (or of a ``"data"`` array in an object), each with its starting line."""
    decoder = json.JSONDecoder()
    document = _loads(path, text, None)
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        items, start = document["data"], _data_array_start(text)
    elif isinstance(document, list):
        items, start = document, _skip_space(text, 0)
    else:
        raise DataError(path, 'expected a JSON array of objects (or {"data": [...]}); use .jsonl for one per line', 1)
    # Walk the array once more with raw_decode to learn where each item starts (lines counted as we go).
    pos, line, counted = start + 1, 1, 0
    for _ in range(len(items)):
        while text[pos] in _JSON_SPACE + ",":
            pos += 1
        try:
            item, end = decoder.raw_decode(text, pos)
        except RecursionError:
            raise DataError(path, "invalid JSON (nested too deeply)", line) from None
        line += text.count("\n", counted, pos)
        counted = pos
        yield line, item
        pos = end


def _rows_csv(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    header = re.split(r"\r\n?|\n", text, maxsplit=1)[0]  # the line breaks csv knows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    if delimiter not in header:
        counts = {d: header.count(d) for d in ",;\t|" if d != delimiter}
        best = max(counts, key=counts.__getitem__)
        if counts[best]:
            name = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}[best]
            fix = ("save it tab-separated (or as .csv for commas)" if delimiter == "\t"
                   else "save it comma-separated (or as .tsv for tabs)")
            raise DataError(path, f"header is {name}-separated; {fix}", 1)
    # a long cell is checked against MAX_FIELD_CHARS with its field name, not cut short by csv's 128 KiB default
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FILE_BYTES))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    end = 0  # the last line of the previous record: a row's own line is end + 1 (a quoted cell may span lines)
    try:
        fieldnames = next(reader, [])
        end = reader.line_num
        if not any(name.strip() for name in fieldnames):
            raise DataError(path, "the header (first line) is empty; it must name the columns", 1)
        if len(set(fieldnames)) != len(fieldnames):
            duplicates = sorted({name for name in fieldnames if fieldnames.count(name) > 1})
            raise DataError(path, f"duplicate column names in header: {', '.join(map(short_repr, duplicates))}", 1)
        for cells in reader:
            line, end = end + 1, reader.line_num
            if len(cells) > len(fieldnames):
                raise DataError(path, f"row has {len(cells)} cells, header has {len(fieldnames)}", line)
            if all(not cell.strip() for cell in cells):
                continue
            if len(cells) < len(fieldnames):
                raise DataError(path, f"row has fewer cells than the header (no {short_repr(fieldnames[len(cells)])})",
                                line)
            row: dict[str, Any] = dict(zip(fieldnames, cells, strict=True))
            if "messages" in row:
                row["messages"] = _loads(path, row["messages"], line, 'JSON in field "messages"')
            yield line, row
    except csv.Error as err:
        raise DataError(path, f"invalid CSV ({err})", end + 1) from None


def read_rows(path: Path, max_bytes: int) -> list[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(path, f"unsupported file type {suffix or '(none)'}; use one of {', '.join(EXTENSIONS)}")
    text = _read_text(path, max_bytes)
    reader = {".jsonl": _rows_jsonl, ".json": _rows_json, ".csv": _rows_csv, ".tsv": _rows_csv}[suffix]
    rows = list(reader(path, text))
    if not rows:
        raise DataError(path, "no rows")
    return rows


