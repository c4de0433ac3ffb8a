"""People's votes on arena answers: the votes file, its records, and the preference pairs made from them.

A vote is one JSON line of ``<workspace>/feedback/votes.jsonl``::

    {"id": "v-<12 hex>", "time": "2026-12-06T15:20:01Z", "query", "input", "task", "reference", "blind",
     "answers": [{"label": "A", "variant", "strategy", "run_id", "method", "objective", "base_model", "prompt",
                  "answer", "metrics"}, ...],
     "generation": {...}, "winner": "A" | "tie" | "all_bad", "winner_variant": "<variant>" | None}

Labels A, B, C... follow the order the answers were shown in. Appends never interleave or lose a line, whatever
the number of threads and processes writing (``append_vote``: the caller's lock, ``fcntl.flock`` on the file and
one ``os.write`` on an O_APPEND descriptor); a line cut short by a kill is skipped with a warning on read
(``read_votes``) and the next record starts on a line of its own.

Preference pairs (``preference_pairs``) are what a DPO run trains on: the winner's answer ``chosen`` against each
other shown answer that is not empty and not the same text ``rejected``; ties and all-bad votes give none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.io import write_atomic

try:  # POSIX; elsewhere the caller's lock alone keeps the appends of one process whole
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

VOTES_FILE = "votes.jsonl"
PREFERENCES_FILE = "preferences.jsonl"
TIE = "tie"
ALL_BAD = "all_bad"
OUTCOMES = (TIE, ALL_BAD)
"""What a vote may say besides a winner: every shown answer equally good (``tie``), or none good (``all_bad``)."""
NO_TASK = "default"  # the task name of a vote whose query named none (as core.data counts rows)

RunFacts = Callable[[str], dict[str, Any]]
"""adapter (as the arena result gives it) -> {"run_id", "method", "objective", "base_model"} of its run."""


def answer_label(position: int) -> str:
    """The label of the answer shown at ``position`` (0-based): A, B, ... Z, AA, AB, ..."""
    label = ""
    position += 1
    while position:
        position, rest = divmod(position - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def new_vote_id() -> str:
    return f"v-{secrets.token_hex(6)}"


def utc_now() -> str:
    """``2026-12-06T15:20:01Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def vote_prompt(vote: dict[str, Any]) -> str:
    """The text a preference pair's ``prompt`` holds: the query, then a blank line and the input when there is one."""
    query = str(vote.get("query") or "").strip()
    extra = str(vote.get("input") or "").strip()
    return f"{query}\n\n{extra}" if extra else query


def build_vote(arena: dict[str, Any], winner: str, *, shown: Sequence[str], run_facts: RunFacts,
               base_model: str, input_text: str = "", generation: dict[str, Any] | None = None,
               blind: bool = True) -> dict[str, Any]:
    """A vote record (see the module docstring) from an ``ArenaResult.to_dict()``; ConfigError, one line naming the
    field, for an empty query, no answers shown, a shown variant the result has no answer of, or a ``winner`` that
    is neither a shown variant (or its label) nor ``tie`` / ``all_bad``.

    ``shown``: the variant names in the order the answers were shown (labels A, B, C... in that order);
    ``run_facts``: the run of a fine-tuned answer's adapter; ``base_model``: the model of the other answers."""
    if not isinstance(arena, dict):
        raise ConfigError("arena: expected an arena result (ArenaResult.to_dict()), got "
                          f"{type(arena).__name__}")
    query = arena.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ConfigError("query: is empty; there is no question to vote on")
    if isinstance(shown, str) or not isinstance(shown, Sequence):
        raise ConfigError(f"shown: expected a list of variant names, got {type(shown).__name__}")
    if not shown:
        raise ConfigError("answers: none shown; there is nothing to vote on")
    results = {row.get("variant"): row for row in arena.get("results") or [] if isinstance(row, dict)}
    answers: list[dict[str, Any]] = []
    for position, variant in enumerate(shown):
        row = results.get(variant)
        if row is None:
            raise ConfigError(f"shown: {str(variant)[:80]!r} is not a variant of this arena result "
                              f"({', '.join(map(str, results)) or 'it has none'})")
        if not row.get("available", True):
            raise ConfigError(f"shown: {variant} was unavailable ({row.get('error') or 'no answer'}); only answers "
                              "can be shown")
        if any(answer["variant"] == variant for answer in answers):
            raise ConfigError(f"shown: {variant} is listed twice")
        adapter = row.get("adapter")
        facts = run_facts(adapter) if adapter else {"run_id": None, "method": None, "objective": None,
                                                     "base_model": base_model}
        answers.append({"label": answer_label(position), "variant": variant, "strategy": row.get("strategy"),
                        "run_id": facts.get("run_id"), "method": facts.get("method"),
                        "objective": facts.get("objective"), "base_model": facts.get("base_model") or base_model,
                        "prompt": row.get("prompt") or "", "answer": row.get("answer") or "",
                        "metrics": dict(row.get("metrics") or {})})
    by_label = {answer["label"]: answer["variant"] for answer in answers}
    by_variant = {answer["variant"]: answer["label"] for answer in answers}
    if winner in OUTCOMES:
        label, winner_variant = winner, None
    elif winner in by_variant:
        label, winner_variant = by_variant[winner], winner
    elif winner in by_label:  # the label a blind card showed
        label, winner_variant = winner, by_label[winner]
    else:
        raise ConfigError(f"winner: {str(winner)[:80]!r} is not a shown variant ({', '.join(by_variant)}) nor "
                          f"{' or '.join(OUTCOMES)}")
    reference = arena.get("reference")
    return {"id": new_vote_id(), "time": utc_now(), "query": query, "input": input_text or "",
            "task": arena.get("task") or None, "reference": reference if reference else None, "blind": bool(blind),
            "answers": answers, "generation": dict(generation or {}), "winner": label,
            "winner_variant": winner_variant}


