"""Batched generation over one base model, with fine-tuned adapters mixed into the same batch where PEFT allows.

``generate_batch`` runs one left-padded ``model.generate`` for many prompts and reports, per row, the answer, its
token count and the time its last token came out. ``AdapterHost`` owns a base model for inference: LoRA/QLoRA
adapters are loaded into one PeftModel under their run id and share a batch with base rows through PEFT's
``adapter_names`` ("__base__" for rows without an adapter); adapters that cannot be mixed (prompt learning, IA3,
AdaLoRA, DoRA) and fully or layer-wise fine-tuned runs get a model of their own and a batch of their own.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import render_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from core.models import LoadedModel

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's adapter name for rows that use no adapter
MIXABLE_METHODS = ("lora", "qlora")
TextCallback = Callable[[int, str], None]  # (row index in the call, answer text so far)


@dataclass
class GenerationConfig:
    """Decoding settings. Greedy unless ``temperature`` > 0."""

    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens to generate (1-2048)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples"})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (0-1], used when sampling"})
    repetition_penalty: float = field(default=1.0, metadata={"help": ">= 1.0; 1.0 = off"})
    stop: list[str] = field(default_factory=list, metadata={"help": "Strings that end an answer (not included)"})
    seed: int = field(default=0, metadata={"help": "Sampling seed (used when temperature > 0)"})

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens: must be an integer, got {self.max_new_tokens!r}")
        if not 1 <= self.max_new_tokens <= 2048:
            raise ValueError(f"max_new_tokens: must be between 1 and 2048, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty < 1:
            raise ValueError(f"repetition_penalty: must be >= 1.0, got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [text for text in self.stop if text]

    def generate_kwargs(self) -> dict:
        kwargs: dict = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass(frozen=True)
class Generated:
    """One row of a batched generate. Times are seconds from the start of the batch (``started_at``)."""

    text: str
    new_tokens: int
    prompt_tokens: int
    last_token_s: float
    batch_s: float
    batch_size: int
    finish: str  # eos, stop or length
    started_at: float = 0.0  # time.perf_counter() when the batch started
    joined_s: float = 0.0  # when this row's prefill began (later than 0 when it waited for a place in the batch)

    @property
    def generate_s(self) -> float:
        """From the row's own prefill to its last token: its generation time, waiting for a place excluded."""
        return self.last_token_s - self.joined_s


@dataclass(frozen=True)
class Reply:
    text: str
    prompt: str
    new_tokens: int
    latency_s: float


class _StepClock:
    """A generate() streamer: the time of every decoding step, and the text of each row as it grows."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, rows: int, stop_ids: set[int],
                 on_text: TextCallback | None) -> None:
        self.tokenizer = tokenizer
        self.start = time.perf_counter()
        self.step_times: list[float] = []
        self.prompt_seen = False
        self.on_text = on_text
        self.stop_ids = stop_ids
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt ids
            self.prompt_seen = True
            return
        self.step_times.append(time.perf_counter() - self.start)
        if self.on_text is None:
            return
        ids = value.reshape(-1).tolist()  # (rows,)
        for row, token in enumerate(ids):
            if self.done[row]:
                continue
            if token in self.stop_ids:
                self.done[row] = True
                continue
            self.tokens[row].append(token)
            self.on_text(row, self.tokenizer.decode(self.tokens[row], skip_special_tokens=True))

    def end(self) -> None:
        pass


def _end_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, set[int]]:
    """The pad id, and every id that ends a row (the model's end-of-sequence ids, the tokenizer's, the pad id)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    eos_ids.add(tokenizer.eos_token_id)
    return pad_id, {token for token in eos_ids | {pad_id} if token is not None}


