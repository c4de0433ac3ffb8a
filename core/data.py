"""Datasets: load JSONL / JSON / CSV in the common instruction shapes, validate, split, and format with a chat template.

Shapes (auto-detected from a row's keys, or named):

- ``alpaca``: ``{"instruction", "input"?, "output"}``
- ``prompt_completion``: ``{"prompt", "completion"}``
- ``chat``: ``{"messages": [{"role", "content"}, ...]}`` (the last assistant turn is the answer)
- ``qa``: ``{"question", "answer", "context"?}``

Any shape may carry ``task`` (a task name for multi-task data), ``source`` (a source document id), ``system`` and
``id``. Every error names the file, the line and the field: ``train.jsonl line 17: missing field "output"``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SHAPES = ("alpaca", "prompt_completion", "chat", "qa")
EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv")
MAX_FILE_BYTES = 50 * 1024 * 1024
"""Default size limit of a dataset file (50 MiB)."""
MAX_FIELD_CHARS = 200_000
"""A single text field longer than this is refused (it could not fit any context window we serve)."""
ROLES = ("system", "user", "assistant")
FALLBACK_TEMPLATE = "### Instruction:\n{user}\n\n### Response:\n"
"""Prompt format for tokenizers that have no chat template (base models)."""

# Required and optional text fields per shape; "messages" is handled on its own.
_SHAPE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alpaca": (("instruction", "output"), ("input",)),
    "prompt_completion": (("prompt", "completion"), ()),
    "qa": (("question", "answer"), ("context",)),
    "chat": (("messages",), ()),
}
_ANSWER_FIELD = {"alpaca": "output", "prompt_completion": "completion", "qa": "answer", "chat": "messages"}
_META_FIELDS = ("task", "source", "system", "id")


class DataError(ValueError):
    """Bad dataset input. ``str(err)`` is one line naming the file, line and field."""

    def __init__(self, file: str | Path, message: str, line: int | None = None) -> None:
        self.file = str(file)
        self.line = line
        self.detail = message
        where = f"{Path(self.file).name} line {line}" if line is not None else Path(self.file).name
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Example:
    """One instruction example, whatever shape it was loaded from.

    ``instruction`` is the task or question; ``input`` the text it applies to (a message to summarise, a context
    passage); ``output`` the reference answer (``None`` for a query set without references). ``history`` holds
    earlier (user, assistant) turns of a chat row.
    """

    instruction: str
    input: str = ""
    output: str | None = None
    task: str | None = None
    source: str | None = None
    system: str | None = None
    history: tuple[tuple[str, str], ...] = ()
    uid: str = ""

    @property
    def user_text(self) -> str:
        """The user turn: the instruction, then the input after a blank line when there is one."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


@dataclass
class Dataset:
    """Examples loaded from one file, with the shape that was detected."""

    path: str
    shape: str
    examples: list[Example]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def tasks(self) -> dict[str, int]:
        """Row count per task name (``"default"`` for rows without one)."""
        return dict(Counter(ex.task or "default" for ex in self.examples))


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------------
# Reading rows with line numbers
# --------------------------------------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters: user data quoted inside a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _read_text(path: Path, max_bytes: int) -> str:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a .jsonl, .json or .csv file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DataError(path, f"file is {_human_bytes(size)}, over the {_human_bytes(max_bytes)} limit")
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
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = line + err.lineno - 1 if line is not None else err.lineno
        raise DataError(path, f"malformed {what} ({err.msg} at column {err.colno})", where) from None
    except RecursionError:
        raise DataError(path, f"malformed {what} (nested too deeply)", line) from None
    except ValueError as err:  # an integer of more digits than int() converts
        raise DataError(path, f"malformed {what} ({str(err).split(':')[0].lower()})", line) from None


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
            raise DataError(path, "malformed JSON (nested too deeply)", line) from None
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
            raise DataError(path, f"duplicate column names in header: {', '.join(map(_short, duplicates))}", 1)
        for cells in reader:
            line, end = end + 1, reader.line_num
            if len(cells) > len(fieldnames):
                raise DataError(path, f"row has {len(cells)} cells, header has {len(fieldnames)}", line)
            if all(not cell.strip() for cell in cells):
                continue
            if len(cells) < len(fieldnames):
                raise DataError(path, f"row has fewer cells than the header (no {_short(fieldnames[len(cells)])})",
                                line)
            row: dict[str, Any] = dict(zip(fieldnames, cells, strict=True))
            if "messages" in row:
                row["messages"] = _loads(path, row["messages"], line, 'JSON in field "messages"')
            yield line, row
    except csv.Error as err:
        raise DataError(path, f"malformed CSV ({err})", end + 1) from None


