"""The arena: one query (or a whole test set) through named variants of one base model, side by side, scored.

A variant is a strategy (zero_shot, few_shot, rag, finetuned, finetuned_rag, finetuned_few_shot, nearest_answer)
plus, for the fine-tuned ones, an adapter run. All variants of all queries go to ``AdapterHost.generate`` together,
which batches every row that can share the base model (base rows and LoRA adapters) and gives the other adapters
batches of their own; a strategy that does not generate (``nearest_answer``) answers without the model.
A variant that cannot run (no index, no adapter, no pool) comes back ``available=False`` with the reason; the rest
still run. A classification run (core.inference.classifier) answers a ``finetuned`` variant with its label and the
class probabilities, without generating: its rows are classified in batches before generation starts.
"""


from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.arena.metrics import CLASSIFICATION_TASK, Scorer
from core.arena.prompting import (
    SHOT_SELECTIONS,
    Neighbour,
    Passage,
    PromptTooLongError,
    label_set,
    nearest_example,
    select_shots,
)
from core.arena.strategies import (
    DEFAULT_VARIANTS,
    STRATEGIES,
    PromptRequest,
    VariantSpec,
    VariantUnavailableError,
    parse_variants,
)
from core.data import Example
from core.errors import ConfigError
from core.inference import AdapterHost, Classifier, GenerationConfig
from core.text import short_name

logger = logging.getLogger(__name__)

VARIANTS_HELP = (f"{', '.join(DEFAULT_VARIANTS)} (the default); also "
                 f"{', '.join(name for name in STRATEGIES if name not in DEFAULT_VARIANTS)}; strategy@RUN names a run")


@dataclass
class ArenaConfig:
    """What the arena runs and how. Field errors name the field."""

    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS),
                                metadata={"help": VARIANTS_HELP})
    adapters: list[str] = field(default_factory=list, metadata={"help": "run folders or ids for the fine-tuned ones"})
    index: str | None = field(default=None, metadata={"help": "knowledge base folder (or workspace index name)"})
    few_shot_pool: str | None = field(default=None, metadata={"help": "examples file (default: the demo train set)"})
    few_shot_k: int = field(default=3, metadata={"help": "worked examples in a few-shot prompt"})
    few_shot_selection: str = field(default="similar", metadata={"help": "similar, fixed or random"})
    rag_k: int = field(default=3, metadata={"help": "retrieved passages in a RAG prompt"})
    hybrid: bool = field(default=True, metadata={"help": "retrieval fuses BM25 with embeddings"})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt (default: the model's)"})
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    max_batch_size: int = field(default=8, metadata={"help": "most rows per generate call"})
    seed: int = field(default=0, metadata={"help": "for random few-shot selection and sampling"})

    def __post_init__(self) -> None:
        if isinstance(self.variants, str):
            self.variants = [name.strip() for name in self.variants.split(",") if name.strip()]
        if isinstance(self.adapters, str):
            self.adapters = [self.adapters]
        if isinstance(self.generation, dict):
            self.generation = GenerationConfig(**self.generation)
        for name in ("few_shot_k", "rag_k", "max_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: must be an integer, got {value!r}")
        if not 0 <= self.few_shot_k <= 16:
            raise ConfigError(f"few_shot_k: must be between 0 and 16, got {self.few_shot_k}")
        if not 1 <= self.rag_k <= 20:
            raise ConfigError(f"rag_k: must be between 1 and 20, got {self.rag_k}")
        if not 1 <= self.max_batch_size <= 256:
            raise ConfigError(f"max_batch_size: must be between 1 and 256, got {self.max_batch_size}")
        if self.few_shot_selection not in SHOT_SELECTIONS:
            raise ConfigError(f"few_shot_selection: must be one of {', '.join(SHOT_SELECTIONS)}, "
                             f"got {self.few_shot_selection!r}")
        parse_variants(self.variants, self.adapters)

    def specs(self) -> list[VariantSpec]:
        return parse_variants(self.variants, self.adapters)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ArenaContext:
    """What the arena needs from the engine; the unavailable parts carry the reason instead."""

    host: AdapterHost
    scorer: Scorer | None = None
    knowledge_base: Any = None  # retrieval.KnowledgeBase
    index_error: str | None = None
    pool: list[Example] = field(default_factory=list)
    pool_vectors: np.ndarray | None = None
    embed: Callable[[list[str]], np.ndarray] | None = None  # texts -> unit vectors (few-shot similarity)
    similarity_embedder: Any = None  # a sentence-transformers model for the similarity metric
    adapter_keys: dict[str, str] = field(default_factory=dict)  # adapter as given -> host key
    adapter_errors: dict[str, str] = field(default_factory=dict)
    classifiers: dict[str, Classifier] = field(default_factory=dict)  # adapter as given -> a classification run


@dataclass
class VariantResult:
    """One variant's answer to one query. ``latency_s``: from the request's start to its last token (retrieval,
    prompting and earlier batches included); ``generate_s``: from its own prefill to its last token."""

    variant: str
    strategy: str
    adapter: str | None = None
    available: bool = True
    error: str | None = None
    answer: str = ""
    prompt: str = ""
    latency_s: float | None = None
    new_tokens: int = 0
    prompt_tokens: int = 0
    retrieval_s: float | None = None
    generate_s: float | None = None  # from its own prefill to its last token (waiting for a batch place excluded)
    batch_s: float | None = None
    batch_size: int = 0
    finish: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    shots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was cut to fit the context window, for the reader
    probabilities: dict[str, float] = field(default_factory=dict)  # a classification run's classes, likeliest first

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        for key in ("latency_s", "generate_s", "batch_s", "retrieval_s"):
            if row[key] is not None:
                row[key] = round(row[key], 3)
        return row


@dataclass
class ArenaResult:
    query: str
    reference: str | None
    task: str | None
    results: list[VariantResult]
    wall_s: float
    retrieval_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "reference": self.reference, "task": self.task,
                "results": [result.to_dict() for result in self.results], "wall_s": round(self.wall_s, 3),
                "retrieval_s": round(self.retrieval_s, 3)}


