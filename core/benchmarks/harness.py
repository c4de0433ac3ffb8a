"""The model side of an lm-evaluation-harness run: the harness's own HF backend (``HFLM``) over a model this process
loaded, with progress, a stop event and the two things a fine-tuned run needs on top:

- prompt and P-tuning put their virtual tokens before the input, so PEFT's forward returns that many extra logits
  first; they are cut so the harness reads each token's logits where it expects them;
- PEFT's ``generate`` mis-decodes prompt-learning models with transformers 5 (core.inference.decoder), so their
  ``generate_until`` requests always go through the engine's batch decoder.

``backend="engine"`` sends every model's ``generate_until`` requests through the batch decoder (continuous batching;
bench.benchmarks measures both); log-likelihoods always use the harness's own batched forward passes.

``backend="vllm"`` (GPU machines with the vllm package) uses the harness's own vLLM backend instead
(``lm_eval.models.vllm_causallms.VLLM``, ``make_vllm_lm``): vLLM loads the model from its folder (the base model, a
LoRA run as its adapter folder per request on the base, a full fine-tune as its own folder); the models of one
benchmark over the same folder share one engine (``VllmModels``).
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import distributed
from core.errors import TuneArenaError

if TYPE_CHECKING:
    from core.inference.vllm import LoraSpec, VllmServing
    from core.models import LoadedModel

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "engine", "vllm")
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
            return _chunked(kind, requests, call, progress, stop)

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

    lm = TrackedLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                   device=str(loaded.device))
    world = distributed.current()
    if world.distributed:  # the harness's own data parallelism: each rank its share of the requests, rank 0 scores
        from accelerate import Accelerator

        lm._rank, lm._world_size = world.rank, world.size
        lm.accelerator = Accelerator(cpu=not str(loaded.device).startswith("cuda"))
    return lm


def _chunked(kind: str, requests: list, call: Callable[[list], list], progress: Progress | None,
             stop: threading.Event | None) -> list:
    """``call`` over ``requests`` CHUNK at a time, with progress after each chunk and the stop event checked before."""
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


def _context_length(folder: str, cap: int = 8192) -> int:
    """The model folder's context length (config.json's max_position_embeddings), at most ``cap``: vLLM reserves
    KV cache for one sequence of this length."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return cap
    return min(int(config.get("max_position_embeddings") or cap), cap)


def make_vllm_lm(pretrained: str, *, lora: LoraSpec | None = None, enable_lora: bool = False,
                 max_lora_rank: int = 16, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.8, progress: Progress | None = None,
                 stop: threading.Event | None = None) -> Any:
    """The harness's own vLLM LM over the model folder ``pretrained`` (vLLM batches and schedules the requests
    itself), with progress and the stop event between chunks of requests. ``lora``: the adapter its requests go
    through (the harness's ``lora_local_path``; None: the model itself). The returned LM's ``lora_request``,
    ``progress`` and ``stop`` may be changed afterwards to serve another adapter on the same engine
    (``enable_lora``: the engine takes adapters even when the first model is the base)."""
    from core.inference.generation import vllm_unavailable

    refusal = vllm_unavailable("backend: vllm")
    if refusal:
        raise TuneArenaError(refusal)
    from lm_eval.models.vllm_causallms import VLLM
    from vllm.lora.request import LoRARequest

    class TrackedVLLM(VLLM):
        """VLLM with progress and stop between chunks of requests."""

        tracked_progress: Progress | None = None
        tracked_stop: threading.Event | None = None

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return _chunked("loglikelihood", requests, lambda part: super(TrackedVLLM, self).loglikelihood(
                part, disable_tqdm=True), self.tracked_progress, self.tracked_stop)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return _chunked("loglikelihood_rolling", requests, lambda part: super(
                TrackedVLLM, self).loglikelihood_rolling(part, disable_tqdm=True), self.tracked_progress,
                self.tracked_stop)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return _chunked("generate_until", requests, lambda part: super(TrackedVLLM, self).generate_until(
                part, disable_tqdm=True), self.tracked_progress, self.tracked_stop)

    lm = TrackedVLLM(pretrained=pretrained, dtype=dtype, batch_size="auto", seed=seed,
                     lora_local_path=lora.path if lora is not None else None, max_lora_rank=max_lora_rank,
                     enable_lora=bool(enable_lora or lora is not None), max_loras=1,
                     gpu_memory_utilization=gpu_memory_utilization, max_model_len=_context_length(pretrained))
    lm.lora_request = None if lora is None else LoRARequest(lora.name, lora.lora_id, lora.path)
    lm.tracked_progress, lm.tracked_stop = progress, stop
    return lm


