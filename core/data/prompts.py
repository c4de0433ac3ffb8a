"""Chat formatting: an Example as chat messages, as the prompt a model completes, and as token ids with the prompt
masked for training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.data.examples import Example
from core.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FALLBACK_TEMPLATE = "### Instruction:\n{user}\n\n### Response:\n"
"""Prompt format for tokenizers that have no chat template (base models)."""


def build_messages(example: Example, system: str | None = None, *, with_answer: bool = False) -> list[dict[str, str]]:
    """Chat messages for an example: system (the row's own, else ``system``), history, user turn, optional answer."""
    messages: list[dict[str, str]] = []
    system = example.system or system
    if system:
        messages.append({"role": "system", "content": system})
    for user, assistant in example.history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": example.user_text})
    if with_answer:
        if example.output is None:
            raise DataError(example.uid.split(":")[0], "example has no answer to format")
        messages.append({"role": "assistant", "content": example.output})
    return messages


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt string that asks the model for the next assistant turn, via its chat template.

    Tokenizers without a chat template get a plain ``### Instruction / ### Response`` layout.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [m["content"] for m in messages if m["role"] == "system"]
    for message in messages:
        if message["role"] == "user":
            parts.append(FALLBACK_TEMPLATE.format(user=message["content"]))
        elif message["role"] == "assistant":
            parts.append(message["content"] + (tokenizer.eos_token or ""))
    return "\n\n".join(parts)


def format_prompt(tokenizer: PreTrainedTokenizerBase, example: Example, system: str | None = None) -> str:
    """The generation prompt for an example (no answer), in the model's chat format."""
    return render_prompt(tokenizer, build_messages(example, system))


@dataclass(frozen=True)
class EncodedExample:
    """Token ids for training. ``labels`` is -100 on prompt tokens, so the loss covers answer tokens only."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    task_id: int | None = None  # the row's task id for methods that route rows by task (multi-task prompt tuning)

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


def encode_for_training(
    tokenizer: PreTrainedTokenizerBase, example: Example, system: str | None = None, max_length: int = 1024,
    max_prompt_length: int = 0,
) -> EncodedExample:
    """Tokenize prompt + answer with the chat template; mask the prompt. Shapes: two lists of equal length.

    The answer ends with the template's end-of-turn token (so the model learns to stop). With ``max_prompt_length``
    the prompt is first cut from the left to that many tokens (0: no limit of its own). When the pair is then longer
    than ``max_length`` the prompt is cut from the left first, then the answer from the right.
    """
    prompt = format_prompt(tokenizer, example, system)
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(build_messages(example, system, with_answer=True), tokenize=False)
        if not full.startswith(prompt):  # a template that rewrites earlier turns: fall back to concatenation
            full = prompt + (example.output or "") + (tokenizer.eos_token or "")
        answer_text = full[len(prompt) :]
    else:
        answer_text = (example.output or "") + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    cut_prompt = 0 < max_prompt_length < len(prompt_ids)
    if cut_prompt:
        prompt_ids = prompt_ids[-max_prompt_length:]
    truncated = cut_prompt or len(prompt_ids) + len(answer_ids) > max_length
    if len(prompt_ids) + len(answer_ids) > max_length:
        answer_ids = answer_ids[: max(1, max_length // 2)] if len(answer_ids) > max_length // 2 else answer_ids
        keep = max_length - len(answer_ids)
        prompt_ids = prompt_ids[-keep:] if keep > 0 else []
    return EncodedExample(prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids, truncated)


