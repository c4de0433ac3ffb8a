"""Bad data, fuzzed with hypothesis: the dataset loaders, the document loaders and index building, the CLI and the
upload handlers of the UI answer every bad file with a valid result or one clear line that names the file (and the
line and field where there is one) — never another exception type, and never a half-written file in the workspace.

Nothing here loads a model: indexes embed with the bag-of-words FakeEmbedder, training reads a tiny tokenizer.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from retrieval_helpers import FakeEmbedder, tiny_pdf

from core.data import MAX_FIELD_CHARS, DataError, Dataset, load_examples
from core.errors import TuneArenaError
from retrieval import KnowledgeBase, NothingToIndexError, build_index, load_cases, load_documents

ROOT = Path(__file__).resolve().parents[2]
DATASET_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv")
DOCUMENT_EXTENSIONS = (".md", ".txt", ".html", ".pdf", ".jsonl", ".csv", ".tsv")
FIELDS = ("instruction", "input", "output", "prompt", "completion", "question", "answer", "context", "messages",
          "task", "source", "system", "id", "text", "title")
REQUIRED = {"alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
            "qa": ("question", "answer")}
EXAMPLES = int(os.environ.get("BAD_DATA_EXAMPLES", "150"))
"""Examples per property (half for the slower ones); e.g. BAD_DATA_EXAMPLES=2000 for a deeper hunt."""
FUZZ = settings(deadline=None, max_examples=EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
SOME = settings(FUZZ, max_examples=max(1, EXAMPLES // 2))

# ---- counting what was tried -----------------------------------------------------------------------------------------

TRIED: dict[str, set[str]] = {}


def tried(kind: str, *parts: bytes | str) -> None:
    """Record one distinct input of property ``kind`` (reported at the end of the module)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    TRIED.setdefault(kind, set()).add(digest.hexdigest())


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried(request):
    """Print how many distinct inputs each property tried (hypothesis examples and hand-written cases)."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    total = sum(len(seen) for seen in TRIED.values())
    line = f"test_bad_data: {total} distinct inputs tried: " + ", ".join(
        f"{kind} {len(seen)}" for kind, seen in sorted(TRIED.items()))
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("\n" + line)


# ---- helpers ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder for one hypothesis example (tmp_path is per test, not per example)."""
    with tempfile.TemporaryDirectory(prefix="ta-bad-data-") as folder:
        yield Path(folder)


def listing(root: Path) -> list[str]:
    """Every path under ``root`` with its size: equal listings mean nothing was written, renamed or left behind."""
    return sorted(f"{path.relative_to(root)} {path.stat().st_size if path.is_file() else '/'}"
                  for path in root.rglob("*"))


def count_lines(data: bytes) -> int:
    """Lines as csv counts them (CRLF, CR or LF ends one): an upper bound for every format's line numbers."""
    return len(re.split(rb"\r\n|\r|\n", data))


def one_line(text: str) -> bool:
    return bool(text.strip()) and len(text.splitlines()) == 1 and "Traceback" not in text


def load_or_error(path: Path, **kwargs: Any) -> Dataset | DataError:
    """The dataset, or the DataError it raised; any other exception propagates and fails the test."""
    try:
        return load_examples(path, **kwargs)
    except DataError as err:
        return err


def check_data_error(err: DataError, path: Path, max_line: int | None = None) -> None:
    """The error is one line that starts with the file name (then ``line N``, when known, within the file)."""
    assert type(err) is DataError, f"{type(err).__name__}: {err}"
    message = str(err)
    assert one_line(message), repr(message)
    assert len(message) <= len(path.name) + 400, message[:600]
    if err.line is None:
        assert message.startswith(f"{path.name}: "), message
    else:
        assert message.startswith(f"{path.name} line {err.line}: "), message
        if max_line is not None:
            assert 1 <= err.line <= max_line, (err.line, max_line, message)


def check_dataset(data: Dataset, *, require_output: bool = True) -> None:
    """A loaded dataset: at least one example, every text a real (UTF-8 encodable) string."""
    assert isinstance(data, Dataset) and len(data) >= 1
    for ex in data.examples:
        assert isinstance(ex.instruction, str) and ex.instruction.strip()
        assert isinstance(ex.output, str) if require_output else ex.output is None or isinstance(ex.output, str)
        for text in (ex.instruction, ex.input, ex.output or "", ex.system or "", ex.task or "", ex.uid):
            text.encode("utf-8")
        for user, assistant in ex.history:
            (user + assistant).encode("utf-8")


def field_named(detail: str) -> str | None:
    """The field a message names: ``field "output"`` or ``field "messages[1].content"`` -> ``output``, ``messages``."""
    match = re.search(r'field "([^".\[]+)', detail)
    return match.group(1) if match else None


def write_rows_csv(rows: list[dict[str, str]], columns: list[str], delimiter: str = ",",
                   terminator: str = "\n") -> str:
    buffer = io.StringIO(newline="")
    # csv leaves a lone CR in a cell unquoted unless CR is in the line terminator: a file no CSV reader reads back
    lone_cr = "\r" not in terminator and any("\r" in str(value) for row in rows for value in row.values())
    writer = csv.DictWriter(buffer, columns, delimiter=delimiter, lineterminator=terminator, extrasaction="ignore",
                            quoting=csv.QUOTE_ALL if lone_cr else csv.QUOTE_MINIMAL)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ---- strategies ------------------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
