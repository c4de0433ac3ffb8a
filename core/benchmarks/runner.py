"""A benchmark: the same lm-evaluation-harness tasks run on a base model and on fine-tuned runs of it, scored with the
harness's own metrics and standard errors, and each run's change from the base (catastrophic forgetting on general
tasks, gain on the tuned one) as a paired difference over the same examples, with a 95% interval and a p-value.

    config = BenchmarkConfig(tasks=["tune_arena_probe", "tune_arena_knowledge"], limit=50)
    result = run_benchmark([BenchmarkModel("base", load_base), BenchmarkModel("my-run", load_run)], config)
    result["tasks"]["tune_arena_probe"]["my-run"]   # {"contains": 0.82, "stderr": 0.05, "n": 48, ...}
    result["deltas"]["my-run"]["tune_arena_probe"]  # {"metric": "contains", "delta": -0.08, "low": ..., ...}
"""

from __future__ import annotations

import gc
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from core.arena.stats import paired_bootstrap, paired_permutation_p
from core.benchmarks.harness import BACKENDS, VllmModels, choices_fit, make_classifier_lm, make_lm
from core.benchmarks.tasks import check_include, resolve_tasks
from core.errors import ConfigError
from core.inference.generation import vllm_unavailable
from core.inference.vllm import VllmServing, vllm_serving

if TYPE_CHECKING:
    from core.models import LoadedModel

logger = logging.getLogger(__name__)

BASE = "base"
# what a hub download failure looks like when this machine cannot reach the hub (offline mode or no network)
_OFFLINE_SIGNS = ("offline", "couldn't reach", "could not reach", "connection", "resolve", "network",
                  "max retries", "name or service", "temporary failure", "doesn't exist on the hub", "not found")


def _help(text: str, default: Any = None, **extra: Any) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"help": text, **extra})
    return field(default=default, metadata={"help": text, **extra})


