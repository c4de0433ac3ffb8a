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

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.files import read_rows, short_repr
from core.errors import ConfigError, DataError
from core.limits import MAX_FIELD_CHARS, MAX_FILE_BYTES

logger = logging.getLogger(__name__)

SHAPES = ("alpaca", "prompt_completion", "chat", "qa")
ROLES = ("system", "user", "assistant")

# Required and optional text fields per shape; "messages" is handled on its own.
_SHAPE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alpaca": (("instruction", "output"), ("input",)),
    "prompt_completion": (("prompt", "completion"), ()),
    "qa": (("question", "answer"), ("context",)),
    "chat": (("messages",), ()),
}
_ANSWER_FIELD = {"alpaca": "output", "prompt_completion": "completion", "qa": "answer", "chat": "messages"}
_META_FIELDS = ("task", "source", "system", "id")



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


def text_field(path: Path, line: int, row: dict[str, Any], key: str, *, required: bool) -> str:
    """Field ``key`` of a row as text: a string within MAX_FIELD_CHARS with no unpaired surrogate; a missing or
    blank one is a DataError when ``required`` (else ""). Errors name the file, line and field."""
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
            raise DataError(path, f'{where}.role" must be one of {", ".join(ROLES)}, got {short_repr(role)}', line)
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
            key: text_field(path, line, row, key, required=(key != answer or require_output)) for key in required
        }
        for key in optional:
            values[key] = text_field(path, line, row, key, required=False)
        if shape == "alpaca":
            fields = {"instruction": values["instruction"], "input": values["input"]}
        elif shape == "prompt_completion":
            fields = {"instruction": values["prompt"]}
        else:
            fields = {"instruction": values["question"], "input": values["context"]}
        fields["output"] = values[answer] if answer in row and row[answer] is not None else None
    meta = {key: text_field(path, line, row, key, required=False) or None for key in _META_FIELDS}
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
        raise ConfigError(f"shape: unknown value {shape!r}; use auto or one of {', '.join(SHAPES)}")
    rows = read_rows(path, max_bytes)
    first_line, first = rows[0]
    if not isinstance(first, dict):
        raise DataError(path, f"expected a JSON object, got {type(first).__name__}", first_line)
    if shape == "auto":
        detected = detect_shape(first)
        if detected is None:
            raise DataError(
                path,
                f"unknown shape, keys [{', '.join(map(short_repr, sorted(first)[:12]))}]; expected "
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
            raise ConfigError(f"{name}: fraction must be in [0, 1), got {value}")
    if validation + test >= 1.0:
        raise ConfigError(f"validation + test: fractions must leave rows for training, got {validation + test}")
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