def _read_rows(path: Path, max_bytes: int) -> list[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(path, f"unsupported file type {suffix or '(none)'}; use one of {', '.join(EXTENSIONS)}")
    text = _read_text(path, max_bytes)
    reader = {".jsonl": _rows_jsonl, ".json": _rows_json, ".csv": _rows_csv, ".tsv": _rows_csv}[suffix]
    rows = list(reader(path, text))
    if not rows:
        raise DataError(path, "no rows")
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Rows -> examples
# --------------------------------------------------------------------------------------------------------------------


def detect_shape(row: dict[str, Any]) -> str | None:
    """The shape a row's keys fit, or ``None``."""
    keys = set(row)
    if "messages" in keys:
        return "chat"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "question" in keys:
        return "qa"
    return None


def _check_string(path: Path, line: int, where: str, value: str) -> None:
    """Refuse text no model could take: over MAX_FIELD_CHARS, or holding an unpaired surrogate (a JSON escape such
    as ``"\\ud800"`` that is no character; it would fail later, when tokenized or written out as UTF-8)."""
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(path, f"{where} is {len(value)} characters, over the {MAX_FIELD_CHARS} limit", line)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = ord(value[err.start])
        raise DataError(path, f"{where} holds an unpaired surrogate \\u{bad:04x} at character {err.start}",
                        line) from None


def _text(path: Path, line: int, row: dict[str, Any], key: str, *, required: bool) -> str:
    if key not in row or row[key] is None:
        if required:
            raise DataError(path, f'missing field "{key}"', line)
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, f'field "{key}" must be a string, got {type(value).__name__}', line)
    _check_string(path, line, f'field "{key}"', value)
    if required and not value.strip():
        raise DataError(path, f'field "{key}" is empty', line)
    return value


def _chat_example(path: Path, line: int, row: dict[str, Any], require_output: bool) -> dict[str, Any]:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(path, 'field "messages" must be a non-empty list of {"role", "content"} objects', line)
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        where = f'field "messages[{index}]'
        if not isinstance(message, dict):
            raise DataError(path, f'{where}" must be an object with "role" and "content"', line)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(path, f'{where}.role" must be one of {", ".join(ROLES)}, got {_short(role)}', line)
        if not isinstance(content, str):
            raise DataError(path, f'{where}.content" must be a string, got {type(content).__name__}', line)
        _check_string(path, line, f'{where}.content"', content)
        if role == "system" and index != 0:
            raise DataError(path, f'{where}.role": a system message may only come first', line)
        turns.append((role, content))
    system = turns.pop(0)[1] if turns[0][0] == "system" else None
    output = None
    if turns and turns[-1][0] == "assistant":
        output = turns.pop()[1]
    if not turns or turns[-1][0] != "user":
        raise DataError(path, 'field "messages": expected a user turn before the final assistant answer', line)
    if output is None and require_output:
        raise DataError(path, 'field "messages": the last message must be the assistant\'s answer', line)
    *earlier, (_, question) = turns
    history = []
    for i in range(0, len(earlier), 2):
        pair = earlier[i : i + 2]
        if [role for role, _ in pair] != ["user", "assistant"]:
            raise DataError(path, 'field "messages": user and assistant turns must alternate', line)
        history.append((pair[0][1], pair[1][1]))
    return {"instruction": question, "output": output, "system": system, "history": tuple(history)}