messages = st.lists(
    st.fixed_dictionaries({}, optional={"role": st.sampled_from(["system", "user", "assistant", "tool"]) | json_values,
                                        "content": st.text(max_size=20) | json_values}) | json_values, max_size=4)
field_values = st.text(max_size=30) | json_values | messages | st.just("\ud800 lone surrogate")
rows_any = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=6) | json_values
# text that reaches the parsers: structural characters of JSON and CSV, quotes, separators, odd line breaks
structural = st.text(alphabet='{}[]":,;|\t\n\r 0123456789.-+eEtruefalsnl\\abu\u2028\x85\ufeff\'', max_size=200)
random_files = st.binary(max_size=400) | st.text(max_size=200).map(str.encode) | structural.map(str.encode)
safe_text = st.text(min_size=1, max_size=25).filter(str.strip)
# one CSV cell that stays on one line and needs no quoting (so a row's line is known and its cells can be cut)
cell_text = st.text(st.characters(codec="utf-8", exclude_characters='\r\n,\t"'), min_size=1,
                    max_size=20).filter(str.strip)
SHAPES = ("alpaca", "prompt_completion", "qa", "chat")


@st.composite
def valid_rows(draw: st.DrawFn, shape: str, text: st.SearchStrategy[str] = safe_text,
               ) -> list[tuple[dict[str, Any], str, str]]:
    """1-6 valid rows of ``shape``: (row, its instruction, its answer)."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        question, answer = draw(text), draw(text)
        if shape == "alpaca":
            row: dict[str, Any] = {"instruction": question, "input": draw(st.text(max_size=10)), "output": answer}
        elif shape == "prompt_completion":
            row = {"prompt": question, "completion": answer}
        elif shape == "qa":
            row = {"question": question, "answer": answer, "context": draw(st.text(max_size=10))}
        else:
            row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
        if draw(st.booleans()):
            row["task"] = draw(text)
        out.append((row, question, answer))
    return out


def serialize(rows: list[dict[str, Any]], suffix: str, *, ascii_only: bool = True, terminator: str = "\n",
              indent: int | None = None, wrap: bool = False) -> str:
    """Rows as the text of a ``suffix`` file (chat messages as a JSON cell in CSV/TSV)."""
    if suffix == ".jsonl":
        return "".join(json.dumps(row, ensure_ascii=ascii_only) + terminator for row in rows)
    if suffix == ".json":
        document: Any = {"note": "data", "tags": ["data"], "data": rows} if wrap else rows
        return json.dumps(document, ensure_ascii=ascii_only, indent=indent)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [{key: json.dumps(value) if key == "messages" else value for key, value in row.items()} for row in rows]
    return write_rows_csv(cells, columns, "\t" if suffix == ".tsv" else ",", terminator)


# ======================================================================================================================
# 1. Dataset loaders (core.data)
# ======================================================================================================================


@FUZZ
@given(data=random_files, suffix=st.sampled_from(DATASET_EXTENSIONS))
@example(data=b"\xef\xbb\xbf", suffix=".csv")  # only a byte-order mark: was an IndexError
@example(data=b"[" * 50_000, suffix=".json")  # nested too deeply: was a RecursionError
@example(data=b"[" * 50_000 + b"\n", suffix=".jsonl")
@example(data=b'{"instruction": "a", "output": "b", "id": ' + b"7" * 5000 + b"}", suffix=".jsonl")  # int too long
@example(data=b'{"d\\u0061ta": [{"instruction": "a", "output": "b"}]}', suffix=".json")  # was "substring not found"
@example(data=b'{"data": [1], "data": [{"instruction": "a", "output": "b"}]}', suffix=".json")  # duplicate key
@example(data=b"\xff\xfei\x00n\x00", suffix=".csv")  # UTF-16
@example(data=b"\n\ninstruction,output\na,b\n", suffix=".csv")  # the header line is blank
def test_random_files_load_or_fail_with_one_line(data: bytes, suffix: str) -> None:
    tried("dataset: random bytes/text", suffix, data)
    with scratch() as folder:
        path = folder / f"random{suffix}"
        path.write_bytes(data)
        result = load_or_error(path)
        if isinstance(result, DataError):
            check_data_error(result, path, count_lines(data))
        else:
            check_dataset(result)


@FUZZ
@given(rows=st.lists(rows_any, max_size=5), blanks=st.lists(st.sampled_from(["", "  ", "\t", "\r"]), max_size=5),
       layout=st.sampled_from(["jsonl", "json", "json-data"]), require_output=st.booleans())
@example(rows=[{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "b"}], blanks=["", ""],
         layout="jsonl", require_output=True)
@example(rows=[{"messages": [{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "b"}]}],
         blanks=[], layout="jsonl", require_output=True)
def test_wrong_types_name_the_line_and_the_field(rows: list[Any], blanks: list[str], layout: str,
                                                 require_output: bool) -> None:
    """Rows of any JSON with known and unknown keys: a valid load of every row, or the right line and field."""
    lines: list[str] = []
    row_at: dict[int, Any] = {}
    if layout == "jsonl":
        for index, row in enumerate(rows):
            if index < len(blanks):
                lines.append(blanks[index])
            lines.append(json.dumps(row))
            row_at[len(lines)] = row
        text = "\n".join(lines) + "\n"
    else:
        text = serialize(rows, ".json", indent=1, wrap=layout == "json-data")
    tried("dataset: wrong types", layout, str(require_output), text)
    with scratch() as folder:
        path = folder / ("rows.jsonl" if layout == "jsonl" else "rows.json")
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        result = load_or_error(path, require_output=require_output)
        if isinstance(result, Dataset):
            check_dataset(result, require_output=require_output)
            assert len(result) == len(rows)  # all or nothing: never a partial load
            return
        check_data_error(result, path, text.count("\n") + 1)
        if layout != "jsonl" or result.line is None:
            return
        row = row_at[result.line]  # the line named is a row's line, not a blank one
        name = field_named(result.detail)
        if name is None:
            return
        if result.detail.startswith("missing field"):
            assert isinstance(row, dict) and row.get(name) is None, (result.detail, row)
        else:
            assert isinstance(row, dict) and name in row, (result.detail, row)


@FUZZ
@given(shape=st.sampled_from(SHAPES), suffix=st.sampled_from(DATASET_EXTENSIONS), data=st.data())
def test_valid_rows_with_boms_blank_lines_and_crlf_load_completely(shape: str, suffix: str,
                                                                   data: st.DataObject) -> None:
    """Harmless noise (a BOM, CRLF line ends, blank lines, raw non-ASCII, odd Unicode line breaks) changes nothing."""
    rows = data.draw(valid_rows(shape))
    terminator = data.draw(st.sampled_from(["\n", "\r\n"]))
    text = serialize([row for row, _, _ in rows], suffix, ascii_only=data.draw(st.booleans()), terminator=terminator,
                     indent=data.draw(st.sampled_from([None, 1, 2])), wrap=data.draw(st.booleans()))
    if suffix == ".jsonl" and data.draw(st.booleans()):
        text = text.replace(terminator, terminator + data.draw(st.sampled_from(["", " ", "\t"])) + terminator)
    if suffix in (".csv", ".tsv") and data.draw(st.booleans()):
        text += terminator * data.draw(st.integers(1, 3))  # blank lines at the end
    bom = data.draw(st.booleans())
    tried("dataset: valid with noise", suffix, str(bom), text)
    with scratch() as folder:
        path = folder / f"noisy{suffix}"
        path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
        loaded = load_examples(path)  # must not raise
        assert loaded.shape == shape
        assert [ex.instruction for ex in loaded.examples] == [question for _, question, _ in rows]
        assert [ex.output for ex in loaded.examples] == [answer for _, _, answer in rows]
        if suffix == ".json":
            lines = text.split("\n")
            for ex in loaded.examples:  # the line named by an example's uid is where its object starts
                line = int(ex.uid.rsplit(":", 1)[1])
                assert "{" in lines[line - 1], (ex.uid, lines[line - 1])


@FUZZ
@given(shape=st.sampled_from(SHAPES), suffix=st.sampled_from(DATASET_EXTENSIONS), data=st.data())
def test_truncated_files_fail_at_the_cut_or_load_a_prefix(shape: str, suffix: str, data: st.DataObject) -> None:
    rows = data.draw(valid_rows(shape))
    raw = serialize([row for row, _, _ in rows], suffix, ascii_only=False, indent=1).encode("utf-8")
    cut = data.draw(st.integers(0, len(raw) - 1))
    truncated = raw[:cut]
    tried("dataset: truncated", suffix, truncated)
    with scratch() as folder:
        path = folder / f"cut{suffix}"
        path.write_bytes(truncated)
        result = load_or_error(path)
        if isinstance(result, Dataset):
            check_dataset(result)
            assert len(result) <= len(rows)
            if suffix == ".jsonl":  # whole rows only, in order
                assert [ex.instruction for ex in result.examples] == [q for _, q, _ in rows[:len(result)]]
            return
        check_data_error(result, path, count_lines(truncated))
        if suffix == ".jsonl" and truncated.strip() and not truncated.endswith(b"\n"):
            assert result.line == truncated.count(b"\n") + 1, str(result)  # the cut row, not another


INVALID_UTF8 = [0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xFE, 0xFF]


@FUZZ
@given(shape=st.sampled_from(SHAPES), suffix=st.sampled_from(DATASET_EXTENSIONS), data=st.data())
def test_non_utf8_bytes_name_their_line(shape: str, suffix: str, data: st.DataObject) -> None:
    rows = data.draw(valid_rows(shape))
    raw = serialize([row for row, _, _ in rows], suffix, ascii_only=False, indent=1).encode("utf-8")
    at = data.draw(st.integers(0, len(raw)))
    bad = bytes([data.draw(st.sampled_from(INVALID_UTF8))])
    broken = raw[:at] + bad + raw[at:]
    tried("dataset: non-UTF-8", suffix, broken)
    with scratch() as folder:
        path = folder / f"latin{suffix}"
        path.write_bytes(broken)
        result = load_or_error(path)
        assert isinstance(result, DataError)
        check_data_error(result, path)
        assert "not valid UTF-8" in result.detail and result.line == raw[:at].count(b"\n") + 1, str(result)


@SOME
@given(rows=valid_rows("alpaca"), wrong=st.sampled_from([(".csv", ";"), (".csv", "\t"), (".csv", "|"), (".tsv", ","),
                                                          (".tsv", ";"), (".tsv", "|")]))
def test_a_wrong_delimiter_is_named_on_line_1(rows: list[tuple[dict[str, Any], str, str]],
                                               wrong: tuple[str, str]) -> None:
    suffix, delimiter = wrong
    text = write_rows_csv([row for row, _, _ in rows], ["instruction", "input", "output", "task"], delimiter)
    tried("dataset: wrong delimiter", suffix, text)
    with scratch() as folder:
        path = folder / f"data{suffix}"
        path.write_text(text, encoding="utf-8")
        result = load_or_error(path)
        assert isinstance(result, DataError)
        check_data_error(result, path)
        assert result.line == 1 and "-separated" in result.detail, str(result)
        assert ("save it tab-separated" if suffix == ".tsv" else "save it comma-separated") in result.detail


MUTATIONS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "delete": lambda row, key: row.pop(key),
    "null": lambda row, key: row.__setitem__(key, None),
    "number": lambda row, key: row.__setitem__(key, 42),
    "list": lambda row, key: row.__setitem__(key, ["a", "b"]),
    "object": lambda row, key: row.__setitem__(key, {"text": "a"}),
    "bool": lambda row, key: row.__setitem__(key, True),
    "blank": lambda row, key: row.__setitem__(key, "  "),
}


@FUZZ
@given(shape=st.sampled_from(sorted(REQUIRED)), suffix=st.sampled_from([".jsonl", ".json"]), data=st.data())
def test_a_missing_or_mistyped_required_field_is_named_with_its_line(shape: str, suffix: str,
                                                                     data: st.DataObject) -> None:
    rows = [row for row, _, _ in data.draw(valid_rows(shape))]
    index = data.draw(st.integers(0, len(rows) - 1))
    key = data.draw(st.sampled_from(REQUIRED[shape]))
    mutation = data.draw(st.sampled_from(sorted(MUTATIONS)))
    MUTATIONS[mutation](rows[index], key)
    text = serialize(rows, suffix, indent=None)
    tried("dataset: missing/mistyped field", suffix, text)
    with scratch() as folder:
        path = folder / f"fields{suffix}"
        path.write_text(text, encoding="utf-8")
        result = load_or_error(path)
        assert isinstance(result, DataError), (mutation, key, rows[index])
        check_data_error(result, path)
        expected_line = index + 1 if suffix == ".jsonl" else 1
        assert result.line == expected_line, str(result)
        # the first row decides the shape: without its key field it fits none, and the error says so
        assert field_named(result.detail) == key or (index == 0 and "unknown shape" in result.detail), str(result)


@SOME
@given(shape=st.sampled_from(sorted(REQUIRED)), suffix=st.sampled_from([".csv", ".tsv"]), data=st.data())
def test_a_blank_or_missing_csv_cell_is_named_with_its_line(shape: str, suffix: str, data: st.DataObject) -> None:
    rows = [row for row, _, _ in data.draw(valid_rows(shape, cell_text))]
    for row in rows:  # optional cells could be blank: then a row cut short could still be a valid one
        for optional in ("input", "context"):
            row.pop(optional, None)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    index = data.draw(st.integers(0, len(rows) - 1))
    key = data.draw(st.sampled_from(REQUIRED[shape]))
    rows[index][key] = data.draw(st.sampled_from(["", "   "]))
    delimiter = "\t" if suffix == ".tsv" else ","
    lines = write_rows_csv(rows, columns, delimiter).split("\n")
    if data.draw(st.booleans()):  # and the row ends early (a cell short)
        lines[index + 1] = delimiter.join(lines[index + 1].split(delimiter)[:-1])
    text = "\n".join(lines)
    tried("dataset: blank/short CSV row", suffix, text)
    with scratch() as folder:
        path = folder / f"cells{suffix}"
        path.write_text(text, encoding="utf-8")
        result = load_or_error(path)
        if not lines[index + 1].replace(delimiter, "").strip():  # nothing left in the row: a blank line, skipped
            if len(rows) == 1:
                assert isinstance(result, DataError) and result.detail == "no rows", str(result)
            else:
                assert isinstance(result, Dataset) and len(result) == len(rows) - 1
            return
        assert isinstance(result, DataError)
        check_data_error(result, path, text.count("\n") + 1)
        assert result.line == index + 2, str(result)  # the header is line 1


HUGE = "x" * (MAX_FIELD_CHARS + 1)


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("huge.jsonl", '{"instruction": "a", "output": "b"}\n' + json.dumps({"instruction": HUGE, "output": "b"}) + "\n",
     r'^huge\.jsonl line 2: field "instruction" is 200001 characters, over the 200000 limit$'),
    ("huge.csv", "instruction,output\na,b\nc," + HUGE + "\n",
     r'^huge\.csv line 3: field "output" is 200001 characters, over the 200000 limit$'),
    ("huge.tsv", "question\tanswer\n" + HUGE + "\tb\n", r'^huge\.tsv line 2: field "question" is 200001 characters'),
    ("huge.json", json.dumps([{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": HUGE}], indent=1),
     r'^huge\.json line 6: field "completion" is 200001 characters'),
    ("huge-chat.jsonl", json.dumps({"messages": [{"role": "user", "content": HUGE},
                                                 {"role": "assistant", "content": "b"}]}) + "\n",
     r'^huge-chat\.jsonl line 1: field "messages\[0\]\.content" is 200001 characters'),
    ("huge-key.jsonl", json.dumps({HUGE: "a"}) + "\n", r"^huge-key\.jsonl line 1: unknown shape"),
    ("huge-role.jsonl", json.dumps({"messages": [{"role": HUGE, "content": "a"}]}) + "\n",
     r'^huge-role\.jsonl line 1: field "messages\[0\]\.role" must be one of'),
    ("huge-header.csv", "instruction," + HUGE + ",instruction\na,b,c\n", r"^huge-header\.csv line 1: duplicate column"),
    ("huge-big-int.jsonl", '{"instruction": "a", "output": 1' + "0" * 5000 + "}\n", r"^huge-big-int\.jsonl line 1: "),
])
def test_huge_fields_are_refused_by_name(tmp_path: Path, name: str, content: str, needle: str) -> None:
    tried("dataset: huge fields", name, content)
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    result = load_or_error(path)
    assert isinstance(result, DataError)
    check_data_error(result, path)
    assert re.search(needle, str(result)), str(result)


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("empty.jsonl", b"", "file is empty"),
    ("blanks.jsonl", b"\n \n\t\n\r\n", "file is empty"),
    ("bom-only.jsonl", b"\xef\xbb\xbf", "file is empty"),
    ("bom-blank.csv", b"\xef\xbb\xbf\n\n", "file is empty"),
    ("empty-array.json", b"[]", "no rows"),
    ("empty-data.json", b'{"data": []}', "no rows"),
    ("header-only.csv", b"instruction,output\n", "no rows"),
    ("header-blank-rows.csv", b"instruction,output\n,\n , \n\n", "no rows"),
    ("header-only.tsv", b"\xef\xbb\xbfquestion\tanswer\r\n\r\n", "no rows"),
    ("scalar.json", b"42", "expected a JSON array"),
    ("object.json", b'{"rows": []}', "expected a JSON array"),
    ("null.jsonl", b"null\n", "expected a JSON object, got NoneType"),
    ("list.jsonl", b'[{"instruction": "a", "output": "b"}]\n', "expected a JSON object, got list"),
    ("string.jsonl", b'"instruction"\n', "expected a JSON object, got str"),
    ("utf16.jsonl", '{"instruction": "a", "output": "b"}\n'.encode("utf-16"), "not valid UTF-8"),
    ("folder.jsonl", None, "is a folder"),
    ("missing.jsonl", "missing", "file not found"),
    ("notes.txt", b"instruction,output\na,b\n", "unsupported file type .txt"),
])
def test_empty_and_odd_files_are_named(tmp_path: Path, name: str, content: bytes | str | None, needle: str) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    tried("dataset: empty/odd files", name, content if isinstance(content, bytes) else str(content))
    result = load_or_error(path)
    assert isinstance(result, DataError)
    check_data_error(result, path)
    assert needle in result.detail, str(result)


@pytest.mark.parametrize(("content", "rows"), [
    ('\ufeff{"instruction": "a", "output": "b"}\r\n\r\n{"instruction": "c", "output": "d"}', 2),
    ('{"instruction": "line\u2028separator", "output": "b"}\n{"instruction": "n\u0085l", "output": "d"}\n', 2),
    ('{"instruction": "a", "output": "b", "task": "qa"}\n\n\n   \n{"instruction": "c", "output": "d"}\n\n', 2),
])
def test_harmless_noise_in_jsonl_keeps_every_row(tmp_path: Path, content: str, rows: int) -> None:
    tried("dataset: noise", content)
    path = tmp_path / "noise.jsonl"
    path.write_text(content, encoding="utf-8")
    assert len(load_examples(path)) == rows


# ======================================================================================================================
# 2. Document loaders and index building (retrieval)
# ======================================================================================================================

HTML_PIECES = ["<", ">", "</", "<!--", "-->", "<![CDATA[", "]]>", "<!", "<?", "?>", "<script>", "</script>", "<p>",
               "<h1>", "</h1>", "&", "&#", "&#x", ";", "amp", "99999999", "text", " ", "\n", '"', "'", "=",
               "<title>", "</title>", "<svg>", "<br/>", "<![if", "]>", "<!DOCTYPE", "<a href=", "<style>", "\x00"]
html_soup = st.lists(st.sampled_from(HTML_PIECES), max_size=40).map("".join)
document_rows = st.lists(rows_any, max_size=4).map(lambda rows: "\n".join(json.dumps(row) for row in rows))
document_files = random_files | html_soup.map(str.encode) | document_rows.map(str.encode)


def check_documents(paths: list[Path], result: Any) -> None:
    """Every file became documents or one skipped entry with a one-line reason, never both, never neither."""
    skipped = {item.path: item.reason for item in result.skipped}
    for item in result.skipped:
        assert one_line(item.reason), repr(item.reason)
        assert "internal error" not in item.reason, item.reason  # a loader bug, caught by load_documents' net
    for path in paths:
        source = str(path)
        documents = [doc for doc in result.documents if doc.source == source or doc.source.startswith(source + "#")]
        assert bool(documents) != (source in skipped), (source, skipped, len(documents))
    for document in result.documents:
        assert document.text.strip()
        (document.text + document.title).encode("utf-8")


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from(DOCUMENT_EXTENSIONS), document_files), min_size=1, max_size=3))
@example(files=[(".csv", b"text,title\nhello world, this is some long text,t,EXTRA\n")])  # was AttributeError
@example(files=[(".jsonl", b'{"text": "\\ud800 a lone surrogate in a long enough text"}\n')])
@example(files=[(".jsonl", b"[" * 50_000)])
@example(files=[(".jsonl", b'{"text": ' + b"1" * 5000 + b"}")])
@example(files=[(".html", b"<![if x]>text<![endif]>")])
@example(files=[(".md", b"\xef\xbb\xbf")])
def test_documents_load_or_are_skipped_with_a_reason_and_indexing_leaves_no_debris(
        files: list[tuple[str, bytes]]) -> None:
    with scratch() as folder:
        docs = folder / "docs"
        docs.mkdir()
        paths = []
        for number, (suffix, content) in enumerate(files):
            path = docs / f"doc{number}{suffix}"
            path.write_bytes(content)
            paths.append(path)
            tried("documents: random files", suffix, content)
        result = load_documents(paths)  # never raises
        check_documents(paths, result)

        indexes = folder / "indexes"
        indexes.mkdir()
        before = listing(folder)
        embedder = FakeEmbedder()
        try:
            built = build_index([str(docs)], indexes / "kb", embedder)
        except NothingToIndexError as err:
            assert not result.documents
            assert one_line(str(err)) and str(err).startswith("nothing to index: ")
            assert listing(folder) == before  # no half-written index, no temporary folder
            return
        assert built.documents == len(result.documents) and built.chunks >= 1
        loaded = KnowledgeBase.load(indexes / "kb", embedder)
        assert len(loaded.chunks) == built.chunks
        assert [path.name for path in indexes.iterdir()] == ["kb"]  # no temporary or old folder left


PDF = tiny_pdf([["Quokka kettles boil water in ninety seconds."], ["Second page text."]], title="Kettles")


@SOME
@given(edits=st.lists(st.tuples(st.integers(0, len(PDF) - 1), st.binary(min_size=0, max_size=4)), max_size=4),
       cut=st.none() | st.integers(0, len(PDF)))
@example(edits=[], cut=None)  # the intact PDF loads
@example(edits=[], cut=40)
@example(edits=[(0, b"%PDF")], cut=None)
def test_damaged_pdfs_load_or_are_skipped(edits: list[tuple[int, bytes]], cut: int | None) -> None:
    data = bytearray(PDF)
    for at, replacement in edits:
        data[at:at + len(replacement)] = replacement
    data = bytes(data[:cut] if cut is not None else data)
    tried("documents: damaged PDF", data)
    with scratch() as folder:
        path = folder / "damaged.pdf"
        path.write_bytes(data)
        result = load_documents([path])
        check_documents([path], result)
        if data == PDF:
            assert [doc.title for doc in result.documents] == ["Kettles"]


@SOME
@given(content=random_files | document_rows.map(str.encode))
@example(content=b"\xff\xfe")
@example(content=b'{"question": "q", "source": "a.md"}\n' + b"[" * 50_000)
@example(content=b'{"question": "q", "source": "a.md", "id": ' + b"1" * 5000 + b"}\n")
def test_retrieval_cases_load_or_fail_with_one_line(content: bytes) -> None:
    tried("retrieval cases", content)
    with scratch() as folder:
        path = folder / "cases.jsonl"
        path.write_bytes(content)
        try:
            cases = load_cases(path)
        except ValueError as err:
            assert isinstance(err, TuneArenaError), f"{type(err).__name__}: {err}"
            assert one_line(str(err)) and str(err).startswith(str(path)), str(err)
        else:
            assert cases and all(case.question.strip() and case.source for case in cases)


# ======================================================================================================================
# 3. The CLI: exit code 2 and one line on stderr
# ======================================================================================================================


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``python -m core`` in this process: (exit code, stdout, stderr)."""
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def check_cli_error(code: int, out: str, err: str, path: Path) -> None:
    assert code == 2, (code, err)
    assert out == ""
    assert one_line(err) and err.startswith("error: "), err
    assert path.name in err, err


