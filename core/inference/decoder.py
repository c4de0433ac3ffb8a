"""The batch decoder: continuous batching over a key/value buffer built from unpadded prefills, and
``generate_batch``, which picks it or ``model.generate`` (GenerationConfig.decoder)."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.data import render_prompt
from core.inference.generation import (
    Generated,
    GenerationConfig,
    Reply,
    TextCallback,
    cut_at_stop,
    end_ids,
    generate_hf,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
    task_ids: Sequence[int] | None = None,
) -> list[Generated]:
    """Generate for rendered ``prompts``, at most ``max_batch_size`` rows at a time (all by default).

    ``task_ids``: each row's task id, for a multi-task prompt-tuning model (each row gets its own task's prompt).

    ``adapter_names``: the PEFT adapter of each row (mixed batch). A row ends at an end-of-sequence token, at a
    ``config.stop`` string (cut from the text) or at max_new_tokens; ``on_done(row)`` then. Decoder models go through
    ``_BatchDecoder`` (continuous batching: a finished row leaves the batch and a waiting prompt takes its place);
    models whose cache is not a plain per-layer key/value store go through ``model.generate``, one left-padded batch
    per ``max_batch_size`` rows. Prompt-learning PEFT models (prompt, p-, multi-task prompt and prefix tuning) always
    go through ``_BatchDecoder``, whatever ``config.decoder`` says: PEFT's generate mis-decodes them with transformers
    5 (see ``_prompt_kind``).
    """
    config = config or GenerationConfig()
    if not prompts:
        return []
    width = min(max_batch_size or len(prompts), len(prompts))
    prompt_kind = _prompt_kind(model)
    if (prompt_kind or (config.decoder == "auto" and task_ids is None)) and _BatchDecoder.supports(model):
        return _BatchDecoder(model, tokenizer, config, on_text).run(prompts, adapter_names, width, on_done,
                                                                    task_ids if prompt_kind else None)
    results: list[Generated] = []
    for begin in range(0, len(prompts), width):
        rows = range(begin, min(begin + width, len(prompts)))
        forward = (lambda i, text, begin=begin: on_text(begin + i, text)) if on_text else None
        results += generate_hf(model, tokenizer, [prompts[row] for row in rows], config, on_text=forward,
                                adapter_names=None if adapter_names is None else [adapter_names[r] for r in rows],
                                task_ids=None if task_ids is None else [task_ids[r] for r in rows])
        for row in rows if on_done else ():
            on_done(row)
    return results


def _prompt_kind(model: PreTrainedModel) -> str | None:
    """How the active PEFT adapter adds its virtual tokens: "embeds" (prompt, p- and multi-task prompt tuning:
    embeddings before the prompt's), "prefix" (prefix tuning: keys and values in the cache), or None (no prompt
    learning, or a kind the batch decoder does not know).

    PEFT 0.21's generate looks for the cache under ``past_key_values``, which transformers 5 renamed ``cache``, so it
    never sees one: prompt tuning re-inserts the virtual tokens before every generated token (positions and attention
    drift from the second token on) and prefix tuning decodes without its prefix at all. The batch decoder inserts
    them once, at prefill, and gives every position explicitly, counting the virtual tokens.
    """
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False):
        return None
    kind = getattr(config.peft_type, "value", config.peft_type)
    if kind in ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING"):
        return "embeds"
    return "prefix" if kind == "PREFIX_TUNING" and config.num_transformer_submodules == 1 else None


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

    A prompt-learning PEFT model's virtual tokens go in at prefill, after a row's left padding (embeddings before the
    prompt's, or a prefix's keys and values in the cache); the positions, counted from the mask, include them as a
    forward pass over the whole sequence does, and decoding steps run the base model on the cache.
    """

    PREFILL_WASTE = 0.15

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: GenerationConfig,
                 on_text: TextCallback | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.on_text = on_text
        self.pad_id, self.stop_ids = end_ids(model, tokenizer)
        self.hold_back = max((len(stop) for stop in config.stop), default=1) - 1  # chars a stop may still claim
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.prompt_kind = _prompt_kind(model)
        self.virtual = model.active_peft_config.num_virtual_tokens if self.prompt_kind else 0
        self.body = base if self.prompt_kind else model  # what runs the forward passes
        parameters = inspect.signature(base.forward).parameters
        self.keeps_logits = "logits_to_keep" in parameters  # skip the prompt positions' logits
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"  # transformers >= 5.24: cache

    @staticmethod
    def supports(model: PreTrainedModel) -> bool:
        """Plain decoder models, PEFT models that only change weights and the prompt-learning kinds of
        ``_prompt_kind``: a per-layer key/value cache."""
        if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False) and not _prompt_kind(model):
            return False  # another prompt-learning kind: left to the PEFT model's own generate
        from transformers.cache_utils import DynamicCache, DynamicLayer

        try:
            layers = DynamicCache(config=model.config).layers
        except Exception:  # a config the cache cannot read: leave it to generate()
            return False
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def _forward(self, ids: Any, mask: Any, cache: Any, names: list[str] | None, embeds: Any = None) -> Any:
        """Logits of the last position of each row, (rows, vocab) in float32. ``embeds``: the input embeddings,
        given instead of ``ids`` (a prompt-tuning prefill)."""
        inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
        length = ids.shape[1] if embeds is None else embeds.shape[1]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -length:]
        extra: dict[str, Any] = {} if names is None else {"adapter_names": names}
        if self.keeps_logits:
            extra["logits_to_keep"] = 1
        extra[self.cache_argument] = cache
        output = self.body(**inputs, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        return output.logits[:, -1, :].float()

    def _virtual_inputs(self, ids: Any, tasks: list[int] | None) -> tuple[Any, Any]:
        """A prefill's fresh cache and input embeddings (None: use ``ids``), with the adapter's virtual tokens: in the
        cache (prefix tuning) or before the prompt's embeddings (the others, ``tasks`` choosing each row's prompt)."""
        import torch
        from transformers.cache_utils import DynamicCache

        config = self.model.config
        if self.prompt_kind is None:
            return DynamicCache(config=config), None
        rows = ids.shape[0]
        if self.prompt_kind == "prefix":
            prefix = self.model.get_prompt(batch_size=rows)
            return DynamicCache([(layer.keys, layer.values) for layer in prefix.layers], config=config), None
        task_ids = None if tasks is None else torch.tensor(tasks, dtype=torch.long, device=ids.device)
        embeds = self.model.word_embeddings(ids)
        virtual = self.model.get_prompt(batch_size=rows, task_ids=task_ids).to(embeds.dtype)
        return DynamicCache(config=config), torch.cat([virtual, embeds], dim=1)

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

    def _prefill(self, prompt_ids: list[list[int]], names: Sequence[str] | None,
                 tasks: Sequence[int] | None = None) -> tuple[list[int], Any, Any, Any]:
        """Prefill every group; returns the batch order of the rows, their first-token logits, mask and cache.

        A row's cache is [left padding, virtual tokens, prompt]: its positions (the mask's cumulative sum) are then
        those of the row alone; a group's padding goes between its virtual tokens and its prompt, masked out."""
        import torch
        from transformers.cache_utils import DynamicCache

        device = self.model.device
        lengths = [len(ids) for ids in prompt_ids]
        longest = max(lengths) + self.virtual
        order: list[int] = []
        logits, masks, keys, values = [], [], [], []
        for group in self._prefill_groups(lengths):
            width = max(lengths[row] for row in group)
            ids = torch.tensor([[self.pad_id] * (width - lengths[r]) + prompt_ids[r] for r in group], device=device)
            mask = torch.tensor([[1] * self.virtual + [0] * (width - lengths[r]) + [1] * lengths[r] for r in group],
                                device=device)
            cache, embeds = self._virtual_inputs(ids, None if tasks is None else [tasks[r] for r in group])
            logits.append(self._forward(ids, mask, cache, None if names is None else [names[r] for r in group],
                                        embeds))
            pad = longest - mask.shape[1]  # every group's cache is left-padded to the longest prompt
            keys.append([torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)) for layer in cache.layers])
            values.append([torch.nn.functional.pad(layer.values, (0, 0, pad, 0)) for layer in cache.layers])
            masks.append(torch.nn.functional.pad(mask, (pad, 0)))
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
            on_done: Callable[[int], None] | None = None, task_ids: Sequence[int] | None = None) -> list[Generated]:
        import torch

        if self.prompt_kind:
            adapter_names = None  # a prompt-learning model is one adapter; its base model takes no adapter names

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
                        None if adapter_names is None else [adapter_names[row] for row in joining],
                        None if task_ids is None else [task_ids[row] for row in joining])
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
            if self.on_text is not None and self.hold_back:  # what was held back for a stop string
                self.on_text(row, texts[row])
            return True
        answers[row].append(token)
        full = len(answers[row]) >= self.config.max_new_tokens
        if not self.config.stop and self.on_text is None:
            if full:
                texts[row] = self.tokenizer.decode(answers[row], skip_special_tokens=True)
            return full
        text = self.tokenizer.decode(answers[row], skip_special_tokens=True)
        cut = cut_at_stop(text, self.config.stop)
        if cut is not None:
            finish[row], texts[row] = "stop", cut
        else:
            texts[row] = text
        if self.on_text is not None:  # text a stop string could still claim is held back until it cannot
            shown = texts[row] if cut is not None or full else text[:max(0, len(text) - self.hold_back)]
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
