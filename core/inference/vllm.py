"""vLLM as an optional engine on GPU machines: which runs it can serve and how (``vllm_serving``), and
``VllmGenerator``, one ``vllm.LLM`` over the base model folder that generates a batch of rendered prompts with each
row's LoRA adapter given per request (``LoRARequest``).

vllm is a CUDA build of several GB and no dependency of the project: it is imported only when a generator is made,
and every setting that asks for it is refused with one line where it is missing (``vllm_unavailable``). The logic
that does not need vllm is plain functions over plain values, tested without it: the sampling settings a
GenerationConfig maps to (``sampling_values``), which rows vLLM serves (``vllm_rows``), each row's adapter
(``lora_specs``), a finished row as a ``Generated`` (``to_generated``).

What vLLM serves: the base model, and LoRA-family adapters (LoRA, QLoRA over the unquantized base, rsLoRA) as
LoRA requests on it; a full fine-tune as its own model folder, a layer-wise (freeze) run once merged into one. It
does not serve prompt learning (virtual tokens before the input), IA3 scales, AdaLoRA, DoRA's magnitude vectors,
LoRA runs with fully trained blocks (``unfreeze_top``), or classification heads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.inference.generation import Generated, GenerationConfig, vllm_unavailable
from core.methods import FULL_FORMAT, METHODS, PARTIAL_FORMAT
from core.runs import Run

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
DEFAULT_LORA_RANK = 64  # the generator's rank budget unless an adapter needs more when it is made
DEFAULT_MAX_LORAS = 4  # distinct adapters in one vLLM step (more wait for a slot)
GPU_MEMORY_SHARE = 0.5  # of the GPU for vLLM's weights and KV cache: the transformers base model shares the GPU

__all__ = ["DEFAULT_LORA_RANK", "LORA_RANKS", "LoraSpec", "VllmGenerator", "VllmServing", "adapter_rank",
           "lora_specs", "rank_budget", "sampling_values", "to_generated", "vllm_rows", "vllm_serving",
           "vllm_unavailable"]


@dataclass(frozen=True)
class LoraSpec:
    """One row's adapter for vLLM: ``LoRARequest(name, lora_id, path)``."""

    name: str
    lora_id: int  # >= 1, the same for the same adapter for the life of a generator
    path: str  # the PEFT adapter folder (adapter_config.json + adapter_model.safetensors)


@dataclass(frozen=True)
class VllmServing:
    """How vLLM serves a run: ``lora`` (the base model with the run's adapter folder ``folder`` per request, of rank
    ``rank``), ``model`` (``folder`` is a whole model folder: a full fine-tune's) or ``merge`` (a layer-wise run:
    ``folder`` is the run, merged into a model folder before vLLM loads it)."""

    kind: str
    folder: str
    rank: int = 0


# --------------------------------------------------------------------------------------------------------------------
# Which runs vLLM serves
# --------------------------------------------------------------------------------------------------------------------


def _not_lora_reason(method: str, settings: Mapping[str, Any]) -> str | None:
    """Why a run of ``method`` with its saved ``settings`` is no LoRA adapter vLLM loads (None when it is one)."""
    entry = METHODS.get(method)
    if entry is None:
        return f"its method {method!r} is unknown"
    if entry.prompt_learning:
        return (f"{entry.title} puts learned virtual tokens or prefixes before the input, which vLLM's adapter "
                "serving cannot add")
    if entry.peft_type != "LORA":
        return f"vLLM serves LoRA adapters, and {entry.title} ({entry.peft_type}) is not one"
    if not entry.mixes_in_batch(dict(settings)):  # the registry's fact: a plain LoRA, what an adapter slot holds
        if settings.get("use_dora"):  # the wording only: which of the registry's exceptions this run is
            return "vLLM does not serve DoRA (its magnitude vectors)"
        if settings.get("unfreeze_top"):
            return "its fully trained top blocks (unfreeze_top) are not part of a LoRA adapter vLLM loads"
        return f"its {entry.title} settings make it no plain LoRA adapter, which is what vLLM loads"
    return None