@SOME
@given(data=random_files | document_rows.map(str.encode), suffix=st.sampled_from(DATASET_EXTENSIONS))
@example(data=b"\xef\xbb\xbf", suffix=".csv")
@example(data=b"[" * 50_000, suffix=".json")
def test_cli_data_exits_2_with_one_line(data: bytes, suffix: str) -> None:
    tried("cli: data", suffix, data)
    with scratch() as folder:
        path = folder / f"bad{suffix}"
        path.write_bytes(data)
        code, out, err = run_cli(["data", "--data", str(path), "--json"])
        if code == 0:
            assert json.loads(out)["rows"] >= 1
        else:
            check_cli_error(code, out, err, path)


BAD_DATASETS = {
    "types.jsonl": b'{"instruction": "a", "output": "b"}\n{"instruction": ["a"], "output": "b"}\n',
    "cut.json": b'[{"instruction": "a", "output": "b"}, {"instruction": "c", "out',
    "semicolons.csv": b"instruction;output\na;b\n",
    "latin1.tsv": b"instruction\toutput\ncaf\xe9\tb\n",
    "bom.csv": b"\xef\xbb\xbf",
}


@pytest.fixture
def bad_data_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace the CLI writes to (runs/, indexes/, evals/, uploads/)."""
    workspace = tmp_path / "workspace"
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(workspace))
    return workspace


@pytest.mark.parametrize("name", sorted(BAD_DATASETS))
def test_cli_train_and_eval_refuse_bad_data_before_writing(tmp_path: Path, bad_data_workspace: Path,
                                                           tiny_model_dir: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(BAD_DATASETS[name])
    tried("cli: train/eval", name, BAD_DATASETS[name])
    from core.engine.workspace import Workspace

    Workspace.open(bad_data_workspace)
    before = listing(bad_data_workspace)
    code, out, err = run_cli(["train", "--data", str(path), "--method", "lora", "--model", str(tiny_model_dir),
                              "--max-steps", "1", "--json"])
    check_cli_error(code, out, err, path)
    code, out, err = run_cli(["train", "--data", str(ROOT / "assets/demo/train.jsonl"), "--val-data", str(path),
                              "--method", "lora", "--model", str(tiny_model_dir), "--max-steps", "1", "--json"])
    check_cli_error(code, out, err, path)
    code, out, err = run_cli(["eval", "--data", str(path), "--variants", "zero_shot", "--json"])
    check_cli_error(code, out, err, path)
    assert listing(bad_data_workspace) == before  # no run folder, no eval folder


@pytest.fixture
def fake_sentence_embedder(monkeypatch: pytest.MonkeyPatch) -> FakeEmbedder:
    """`index` and `search` (the engine's embedder) embed with the FakeEmbedder instead of loading MiniLM."""
    from core.engine import Engine

    embedder = FakeEmbedder()
    monkeypatch.setattr(Engine, "embedder", lambda self, name=None: embedder)
    return embedder


def test_cli_index_with_only_bad_documents_exits_2_and_writes_nothing(tmp_path: Path, bad_data_workspace: Path,
                                                                    fake_sentence_embedder: FakeEmbedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    bad = {"a.pdf": b"%PDF-1.4 truncated", "b.md": b"\x00\x01\x02binary", "c.jsonl": b"[" * 50_000,
           "d.csv": b"text\n" + b"\xff\xfe", "e.html": b"<script>only()</script>", "f.exe": b"MZ"}
    for name, content in bad.items():
        (docs / name).write_bytes(content)
        tried("cli: index", name, content)
    out_dir = bad_data_workspace / "indexes" / "kb"
    from core.engine.workspace import Workspace

    Workspace.open(bad_data_workspace)
    before = listing(bad_data_workspace)
    code, out, err = run_cli(["index", "--docs", str(docs), "--out", str(out_dir), "--json"])
    assert code == 2 and out == "" and one_line(err) and err.startswith("error: nothing to index: "), err
    assert "a.pdf" in err
    assert listing(bad_data_workspace) == before

    (docs / "good.md").write_text("# Kettles\n\nQuokka kettles boil water in ninety seconds.\n", encoding="utf-8")
    code, out, err = run_cli(["index", "--docs", str(docs), "--out", str(out_dir), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["documents"] == 1 and {Path(item["path"]).name for item in result["skipped"]} == set(bad)
    assert all(one_line(item["reason"]) for item in result["skipped"])


@pytest.mark.parametrize(("argv", "name", "content", "start"), [
    (["data", "--data", "{path}"], "types.jsonl", BAD_DATASETS["types.jsonl"], "error: types.jsonl line 2: "),
    (["eval", "--data", "{path}", "--variants", "zero_shot"], "latin1.tsv", BAD_DATASETS["latin1.tsv"],
     "error: latin1.tsv line 2: not valid UTF-8"),
    (["index", "--docs", "{path}", "--out", "{tmp}/kb"], "nested.jsonl", b"[" * 50_000,
     "error: nothing to index: {path}: line 1: invalid JSON (nested too deeply)"),  # no model loaded first
])
def test_python_dash_m_core_prints_one_line_and_no_traceback(tmp_path: Path, argv: list[str], name: str,
                                                              content: bytes, start: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    tried("cli: subprocess", " ".join(argv), content)
    env = {**os.environ, "TUNE_ARENA_WORKSPACE": str(tmp_path / "workspace")}
    proc = subprocess.run([sys.executable, "-m", "core", *[a.format(path=path, tmp=tmp_path) for a in argv]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) and proc.stderr.startswith(start.format(path=path)), proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "kb").exists()


# ======================================================================================================================
# 4. The UI: upload and preview handlers show one line and store nothing bad
# ======================================================================================================================


@pytest.fixture(scope="module")
def bad_data_ui(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Callable[..., Any]]]:
    """An engine on an empty workspace (FakeEmbedder for indexes) and the Train, Evaluate and Knowledge tabs'
    handlers by api_name, called directly as Gradio would call them."""
    import gradio as gr

    from core.engine import Engine
    from ui.evaluate import create_evaluate_tab
    from ui.knowledge import create_knowledge_tab
    from ui.train import create_train_tab

    engine = Engine(tmp_path_factory.mktemp("bad-data-ws"))
    for kind in ("datasets", "documents"):  # as after a first upload: the listings compare files, not these folders
        (engine.workspace.uploads / kind).mkdir(parents=True, exist_ok=True)
    embedder = FakeEmbedder()
    engine.embedder = lambda name=None: embedder  # type: ignore[method-assign]
    with gr.Blocks() as blocks:
        with gr.Tab("Train"):
            create_train_tab(engine)
        with gr.Tab("Evaluate"):
            create_evaluate_tab(engine)
        with gr.Tab("Knowledge base"):
            create_knowledge_tab(engine)
    handlers = {fn.api_name: fn.fn for fn in blocks.fns.values() if fn.api_name}
    return engine, handlers


def gradio_message(err: BaseException) -> str:
    import gradio as gr

    assert isinstance(err, gr.Error), f"{type(err).__name__}: {err}"
    return str(err.message)


@SOME
@given(data=random_files | document_rows.map(str.encode), suffix=st.sampled_from(DATASET_EXTENSIONS))
@example(data=b'{"instruction": "a", "output": "b"}\n{"instruction": "<b>x</b>"}\n', suffix=".jsonl")
def test_dataset_preview_and_uploads_show_one_line_and_store_nothing_bad(bad_data_ui, data: bytes,
                                                                         suffix: str) -> None:
    from ui.train import describe_dataset

    engine, handlers = bad_data_ui
    root = engine.workspace.root
    tried("ui: dataset upload", suffix, data)
    with scratch() as folder:
        path = folder / f"upload{suffix}"
        path.write_bytes(data)
        line, frame = describe_dataset(str(path))
        assert one_line(line)
        if "ta-error" in line:
            assert frame.empty and f"✗ {path.name}" in line and "<b>" not in line
        else:
            assert line.startswith("✓ ") and len(frame) >= 1
        valid = not isinstance(load_or_error(path), DataError)
        for use in ("training", "test"):  # the Train and Evaluate tabs' uploads (Engine.store_dataset)
            before = listing(root)
            try:
                stored = engine.store_dataset(path, use)
            except ValueError as err:
                assert not valid and type(err) is DataError
                assert one_line(str(err)) and str(err).startswith(path.name), str(err)
                assert listing(root) == before
            else:
                assert valid and stored.is_file()
                stored.unlink()
        before = listing(root)
        try:
            handlers["train_upload"](str(path))
        except Exception as err:  # noqa: BLE001 - the user sees gr.Error's message
            message = gradio_message(err)
            assert not valid and one_line(message) and message.startswith(path.name), message
        else:
            assert valid
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handlers["eval_upload"](str(path))  # Evaluate's upload: a warning, not an exception
        shown = [str(w.message) for w in caught if str(w.message).startswith(path.name)]
        assert bool(shown) != valid and all(one_line(message) for message in shown), shown
        for stored in engine.workspace.uploads.rglob("upload*"):
            stored.unlink()  # a valid upload was stored: take it away for the next example
        assert listing(root) == before


def test_knowledge_build_with_bad_uploads_keeps_no_debris(bad_data_ui, tmp_path: Path) -> None:
    engine, handlers = bad_data_ui
    root = engine.workspace.root
    uploads = tmp_path / "gradio-temp"
    uploads.mkdir()
    bad = {"broken.pdf": b"%PDF-1.7\n1 0 obj <<", "binary.md": b"\x00\x01\x02", "nested.jsonl": b"[" * 50_000,
           "latin1.txt": b"caf\xe9", "tool.exe": b"MZ"}
    for name, content in bad.items():
        (uploads / name).write_bytes(content)
        tried("ui: knowledge upload", name, content)
    files = [str(uploads / name) for name in bad]
    build = handlers["build_index"]
    before = listing(root)
    with pytest.raises(Exception) as caught:  # noqa: B017 - checked to be gr.Error below
        build(files, "", False, "bad-kb", True, 200, 32, "flat", True, False)
    message = gradio_message(caught.value)
    assert one_line(message) and message.startswith("nothing to index: "), message
    assert listing(root) == before  # no stored upload, no index folder

    (uploads / "good.md").write_text("# Kettles\n\nQuokka kettles boil water in ninety seconds.\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, skipped, *_ = build(files + [str(uploads / "good.md")], "", False, "mixed-kb", True, 200, 32, "flat",
                                    True, False)
    assert [str(w.message) for w in caught] == ["1 upload refused: see Skipped files"]  # tool.exe
    assert status.startswith("**Built `mixed-kb`**: 1 documents,") and "5 files skipped" in status, status
    assert sorted(skipped.iloc[:, 0]) == sorted(bad)
    assert all(one_line(reason) for reason in skipped.iloc[:, 1])
    stored = sorted(path.name for path in (engine.workspace.uploads / "documents").iterdir())
    assert stored == ["good.md"]  # the files that could not be read were not kept