def _cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """``text`` up to the first of ``stops`` it contains, or None when it contains none."""
    cuts = [text.find(stop) for stop in stops]
    cuts = [cut for cut in cuts if cut >= 0]
    return text[:min(cuts)] if cuts else None


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    adapter_names: Sequence[str] | None = None,
    on_text: TextCallback | None = None,
    max_batch_size: int | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[Generated]:
    """Generate for rendered ``prompts``, at most ``max_batch_size`` rows at a time (all by default).

    ``adapter_names``: the PEFT adapter of each row (mixed batch). A row ends at an end-of-sequence token, at a
    ``config.stop`` string (cut from the text) or at max_new_tokens; ``on_done(row)`` then. Decoder models go through
    ``_BatchDecoder`` (continuous batching: a finished row leaves the batch and a waiting prompt takes its place);
    prompt-learning PEFT models and models whose cache is not a plain per-layer key/value store go through
    ``model.generate``, one left-padded batch per ``max_batch_size`` rows.
    """
    config = config or GenerationConfig()
    if not prompts:
        return []
    width = min(max_batch_size or len(prompts), len(prompts))
    if _BatchDecoder.supports(model):
        return _BatchDecoder(model, tokenizer, config, on_text).run(prompts, adapter_names, width, on_done)
    results: list[Generated] = []
    for begin in range(0, len(prompts), width):
        rows = range(begin, min(begin + width, len(prompts)))
        forward = (lambda i, text, begin=begin: on_text(begin + i, text)) if on_text else None
        results += _generate_hf(model, tokenizer, [prompts[row] for row in rows], config, on_text=forward,
                                adapter_names=None if adapter_names is None else [adapter_names[r] for r in rows])
        for row in rows if on_done else ():
            on_done(row)
    return results


def _generate_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    adapter_names: Sequence[str] | None = None,
    on_text: TextCallback | None = None,
) -> list[Generated]:
    """One left-padded ``model.generate``: the batch runs until its last row ends."""
    import torch

    pad_id, stop_ids = _end_ids(model, tokenizer)
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(model.device)
    prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()  # (rows,)
    clock = _StepClock(tokenizer, len(prompts), stop_ids, on_text)
    extra: dict[str, Any] = {}
    if adapter_names is not None:
        extra["adapter_names"] = list(adapter_names)
    if config.stop:
        extra.update(stop_strings=config.stop, tokenizer=tokenizer)
    if config.temperature > 0:
        torch.manual_seed(config.seed)
    with torch.inference_mode():
        output = model.generate(**batch, **config.generate_kwargs(), pad_token_id=pad_id, streamer=clock, **extra)
    batch_s = time.perf_counter() - clock.start
    new = output[:, batch["input_ids"].shape[1]:].tolist()  # (rows, steps)
    results = []
    for row, ids in enumerate(new):
        n = next((i for i, token in enumerate(ids) if token in stop_ids), len(ids))
        finish = "eos" if n < len(ids) else "length"
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        cut = _cut_at_stop(text, config.stop)
        if cut is not None:
            text, finish = cut, "stop"
        produced = min(len(ids), n + (1 if finish == "eos" else 0))  # the end token counts as generated
        last = clock.step_times[produced - 1] if produced and clock.step_times else batch_s
        results.append(Generated(text.strip(), n, int(prompt_tokens[row]), last, batch_s, len(prompts), finish,
                                 clock.start))
    return results


