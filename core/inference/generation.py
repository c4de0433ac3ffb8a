"""Generation settings and results, and the plain ``model.generate`` path (one left-padded batch) that prompt-learning
adapters and models with non-standard caches use; core.inference.decoder is the fast path for the rest."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import distributed
from core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TextCallback = Callable[[int, str], None]  # (row index in the call, answer text so far)
DECODERS = ("auto", "hf", "vllm")
VLLM_INSTALL = "pip install vllm"


def vllm_unavailable(what: str) -> str | None:
    """Why ``what`` (a setting that asks for vLLM) cannot run here, in one line, or None when it can: vLLM needs its
    package (a CUDA build, not a project dependency) and a CUDA GPU, and runs in one process (it batches and
    schedules on its GPU itself; not inside a data-parallel job). Imports neither vllm nor, without it, torch."""
    if importlib.util.find_spec("vllm") is None:
        return f"{what} needs the vllm package on a CUDA machine: {VLLM_INSTALL}"
    import torch

    if not torch.cuda.is_available():
        return f"{what} needs a CUDA GPU, and torch sees none on this machine"
    world = distributed.current()
    if world.distributed:
        return (f"{what} runs in one process (vLLM batches and schedules on its GPU itself), not in each of a "
                f"data-parallel job's {world.size} processes; drop --num-processes")
    return None


@dataclass
class GenerationConfig:
    """Decoding settings. Greedy unless ``temperature`` > 0."""

    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens to generate (1-2048)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples"})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (0-1], used when sampling"})
    repetition_penalty: float = field(default=1.0, metadata={"help": ">= 1.0; 1.0 = off"})
    stop: list[str] = field(default_factory=list, metadata={"help": "Strings that end an answer (not included)"})
    seed: int = field(default=0, metadata={"help": "Sampling seed (used when temperature > 0)"})
    decoder: str = field(default="auto", metadata={
        "help": "auto: the batch decoder where the model allows it (continuous batching), else model.generate; "
                "hf: one left-padded model.generate per batch (the reference path), except for prompt-learning "
                "adapters, which always use the batch decoder; vllm: the base model and LoRA/QLoRA runs through "
                "vLLM (one engine, each run's adapter per request; needs the vllm package and a CUDA GPU), the "
                "other runs through the batch decoder"})

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ConfigError(f"max_new_tokens: must be an integer, got {self.max_new_tokens!r}")
        if not 1 <= self.max_new_tokens <= 2048:
            raise ConfigError(f"max_new_tokens: must be between 1 and 2048, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty < 1:
            raise ConfigError(f"repetition_penalty: must be >= 1.0, got {self.repetition_penalty}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder: must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.decoder == "vllm":
            refusal = vllm_unavailable("decoder: vllm")
            if refusal:
                raise ConfigError(refusal)
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


class StepClock:
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


def end_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, set[int]]:
    """The pad id, and every id that ends a row (the model's end-of-sequence ids, the tokenizer's, the pad id)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    eos_ids.add(tokenizer.eos_token_id)
    return pad_id, {token for token in eos_ids | {pad_id} if token is not None}


def cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """``text`` up to the first of ``stops`` it contains, or None when it contains none."""
    cuts = [text.find(stop) for stop in stops]
    cuts = [cut for cut in cuts if cut >= 0]
    return text[:min(cuts)] if cuts else None


def generate_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    adapter_names: Sequence[str] | None = None,
    on_text: TextCallback | None = None,
    task_ids: Sequence[int] | None = None,
) -> list[Generated]:
    """One left-padded ``model.generate``: the batch runs until its last row ends. ``task_ids``: each row's task
    (multi-task prompt tuning), handed to PEFT's generate as a (rows,) tensor.

    generate_batch sends prompt, p-, multi-task prompt and prefix tuning models to its own decoder instead: with
    transformers 5, PEFT's generate re-inserts their virtual tokens at every step (or drops a prefix)."""
    import torch

    pad_id, stop_ids = end_ids(model, tokenizer)
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(model.device)
    prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()  # (rows,)
    clock = StepClock(tokenizer, len(prompts), stop_ids, on_text)
    extra: dict[str, Any] = {}
    if adapter_names is not None:
        extra["adapter_names"] = list(adapter_names)
    if task_ids is not None:
        extra["task_ids"] = torch.tensor(list(task_ids), dtype=torch.long, device=model.device)
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
        cut = cut_at_stop(text, config.stop)
        if cut is not None:
            text, finish = cut, "stop"
        produced = min(len(ids), n + (1 if finish == "eos" else 0))  # the end token counts as generated
        last = clock.step_times[produced - 1] if produced and clock.step_times else batch_s
        results.append(Generated(text.strip(), n, int(prompt_tokens[row]), last, batch_s, len(prompts), finish,
                                 clock.start))
    return results