def _unavailable_reason(spec: VariantSpec, context: ArenaContext) -> str | None:
    strategy = STRATEGIES[spec.strategy]
    if strategy.uses_adapter:
        if not spec.adapter:
            return "no fine-tuned run chosen (train one, or pass --adapter RUN_DIR)"
        if spec.adapter in context.adapter_errors:
            return context.adapter_errors[spec.adapter]
        if spec.adapter in context.classifiers and not strategy.classifies:
            return (f"{short_name(spec.adapter)} is a classification run: it answers with a label from the query "
                    f"alone (use it as finetuned), it cannot read the {spec.strategy.removeprefix('finetuned_')} "
                    "prompt")
    if strategy.uses_retrieval and context.knowledge_base is None:
        return context.index_error or "no knowledge base chosen (build one, or pass --index DIR)"
    if strategy.uses_shots and not context.pool:
        return "no few-shot examples (the pool file is empty or missing)"
    if strategy.uses_nearest and not context.pool:
        return "no pool examples to copy an answer from (the few-shot pool file is empty or missing)"
    return None


def _routed_tasks(host: Any, key: str | None) -> tuple[str, ...]:
    """The tasks a loaded run routes rows by (multi-task prompt tuning), empty for every other run."""
    info = getattr(host, "adapters", {}).get(key) if key else None
    return tuple(getattr(info, "tasks", ()) or ())