class _BatchDecoder:
    """Prompts decoded token by token as one batch on a key/value cache built from unpadded prefills.

    ``model.generate`` left-pads every prompt to the longest (a 100-token prompt next to a 600-token RAG prompt is
    prefilled as 600 tokens) and runs the batch until its last row ends. Here prompts of about the same length are
    prefilled together (at most ``PREFILL_WASTE`` of the positions padding) and the others alone, so the prefill
    costs what one-by-one would; their caches are then left-padded into one batch that decodes one token per row per
    step. A row that ends leaves the batch (with the padding no remaining row needs) and the next waiting prompt is
    prefilled and joins it (continuous batching): on a CPU a decoding step costs about the same for 1 or 8 rows, so
    a full batch is what makes batching pay. Greedy decoding, the repetition penalty, temperature and top-p follow
    ``model.generate``'s logits processors.
    """

    PREFILL_WASTE = 0.15

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: GenerationConfig,
                 on_text: TextCallback | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.on_text = on_text
        self.pad_id, self.stop_ids = _end_ids(model, tokenizer)
        self.hold_back = max((len(stop) for stop in config.stop), default=1) - 1  # chars a stop may still claim
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        parameters = inspect.signature(base.forward).parameters
        self.keeps_logits = "logits_to_keep" in parameters  # skip the prompt positions' logits
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"  # transformers >= 5.24: cache

    @staticmethod
    def supports(model: PreTrainedModel) -> bool:
        """Plain decoder models (and PEFT models that only change weights): a per-layer key/value cache."""
        if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
            return False  # virtual tokens go through the PEFT model's own generate
        from transformers.cache_utils import DynamicCache, DynamicLayer

        try:
            layers = DynamicCache(config=model.config).layers
        except Exception:  # a config the cache cannot read: leave it to generate()
            return False
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def _forward(self, ids: Any, mask: Any, cache: Any, names: list[str] | None) -> Any:
        """Logits of the last position of each row, (rows, vocab) in float32."""
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        extra: dict[str, Any] = {} if names is None else {"adapter_names": names}
        if self.keeps_logits:
            extra["logits_to_keep"] = 1
        extra[self.cache_argument] = cache
        output = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        return output.logits[:, -1, :].float()

    def _prefill_groups(self, lengths: list[int]) -> list[list[int]]:
        """Rows by ascending length, cut into groups whose left padding stays within PREFILL_WASTE."""
        groups: list[list[int]] = []
        for row in sorted(range(len(lengths)), key=lengths.__getitem__):
            group = groups[-1] if groups else None
            if group and (len(group) + 1) * lengths[row] <= (1 + self.PREFILL_WASTE) * (
                    sum(lengths[r] for r in group) + lengths[row]):
                group.append(row)
            else:
                groups.append([row])
        return groups

    def _prefill(self, prompt_ids: list[list[int]], names: Sequence[str] | None) -> tuple[list[int], Any, Any, Any]:
        """Prefill every group; returns the batch order of the rows, their first-token logits, mask and cache."""
        import torch
        from transformers.cache_utils import DynamicCache

        device = self.model.device
        lengths = [len(ids) for ids in prompt_ids]
        longest = max(lengths)
        order: list[int] = []
        logits, masks, keys, values = [], [], [], []
        for group in self._prefill_groups(lengths):
            width = max(lengths[row] for row in group)
            ids = torch.tensor([[self.pad_id] * (width - lengths[r]) + prompt_ids[r] for r in group], device=device)
            mask = torch.tensor([[0] * (longest - lengths[r]) + [1] * lengths[r] for r in group], device=device)
            cache = DynamicCache(config=self.model.config)
            logits.append(self._forward(ids, mask[:, longest - width:], cache, None if names is None else
                                        [names[r] for r in group]))
            pad = longest - width  # every group's cache is left-padded to the longest prompt
            keys.append([torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)) for layer in cache.layers])
            values.append([torch.nn.functional.pad(layer.values, (0, 0, pad, 0)) for layer in cache.layers])
            masks.append(mask)
            order.extend(group)
        cache = DynamicCache(config=self.model.config)
        room = self.config.max_new_tokens
        cache.layers = [_buffer_layer()(torch.cat([k[i] for k in keys]), torch.cat([v[i] for v in values]), room)
                        for i in range(len(cache.layers))]
        return order, torch.cat(logits), torch.cat(masks), cache

    def _choose(self, scores: Any, seen: Callable[[], list[list[int]]], generator: Any) -> list[int]:
        """The next token of each row from its float32 logits; ``seen()``: each row's prompt and answer ids so far."""
        import torch

        config = self.config
        if config.repetition_penalty != 1.0:
            for row, ids in enumerate(seen()):
                index = torch.tensor(sorted(set(ids)), device=scores.device)
                picked = scores[row, index]
                scores[row, index] = torch.where(picked < 0, picked * config.repetition_penalty,
                                                 picked / config.repetition_penalty)
        if config.temperature == 0:
            return scores.argmax(dim=-1).tolist()
        scores = scores / config.temperature
        if config.top_p < 1.0:
            ordered, index = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - config.top_p
            drop[..., -1] = False  # the most likely token always stays
            scores = scores.masked_fill(drop.scatter(1, index, drop), float("-inf"))
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1).tolist()

    def run(self, prompts: Sequence[str], adapter_names: Sequence[str] | None, width: int,
            on_done: Callable[[int], None] | None = None) -> list[Generated]:
        import torch

        config, tokenizer = self.config, self.tokenizer
        prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        rows = len(prompt_ids)
        answers: list[list[int]] = [[] for _ in range(rows)]
        texts = [""] * rows
        finish = ["length"] * rows
        last = [0.0] * rows
        joined = [0.0] * rows
        generator = None
        if config.temperature > 0:
            generator = torch.Generator(device=self.model.device).manual_seed(config.seed)
        start = time.perf_counter()
        waiting = list(range(rows))
        active: list[int] = []  # rows in the batch, in cache order
        chosen: list[int] = []  # their latest token, fed to the next step
        mask = cache = None  # (len(active), cache length): 0 where a row is left-padded

        def step_done(batch: list[int], tokens: list[int]) -> list[int]:
            """Record each row's chosen token; the positions (in ``batch``) of the rows that go on."""
            now = time.perf_counter() - start
            going = []
            for position, (row, token) in enumerate(zip(batch, tokens, strict=True)):
                last[row] = now
                if self._take(row, token, answers, texts, finish):
                    if on_done is not None:
                        on_done(row)
                else:
                    going.append(position)
            return going

        with torch.inference_mode():
            while waiting or active:
                if waiting and len(active) < width:  # fill the batch: prefill waiting rows, they join the cache
                    joining, waiting = waiting[:width - len(active)], waiting[width - len(active):]
                    for row in joining:
                        joined[row] = time.perf_counter() - start
                    order, scores, new_mask, new_cache = self._prefill(
                        [prompt_ids[row] for row in joining],
                        None if adapter_names is None else [adapter_names[row] for row in joining])
                    joining = [joining[i] for i in order]
                    tokens = self._choose(scores, lambda j=joining: [prompt_ids[r] for r in j], generator)
                    going = step_done(joining, tokens)
                    if going:
                        if len(going) < len(joining):
                            new_mask = self._drop(new_cache, new_mask, going)
                        mask, cache = self._join(mask, cache, new_mask, new_cache)
                        active += [joining[i] for i in going]
                        chosen += [tokens[i] for i in going]
                    continue
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                names = None if adapter_names is None else [adapter_names[row] for row in active]
                scores = self._forward(torch.tensor(chosen, device=mask.device).unsqueeze(1), mask, cache, names)
                chosen = self._choose(scores, lambda batch=active: [prompt_ids[r] + answers[r] for r in batch],
                                      generator)
                going = step_done(active, chosen)
                if len(going) < len(active):
                    active, chosen = [active[i] for i in going], [chosen[i] for i in going]
                    mask = self._drop(cache, mask, going) if going else None
                    cache = cache if going else None
        batch_s = time.perf_counter() - start
        return [Generated(texts[row].strip(), len(answers[row]), len(prompt_ids[row]), last[row], batch_s, width,
                          finish[row], start, joined[row]) for row in range(rows)]

    def _join(self, mask: Any, cache: Any, new_mask: Any, new_cache: Any) -> tuple[Any, Any]:
        """The batch with the new rows' cache appended (both left-padded to the longer); the new rows come last."""
        import torch

        if cache is None:
            return new_mask, new_cache
        length = max(mask.shape[1], new_mask.shape[1])
        pad, new_pad = length - mask.shape[1], length - new_mask.shape[1]
        for layer, new_layer in zip(cache.layers, new_cache.layers, strict=True):
            layer.join(new_layer, pad, new_pad, self.config.max_new_tokens)
        pad_left = torch.nn.functional.pad
        return torch.cat([pad_left(mask, (pad, 0)), pad_left(new_mask, (new_pad, 0))]), cache

    def _take(self, row: int, token: int, answers: list[list[int]], texts: list[str], finish: list[str]) -> bool:
        """Add the chosen token to a row; True when the row has ended (eos, stop string or max_new_tokens).

        The text is decoded per step only when something reads it (stop strings, streaming); ``texts[row]`` is
        set when the row ends."""
        if token in self.stop_ids:
            finish[row] = "eos"  # the end token is neither kept nor counted
            texts[row] = self.tokenizer.decode(answers[row], skip_special_tokens=True)
            return True
        answers[row].append(token)
        full = len(answers[row]) >= self.config.max_new_tokens
        if not self.config.stop and self.on_text is None:
            if full:
                texts[row] = self.tokenizer.decode(answers[row], skip_special_tokens=True)
            return full
        text = self.tokenizer.decode(answers[row], skip_special_tokens=True)
        cut = _cut_at_stop(text, self.config.stop)
        if cut is not None:
            finish[row], texts[row] = "stop", cut
        else:
            texts[row] = text
        if self.on_text is not None:  # text a stop string could still claim is held back until it cannot
            shown = texts[row] if cut is not None else text[:max(0, len(text) - self.hold_back)]
            self.on_text(row, shown)
        return cut is not None or full

    @staticmethod
    def _drop(cache: Any, mask: Any, keep: list[int]) -> Any:
        """Keep only the batch positions ``keep`` and cut the padding columns none of them needs; the new mask."""
        import torch

        index = torch.tensor(keep, device=mask.device)
        mask = mask.index_select(0, index)
        trim = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())
        for layer in cache.layers:
            layer.keep(index, trim)
        return mask[:, trim:]


