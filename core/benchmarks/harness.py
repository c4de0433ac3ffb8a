"""The model side of an lm-evaluation-harness run: the harness's own HF backend (``HFLM``) over a model this process
loaded, with progress, a stop event and the two things a fine-tuned run needs on top:

- prompt and P-tuning put their virtual tokens before the input, so PEFT's forward returns that many extra logits
  first; they are cut so the harness reads each token's logits where it expects them;
- PEFT's ``generate`` mis-decodes prompt-learning models with transformers 5 (core.inference.decoder), so their
  ``generate_until`` requests always go through the engine's batch decoder.

``backend="engine"`` sends every model's ``generate_until`` requests through the batch decoder (continuous batching;
bench.benchmarks measures both); log-likelihoods always use the harness's own batched forward passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.errors import TuneArenaError

if TYPE_CHECKING:
    from core.models import LoadedModel

BACKENDS = ("hf", "engine")
CHUNK = 256  # requests per call into the harness between two progress reports and stop checks

Progress = Callable[[str, int, int], None]  # (request type, done, total)


class BenchmarkStopped(TuneArenaError):
    """A benchmark stopped by its stop event; nothing of the unfinished model is saved."""


def _virtual_tokens(model: Any) -> int:
    """Virtual tokens a prompt-learning PEFT model puts before the input embeddings (0 for every other model)."""
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False):
        return 0
    kind = getattr(config.peft_type, "value", config.peft_type)
    return int(config.num_virtual_tokens) if kind in ("PROMPT_TUNING", "P_TUNING") else 0


def make_lm(loaded: LoadedModel, *, backend: str = "hf", batch_size: int = 16, progress: Progress | None = None,
            stop: threading.Event | None = None) -> Any:
    """An lm_eval ``LM`` over ``loaded`` (its model object, tokenizer, device), batch ``batch_size``."""
    from lm_eval.models.huggingface import HFLM

    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")

    class TrackedLM(HFLM):
        """HFLM with progress and stop between chunks of requests, virtual-token logits cut, and the batch decoder
        for generation where it must (prompt learning) or was asked to (backend "engine")."""

        def _run(self, kind: str, requests: list, call: Callable[[list], list]) -> list:
            done: list = []
            if progress is not None:
                progress(kind, 0, len(requests))
            for start in range(0, len(requests), CHUNK):
                if stop is not None and stop.is_set():
                    raise BenchmarkStopped("benchmark: stopped")
                done += call(requests[start : start + CHUNK])
                if progress is not None:
                    progress(kind, len(done), len(requests))
            return done

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._run("loglikelihood", requests, lambda part: super(TrackedLM, self).loglikelihood(
                part, disable_tqdm=True))

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._run("loglikelihood_rolling", requests, lambda part: super(
                TrackedLM, self).loglikelihood_rolling(part, disable_tqdm=True))

        def generate_until(self, requests, disable_tqdm: bool = False):
            if backend == "engine" or _virtual_tokens(self.model) or _is_prompt_learning(self.model):
                return self._run("generate_until", requests, self._decode)
            return self._run("generate_until", requests, lambda part: super(TrackedLM, self).generate_until(
                part, disable_tqdm=True))

        def _model_call(self, inps, attn_mask=None, labels=None):
            logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            virtual = _virtual_tokens(self.model)
            return logits[:, virtual:] if virtual else logits  # (batch, sequence, vocab)

        def _decode(self, requests: list) -> list[str]:
            return decode_requests(self.model, self.tokenizer, [request.args for request in requests],
                                   eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False),
                                   batch_size=int(self.batch_size), default_max=self.max_gen_toks)

    return TrackedLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                     device=str(loaded.device))


def _is_prompt_learning(model: Any) -> bool:
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def decode_requests(model: Any, tokenizer: Any, requests: list[tuple[str, dict]], *, eos: str, batch_size: int,
                    default_max: int) -> list[str]:
    """``generate_until`` answers through the engine's batch decoder: requests grouped by their generation
    arguments (``until``, ``max_gen_toks``, ``do_sample``, ``temperature``, ``top_p``), answers in request order,
    each cut at its first stop string as the harness does and stripped of surrounding whitespace (the harness's HF
    backend keeps a leading space; the bundled tasks' metrics ignore it)."""
    from core.inference import GenerationConfig
    from core.inference.decoder import generate_batch

    groups: dict[str, list[int]] = {}
    for position, (_, kwargs) in enumerate(requests):
        groups.setdefault(repr(sorted((kwargs or {}).items())), []).append(position)
    answers: list[str] = [""] * len(requests)
    for positions in groups.values():
        kwargs = dict(requests[positions[0]][1] or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if eos and eos not in until:
            until.append(eos)
        sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 1.0) > 0
        config = GenerationConfig(max_new_tokens=int(kwargs.get("max_gen_toks") or default_max),
                                  temperature=float(kwargs.get("temperature") or 1.0) if sample else 0.0,
                                  top_p=float(kwargs.get("top_p") or 1.0) if sample else 1.0,
                                  stop=[text for text in until if text])
        generated = generate_batch(model, tokenizer, [requests[p][0] for p in positions], config,
                                   max_batch_size=batch_size)
        for position, result in zip(positions, generated, strict=True):
            answers[position] = result.text
    return answers


def choices_fit(task: Any, labels: Sequence[str], sample: int = 50) -> str | None:
    """Why a classification head with ``labels`` cannot take harness ``task`` (None when it can): the task must be
    multiple choice over options that are all among the labels (case and surrounding spaces ignored)."""
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice":
        return f"{getattr(task, 'OUTPUT_TYPE', 'this')} task: a classification head only picks among its labels"
    known = {label.strip().lower() for label in labels}
    for doc in list(task.eval_docs)[:sample]:
        options = task.doc_to_choice(doc)
        outside = [str(option) for option in options if str(option).strip().lower() not in known]
        if outside:
            return f"its options ({', '.join(outside[:3])}) are not the head's labels"
    return None


def make_classifier_lm(classifier: Any, *, progress: Progress | None = None,
                       stop: threading.Event | None = None) -> Any:
    """An lm_eval ``LM`` over a classification run (core.inference.Classifier) for multiple-choice tasks whose options
    are its labels: the log-likelihood of an option is the head's log-probability of that label for the prompt (the
    context, read as the head reads a text), greedy when it is the head's top label."""
    import torch
    from lm_eval.api.model import LM

    index = {label.strip().lower(): number for number, label in enumerate(classifier.labels)}

    class ClassifierLM(LM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            contexts = list(dict.fromkeys(request.args[0] for request in requests))
            scores: dict[str, Any] = {}
            if progress is not None:
                progress("loglikelihood", 0, len(requests))
            for start in range(0, len(contexts), CHUNK // 8):
                if stop is not None and stop.is_set():
                    raise BenchmarkStopped("benchmark: stopped")
                part = contexts[start : start + CHUNK // 8]
                for begin in range(0, len(part), 16):
                    batch = part[begin : begin + 16]
                    for context, row in zip(batch, torch.log_softmax(classifier.logits(batch), -1).cpu(),
                                            strict=True):
                        scores[context] = row  # (num_labels,)
                if progress is not None:
                    progress("loglikelihood", min(len(requests), round(len(requests) * len(scores) / len(contexts))),
                             len(requests))
            out = []
            for request in requests:
                context, continuation = request.args
                row = scores[context]
                label = index.get(continuation.strip().lower())
                if label is None:
                    raise TuneArenaError(f"benchmark: {continuation.strip()!r} is not a label of "
                                         f"{classifier.run_dir.name}")
                out.append((float(row[label]), bool(int(row.argmax()) == label)))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise TuneArenaError("benchmark: a classification head has no likelihood of free text")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise TuneArenaError("benchmark: a classification head does not write text")

    return ClassifierLM()