def row_to_example(path: Path, line: int, row: Any, shape: str, *, require_output: bool = True) -> Example:
    """Validate one row of the given shape and build an Example. Raises DataError naming the line and field."""
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line)
    required, optional = _SHAPE_FIELDS[shape]
    answer = _ANSWER_FIELD[shape]
    if shape == "chat":
        if "messages" not in row:
            raise DataError(path, 'missing field "messages"', line)
        fields = _chat_example(path, line, row, require_output)
    else:
        values = {
            key: _text(path, line, row, key, required=(key != answer or require_output)) for key in required
        }
        for key in optional:
            values[key] = _text(path, line, row, key, required=False)
        if shape == "alpaca":
            fields = {"instruction": values["instruction"], "input": values["input"]}
        elif shape == "prompt_completion":
            fields = {"instruction": values["prompt"]}
        else:
            fields = {"instruction": values["question"], "input": values["context"]}
        fields["output"] = values[answer] if answer in row and row[answer] is not None else None
    meta = {key: _text(path, line, row, key, required=False) or None for key in _META_FIELDS}
    system = meta["system"] or fields.pop("system", None)
    fields.pop("system", None)
    uid = meta["id"] or f"{path.name}:{line}"
    return Example(**fields, task=meta["task"], source=meta["source"], system=system, uid=uid)


def load_examples(
    path: str | Path,
    shape: str = "auto",
    *,
    require_output: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
) -> Dataset:
    """Load a dataset file (.jsonl, .json, .csv, .tsv) into Examples.

    ``shape`` is ``auto`` (detected from the first row, every row must fit it) or one of SHAPES.
    ``require_output=False`` accepts rows without a reference answer (a query set). Raises DataError; never
    returns a partial load.
    """
    path = Path(path)
    if shape != "auto" and shape not in SHAPES:
        raise ValueError(f"shape: unknown value {shape!r}; use auto or one of {', '.join(SHAPES)}")
    rows = _read_rows(path, max_bytes)
    first_line, first = rows[0]
    if not isinstance(first, dict):
        raise DataError(path, f"expected a JSON object, got {type(first).__name__}", first_line)
    if shape == "auto":
        detected = detect_shape(first)
        if detected is None:
            raise DataError(
                path,
                f"unknown shape, keys [{', '.join(map(_short, sorted(first)[:12]))}]; expected "
                "{instruction, input, output}, {prompt, completion}, {messages} or {question, answer[, context]}",
                first_line,
            )
        shape = detected
    examples = [row_to_example(path, line, row, shape, require_output=require_output) for line, row in rows]
    logger.info("loaded %d %s examples from %s", len(examples), shape, path)
    return Dataset(str(path), shape, examples)


# --------------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------------


def _order_key(example: Example, seed: int) -> str:
    content = example.uid + "\x00" + example.user_text + "\x00" + (example.output or "")
    return hashlib.sha256(f"{seed}\x00{content}".encode()).hexdigest()


