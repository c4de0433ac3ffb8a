"""Standard benchmarks through EleutherAI's lm-evaluation-harness: bundled offline tasks over this project's own
data, a user's task folders, the harness's catalogue; the base model and fine-tuned runs on the same tasks, with
each run's paired change from the base."""

from core.benchmarks.harness import BACKENDS, BenchmarkStopped, make_lm
from core.benchmarks.runner import BASE, BenchmarkConfig, BenchmarkModel, paired_delta, run_benchmark, scores
from core.benchmarks.tasks import BUNDLED_TASKS, check_include, list_tasks, resolve_tasks

__all__ = ["BACKENDS", "BASE", "BUNDLED_TASKS", "BenchmarkConfig", "BenchmarkModel", "BenchmarkStopped",
           "check_include", "list_tasks", "make_lm", "paired_delta", "resolve_tasks", "run_benchmark", "scores"]