@functools.cache
def _buffer_layer() -> type:
    """A transformers DynamicLayer whose keys and values live in a buffer with room to grow.

    DynamicLayer concatenates each step's key/value onto the whole cache (a copy of the cache per layer per step);
    this one writes the step into spare room and hands attention a view. Made on first use (transformers is imported
    lazily).
    """
    import torch
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        def __init__(self, keys: Any, values: Any, room: int) -> None:
            super().__init__()
            self.device, self.is_initialized = keys.device, True
            self.length = keys.shape[-2]
            self._keys = self._with_room(keys, room)
            self._values = self._with_room(values, room)
            self._views()

        def _with_room(self, states: Any, room: int) -> Any:
            buffer = states.new_empty(*states.shape[:-2], self.length + room, states.shape[-1])
            buffer[..., :self.length, :] = states
            return buffer

        def _views(self) -> None:
            self.keys = self._keys[..., :self.length, :]
            self.values = self._values[..., :self.length, :]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            steps = key_states.shape[-2]
            if self.length + steps > self._keys.shape[-2]:  # out of room: grow by as much again
                self._keys = self._with_room(self.keys, self.length + steps)
                self._values = self._with_room(self.values, self.length + steps)
            self._keys[..., self.length:self.length + steps, :] = key_states
            self._values[..., self.length:self.length + steps, :] = value_states
            self.length += steps
            self._views()
            return self.keys, self.values

        def join(self, other: Any, pad: int, other_pad: int, room: int) -> None:
            """Append ``other``'s rows; each side is left-padded by its ``pad`` first. Leaves ``room`` to grow."""
            pad_left = torch.nn.functional.pad
            for name in ("keys", "values"):
                mine, theirs = getattr(self, name), getattr(other, name)
                joined = torch.cat([pad_left(mine, (0, 0, pad, 0)), pad_left(theirs, (0, 0, other_pad, 0))])
                setattr(self, f"_{name}", joined)
            self.length = self._keys.shape[-2]
            self._keys, self._values = self._with_room(self._keys, room), self._with_room(self._values, room)
            self._views()

        def keep(self, rows: Any, trim: int) -> None:
            self._keys = self._keys.index_select(0, rows)[..., trim:, :]
            self._values = self._values.index_select(0, rows)[..., trim:, :]
            self.length -= trim
            self._views()

    return BufferLayer