def split_examples(
    examples: Sequence[Example], validation: float = 0.1, test: float = 0.0, seed: int = 0
) -> Splits:
    """Deterministic train/validation/test split, stratified by task.

    Each example's place depends only on its own content and ``seed`` (a hash order), so the same file and seed give
    the same split on any machine, and adding rows does not move the others between splits.
    """
    for name, value in (("validation", validation), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: fraction must be in [0, 1), got {value}")
    if validation + test >= 1.0:
        raise ValueError(f"validation + test: fractions must leave rows for training, got {validation + test}")
    by_task: dict[str, list[Example]] = {}
    for example in examples:
        by_task.setdefault(example.task or "default", []).append(example)
    splits = Splits([], [], [])
    for task in sorted(by_task):
        group = sorted(by_task[task], key=lambda ex: _order_key(ex, seed))
        n_val, n_test = round(len(group) * validation), round(len(group) * test)
        splits.validation += group[:n_val]
        splits.test += group[n_val : n_val + n_test]
        splits.train += group[n_val + n_test :]
    return splits


# --------------------------------------------------------------------------------------------------------------------
# Chat formatting
# --------------------------------------------------------------------------------------------------------------------


def build_messages(example: Example, system: str | None = None, *, with_answer: bool = False) -> list[dict[str, str]]:
    """Chat messages for an example: system (the row's own, else ``system``), history, user turn, optional answer."""
    messages: list[dict[str, str]] = []
    system = example.system or system
    if system:
        messages.append({"role": "system", "content": system})
    for user, assistant in example.history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": example.user_text})
    if with_answer:
        if example.output is None:
            raise ValueError(f"{example.uid}: example has no answer to format")
        messages.append({"role": "assistant", "content": example.output})
    return messages


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt string that asks the model for the next assistant turn, via its chat template.

    Tokenizers without a chat template get a plain ``### Instruction / ### Response`` layout.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [m["content"] for m in messages if m["role"] == "system"]
    for message in messages:
        if message["role"] == "user":
            parts.append(FALLBACK_TEMPLATE.format(user=message["content"]))
        elif message["role"] == "assistant":
            parts.append(message["content"] + (tokenizer.eos_token or ""))
    return "\n\n".join(parts)


def format_prompt(tokenizer: PreTrainedTokenizerBase, example: Example, system: str | None = None) -> str:
    """The generation prompt for an example (no answer), in the model's chat format."""
    return render_prompt(tokenizer, build_messages(example, system))


@dataclass(frozen=True)
class EncodedExample:
    """Token ids for training. ``labels`` is -100 on prompt tokens, so the loss covers answer tokens only."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


def encode_for_training(
    tokenizer: PreTrainedTokenizerBase, example: Example, system: str | None = None, max_length: int = 1024
) -> EncodedExample:
    """Tokenize prompt + answer with the chat template; mask the prompt. Shapes: two lists of equal length.

    The answer ends with the template's end-of-turn token (so the model learns to stop). When the pair is longer
    than ``max_length`` the prompt is cut from the left first, then the answer from the right.
    """
    prompt = format_prompt(tokenizer, example, system)
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(build_messages(example, system, with_answer=True), tokenize=False)
        if not full.startswith(prompt):  # a template that rewrites earlier turns: fall back to concatenation
            full = prompt + (example.output or "") + (tokenizer.eos_token or "")
        answer_text = full[len(prompt) :]
    else:
        answer_text = (example.output or "") + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    truncated = len(prompt_ids) + len(answer_ids) > max_length
    if truncated:
        answer_ids = answer_ids[: max(1, max_length // 2)] if len(answer_ids) > max_length // 2 else answer_ids
        keep = max_length - len(answer_ids)
        prompt_ids = prompt_ids[-keep:] if keep > 0 else []
    return EncodedExample(prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids, truncated)


# --------------------------------------------------------------------------------------------------------------------
# The demo workspace
# --------------------------------------------------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_DIR = ASSETS / "demo"


def demo_path(name: str) -> Path:
    """Path of a shipped demo file: ``train.jsonl``, ``validation.jsonl``, ``test.jsonl``,
    ``forgetting_probe.jsonl`` or ``corpus``."""
    return DEMO_DIR / name


def load_demo_splits() -> Splits:
    """The shipped demo train/validation/test sets (multi-task: qa, summarization, classification)."""
    return Splits(
        load_examples(demo_path("train.jsonl")).examples,
        load_examples(demo_path("validation.jsonl")).examples,
        load_examples(demo_path("test.jsonl")).examples,
    )