def check_vote(vote: Any) -> str | None:
    """Why ``vote`` is not a usable vote record (one phrase), or None when it is."""
    if not isinstance(vote, dict):
        return f"a JSON {type(vote).__name__}, not a vote object"
    answers = vote.get("answers")
    if not isinstance(answers, list) or not answers:
        return "no answers"
    labels = []
    for answer in answers:
        if not isinstance(answer, dict) or not isinstance(answer.get("label"), str):
            return "an answer without a label"
        if not isinstance(answer.get("variant"), str) or not isinstance(answer.get("answer", ""), str):
            return f"answer {answer['label']}: no variant or answer text"
        labels.append(answer["label"])
    winner = vote.get("winner")
    if winner not in OUTCOMES and winner not in labels:
        return f"winner {str(winner)[:40]!r} is none of the labels ({', '.join(labels)}) nor {' or '.join(OUTCOMES)}"
    if not isinstance(vote.get("query"), str) or not vote["query"].strip():
        return "an empty query"
    return None


# ---- the file --------------------------------------------------------------------------------------------------


def append_vote(path: str | Path, vote: dict[str, Any], lock: contextlib.AbstractContextManager) -> None:
    """Append ``vote`` as one line of ``path`` (created with its folder if missing).

    ``lock`` (the engine's, one per process) orders the threads of this process; ``fcntl.flock`` orders processes;
    the line goes out in one ``os.write`` on an O_APPEND descriptor, fsynced. A file whose last line was cut short
    (no ``\\n`` at its end) gets one first, so the new record starts on a line of its own."""
    path = Path(path)
    line = (json.dumps(vote, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):  # a full disk: the torn line is skipped on read, the next append starts anew
                raise OSError(f"{path}: wrote {written} of {len(line)} bytes of a vote")
            os.fsync(fd)
        finally:
            os.close(fd)  # closing drops the flock


def read_votes(path: str | Path) -> list[dict[str, Any]]:
    """The votes of ``path``, oldest first ([] when there is no file), read under a shared ``flock`` (so never while
    a line is being appended). A line that is not a vote (the torn last line of a write cut short, a line edited by
    hand) is skipped with a warning naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if fcntl is not None:  # a shared lock: never half of a line being appended right now
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    torn_end = bool(lines) and lines[-1] != b""  # the file does not end with a newline
    votes = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            vote = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            if torn_end and number == len(lines):
                logger.warning("%s line %d: skipped a torn last line (a write cut short)", path.name, number)
            else:
                logger.warning("%s line %d: skipped (not valid JSON)", path.name, number)
            continue
        problem = check_vote(vote)
        if problem:
            logger.warning("%s line %d: skipped (%s)", path.name, number, problem)
            continue
        votes.append(vote)
    return votes


# ---- preference pairs ------------------------------------------------------------------------------------------


def vote_pairs(vote: dict[str, Any]) -> list[dict[str, Any]]:
    """The preference pairs of one vote: the winner's answer against each other answer that is not empty and not
    the same text (after stripping); none for a tie or an all-bad vote."""
    winner = vote.get("winner")
    if winner in OUTCOMES:
        return []
    answers = vote.get("answers") or []
    chosen = next((answer for answer in answers if answer.get("label") == winner), None)
    if chosen is None or not (chosen.get("answer") or "").strip():
        return []
    prompt = vote_prompt(vote)
    chosen_text = chosen["answer"].strip()
    pairs = []
    for answer in answers:
        rejected = (answer.get("answer") or "").strip()
        if answer is chosen or not rejected or rejected == chosen_text:
            continue
        pairs.append({"prompt": prompt, "chosen": chosen_text, "rejected": rejected, "source": "vote",
                      "vote_id": vote.get("id"), "task": vote.get("task"),
                      "chosen_variant": chosen.get("variant"), "rejected_variant": answer.get("variant")})
    return pairs


def preference_pairs(votes: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(every vote's pairs in order, the number of votes that gave none)."""
    pairs: list[dict[str, Any]] = []
    skipped = 0
    for vote in votes:
        found = vote_pairs(vote)
        pairs += found
        skipped += not found
    return pairs, skipped


def write_preferences(path: str | Path, pairs: Sequence[dict[str, Any]]) -> Path:
    """``pairs`` as a JSONL file at ``path``, written atomically (a temporary file, then one rename)."""
    path = Path(path)
    write_atomic(path, "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
    return path


__all__ = ["ALL_BAD", "NO_TASK", "OUTCOMES", "PREFERENCES_FILE", "TIE", "VOTES_FILE", "RunFacts", "answer_label",
           "append_vote", "build_vote", "check_vote", "new_vote_id", "preference_pairs", "read_votes", "utc_now",
           "vote_pairs", "vote_prompt", "write_preferences"]
