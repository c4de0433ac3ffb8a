"""The engine's feedback: people's votes on arena answers (``feedback/votes.jsonl`` of the workspace), the preference
pairs exported from them for a DPO run, and the leaderboard they make (core.arena.feedback, core.arena.leaderboard).

Each workspace has its own votes file, so on a shared instance every visitor's votes are private to them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from core.arena.feedback import (
    PREFERENCES_FILE,
    VOTES_FILE,
    append_vote,
    build_vote,
    preference_pairs,
    read_votes,
    write_preferences,
)
from core.arena.leaderboard import check_settings, leaderboard
from core.errors import ConfigError, TuneArenaError
from core.limits import check_name, writable_folder
from core.models import default_base_model
from core.runs import Run
from core.text import short_name

logger = logging.getLogger(__name__)


class FeedbackMixin:
    """Votes, preference pairs and the leaderboard of an Engine (see core.engine.engine.Engine for its state)."""

    @property
    def votes_path(self) -> Path:
        """``<workspace>/feedback/votes.jsonl``."""
        return self.workspace.feedback / VOTES_FILE

    def _votes_lock(self) -> threading.Lock:
        """The one lock of this process that orders appends to votes files (a visitor's view shares the instance
        engine's: ``Engine.scoped`` copies the reference)."""
        return self._feedback_lock

    def _run_facts(self, adapter: str) -> dict[str, Any]:
        """run_id, method, objective and base model of the run behind a fine-tuned answer; a run that cannot be
        read any more (deleted since the answer) keeps its name and leaves the rest unknown (its base model: the
        one the Arena answered with)."""
        try:
            run = Run(self.resolve_run(adapter))  # the arena's adapter as given: a run id, or (the app) its folder
            config = run.config
        except (TuneArenaError, OSError) as err:
            logger.warning("vote: the run %s of an answer cannot be read (%s); its method is recorded as unknown",
                           adapter, str(err).splitlines()[0] if str(err) else type(err).__name__)
            return {"run_id": short_name(adapter), "method": None, "objective": None, "base_model": None}
        return {"run_id": run.run_id, "method": config.get("method"), "objective": config.get("objective") or "sft",
                "base_model": config.get("base_model") or default_base_model()}

    def record_vote(self, arena: dict, winner: str, *, shown: list[str], input_text: str = "",
                    generation: dict | None = None, blind: bool = True, base_model: str | None = None) -> dict:
        """Save a person's vote on an arena result and return the saved record (core.arena.feedback).

        ``arena``: ``ArenaResult.to_dict()``; ``shown``: the variant names in the order their answers were shown
        (labels A, B, C... in that order; unavailable variants are not shown); ``winner``: one of those variant
        names (or its label), ``"tie"`` or ``"all_bad"``; ``input_text``: the input the query was asked with;
        ``generation``: the generation settings (``GenerationConfig`` as a dict); ``base_model``: the model the
        Arena answered with (default: ``generation["base_model"]``, else the default base model), recorded for the
        answers of no fine-tuned run (a run's answer names its run's base model). ConfigError (one line) for an
        unknown winner, no answers or an empty query. Safe to call from many threads and processes at once."""
        answered_by = base_model or (generation or {}).get("base_model") or default_base_model()
        if not isinstance(answered_by, str):
            raise ConfigError(f"base_model: expected a model name, got {type(answered_by).__name__}")
        vote = build_vote(arena, winner, shown=list(shown), run_facts=self._run_facts,
                          base_model=answered_by.strip() or default_base_model(), input_text=input_text,
                          generation=generation, blind=blind)
        if self.quota is not None:  # a visitor: their workspace's disk quota
            self.quota.check_disk(len(str(vote)), "this vote")
        append_vote(self.votes_path, vote, self._votes_lock())
        logger.info("vote %s: %s of %d answers", vote["id"], vote["winner_variant"] or vote["winner"],
                    len(vote["answers"]))
        return vote

    def list_votes(self) -> list[dict]:
        """Every vote of this workspace, oldest first; a line that is no vote (a torn last line) is skipped with a
        warning."""
        return read_votes(self.votes_path)

    def _preferences_path(self, out: str | Path | None) -> Path:
        if out is None:
            return self.workspace.feedback / PREFERENCES_FILE
        text = str(out).strip()
        if self.confined:  # a plain file name in the workspace's feedback/ folder
            path = self.workspace.feedback / check_name(text, "out")
        else:
            path = Path(text).expanduser()
        if path.suffix.lower() != ".jsonl":
            raise ConfigError(f"out: {text[:200]} must be a .jsonl file (one preference pair a line)")
        if path.is_dir():
            raise ConfigError(f"out: {text[:200]} is a folder; give a file name")
        writable_folder(path.parent)
        return path

    def export_preferences(self, out: str | Path | None = None) -> dict:
        """The votes as preference pairs ``{prompt, chosen, rejected, source: "vote", vote_id, task,
        chosen_variant, rejected_variant}`` in a JSONL file: ``out`` (default ``<workspace>/feedback/
        preferences.jsonl``; a confined engine takes a file name there), written atomically. Returns ``{"path",
        "pairs", "votes", "skipped_votes"}`` (skipped: ties, all-bad votes and votes whose other answers are empty
        or the same text). ConfigError when no pair can be made."""
        path = self._preferences_path(out)
        votes = self.list_votes()
        if not votes:
            raise ConfigError(f"votes: none yet in {self.votes_path}; vote on answers in the Arena first")
        pairs, skipped = preference_pairs(votes)
        if not pairs:
            raise ConfigError(f"votes: none of the {len(votes)} votes gives a preference pair (ties, all bad, or "
                              "answers with the same text); pick a winner between different answers")
        if self.quota is not None:
            self.quota.check_disk(sum(len(str(pair)) for pair in pairs), "the preference pairs")
        write_preferences(path, pairs)
        logger.info("%d preference pairs from %d votes -> %s", len(pairs), len(votes), path)
        return {"path": str(path), "pairs": len(pairs), "votes": len(votes), "skipped_votes": skipped}

    def leaderboard(self, *, by: str = "variant", samples: int = 1000, seed: int = 0) -> dict:
        """Bradley-Terry ratings of the voted variants (``by="variant"``) or approaches (``by="method"``) with
        bootstrap 95% intervals over ``samples`` resamples of the votes (seeded), overall and per task, and how
        often each automatic metric picks the answer people chose (core.arena.leaderboard.leaderboard). With no
        votes yet: ``votes`` 0 and no items (the CLI refuses that in one line; the app says how to vote)."""
        check_settings(by, samples)
        return leaderboard(self.list_votes(), by=by, samples=samples, seed=seed)