def adapter_rank(folder: str | Path) -> int:
    """The largest LoRA rank of a PEFT adapter folder (``r`` and any ``rank_pattern`` entry of its config)."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(config.get("r") or 0), *(int(value) for value in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def rank_budget(ranks: Sequence[int], floor: int = DEFAULT_LORA_RANK) -> int:
    """The ``max_lora_rank`` for a vLLM engine serving adapters of ``ranks``: the smallest value vLLM accepts that
    holds all of them and ``floor`` (adapters added later fit too); ConfigError above vLLM's largest."""
    needed = max([floor, *ranks])
    for rank in LORA_RANKS:
        if rank >= needed:
            return rank
    raise ConfigError(f"adapter: LoRA rank {needed} is over the {LORA_RANKS[-1]} vLLM serves")


def vllm_serving(run_dir: str | Path) -> VllmServing:
    """How vLLM serves the run at ``run_dir``; ConfigError, one line naming the run and why, when it cannot. Reads
    the run's config (and adapter config) only: nothing loads."""
    run = Run(Path(run_dir))
    config = run.config
    method = str(config.get("method") or "")

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"adapter: {run.run_id} cannot be served by vLLM: {why}; use the hf or engine path")

    if config.get("objective") == "classification":
        raise refuse("it is a classification head (a label per text), not a generating model")
    weights = run.weights_dir
    if weights is None:
        raise refuse(f"it saved no weights (status {run.state})")
    entry = METHODS.get(method)
    if entry is not None and entry.save_format == FULL_FORMAT:
        return VllmServing("model", str(weights))
    if entry is not None and entry.save_format == PARTIAL_FORMAT:
        return VllmServing("merge", str(run.path))
    reason = _not_lora_reason(method, config.get("method_config") or {})
    if reason:
        raise refuse(reason)
    return VllmServing("lora", str(weights), adapter_rank(weights))


# --------------------------------------------------------------------------------------------------------------------
# Pure pieces of a vLLM generate call
# --------------------------------------------------------------------------------------------------------------------


