"""Every error a user can cause: bad input, a bad setting, a missing model, a refused action.

All derive from ``TuneArenaError`` (itself a ValueError, so ``except ValueError`` still catches them). The CLI maps
exactly these to exit code 2 and one line on stderr; the app shows them as a warning. Any other exception is a bug
and is reported as one. Messages start with the field, file or thing they are about: ``"r: must be >= 1, got 0"``.

This module imports nothing of the project: every package may use it (retrieval included).
"""

from __future__ import annotations

from pathlib import Path


class TuneArenaError(ValueError):
    """Base of every user-facing error. One line; names the field, file or object at fault."""


class ConfigError(TuneArenaError):
    """A setting out of range or of the wrong kind (``"<field>: <what is wrong>"``)."""


class DataError(TuneArenaError):
    """A dataset file that cannot be used. The message names the file and, when known, the line."""

    def __init__(self, file: str | Path, message: str, line: int | None = None) -> None:
        self.file = str(file)
        self.line = line
        self.detail = message
        where = Path(self.file).name + (f" line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")


class ModelNotFoundError(TuneArenaError):
    """A base or embedding model that is neither bundled, cached, a folder, nor reachable on the hub."""


class AdapterError(TuneArenaError):
    """A run's weights that cannot be used (missing, truncated, pickled, of another base model)."""


class RunStateError(TuneArenaError):
    """An action a run's state or method does not allow: resume a completed run, merge a prompt-learning one..."""


class NameRuleError(TuneArenaError):
    """A name (run, index, evaluation, upload) that is not one plain folder name."""


class LimitError(TuneArenaError):
    """Input over one of the limits of core.limits (file size, rows, name length)."""


class UploadError(TuneArenaError):
    """An uploaded file that cannot be kept (type, size, name)."""


class JobBusyError(TuneArenaError):
    """A training job is already running (the app trains one at a time)."""


class TrainingOutOfMemoryError(TuneArenaError):
    """Training ran out of (GPU or CPU) memory; the message names the settings to lower."""


class PromptTooLongError(TuneArenaError):
    """A prompt that does not fit the model's context window even with all optional context dropped."""


class QuotaError(TuneArenaError):
    """A visitor of a shared instance (a public Space) over one of its quotas: disk, uploads per hour, steps."""
