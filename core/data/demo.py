"""The shipped demo material under assets/demo (read-only): train/validation/test sets and the corpus."""

from __future__ import annotations

from pathlib import Path

from core.data.examples import Splits, load_examples

ASSETS = Path(__file__).resolve().parents[2] / "assets"
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
