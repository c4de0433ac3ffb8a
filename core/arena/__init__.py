"""The arena: strategies (how a variant prompts), prompting (messages, passages, worked examples), the runner (one
query or many through every variant, batched), metrics (evaluate modules and scoring) and evals (a test set, saved
with intervals)."""

from core.arena.evals import ALL_TASKS, HEADLINE, EvalResult, load_eval, new_eval_id, run_eval
from core.arena.metrics import CLASSIFICATION_TASK, Scorer
from core.arena.prompting import Passage
from core.arena.runner import ArenaConfig, ArenaContext, ArenaResult, VariantResult, run_examples, run_query
from core.arena.strategies import (
    DEFAULT_VARIANTS,
    STRATEGIES,
    Prompt,
    PromptRequest,
    Strategy,
    VariantSpec,
    VariantUnavailableError,
    parse_variants,
    register_strategy,
)

__all__ = [
    "ALL_TASKS", "CLASSIFICATION_TASK", "DEFAULT_VARIANTS", "HEADLINE", "STRATEGIES", "ArenaConfig", "ArenaContext",
    "ArenaResult", "EvalResult", "Passage", "Prompt", "PromptRequest", "Scorer", "Strategy", "VariantResult",
    "VariantSpec", "VariantUnavailableError", "load_eval", "new_eval_id", "parse_variants", "register_strategy",
    "run_eval", "run_examples", "run_query",
]
