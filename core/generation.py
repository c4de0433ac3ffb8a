"""Text generation over a loaded base model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.data import render_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Decoding settings. Greedy unless ``temperature`` > 0."""

    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens to generate (1-2048)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples"})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (0-1], used when sampling"})
    repetition_penalty: float = field(default=1.0, metadata={"help": ">= 1.0; 1.0 = off"})

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 2048:
            raise ValueError(f"max_new_tokens: must be between 1 and 2048, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty < 1:
            raise ValueError(f"repetition_penalty: must be >= 1.0, got {self.repetition_penalty}")

    def generate_kwargs(self) -> dict:
        kwargs: dict = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass(frozen=True)
class Reply:
    text: str
    prompt: str
    new_tokens: int
    latency_s: float


def generate_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    config: GenerationConfig | None = None,
) -> Reply:
    """One chat reply for ``messages`` (the model's chat template), decoded without special tokens."""
    import torch

    config = config or GenerationConfig()
    prompt = render_prompt(tokenizer, messages)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, **config.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    new = output[0, inputs["input_ids"].shape[1] :]  # (new_tokens,)
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Reply(text, prompt, int(new.shape[0]), time.perf_counter() - start)