@dataclass
class BenchmarkConfig:
    """What to run: harness task names (tasks, groups or tags) and how."""

    tasks: list[str] = _help("Harness task, group or tag names (benchmark --list: the ones available offline)", list)
    limit: int | None = _help("Score at most this many examples per task (None: all)", None)
    shots: int | None = _help("Few-shot examples in each prompt (None: each task's own default, mostly 0)", None)
    include: list[str] = _help("Folders of your own task YAMLs (the harness's include path)", list)
    batch_size: int = _help("Requests per forward pass", 16)
    chat_template: bool = _help("Wrap each prompt in the model's chat template when it has one (instruct models, "
                                "the way they are used and tuned here); off: raw prompts, as in most leaderboards",
                                True)
    backend: str = _help("hf: the harness's HF backend; engine: generation through the engine's batch decoder; "
                         "vllm: the harness's vLLM backend (a CUDA GPU and the vllm package; LoRA runs as adapters "
                         "on the base, full fine-tunes as their own model)", "hf")
    bootstrap_iters: int = _help("Bootstrap resamples for the harness's standard errors and the deltas' intervals",
                                 1000)
    seed: int = _help("Seed of sampling, few-shot choice and the bootstrap", 0)

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [name.strip() for name in self.tasks.split(",")]
        self.tasks = [name for name in dict.fromkeys(name.strip() for name in self.tasks) if name]
        if not self.tasks:
            raise ConfigError("tasks: name at least one task (benchmark --list shows the tasks available offline)")
        for name, value, low in (("limit", self.limit, 1), ("shots", self.shots, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 512:
            raise ConfigError(f"batch_size: must be an integer between 1 and 512, got {self.batch_size!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "vllm":
            refusal = vllm_unavailable("backend: vllm")
            if refusal:
                raise ConfigError(refusal)
        if not isinstance(self.bootstrap_iters, int) or self.bootstrap_iters < 0:
            raise ConfigError(f"bootstrap_iters: must be an integer >= 0, got {self.bootstrap_iters!r}")


@dataclass(frozen=True)
class BenchmarkModel:
    """One model to benchmark: its label in the results (``base`` or a run id), how to load it, and facts kept with
    the results (method, objective). ``skip``: why the model cannot take these tasks (it is reported, not run).
    A classification head (``classifier``) runs the tasks that are multiple choice over its labels; the others are
    listed in its facts' ``not_applicable`` with the reason. ``run_dir`` (a run) and ``base_model`` (the base model
    name: the base's, and the one a LoRA run's adapter is served on) are what the vLLM backend loads instead of
    calling ``load``."""

    label: str
    load: Callable[[], LoadedModel | Any]
    facts: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None
    classifier: bool = False  # ``load`` gives a core.inference.Classifier: multiple-choice tasks over its labels only
    run_dir: str | None = None
    base_model: str | None = None


def _metric_name(key: str) -> tuple[str, bool] | None:
    """``"acc,none"`` -> ("acc", False); ``"acc_stderr,none"`` -> ("acc", True); ``"exact_match,strict-match"`` ->
    ("exact_match (strict-match)", False); anything else (alias, name, sample_len) -> None."""
    if "," not in key:
        return None
    metric, _, filter_name = key.partition(",")
    stderr = metric.endswith("_stderr")
    metric = metric.removesuffix("_stderr")
    return (metric if filter_name == "none" else f"{metric} ({filter_name})"), stderr


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value) else None


def scores(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The harness's ``results`` per task as ``{task: {<primary metric>: value, "stderr": s, "metric": name, "n": n,
    "metrics": {metric: {"value", "stderr"}}}}``; the primary metric is the task's first one."""
    out: dict[str, dict[str, Any]] = {}
    n_samples = raw.get("n-samples") or {}
    for task, values in (raw.get("results") or {}).items():
        metrics: dict[str, dict[str, float | None]] = {}
        for key, value in values.items():
            named = _metric_name(key)
            if named is None:
                continue
            name, is_stderr = named
            metrics.setdefault(name, {"value": None, "stderr": None})["stderr" if is_stderr else "value"] = \
                _number(value)
        metrics = {name: row for name, row in metrics.items() if row["value"] is not None}
        if not metrics:
            continue
        primary = next(iter(metrics))
        count = (n_samples.get(task) or {}).get("effective") or values.get("sample_len")
        out[task] = {primary: metrics[primary]["value"], "stderr": metrics[primary]["stderr"], "metric": primary,
                     "n": count, "metrics": metrics}
    return out


def sample_values(raw: dict[str, Any], groups: dict[str, list[str]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per-example scores ``{task: {metric: {example key: value}}}`` from the harness's logged samples; a group's
    examples are its tasks' (keyed ``task/doc_id``), so a group's paired delta pools them as its size-weighted mean
    does."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, samples in (raw.get("samples") or {}).items():
        for sample in samples:
            for metric in sample.get("metrics") or ():
                value = _number(sample.get(metric))
                if value is None:
                    continue
                name = metric if sample.get("filter", "none") == "none" else f"{metric} ({sample['filter']})"
                out.setdefault(task, {}).setdefault(name, {})[f"{task}/{sample['doc_id']}"] = value
    for group, members in groups.items():
        pooled: dict[str, dict[str, float]] = {}
        for member in members:
            for metric, values in out.get(member, {}).items():
                pooled.setdefault(metric, {}).update(values)
        if pooled:
            out[group] = pooled
    return out


def paired_delta(base: dict[str, float], run: dict[str, float], *, seed: int, resamples: int) -> dict[str, Any]:
    """run - base over the examples both scored: ``delta``, its 95% bootstrap interval ``low``..``high``, the
    sign-flip ``p`` and ``n``."""
    keys = sorted(set(base) & set(run))
    if not keys:
        return {"delta": None, "low": None, "high": None, "p": None, "n": 0}
    ours, theirs = [run[k] for k in keys], [base[k] for k in keys]
    delta, low, high = paired_bootstrap(ours, theirs, n_resamples=max(resamples, 1), seed=seed)
    p = paired_permutation_p(ours, theirs, n_resamples=max(resamples, 1), seed=seed)
    return {"delta": round(delta, 6), "low": round(low, 6), "high": round(high, 6), "p": round(p, 6),
            "n": len(keys)}


def _group_map(raw: dict[str, Any]) -> dict[str, list[str]]:
    """Each group of the run with all its leaf tasks (nested groups flattened)."""
    direct = {name.split("|")[0] if isinstance(name, str) else name: list(members)
              for name, members in (raw.get("group_subtasks") or {}).items() if members}

    def leaves(name: str, seen: frozenset = frozenset()) -> list[str]:
        if name not in direct or name in seen:
            return [name]
        return [leaf for member in direct[name] for leaf in leaves(member, seen | {name})]

    return {group: leaves(group) for group in direct}


def _hub_dataset_error(task: str, err: BaseException) -> ConfigError | None:
    """One line for a task whose dataset is on the Hugging Face Hub and cannot be fetched here, else None."""
    text = f"{type(err).__name__}: {err}".lower()
    if isinstance(err, FileNotFoundError | IsADirectoryError) or "no such file" in text or "unable to find" in text:
        return None  # a local data file (a user's task folder): named as it is by the caller
    if not any(sign in text for sign in _OFFLINE_SIGNS):
        return None
    named = re.search(r"(?:reach|find|for) '([^']+)'", str(err))
    dataset = f" {named.group(1)}" if named else ""
    return ConfigError(f"tasks: {task} needs its dataset{dataset} from the Hugging Face Hub, which this machine "
                       "cannot reach (offline); run it once with a network (datasets are cached) or bring the data "
                       "as your own task with --include")


def load_tasks(manager: Any, names: Sequence[str]) -> dict[str, Any]:
    """The leaf tasks of ``names`` built (their data read) one name at a time, so a dataset that cannot be had
    names its task: ``{task name: harness Task}``."""
    built: dict[str, Any] = {}
    for name in names:
        try:
            built.update(manager.load([name])["tasks"])
        except Exception as err:  # the harness and datasets raise many kinds; each becomes one line
            offline = _hub_dataset_error(name, err)
            if offline is not None:
                raise offline from None
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"tasks: {name} could not be loaded: {first[:300]}") from None
    return built


def run_benchmark(models: Sequence[BenchmarkModel], config: BenchmarkConfig, *,
                  on_progress: Callable[[dict[str, Any]], None] | None = None,
                  stop: threading.Event | None = None) -> dict[str, Any]:
    """Run ``config.tasks`` on each model in turn (the first is the base the others are compared with) and return
    ``{"tasks": {task: {label: scores}}, "deltas": {label: {task: {...}}}, "groups", "models", "config", "wall_s",
    "per_model_s"}``. ``on_progress`` gets ``{"model", "index", "models", "stage", "done", "total"}``."""
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    servings = _vllm_servings(models) if config.backend == "vllm" else {}  # a run vLLM cannot serve: one line now
    include = check_include(config.include)
    manager = resolve_tasks(config.tasks, include)
    leaves = load_tasks(manager, config.tasks)  # every task's data, before any model loads: one line if missing
    engines = _vllm_models(models, servings, config) if config.backend == "vllm" else None
    tasks: dict[str, dict[str, Any]] = {}
    per_sample: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    groups: dict[str, list[str]] = {}
    facts: dict[str, dict[str, Any]] = {}
    per_model_s: dict[str, float] = {}
    for index, entry in enumerate(models):
        facts[entry.label] = {**entry.facts, **({"skipped": entry.skip} if entry.skip else {})}
        if entry.skip:
            logger.info("benchmark: %s skipped: %s", entry.label, entry.skip)
            continue

        def report(stage: str, done: int, total: int, label: str = entry.label, number: int = index) -> None:
            if on_progress is not None:
                on_progress({"model": label, "index": number, "models": len(models), "stage": stage, "done": done,
                             "total": total})

        report("loading", 0, 1)
        begin = time.perf_counter()
        loaded = entry.load() if engines is None else None
        names, use_template = list(config.tasks), False
        try:
            if engines is not None:  # vLLM loads the model from its folder itself
                lm = engines.model(entry.label, servings[entry.label], progress=report, stop=stop)
                use_template = config.chat_template and bool(getattr(lm.tokenizer, "chat_template", None))
                facts[entry.label]["vllm"] = _served_as(servings[entry.label])
            elif entry.classifier:
                reasons = {name: choices_fit(task, loaded.labels) for name, task in leaves.items()}
                names = [name for name, reason in reasons.items() if reason is None]
                facts[entry.label]["not_applicable"] = {name: reason for name, reason in reasons.items() if reason}
                if not names:
                    facts[entry.label]["skipped"] = "no task here is multiple choice over its labels"
                    continue
                lm = make_classifier_lm(loaded, progress=report, stop=stop)
            else:
                lm = make_lm(loaded, backend=config.backend, batch_size=config.batch_size, progress=report,
                             stop=stop)
                use_template = config.chat_template and bool(getattr(loaded.tokenizer, "chat_template", None))
            raw = simple_evaluate(model=lm, tasks=names, num_fewshot=config.shots, limit=config.limit,
                                  task_manager=manager, log_samples=True, apply_chat_template=use_template,
                                  bootstrap_iters=config.bootstrap_iters, random_seed=config.seed,
                                  numpy_random_seed=config.seed, torch_random_seed=config.seed,
                                  fewshot_random_seed=config.seed, verbosity=None)
        except BaseException:
            if engines is not None:  # a failed or stopped vLLM benchmark gives its GPU memory back now
                engines.close()
            raise
        finally:
            del loaded
            gc.collect()
        per_model_s[entry.label] = round(time.perf_counter() - begin, 2)
        if raw is None:  # another rank of a data-parallel job: rank 0 gathered this one's answers and scores them
            continue
        groups.update(_group_map(raw))
        facts[entry.label]["chat_template"] = use_template
        for task, row in scores(raw).items():
            tasks.setdefault(task, {})[entry.label] = row
        per_sample[entry.label] = sample_values(raw, groups)
        report("done", 1, 1)
    if engines is not None:
        engines.close()
    order = [name for requested in config.tasks for name in (requested, *groups.get(requested, ()))]
    tasks = {name: tasks[name] for name in dict.fromkeys([*order, *tasks]) if name in tasks}  # a group, its tasks
    deltas = _deltas(tasks, per_sample, models[0].label if models else BASE, config)
    return {"tasks": tasks, "deltas": deltas, "groups": groups, "models": facts,
            "config": asdict(config), "wall_s": round(time.perf_counter() - start, 2), "per_model_s": per_model_s}


def _vllm_servings(models: Sequence[BenchmarkModel]) -> dict[str, VllmServing | None]:
    """How vLLM serves each model (None: the base model itself); ConfigError, one line naming the run and why, for
    a run it cannot serve (prompt learning, IA3, AdaLoRA, DoRA, classification heads...). Reads configs only."""
    servings: dict[str, VllmServing | None] = {}
    for entry in models:
        if entry.run_dir is None:
            if entry.base_model is None and entry is not models[0]:
                raise ConfigError(f"adapter: {entry.label} has no run folder for vLLM to load")
            servings[entry.label] = None
        else:
            servings[entry.label] = vllm_serving(entry.run_dir)
    return servings


def _vllm_models(models: Sequence[BenchmarkModel], servings: dict[str, VllmServing | None],
                 config: BenchmarkConfig) -> VllmModels:
    from core.models import loadable_location, pick_dtype, resolve_base_model

    base = next((entry.base_model for entry in models if entry.base_model), None)
    dtype = str(pick_dtype("cuda")).removeprefix("torch.")
    return VllmModels(loadable_location(resolve_base_model(base)), list(servings.values()), dtype=dtype,
                      seed=config.seed)


def _served_as(serving: VllmServing | None) -> dict[str, Any]:
    if serving is None:
        return {"served": "base model"}
    return {"served": {"lora": "LoRA adapter on the base model", "model": "its own model folder",
                       "merge": "merged into a model folder"}[serving.kind], "folder": serving.folder}


def _deltas(tasks: dict[str, dict[str, Any]], per_sample: dict[str, Any], base: str,
            config: BenchmarkConfig) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task, rows in tasks.items():
        if base not in rows:
            continue
        metric = rows[base]["metric"]
        for label, row in rows.items():
            if label == base or row.get("metric") != metric:
                continue
            paired = paired_delta(per_sample.get(base, {}).get(task, {}).get(metric, {}),
                                  per_sample.get(label, {}).get(task, {}).get(metric, {}),
                                  seed=config.seed, resamples=config.bootstrap_iters)
            if paired["delta"] is None:  # no per-example scores (a metric over the whole set): unpaired
                difference = row[metric] - rows[base][metric]
                spread = math.hypot(row["stderr"] or 0.0, rows[base]["stderr"] or 0.0)
                paired = {"delta": round(difference, 6), "low": round(difference - 1.96 * spread, 6),
                          "high": round(difference + 1.96 * spread, 6), "p": None, "n": row.get("n")}
            out.setdefault(label, {})[task] = {"metric": metric, "base": rows[base][metric], "run": row[metric],
                                               **paired}
    return out
