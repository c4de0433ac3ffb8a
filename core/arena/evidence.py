"""The evidence an evaluation saves beside its scores: which rows ask for knowledge and which for behaviour, what each
variant costs, the paired comparisons and the verdict per task (core.arena.verdict), and what reproduces it.

The knowledge/behaviour rule, per test example (``SLICE_RULE``):
- *knowledge* when its ``source`` document is in the knowledge base (retrievable), or, without one, when its
  reference is grounded in the passages retrieved for it: it has at least ``MIN_GROUNDED_TOKENS`` distinct content
  tokens (normalised as token F1 normalises them, stop-words and 1-character tokens left out: a one-word label such
  as "billing" says nothing about knowledge) and at least ``GROUNDED_SHARE`` of them appear in the top passages of a
  retrieving variant;
- *behaviour* otherwise: format, style or labels that no document holds.
Without a knowledge base the rule falls back to "the example names a source document".

:func:`reweigh` weighs a saved evaluation again from its rows, without a model (assets/demo/eval-demo/reweigh.py
rebuilds the shipped demo evaluation with it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.arena.metrics.modules._text import answer_tokens
from core.arena.runner import ArenaConfig, ArenaContext, VariantResult
from core.arena.verdict import RUN_COSTS, compare, cost_table, slices, verdict
from core.data import Example
from core.runs import Run

GROUNDED_SHARE = 0.6
MIN_GROUNDED_TOKENS = 3
SLICE_RULE = ("knowledge: the example's source document is in the knowledge base, or its reference has 3 or more "
              "content words and 60% of them appear in the passages retrieved for it; behaviour: the rest")
STOP_WORDS = frozenset("is are was were be been it its this that these those of to in on at for by with and or as "
                       "from your you can will not no do does".split())
PACKAGES = ("torch", "transformers", "peft", "sentence-transformers", "faiss-cpu", "evaluate", "numpy", "gradio")


def content_tokens(text: str) -> set[str]:
    return {token for token in answer_tokens(text) if len(token) > 1 and token not in STOP_WORDS}


def grounded(reference: str | None, passages: Sequence[str]) -> bool:
    """Whether the reference has ``MIN_GROUNDED_TOKENS`` content tokens and ``GROUNDED_SHARE`` of them appear in
    ``passages``."""
    wanted = content_tokens(reference or "")
    if len(wanted) < MIN_GROUNDED_TOKENS or not passages:
        return False
    found = content_tokens(" ".join(passages))
    return len(wanted & found) >= GROUNDED_SHARE * len(wanted)


def slice_of(example: Example, results: Sequence[VariantResult],
             source_in_index: Callable[[str], bool] | None) -> str:
    """``knowledge`` or ``behaviour`` for one example (see the module's rule)."""
    if source_in_index is None:
        return "knowledge" if example.source else "behaviour"
    if example.source and source_in_index(example.source):
        return "knowledge"
    passages = next(([item["text"] for item in result.retrieved] for result in results if result.retrieved), [])
    return "knowledge" if grounded(example.output, passages) else "behaviour"


def run_results(context: ArenaContext, results: Sequence[VariantResult]) -> dict[str, dict[str, Any]]:
    """variant -> the result.json of the run its adapter names (train time, parameters, weights size, memory)."""
    runs: dict[str, dict[str, Any]] = {}
    for result in results:
        key = context.adapter_keys.get(result.adapter) if result.adapter else None
        info = getattr(context.host, "adapters", {}).get(key) if key else None
        classifier = context.classifiers.get(result.adapter) if result.adapter else None  # a classification run
        run_dir = info.run_dir if info is not None else (classifier.run_dir if classifier is not None else None)
        if run_dir is not None:
            try:
                runs[result.variant] = {**(Run(Path(run_dir)).result or {}), "run_id": Path(run_dir).name}
            except (OSError, ValueError):  # a run folder that went bad since it was loaded: no cost shown
                continue
    return runs


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def command_line(data_path: str, config: ArenaConfig) -> str:
    """The ``python -m core eval ...`` line that runs this evaluation again."""
    parts = ["python", "-m", "core", "eval", "--data", data_path, "--variants", ",".join(config.variants)]
    for adapter in config.adapters:
        parts += ["--adapter", adapter]
    if config.index:
        parts += ["--index", str(config.index)]
    if config.few_shot_pool:
        parts += ["--few-shot", config.few_shot_pool]
    generation = config.generation
    parts += ["--shots", str(config.few_shot_k), "--selection", config.few_shot_selection, "--k", str(config.rag_k),
              "--max-new-tokens", str(generation.max_new_tokens), "--seed", str(config.seed)]
    if not config.hybrid:
        parts.append("--dense")
    if generation.temperature > 0:
        parts += ["--temperature", str(generation.temperature), "--top-p", str(generation.top_p)]
    return " ".join(shlex.quote(part) for part in parts)


def provenance(data_path: str, config: ArenaConfig, context: ArenaContext,
               runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Data and corpus hashes, runs, seed, package versions and the reproducing command."""
    kb = context.knowledge_base
    index = None
    if kb is not None and getattr(kb, "folder", None):
        index = {"name": Path(kb.folder).name, "documents": len(kb.documents),
                 "manifest_sha256": _sha256(Path(kb.folder) / "manifest.json")}
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"data": data_path, "data_sha256": _sha256(Path(data_path)) if data_path else None, "index": index,
            "runs": {variant: run.get("run_id") for variant, run in runs.items()}, "seed": config.seed,
            "base_model": getattr(getattr(getattr(context.host, "base", None), "resolved", None), "name", None),
            "packages": packages,
            "command": command_line(data_path, config), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _weighed(rows: list[dict[str, Any]], cost: dict[str, dict[str, Any]], seed: int,
             rules: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The comparisons, verdict and slices of rows that carry their ``slice`` (each slice with its rule: ``rules``'
    or SLICE_RULE), and ``cost`` as given."""
    comparisons = compare(rows, seed=seed)
    found = slices(rows, seed=seed)
    for name, part in found.items():
        part["rule"] = (rules or {}).get(name) or SLICE_RULE
    return {"comparisons": comparisons, "verdict": verdict(rows, comparisons, cost), "slices": found, "cost": cost}


def evidence(examples: Sequence[Example], table: Sequence[Sequence[VariantResult]], rows: list[dict[str, Any]],
             config: ArenaConfig, context: ArenaContext, *, data_path: str = "",
             source_in_index: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Tag every row with its slice, then the comparisons, verdict, slices, cost and provenance of the evaluation
    (JSON-ready; rows are changed in place: each gains ``slice``)."""
    by_example = {example.uid: slice_of(example, results, source_in_index)
                  for example, results in zip(examples, table, strict=True)}
    for row in rows:
        row["slice"] = by_example.get(row["id"])
    runs = run_results(context, table[0]) if table else {}
    kb = context.knowledge_base
    cost = cost_table(rows, runs, getattr(kb, "build_s", None) if kb is not None else None)
    return {**_weighed(rows, cost, config.seed), "provenance": provenance(data_path, config, context, runs)}


def reweigh(saved: Mapping[str, Any], *, runs: Mapping[str, Mapping[str, Any]] | None = None,
            index_build_s: float | None = None) -> dict[str, Any]:
    """A saved evaluation (results.json as a dict) weighed again from its rows, no model run: the ``comparisons``,
    ``verdict``, ``slices`` and ``cost`` that :func:`evidence` gives, with the saved seed. The rows keep the
    ``slice`` they were saved with (the rule needs the knowledge base and the passages retrieved, not saved), and
    each slice its saved rule. ``runs`` (variant -> its run's result.json) and ``index_build_s`` price the training
    and the index; by default the figures the evaluation saved in its ``cost``."""
    rows = [dict(row) for row in saved.get("rows") or []]
    before = {variant: entry for variant, entry in (saved.get("cost") or {}).items() if isinstance(entry, dict)}
    if runs is None:
        runs = {variant: {key: entry[key] for key in ("train_wall_s", *RUN_COSTS) if entry.get(key) is not None}
                for variant, entry in before.items() if entry.get("training")}
    if index_build_s is None:
        index_build_s = next((entry["index_build_s"] for entry in before.values()
                              if entry.get("index_build_s") is not None), None)
    rules = {name: part.get("rule") for name, part in (saved.get("slices") or {}).items() if isinstance(part, dict)}
    seed = int((saved.get("config") or {}).get("seed") or 0)
    return _weighed(rows, cost_table(rows, runs, index_build_s), seed, rules)