class VllmModels:
    """The vLLM engines of one benchmark, one at a time: models over the same folder (the base and its LoRA runs)
    share one engine, switching only the adapter; a model over another folder (a full fine-tune, a merged
    layer-wise run) gets an engine of its own after the previous one is shut down. ``close`` when done."""

    def __init__(self, base_folder: str, servings: Sequence[VllmServing | None], *, dtype: str = "auto",
                 seed: int = 0) -> None:
        from core.inference.vllm import rank_budget

        self.base_folder = base_folder
        ranks = [serving.rank for serving in servings if serving is not None and serving.kind == "lora"]
        self.enable_lora = bool(ranks)
        self.max_lora_rank = rank_budget(ranks, floor=16)
        self.dtype, self.seed = dtype, seed
        self.lm: Any = None
        self.folder: str | None = None
        self._merged: tempfile.TemporaryDirectory | None = None
        self._ids = 0

    def _folder(self, serving: VllmServing | None) -> str:
        """The model folder vLLM loads for ``serving`` (a layer-wise run: merged into a temporary folder first)."""
        if serving is None or serving.kind == "lora":
            return self.base_folder
        if serving.kind == "model":
            return serving.folder
        from core.inference import merge_and_export

        self._drop_merged()
        self._merged = tempfile.TemporaryDirectory(prefix="tune-arena-vllm-merged-")
        return str(merge_and_export(serving.folder, Path(self._merged.name) / "model"))

    def model(self, label: str, serving: VllmServing | None, *, progress: Progress | None = None,
              stop: threading.Event | None = None) -> Any:
        """The LM for the model ``label`` served as ``serving`` (None: the base model)."""
        from core.inference.vllm import LoraSpec

        lora = None
        if serving is not None and serving.kind == "lora":
            self._ids += 1
            lora = LoraSpec(label, self._ids, serving.folder)
        same = self.lm is not None and (serving is None or serving.kind == "lora") and self.folder == self.base_folder
        if not same:
            self._shutdown()
            folder = self._folder(serving)
            self.lm = make_vllm_lm(folder, lora=lora, enable_lora=self.enable_lora and folder == self.base_folder,
                                   max_lora_rank=self.max_lora_rank, dtype=self.dtype, seed=self.seed,
                                   progress=progress, stop=stop)
            self.folder = folder
            return self.lm
        from vllm.lora.request import LoRARequest

        self.lm.lora_request = None if lora is None else LoRARequest(lora.name, lora.lora_id, lora.path)
        self.lm.tracked_progress, self.lm.tracked_stop = progress, stop
        return self.lm

    def _shutdown(self) -> None:
        if self.lm is None:
            return
        engine = getattr(getattr(self.lm, "model", None), "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):  # vLLM V1: the engine core process ends, its GPU freed
            try:
                core.shutdown()
            except Exception as err:  # a failed shutdown must not hide the benchmark's results
                logger.warning("vLLM engine shutdown: %s", err)
        self.lm, self.folder = None, None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _drop_merged(self) -> None:
        if self._merged is not None:
            self._merged.cleanup()
            self._merged = None

    def close(self) -> None:
        """Shut the engine down and remove a merged model folder."""
        self._shutdown()
        self._drop_merged()


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