def sampling_values(config: GenerationConfig, stop_ids: Sequence[int] | set[int] = ()) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for ``config``: greedy (temperature 0) unless it samples, then with
    its top_p and seed (each row seeded alike, so a prompt's answer does not depend on its batch); stop strings
    (cut from the text, as the batch decoder does) and the end-of-sequence ids ``stop_ids``."""
    sample = config.temperature > 0
    values: dict[str, Any] = {"n": 1, "max_tokens": config.max_new_tokens,
                              "temperature": float(config.temperature) if sample else 0.0,
                              "top_p": float(config.top_p) if sample else 1.0,
                              "repetition_penalty": float(config.repetition_penalty),
                              "stop": list(config.stop), "stop_token_ids": sorted(stop_ids),
                              "skip_special_tokens": True}
    if sample:
        values["seed"] = int(config.seed)
    return values


def vllm_rows(adapters: Sequence[str | None], servable: Mapping[str, bool]) -> tuple[list[int], list[int]]:
    """Rows vLLM generates (base rows, and rows of adapters ``servable`` says it serves) and the others (which go
    through the engine's decoder), as two lists of row indices in order."""
    ours, others = [], []
    for row, key in enumerate(adapters):
        (ours if key is None or servable.get(key, False) else others).append(row)
    return ours, others


def lora_specs(adapters: Sequence[str | None], folders: Mapping[str, str],
               ids: dict[str, int]) -> list[LoraSpec | None]:
    """Each row's LoRA request (None for a base row); ``ids`` (adapter key -> id) is extended with a new id for an
    adapter seen for the first time, so an adapter keeps its id for the life of the generator."""
    specs: list[LoraSpec | None] = []
    for key in adapters:
        if key is None:
            specs.append(None)
            continue
        if key not in ids:
            ids[key] = max(ids.values(), default=0) + 1
        specs.append(LoraSpec(key, ids[key], folders[key]))
    return specs


def finish_of(finish_reason: str | None, stop_reason: Any) -> str:
    """vLLM's ``finish_reason``/``stop_reason`` as Generated.finish: length, stop (a stop string) or eos."""
    if finish_reason == "length":
        return "length"
    return "stop" if isinstance(stop_reason, str) else "eos"


def to_generated(text: str, token_ids: Sequence[int], prompt_tokens: int, finish_reason: str | None,
                 stop_reason: Any, stop_ids: set[int] | Sequence[int], *, batch_s: float, batch_size: int,
                 started_at: float) -> Generated:
    """One vLLM completion as a Generated row: the end-of-sequence token is not counted in ``new_tokens`` (as the
    engine's decoders count); per-row timing is the batch's (vLLM finishes a batch as one call)."""
    finish = finish_of(finish_reason, stop_reason)
    ids = list(token_ids)
    if finish == "eos" and ids and ids[-1] in set(stop_ids):
        ids = ids[:-1]
    return Generated(text.strip(), len(ids), int(prompt_tokens), batch_s, batch_s, batch_size, finish, started_at)


# --------------------------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------------------------


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    return name if name in ("bfloat16", "float16", "float32") else "auto"


class VllmGenerator:
    """One ``vllm.LLM`` over a base model folder with LoRA enabled: generates rendered prompts, each row with its
    own adapter (or none). Prompts are tokenized with ``tokenizer`` (no special tokens added, as everywhere in the
    engine) and handed to vLLM as token ids, so vLLM reads exactly what the other decoders read.

    ConfigError (one line) when vllm or a CUDA GPU is missing.
    """

    def __init__(self, model_dir: str, tokenizer: PreTrainedTokenizerBase, *, dtype: Any = "auto",
                 max_lora_rank: int = DEFAULT_LORA_RANK, max_loras: int = DEFAULT_MAX_LORAS,
                 gpu_memory_utilization: float = GPU_MEMORY_SHARE, max_model_len: int | None = None,
                 seed: int = 0) -> None:
        refusal = vllm_unavailable("decoder: vllm")
        if refusal:
            raise ConfigError(refusal)
        from vllm import LLM

        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.max_lora_rank = rank_budget([max_lora_rank], floor=max_lora_rank)
        self.lora_ids: dict[str, int] = {}
        began = time.perf_counter()
        self.llm = LLM(model=model_dir, tokenizer=model_dir, dtype=_dtype_name(dtype), enable_lora=True,
                       max_lora_rank=self.max_lora_rank, max_loras=max_loras,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed)
        self.load_s = time.perf_counter() - began
        logger.info("vLLM engine over %s ready in %.1f s (max LoRA rank %d)", model_dir, self.load_s,
                    self.max_lora_rank)

    def generate(self, prompts: Sequence[str], loras: Sequence[LoraSpec | None], config: GenerationConfig,
                 stop_ids: set[int]) -> list[Generated]:
        """One ``LLM.generate`` over ``prompts`` (vLLM batches and schedules them itself), in input order."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if not prompts:
            return []
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        params = SamplingParams(**sampling_values(config, stop_ids))
        requests = [None if spec is None else LoRARequest(spec.name, spec.lora_id, spec.path) for spec in loras]
        started = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": list(row)} for row in ids], params, use_tqdm=False,
                                    lora_request=requests if any(requests) else None)
        batch_s = time.perf_counter() - started
        results = []
        for row, output in zip(ids, outputs, strict=True):
            best = output.outputs[0]
            results.append(to_generated(best.text, best.token_ids, len(row), best.finish_reason,
                                        getattr(best, "stop_reason", None), stop_ids, batch_s=batch_s,
                                        batch_size=len(prompts), started_at=started))
        return results