def run_examples(
    examples: Sequence[Example],
    config: ArenaConfig,
    context: ArenaContext,
    *,
    label_sets: Sequence[Sequence[str] | None] | None = None,
    on_text: Callable[[int, int, str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    score: bool = True,
) -> list[list[VariantResult]]:
    """Every variant for every example: results[example][variant]. Generation is batched across all of them.

    ``on_text(example, variant, text)`` streams answers; ``on_progress(stage, done, total)`` reports
    retrieval and generation.
    """
    start = time.perf_counter()
    specs = config.specs()
    host = context.host
    window = host.context_window()
    budget = window - config.generation.max_new_tokens
    if budget < 1 and any(STRATEGIES[spec.strategy].generates for spec in specs):
        raise ConfigError(f"max_new_tokens: {config.generation.max_new_tokens} leaves no room for a prompt in the "
                         f"model's {window}-token context window; use less than {window}")
    room = f"the model's {window}-token context window with {config.generation.max_new_tokens} tokens for the answer"
    table: list[list[VariantResult]] = []
    requests: list[tuple[int, int, str, str | None]] = []  # (example, variant, prompt, adapter key)
    to_classify: dict[str, list[tuple[int, int]]] = {}  # classification run (as given) -> (example, variant)
    needs_retrieval = any(STRATEGIES[spec.strategy].uses_retrieval for spec in specs)
    needs_shots = any(STRATEGIES[spec.strategy].uses_shots for spec in specs)
    needs_nearest = any(STRATEGIES[spec.strategy].uses_nearest for spec in specs)
    for number, example in enumerate(examples):
        passages: list[Passage] = []
        retrieval_s = 0.0
        if needs_retrieval and context.knowledge_base is not None:
            began = time.perf_counter()
            hits = context.knowledge_base.search(example.user_text, config.rag_k, hybrid=config.hybrid)
            retrieval_s = time.perf_counter() - began
            passages = [Passage(hit.chunk.text, hit.chunk.source, hit.dense_score if hit.dense_score is not None
                                else hit.score, hit.chunk.title, hit.chunk.headings) for hit in hits]
            if on_progress:
                on_progress("retrieve", number + 1, len(examples))
        shots: list[Example] = []
        if needs_shots and context.pool:
            shots = select_shots(context.pool, example, config.few_shot_k, selection=config.few_shot_selection,
                                 seed=config.seed, embed=context.embed, pool_vectors=context.pool_vectors)
        nearest: Neighbour | None = None
        nearest_s = 0.0
        if needs_nearest and context.pool:
            began = time.perf_counter()
            nearest = nearest_example(context.pool, example, embed=context.embed, pool_vectors=context.pool_vectors)
            nearest_s = time.perf_counter() - began
        row: list[VariantResult] = []
        for index, spec in enumerate(specs):
            result = VariantResult(spec.name, spec.strategy, spec.adapter)
            row.append(result)
            reason = _unavailable_reason(spec, context)
            if reason:
                result.available, result.error = False, reason
                continue
            strategy = STRATEGIES[spec.strategy]
            if spec.adapter in context.classifiers:  # answered by its label, below: no prompt, no generation
                to_classify.setdefault(spec.adapter, []).append((number, index))
                continue
            began = time.perf_counter()
            request = PromptRequest(example, config.system_prompt, lambda messages: host.count_tokens(
                host.render(messages)), budget, room, passages, shots, nearest)
            try:
                built = strategy.build(request)
                if strategy.generates:
                    prompt = host.render(built.messages)
                    tokens = host.count_tokens(prompt)
                    if tokens > budget:
                        raise PromptTooLongError(f"the prompt is {tokens} tokens, over the {budget} that fit {room}; "
                                                 "shorten the query or lower max_new_tokens")
            except (PromptTooLongError, VariantUnavailableError) as err:
                result.available, result.error = False, str(err)
                continue
            result.notes += built.notes
            result.retrieved, result.shots = built.retrieved, built.shots
            if strategy.uses_retrieval:
                result.retrieval_s = retrieval_s
            if not strategy.generates:  # its answer is in hand: no prompt, no tokens, nothing sent to the model
                result.answer = built.answer or ""
                result.latency_s = (time.perf_counter() - began + (nearest_s if strategy.uses_nearest else 0.0)
                                    + (retrieval_s if strategy.uses_retrieval else 0.0))
                if on_text:
                    on_text(number, index, result.answer)
                continue
            result.prompt, result.prompt_tokens = prompt, tokens
            adapter_key = context.adapter_keys.get(spec.adapter) if spec.adapter else None
            routed = _routed_tasks(host, adapter_key)
            if routed and example.task not in routed:  # multi-task prompt tuning: a prompt per task it trained on
                result.available = False
                result.error = (f"this run answers per task ({', '.join(routed)}); the query's task is "
                                f"{example.task or 'not set'}: choose one of its tasks")
                continue
            requests.append((number, index, prompt, adapter_key))
        table.append(row)

    for adapter, cells in to_classify.items():
        _classify(examples, table, cells, context.classifiers[adapter], config.max_batch_size, start, on_text)

    if requests:
        order = sorted(range(len(requests)), key=lambda i: host.count_tokens(requests[i][2]))  # less padding
        ordered = [requests[i] for i in order]
        forward = None
        if on_text:
            def forward(row: int, text: str) -> None:
                number, index, _, _ = ordered[row]
                on_text(number, index, text)
        report = (lambda done, total: on_progress("generate", done, total)) if on_progress else None
        routing = {"tasks": [examples[r[0]].task for r in ordered]} if any(
            _routed_tasks(host, r[3]) for r in ordered) else {}  # each row's task, for the runs that route by it
        generated = host.generate([r[2] for r in ordered], [r[3] for r in ordered], config.generation,
                                  max_batch_size=config.max_batch_size, on_text=forward, on_batch=report, **routing)
        for (number, index, _, _), output in zip(ordered, generated, strict=True):
            result = table[number][index]
            result.answer, result.new_tokens, result.finish = output.text, output.new_tokens, output.finish
            result.batch_s, result.batch_size = output.batch_s, output.batch_size
            result.latency_s = output.started_at + output.last_token_s - start
            result.generate_s = output.generate_s

    if score:
        score_results(examples, table, context, label_sets)
    return table


def _classify(examples: Sequence[Example], table: list[list[VariantResult]], cells: list[tuple[int, int]],
              classifier: Classifier, batch_size: int, start: float,
              on_text: Callable[[int, int, str], None] | None) -> None:
    """Answer ``cells`` (example, variant) with the classifier's label and class probabilities, ``batch_size`` rows
    per forward pass. ``latency_s`` runs from the request's start to the end of the row's batch, as for generated
    answers; ``generate_s``/``batch_s``: the batch's forward pass."""
    for first in range(0, len(cells), batch_size):
        chunk = cells[first : first + batch_size]
        began = time.perf_counter()
        predictions = classifier.predict([classifier.text_of(examples[number]) for number, _ in chunk],
                                         batch_size=batch_size)
        ended = time.perf_counter()
        for (number, index), prediction in zip(chunk, predictions, strict=True):
            result = table[number][index]
            result.answer, result.probabilities, result.finish = prediction.label, prediction.probabilities, "label"
            result.latency_s, result.generate_s = ended - start, ended - began
            result.batch_s, result.batch_size = ended - began, len(chunk)
            if on_text:
                on_text(number, index, result.answer)


def score_results(examples: Sequence[Example], table: list[list[VariantResult]], context: ArenaContext,
                  label_sets: Sequence[Sequence[str] | None] | None = None) -> None:
    """Fill ``metrics`` of every available result against its example's reference (one batch for all)."""
    if context.scorer is None:
        return
    cells = [(number, result) for number, row in enumerate(table) for result in row if result.available]
    if not cells:
        return
    answers = [result.answer for _, result in cells]
    references = [examples[number].output for number, _ in cells]
    tasks = [examples[number].task for number, _ in cells]
    labels = [(label_sets[number] if label_sets else None) or
              (label_set(examples[number]) if examples[number].task == CLASSIFICATION_TASK else None)
              for number, _ in cells]
    scores = context.scorer.score_batch(answers, references, tasks, label_sets=labels,
                                        embedder=context.similarity_embedder)
    for (_, result), values in zip(cells, scores, strict=True):
        result.metrics = values


def run_query(
    query: str,
    config: ArenaConfig,
    context: ArenaContext,
    *,
    reference: str | None = None,
    task: str | None = None,
    input_text: str = "",
    on_text: Callable[[int, str], None] | None = None,
) -> ArenaResult:
    """One query through every variant of ``config`` in one batched generate (where the adapters allow)."""
    if not query or not query.strip():
        raise ConfigError("query: is empty; type a question")
    start = time.perf_counter()
    example = Example(instruction=query.strip(), input=input_text.strip(), output=reference or None, task=task,
                      uid="query")
    forward = (lambda _, variant, text: on_text(variant, text)) if on_text else None
    results = run_examples([example], config, context, on_text=forward)[0]
    retrieval = max((r.retrieval_s for r in results if r.retrieval_s is not None), default=0.0)
    return ArenaResult(query=query, reference=reference, task=task, results=results,
                       wall_s=time.perf_counter() - start, retrieval_s=retrieval)