def generate_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    config: GenerationConfig | None = None,
) -> Reply:
    """One chat reply for ``messages`` (the model's chat template), decoded without special tokens."""
    prompt = render_prompt(tokenizer, messages)
    generated = generate_batch(model, tokenizer, [prompt], config)[0]
    return Reply(generated.text, prompt, generated.new_tokens, generated.batch_s)


# --------------------------------------------------------------------------------------------------------------------
# Adapters over one base model
# --------------------------------------------------------------------------------------------------------------------


class AdapterError(ValueError):
    """A run that cannot be used as an adapter of this base model (the message names both)."""


@dataclass(frozen=True)
class AdapterInfo:
    key: str  # the run id: the PEFT adapter name, and the name shown in results
    run_dir: str
    method: str
    mixable: bool


class AdapterHost:
    """The inference owner of one loaded base model and the fine-tuned runs applied to it.

    All generation on the base model goes through ``generate`` (one at a time, under ``lock``): once a LoRA adapter
    is loaded the base model's layers carry it, and only ``adapter_names`` keeps base rows clean.
    """

    def __init__(self, base: LoadedModel, *, max_separate: int = 3) -> None:
        self.base = base
        self.lock = threading.RLock()
        self.max_separate = max_separate
        self.adapters: dict[str, AdapterInfo] = {}
        self._peft: Any = None
        self._separate: dict[str, LoadedModel] = {}  # insertion order = least recently used first

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.base.tokenizer

    def add(self, run_dir: str | Path) -> AdapterInfo:
        """Make a completed (or stopped) run usable; loads its weights on first use. Returns its key."""
        from core.runs import Run

        run = Run(Path(run_dir))
        if not (run.path / "config.json").is_file():
            raise AdapterError(f"adapter: {run.path} is not a training run folder (no config.json)")
        key = run.run_id
        existing = self.adapters.get(key)
        if existing is not None and existing.run_dir == str(run.path):
            return existing
        if existing is not None:  # another folder with the same name: keep both apart
            import hashlib

            key = f"{run.run_id}-{hashlib.sha256(str(run.path.resolve()).encode()).hexdigest()[:6]}"
            if key in self.adapters:
                return self.adapters[key]
        config = run.config
        self._check_base(run.run_id, config.get("base_model"))
        if run.weights_dir is None:
            raise AdapterError(f"adapter: run {run.run_id} has no saved weights (state {run.state})")
        from core.artifacts import check_run_weights

        check_run_weights(run.path)  # whole safetensors and valid JSON before PEFT reads them; one-line errors
        method = config.get("method", "")
        settings = config.get("method_config") or {}
        mixable = method in MIXABLE_METHODS and not settings.get("use_dora")
        info = AdapterInfo(key, str(run.path), method, mixable)
        with self.lock:
            if mixable:
                self._load_mixed(info, run.weights_dir)
            self.adapters[info.key] = info
        logger.info("adapter %s (%s) ready%s", info.key, method, " for mixed batches" if mixable else "")
        return info

    @staticmethod
    def _prompt_learning(method: str) -> bool:
        from core.methods import METHODS

        return method in METHODS and METHODS[method].prompt_learning

    def _check_base(self, run_id: str, trained_on: str | None) -> None:
        from core.models import resolve_base_model

        ours = self.base.resolved
        try:
            theirs = resolve_base_model(trained_on)
        except Exception as err:  # the run's base may be a folder that no longer exists
            raise AdapterError(f"adapter: run {run_id} was trained on {trained_on}, which cannot be found ({err})"
                               ) from None

        def where(model) -> str:  # one folder however it is spelled (relative, symlinked); hub ids as they are
            return model.location if model.kind == "hub" else str(Path(model.location).resolve())

        if where(theirs) != where(ours):
            raise AdapterError(f"adapter: run {run_id} was trained on base model {theirs.name}, but the arena's base "
                               f"model is {ours.name}; pick a run of {ours.name} or switch the base model")

    def _load_mixed(self, info: AdapterInfo, weights: Path) -> None:
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.base.model, str(weights), adapter_name=info.key)
        elif info.key not in self._peft.peft_config:
            self._peft.load_adapter(str(weights), adapter_name=info.key)
        self._peft.eval()

    def remove(self, key: str) -> None:
        """Forget an adapter (e.g. its run was deleted)."""
        with self.lock:
            info = self.adapters.pop(key, None)
            if info is None:
                return
            if info.mixable and self._peft is not None and len(self._peft.peft_config) > 1:
                self._peft.delete_adapter(key)  # PEFT keeps at least one; a stale one is never selected
            self._separate.pop(key, None)

    def _separate_model(self, key: str) -> LoadedModel:
        from core.training import load_trained_model

        if key in self._separate:
            self._separate[key] = self._separate.pop(key)  # most recently used
            return self._separate[key]
        while len(self._separate) >= self.max_separate:
            dropped = next(iter(self._separate))
            del self._separate[dropped]
            logger.info("unloaded %s (keeping at most %d separate models)", dropped, self.max_separate)
        info = self.adapters[key]
        loaded = load_trained_model(info.run_dir, device=self.base.device, dtype=self.base.dtype)
        self._separate[key] = loaded
        return loaded

    def render(self, messages: list[dict[str, str]]) -> str:
        return render_prompt(self.base.tokenizer, messages)

    def count_tokens(self, text: str) -> int:
        return len(self.base.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_window(self) -> int:
        config = self.base.model.config
        return int(getattr(config, "max_position_embeddings", 0) or 2048)

    def generate(
        self,
        prompts: Sequence[str],
        adapters: Sequence[str | None],
        config: GenerationConfig | None = None,
        *,
        max_batch_size: int = 8,
        on_text: TextCallback | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[Generated]:
        """Generate for each prompt with its adapter key (None = base model), at most ``max_batch_size`` at a time.

        Rows of the base model and of mixable adapters share batches; every other adapter gets its own (for
        prompt-learning methods, one per prompt length).
        ``on_text(row, text)`` streams answers (row = index in ``prompts``); ``on_batch(done_rows, total)`` each time
        a row ends.
        """
        if len(prompts) != len(adapters):
            raise ValueError(f"adapters: {len(adapters)} given for {len(prompts)} prompts")
        for key in adapters:
            if key is not None and key not in self.adapters:
                raise AdapterError(f"adapter: {key} is not loaded; add its run first")
        groups: dict[tuple[str, int], list[int]] = {}
        for row, key in enumerate(adapters):
            group = "" if key is None or self.adapters[key].mixable else key
            # PEFT puts virtual tokens before the padding, so a prompt-learning adapter sees a padded row at other
            # distances than the same row alone: it batches only rows of the same token length.
            length = len(self.base.tokenizer(prompts[row], add_special_tokens=False)["input_ids"]) if (
                group and self._prompt_learning(self.adapters[key].method)) else 0
            groups.setdefault((group, length), []).append(row)
        results: list[Generated | None] = [None] * len(prompts)
        done = 0
        with self.lock:
            for (group, _), rows in groups.items():
                if group:
                    model, names = self._separate_model(group).model, None
                else:
                    model = self._peft if self._peft is not None else self.base.model
                    names = [adapters[row] or BASE for row in rows] if self._peft is not None else None

                def finished(i: int) -> None:
                    nonlocal done
                    done += 1
                    if on_batch:
                        on_batch(done, len(prompts))

                forward = (lambda i, text, rows=rows: on_text(rows[i], text)) if on_text else None
                outputs = generate_batch(model, self.base.tokenizer, [prompts[row] for row in rows], config,
                                         adapter_names=names, on_text=forward, max_batch_size=max_batch_size,
                                         on_done=finished)
                for row, output in zip(rows, outputs, strict=True):
                    results[row] = output
        return [result for result in results if result is not None]
