"""The adapter host: the inference owner of one loaded base model and the fine-tuned runs applied to it.

LoRA/QLoRA adapters are loaded into one PeftModel under their run id and share a batch with base rows through PEFT's
``adapter_names`` ("__base__" for rows without an adapter); whether a run mixes is its method's fact
(``Method.mixes_in_batch``). Other adapters (prompt learning, IA3, AdaLoRA, DoRA) and fully or layer-wise fine-tuned
runs get a model of their own and a batch of their own.

With ``GenerationConfig.decoder == "vllm"`` base rows and rows of LoRA-family runs go to one vLLM engine over the
base model folder, each row with its run's adapter per request (core.inference.vllm); rows of any other run go
through the batch decoder as above.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import render_prompt
from core.errors import AdapterError
from core.inference.decoder import generate_batch
from core.inference.generation import Generated, GenerationConfig, TextCallback, end_ids
from core.inference.loading import load_trained_model
from core.inference.vllm import VllmGenerator, adapter_rank, lora_specs, rank_budget, vllm_rows
from core.methods import METHODS, generation_task_ids, run_tasks
from core.methods.artifacts import check_run_weights
from core.models import loadable_location, resolve_base_model
from core.runs import Run

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from core.models import LoadedModel

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's adapter name for rows that use no adapter


@dataclass(frozen=True)
class AdapterInfo:
    key: str  # the run id: the PEFT adapter name, and the name shown in results
    run_dir: str
    method: str
    mixable: bool
    tasks: tuple[str, ...] = ()  # multi-task prompt tuning: the run's task names in task-id order


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
        self._vllm: VllmGenerator | None = None  # made on the first generate with decoder "vllm"
        self._vllm_adapters: dict[str, tuple[str, int]] = {}  # key -> (adapter folder, LoRA rank), read once

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.base.tokenizer

    def add(self, run_dir: str | Path) -> AdapterInfo:
        """Make a completed (or stopped) run usable; loads its weights on first use. Returns its key."""
        run = Run(Path(run_dir))
        if not (run.path / "config.json").is_file():
            raise AdapterError(f"adapter: {run.path} is not a training run folder (no config.json)")
        key = run.run_id
        existing = self.adapters.get(key)
        if existing is not None and existing.run_dir == str(run.path):
            return existing
        if existing is not None:  # another folder with the same name: keep both apart
            key = f"{run.run_id}-{hashlib.sha256(str(run.path.resolve()).encode()).hexdigest()[:6]}"
            if key in self.adapters:
                return self.adapters[key]
        config = run.config
        self._check_base(run.run_id, config.get("base_model"))
        if run.weights_dir is None:
            raise AdapterError(f"adapter: run {run.run_id} has no saved weights (state {run.state})")
        check_run_weights(run.path)  # whole safetensors and valid JSON before PEFT reads them; one-line errors
        method = config.get("method", "")
        settings = config.get("method_config") or {}
        mixable = method in METHODS and METHODS[method].mixes_in_batch(settings)
        info = AdapterInfo(key, str(run.path), method, mixable, run_tasks(method, settings))
        with self.lock:
            if mixable:
                self._load_mixed(info, run.weights_dir)
            self.adapters[info.key] = info
        logger.info("adapter %s (%s) ready%s", info.key, method, " for mixed batches" if mixable else "")
        return info

    def _check_base(self, run_id: str, trained_on: str | None) -> None:
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
            self._vllm_adapters.pop(key, None)
            if self._vllm is not None:  # a run added again under this key gets a new id: vLLM reloads it
                self._vllm.lora_ids.pop(key, None)

    def _separate_model(self, key: str) -> LoadedModel:
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
        tasks: Sequence[str | None] | None = None,
    ) -> list[Generated]:
        """Generate for each prompt with its adapter key (None = base model), at most ``max_batch_size`` at a time.

        Rows of the base model and of mixable adapters share batches; every other adapter gets its own (for
        prompt-learning methods, one per prompt length).
        ``on_text(row, text)`` streams answers (row = index in ``prompts``); ``on_batch(done_rows, total)`` each time
        a row ends. ``tasks``: each row's task name (rows of a multi-task prompt-tuning run go to their own task's
        prompt, also when rows of several tasks share a batch; such a row without a task is an AdapterError).
        """
        if len(prompts) != len(adapters):
            raise ValueError(f"adapters: {len(adapters)} given for {len(prompts)} prompts")
        if tasks is not None and len(tasks) != len(prompts):
            raise ValueError(f"tasks: {len(tasks)} given for {len(prompts)} prompts")
        for key in adapters:
            if key is not None and key not in self.adapters:
                raise AdapterError(f"adapter: {key} is not loaded; add its run first")
        if config is not None and config.decoder == "vllm":
            return self._generate_vllm(prompts, adapters, config, max_batch_size, on_text, on_batch, tasks)
        task_ids: dict[int, int] = {}  # row -> task id, for rows of task-routed adapters
        for row, key in enumerate(adapters):
            if key is not None and self.adapters[key].tasks:
                task = None if tasks is None else tasks[row]
                task_ids[row] = generation_task_ids(key, self.adapters[key].tasks, [task])[0]
        groups: dict[str, list[int]] = {}  # the decoder puts a prompt-learning run's virtual tokens after each
        for row, key in enumerate(adapters):  # row's padding, so rows of any length share its batch
            group = "" if key is None or self.adapters[key].mixable else key
            groups.setdefault(group, []).append(row)
        results: list[Generated | None] = [None] * len(prompts)
        done = 0
        with self.lock:
            for group, rows in groups.items():
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
                routed = [task_ids[row] for row in rows] if rows[0] in task_ids else None
                outputs = generate_batch(model, self.base.tokenizer, [prompts[row] for row in rows], config,
                                         adapter_names=names, on_text=forward, max_batch_size=max_batch_size,
                                         on_done=finished, task_ids=routed)
                for row, output in zip(rows, outputs, strict=True):
                    results[row] = output
        return [result for result in results if result is not None]

    # ---- vLLM (GenerationConfig.decoder == "vllm") ---------------------------------------------------------------

    def _vllm_adapter(self, key: str) -> tuple[str, int]:
        """A LoRA-family run's adapter folder and rank (read once)."""
        if key not in self._vllm_adapters:
            folder = Run(Path(self.adapters[key].run_dir)).weights_dir
            if folder is None:
                raise AdapterError(f"adapter: run {key} has no saved weights")
            self._vllm_adapters[key] = (str(folder), adapter_rank(folder))
        return self._vllm_adapters[key]

    def _vllm_generator(self) -> VllmGenerator:
        """The vLLM engine over this host's base model folder, made once; its LoRA rank budget holds every LoRA run
        added so far (and DEFAULT_LORA_RANK for later ones)."""
        if self._vllm is None:
            ranks = [self._vllm_adapter(key)[1] for key, info in self.adapters.items() if info.mixable]
            self._vllm = VllmGenerator(loadable_location(self.base.resolved), self.base.tokenizer,
                                       dtype=self.base.dtype, max_lora_rank=rank_budget(ranks),
                                       max_model_len=min(self.context_window(), 8192))
        return self._vllm

    def _generate_vllm(self, prompts: Sequence[str], adapters: Sequence[str | None], config: GenerationConfig,
                       max_batch_size: int, on_text: TextCallback | None,
                       on_batch: Callable[[int, int], None] | None,
                       tasks: Sequence[str | None] | None) -> list[Generated]:
        """Base rows and rows of LoRA-family runs through vLLM; the other rows through the batch decoder
        (``generate`` with decoder "auto"). Streaming: a vLLM row's text arrives once, when its batch ends."""
        results: list[Generated | None] = [None] * len(prompts)
        with self.lock:
            candidates = {key: self.adapters[key].mixable for key in set(adapters) if key is not None}
            if not any(candidates.values()) and None not in adapters:
                ours, others = [], list(range(len(prompts)))
            else:
                generator = self._vllm_generator()
                servable = {key: mixable and self._vllm_adapter(key)[1] <= generator.max_lora_rank
                            for key, mixable in candidates.items()}
                ours, others = vllm_rows(adapters, servable)
            if others:
                forward = (lambda i, text: on_text(others[i], text)) if on_text else None
                progress = (lambda done, total: on_batch(done, len(prompts))) if on_batch else None
                outputs = self.generate([prompts[row] for row in others], [adapters[row] for row in others],
                                        dataclasses.replace(config, decoder="auto"), max_batch_size=max_batch_size,
                                        on_text=forward, on_batch=progress,
                                        tasks=None if tasks is None else [tasks[row] for row in others])
                for row, output in zip(others, outputs, strict=True):
                    results[row] = output
            if ours:
                generator = self._vllm_generator()
                keys = [adapters[row] for row in ours]
                folders = {key: self._vllm_adapter(key)[0] for key in set(keys) if key is not None}
                stop_ids = end_ids(self.base.model, self.base.tokenizer)[1]
                outputs = generator.generate([prompts[row] for row in ours],
                                             lora_specs(keys, folders, generator.lora_ids), config, stop_ids)
                for number, (row, output) in enumerate(zip(ours, outputs, strict=True)):
                    results[row] = output
                    if on_text:
                        on_text(row, output.text)
                    if on_batch:
                        on_batch(len(others) + number + 1, len(prompts))
        return [result for result in results if result is not None]
