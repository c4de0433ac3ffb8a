"""Arena strategies: how a variant turns an example into a prompt. Each registered strategy owns its facts (needs an
adapter, retrieval, worked examples, the pool's nearest example; generates or not) and builds its own messages; the
runner only asks it.

Add a strategy: write a ``build(request) -> Prompt`` function (or reuse one: ``finetuned`` builds what ``zero_shot``
builds, on the run's weights) and call ``register_strategy``. A variant is a strategy plus, for the ones that use an
adapter, a run (``strategy@RUN``). A strategy that does not generate (``generates=False``, e.g. ``nearest_answer``)
puts its answer in ``Prompt.answer``; the runner never sends it to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.arena.prompting import (
    Neighbour,
    Passage,
    PromptTooLongError,
    few_shot_messages,
    fit_passages,
    rag_messages,
    zero_shot_messages,
)
from core.data import Example
from core.errors import ConfigError, TuneArenaError
from core.registry import Registry
from core.text import short_name

Messages = list[dict[str, str]]


class VariantUnavailableError(TuneArenaError):
    """A variant that cannot answer this example (the runner shows it unavailable with this message)."""


@dataclass(frozen=True)
class PromptRequest:
    """What a strategy may use to build one prompt. ``count(messages) -> tokens`` renders through the model's chat
    template; ``budget``: the tokens the prompt may take (the context window less the answer's room), described by
    ``room`` in messages."""

    example: Example
    system: str | None
    count: Callable[[Messages], int]
    budget: int
    room: str
    passages: Sequence[Passage] = ()
    shots: Sequence[Example] = ()
    nearest: Neighbour | None = None  # the pool's most similar example, for the strategies that use it


@dataclass
class Prompt:
    """A strategy's prompt: the messages, what it cut to fit or where its answer came from (``notes``), and what it
    put in. ``answer``: the answer itself, for a strategy that does not generate (its messages stay empty)."""

    messages: Messages
    notes: list[str] = field(default_factory=list)
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    shots: list[str] = field(default_factory=list)
    answer: str | None = None


def build_zero_shot(request: PromptRequest) -> Prompt:
    """The instruction and input only: the layout training uses."""
    return Prompt(zero_shot_messages(request.example, request.system))


def build_with_passages(request: PromptRequest) -> Prompt:
    """The retrieved passages in front of the question, the lowest-ranked dropped until the prompt fits."""
    passages = list(request.passages)
    kept = fit_passages(lambda chosen: request.count(rag_messages(request.example, chosen, request.system)),
                        passages, request.budget)
    if passages and not kept:
        raise PromptTooLongError(f"none of the {len(passages)} retrieved passages fits {request.room}; "
                                 "lower max_new_tokens or index with a smaller chunk size")
    notes = ([f"{len(passages) - len(kept)} of {len(passages)} retrieved passages left out to fit {request.room}"]
             if len(kept) < len(passages) else [])
    retrieved = [{"text": p.text, "source": p.source, "score": round(p.score, 4), "title": p.title,
                  "headings": list(p.headings)} for p in kept]
    return Prompt(rag_messages(request.example, kept, request.system), notes, retrieved)


def build_with_shots(request: PromptRequest) -> Prompt:
    """Worked examples as earlier turns (the most similar nearest the question); the least similar are dropped
    first until the prompt fits."""
    shots = list(request.shots)

    def count(kept: Sequence[Example]) -> int:  # nearest first
        return request.count(few_shot_messages(request.example, kept[::-1], request.system))

    fitted = fit_passages(count, shots[::-1], request.budget)[::-1]
    if shots and not fitted:
        raise PromptTooLongError(f"none of the {len(shots)} worked examples fits {request.room}; "
                                 "lower few_shot_k or max_new_tokens")
    notes = ([f"{len(shots) - len(fitted)} of {len(shots)} worked examples left out to fit {request.room}"]
             if len(fitted) < len(shots) else [])
    return Prompt(few_shot_messages(request.example, fitted, request.system), notes, shots=[s.uid for s in fitted])


def build_nearest_answer(request: PromptRequest) -> Prompt:
    """No prompt and no model: the answer of the pool example most like the query, copied as it is."""
    nearest = request.nearest
    if nearest is None or nearest.example.output is None:
        raise VariantUnavailableError("no pool example to copy an answer from (every one is this example itself or "
                                      "has no answer)")
    shot = nearest.example
    name = shot.uid or repr(shot.instruction[:40])
    return Prompt([], [f"copied the answer of pool example {name} ({nearest.by} similarity {nearest.score:.3f})"],
                  shots=[shot.uid] if shot.uid else [], answer=shot.output)


@dataclass(frozen=True)
class Strategy:
    """A named way to answer. ``uses_adapter``: runs on a trained run's weights (``strategy@RUN``);
    ``uses_retrieval``: gets the knowledge base's top-k passages; ``uses_shots``: gets k worked examples from the
    few-shot pool (``few_shot_k``, ``few_shot_selection``); ``uses_nearest``: gets the pool's single most similar
    example (by embedding, else by word overlap, whatever the selection); ``generates``: False for a strategy whose
    ``Prompt.answer`` is the answer (nothing goes to the model); ``classifies``: a classification run
    (core.inference.classifier) may answer it with its label, from the query text alone."""

    name: str
    title: str
    description: str
    build: Callable[[PromptRequest], Prompt]
    uses_adapter: bool = False
    uses_retrieval: bool = False
    uses_shots: bool = False
    uses_nearest: bool = False
    generates: bool = True
    classifies: bool = False

    def __post_init__(self) -> None:
        if self.uses_adapter and not self.generates:
            raise ValueError(f"strategy {self.name}: an adapter is of no use to a strategy that does not generate")


STRATEGIES: Registry[Strategy] = Registry("strategy")
register_strategy = STRATEGIES.register


for _strategy in (
    Strategy("zero_shot", "Zero-shot", "the instruction and query only", build_zero_shot),
    Strategy("few_shot", "Few-shot", "k worked examples from a pool, then the query", build_with_shots,
             uses_shots=True),
    Strategy("rag", "RAG", "top-k retrieved passages with their sources, then the query", build_with_passages,
             uses_retrieval=True),
    Strategy("finetuned", "Fine-tuned", "a trained run's weights, query only", build_zero_shot, uses_adapter=True,
             classifies=True),
    Strategy("finetuned_rag", "Fine-tuned + RAG", "the trained weights and the retrieved passages",
             build_with_passages, uses_adapter=True, uses_retrieval=True),
    Strategy("finetuned_few_shot", "Fine-tuned + few-shot", "the trained weights and k worked examples",
             build_with_shots, uses_adapter=True, uses_shots=True),
    Strategy("nearest_answer", "Nearest answer", "no model: the answer of the most similar pool example, copied",
             build_nearest_answer, uses_nearest=True, generates=False),
):
    register_strategy(_strategy)

# What runs when no variants are named (the CLI contract's five); every registered strategy can be chosen.
DEFAULT_VARIANTS: tuple[str, ...] = ("zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag")


@dataclass(frozen=True)
class VariantSpec:
    """A named variant: ``strategy`` with ``adapter`` (a run folder or id) for the fine-tuned strategies."""

    name: str
    strategy: str
    adapter: str | None = None


def parse_variants(names: Sequence[str], adapters: Sequence[str] = ()) -> list[VariantSpec]:
    """Variant names -> specs. The strategies that use an adapter (``finetuned``, ``finetuned_rag``,
    ``finetuned_few_shot``) use the adapter when one is given, or expand to one variant per adapter
    (``finetuned@<run>``) when several are; ``strategy@RUN`` names a run explicitly."""
    specs: list[VariantSpec] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        strategy, _, adapter = name.partition("@")
        if strategy not in STRATEGIES:
            raise ConfigError(f"variants: unknown variant {strategy!r}; known: {', '.join(STRATEGIES)}")
        if adapter and not STRATEGIES[strategy].uses_adapter:
            raise ConfigError(f"variants: {strategy} takes no adapter (got {name!r})")
        if STRATEGIES[strategy].uses_adapter and not adapter and len(adapters) > 1:
            specs += [VariantSpec(f"{strategy}@{short_name(run)}", strategy, run) for run in adapters]
        elif STRATEGIES[strategy].uses_adapter:
            specs.append(VariantSpec(name, strategy, adapter or (adapters[0] if adapters else None)))
        else:
            specs.append(VariantSpec(name, strategy))
    if not specs:
        raise ConfigError("variants: none chosen")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"variants: {spec.name} is listed twice")
        seen.add(spec.name)
    return specs

