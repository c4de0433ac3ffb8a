"""Knowledge distillation: a student learns a frozen teacher's next-token distribution on the answer tokens.

Loss per answer token = alpha * T^2 * KL(teacher || student, both at temperature T) + (1 - alpha) * cross-entropy
(Hinton et al.; T^2 keeps the soft term's gradients on the scale of the hard one as T grows).

The student is ``--student-layers N``: the teacher's architecture keeping N evenly spaced blocks, initialised from
the teacher's weights (DistilBERT's recipe), trained with ``full``; or ``--student MODEL`` (any method but prompt
learning, whose virtual tokens would shift the positions the two models are compared at); or, with neither, a
fresh copy of the run's base model (e.g. a LoRA student of the teacher's own base, for context distillation).
core.training.teachers finds and checks the teacher and shrinks it into a student.

The teacher is a run (any method; its weights applied with core.methods.loading.load_trained_model) or a model. It is
frozen: no gradients, eval mode, never in the optimizer, the checkpoints, the saved weights or the parameter counts.
Its logits come on the fly (``teacher_top_k`` 0) or from a cache computed once at the start of the run (top-K logits
and their token ids per answer token, ``teacher_logits.safetensors`` in the run folder, reused on resume); with a
cache the KL is over the teacher's top K tokens, both distributions renormalised there.

Context distillation (``teacher_context`` rag): the teacher's prompt holds the knowledge base's passages for the
question (``TrainingResources.retrieve``, laid out like the arena's RAG prompt), the student sees the question alone.
The answer tokens are the same in both sequences, so the two are compared answer position by answer position.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import EncodedExample, Example, build_messages, encode_for_training, render_prompt
from core.errors import ConfigError
from core.io import write_atomic
from core.methods import count_parameters, get_method
from core.models import LoadedModel, resolve_base_model
from core.training.model import compute_dtype, load_training_model, make_trainable
from core.training.objectives import (
    Objective,
    TrainingSession,
    autocast,
    collate,
    loss_tokens,
    register_objective,
    supports_answer_only_head,
)
from core.training.teachers import TeacherSource, check_layers, same_vocabulary, shrink

if TYPE_CHECKING:
    import torch

    from core.runs import Run
    from core.training.config import TrainingConfig

logger = logging.getLogger(__name__)

CACHE_FILE = "teacher_logits.safetensors"
DECODE_PROMPTS = 3  # validation prompts decoded by each model for decode_speedup
DECODE_TOKENS = 24  # new tokens per prompt (forced: both models decode exactly as many)
TEACHER_LENGTH_FACTOR = 2  # the teacher's prompt (passages included) may be this many times max_length
CONTEXT_INSTRUCTION = (  # the arena's RAG instruction (core.arena.prompting.RAG_INSTRUCTION), so the teacher reads
    # the passages the way the rag variant does
    "Answer the question using the numbered passages below. If they do not contain the answer, say so. "
    "Be brief."
)
OWN_FIELDS = ("teacher", "student", "student_layers", "distill_alpha", "distill_temperature", "teacher_context",
              "index", "teacher_top_k")


# ---- rows, the teacher's context ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillationRow(EncodedExample):
    """An SFT row (prompt masked) that keeps its example: context distillation retrieves for its question."""

    example: Example | None = None


def encode_row(tokenizer: Any, example: Example, system: str | None = None, max_length: int = 1024) -> Any:
    row = encode_for_training(tokenizer, example, system, max_length)
    return DistillationRow(**{f.name: getattr(row, f.name) for f in fields(row)}, example=example)


def context_messages(example: Example, passages: list[str], system: str | None = None) -> list[dict[str, str]]:
    """The teacher's messages: the passages numbered in front of the question in the user turn, as the arena's
    RAG prompt lays them out (core.arena.prompting.rag_messages)."""
    messages = build_messages(example, system)
    if passages:
        listed = "\n\n".join(f"[{number}] {text}" for number, text in enumerate(passages, start=1))
        messages[-1] = {"role": "user", "content": f"{CONTEXT_INSTRUCTION}\n\nPassages:\n{listed}\n\n"
                                                   f"Question: {example.user_text}"}
    return messages


def row_key(row: Any) -> str:
    """A row's name in the cache: the hash of the student's token ids (the teacher's input follows from them)."""
    return hashlib.sha1(",".join(map(str, row.input_ids)).encode()).hexdigest()


# ---- the loss --------------------------------------------------------------------------------------------------------


def answer_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                  fast: bool) -> torch.Tensor:
    """Logits at the positions that predict an answer token, row by row: (n_answer, V). ``fast``: the LM head is
    applied to those positions only (core.training.objectives.answer_loss's shortcut)."""
    keep = labels[:, 1:] != -100  # (B, L-1)
    if fast:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return base.get_output_embeddings()(hidden[:, :-1][keep])
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][keep]


def kl_term(student: torch.Tensor, teacher: torch.Tensor, indices: torch.Tensor | None,
            temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) at ``temperature``. ``student`` (n, V); ``teacher`` (n, V) logits,
    or (n, K) top-K logits with their token ``indices`` (n, K): then both are renormalised over those K tokens."""
    import torch.nn.functional as F

    if indices is not None:
        student = student.gather(-1, indices)  # (n, K)
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def distillation_loss(student: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None,
                      indices: torch.Tensor | None, alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student) + (1 - alpha) * cross-entropy, each a mean over the n answer tokens."""
    import torch.nn.functional as F

    ce = F.cross_entropy(student.float(), targets)
    if alpha == 0 or teacher is None:
        return ce
    return alpha * temperature**2 * kl_term(student, teacher, indices, temperature) + (1 - alpha) * ce


def _student_ce(model: Any, batch: dict[str, torch.Tensor], fast: bool) -> torch.Tensor:
    """The student's cross-entropy on answer tokens (the objective's plain loss; the session adds the teacher)."""
    import torch.nn.functional as F

    labels = batch["labels"]
    logits = answer_logits(model, batch["input_ids"], batch["attention_mask"], labels, fast)
    return F.cross_entropy(logits.float(), labels[:, 1:][labels[:, 1:] != -100])


# ---- the session -----------------------------------------------------------------------------------------------------


class DistillationSession(TrainingSession):
    """A student trained against a frozen teacher (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_fast = self.config.answer_only_head and supports_answer_only_head(self.teacher.model)
        self.teacher_rows = self._context_rows() if self.config.teacher_context == "rag" else {}
        self.cache: dict[str, tuple[Any, Any]] | None = None
        self.measures: dict[str, Any] = {}

    # loading

    def _load_teacher(self, dtype: torch.dtype) -> LoadedModel:
        if self.resources.load_teacher is not None:
            loaded = self.resources.load_teacher()
        else:
            loaded = TeacherSource.of(self.config.teacher).load(self.device, "fp32")
        loaded.model.to(device=self.device, dtype=dtype)
        loaded.model.eval()
        for param in loaded.model.parameters():
            param.requires_grad_(False)
        return loaded

    def load_model(self) -> tuple[Any, Any, torch.dtype]:
        import torch

        config = self.config
        compute = compute_dtype(config, self.device)
        if config.student_layers is not None:  # the student is made of the teacher's own weights: keep them fp32
            self.teacher = self._load_teacher(torch.float32)
            check_layers(config, self.teacher.model.config.num_hidden_layers)
            student = shrink(self.teacher.model, config.student_layers)
            model = make_trainable(student, config, self.teacher.tokenizer, self.total_steps)
            base = resolve_base_model(config.base_model or TeacherSource.of(config.teacher).base_model)
            loaded = LoadedModel(model, self.teacher.tokenizer, base, self.device, torch.float32, 0.0)
            self.teacher.model.to(compute)  # from here on the teacher only infers
        else:
            self.teacher = self._load_teacher(compute)
            student_config = replace(config, base_model=config.student) if config.student else config
            model, loaded, _ = load_training_model(student_config, self.total_steps)
            same_vocabulary(self.teacher.tokenizer, loaded.tokenizer, config.student or loaded.resolved.name)
        logger.info("distillation: teacher %s (%d blocks, %s), student %d blocks", config.teacher,
                    self.teacher.model.config.num_hidden_layers, str(compute).removeprefix("torch."),
                    loaded.model.config.num_hidden_layers if hasattr(loaded.model, "config") else -1)
        return model, loaded, compute

    def _context_rows(self) -> dict[tuple[int, ...], EncodedExample]:
        """The teacher's rows for context distillation, by the student row's token ids: the retrieved passages and
        the question, then exactly the student's answer tokens."""
        retrieve = self.resources.retrieve
        if retrieve is None:
            raise ConfigError("index: context distillation needs the knowledge base the teacher reads (give --index)")
        budget = TEACHER_LENGTH_FACTOR * self.config.max_length
        rows: dict[tuple[int, ...], EncodedExample] = {}
        for row in [*self.data.train, *self.data.val]:
            key = tuple(row.input_ids)
            if key in rows:
                continue
            messages = context_messages(row.example, retrieve(row.example.user_text), self.config.system_prompt)
            prompt = self.tokenizer(render_prompt(self.tokenizer, messages), add_special_tokens=False)["input_ids"]
            answer = [label for label in row.labels if label != -100]
            prompt = prompt[-max(1, budget - len(answer)):]
            rows[key] = EncodedExample(input_ids=prompt + answer, labels=[-100] * len(prompt) + answer)
        return rows

    # the teacher's cache

    def start(self, run: Run, resumed: bool) -> None:
        """With ``teacher_top_k``: read the run's cache (a resumed run) or compute it once and write it."""
        if not self.config.teacher_top_k:
            return
        path = run.path / CACHE_FILE
        rows = [*self.data.train, *self.data.val]
        k = min(self.config.teacher_top_k, self.teacher.model.config.vocab_size)
        cache = _read_cache(path, k) if path.is_file() else None  # a resumed (or restarted) run's own cache
        if cache is None or any(row_key(row) not in cache for row in rows):
            started = time.perf_counter()
            cache = self._compute_cache(rows, k)
            _write_cache(path, cache, k, str(self.config.teacher))
            logger.info("cached the teacher's top-%d logits of %d rows in %.1f s (%.1f MB)", k, len(cache),
                        time.perf_counter() - started, path.stat().st_size / 1e6)
            self.measures["cache_s"] = round(time.perf_counter() - started, 3)
        self.measures["cache_bytes"] = path.stat().st_size
        self.cache = cache

    def _compute_cache(self, rows: list[Any], k: int) -> dict[str, tuple[Any, Any]]:
        import torch

        unique = list({row_key(row): row for row in rows}.items())
        unique.sort(key=lambda item: len(item[1].input_ids))
        cache: dict[str, tuple[Any, Any]] = {}
        with torch.no_grad(), autocast(self.device, self.compute):
            for start in range(0, len(unique), self.config.batch_size):
                chunk = unique[start : start + self.config.batch_size]
                batch = self._teacher_batch([row for _, row in chunk])
                logits = self._teacher_logits(batch)  # (n, V)
                values, indices = logits.float().topk(k, dim=-1)  # sorted: column 0 is the teacher's top-1
                counts = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
                for (key, _), v, i in zip(chunk, values.split(counts), indices.split(counts), strict=True):
                    cache[key] = (v.half().cpu(), i.int().cpu())
        return cache

    # batches

    def _teacher_batch(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        """What the teacher reads for ``rows``: its own rows (context distillation) or the student's."""
        if self.teacher_rows:
            return collate([self.teacher_rows[tuple(row.input_ids)] for row in rows], self.pad_id, self.device)
        return collate(rows, self.pad_id, self.device)

    def collate(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        """The student's batch, plus the teacher's: cached top-K logits and ids (n_answer, K), or its own inputs."""
        import torch

        batch = collate(rows, self.pad_id, self.device)
        if self.cache is not None:
            hits = [self.cache[row_key(row)] for row in rows]
            batch["teacher_values"] = torch.cat([v.float() for v, _ in hits]).to(self.device)  # fp16 on disk
            batch["teacher_indices"] = torch.cat([i for _, i in hits]).long().to(self.device)
        elif self.teacher_rows:
            teacher = self._teacher_batch(rows)
            batch.update({f"teacher_{name}": tensor for name, tensor in teacher.items()})
        return batch

    def _teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return answer_logits(self.teacher.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                 self.teacher_fast)

    def teacher_target(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(teacher logits (n, V), None), or its cached (top-K logits (n, K), their token ids (n, K))."""
        if "teacher_values" in batch:
            return batch["teacher_values"], batch["teacher_indices"]
        if "teacher_input_ids" in batch:
            own = {name: batch[f"teacher_{name}"] for name in ("input_ids", "attention_mask", "labels")}
            return self._teacher_logits(own), None
        return self._teacher_logits(batch), None

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        student = answer_logits(self.model, batch["input_ids"], batch["attention_mask"], labels, self.fast)
        targets = labels[:, 1:][labels[:, 1:] != -100]
        alpha, temperature = self.config.distill_alpha, self.config.distill_temperature
        teacher, indices = self.teacher_target(batch) if alpha > 0 else (None, None)
        return distillation_loss(student, targets, teacher, indices, alpha, temperature)

    # measures

    def evaluate(self, examples: list[Any]) -> dict[str, float | None]:
        """``val_loss``: the student's cross-entropy on the validation answers (comparable with any SFT run);
        ``val_kl``: KL(teacher || student) at T; ``agreement``: share of answer positions where the student's top
        next token is the teacher's."""
        import torch
        import torch.nn.functional as F

        if not examples:
            return {"val_loss": None, "val_kl": None, "agreement": None}
        was_training = self.model.training
        self.model.eval()
        for module in self.model.modules():  # 4-bit layers keep their training layout (see evaluate_loss)
            if type(module).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4"):
                module.training = True
        ce = kl = agree = 0.0
        n = 0
        order = sorted(examples, key=lambda row: len(row.input_ids))
        for start in range(0, len(order), self.config.batch_size):
            batch = self.collate(order[start : start + self.config.batch_size])
            labels = batch["labels"]
            with torch.no_grad(), autocast(self.device, self.compute):
                targets = labels[:, 1:][labels[:, 1:] != -100]
                if not len(targets):
                    continue
                student = answer_logits(self.model, batch["input_ids"], batch["attention_mask"], labels,
                                        self.fast).float()
                teacher, indices = self.teacher_target(batch)
                top = indices[:, 0] if indices is not None else teacher.argmax(dim=-1)
                ce += float(F.cross_entropy(student, targets, reduction="sum"))
                kl += float(kl_term(student, teacher, indices, self.config.distill_temperature)) * len(targets)
                agree += float((student.argmax(dim=-1) == top).sum())
                n += len(targets)
        self.model.train(was_training)
        if not n:
            return {"val_loss": None, "val_kl": None, "agreement": None}
        measures = {"val_loss": ce / n, "val_kl": round(kl / n, 6), "agreement": round(agree / n, 6)}
        self.measures["agreement"] = measures["agreement"]
        return measures

    def teacher_val_loss(self) -> float | None:
        """The teacher's cross-entropy on the validation answers (with its context): the student's target."""
        import torch.nn.functional as F

        total, n = 0.0, 0
        rows = sorted(self.data.val, key=lambda row: len(row.input_ids))
        with autocast(self.device, self.compute):
            for start in range(0, len(rows), self.config.batch_size):
                batch = self._teacher_batch(rows[start : start + self.config.batch_size])
                labels = batch["labels"]
                targets = labels[:, 1:][labels[:, 1:] != -100]
                if len(targets):
                    total += float(F.cross_entropy(self._teacher_logits(batch).float(), targets, reduction="sum"))
                    n += len(targets)
        return round(total / n, 6) if n else None

    def decode_rates(self) -> tuple[float, float]:
        """(student, teacher) tokens/s of greedy decoding, batch 1, of the first few validation prompts (the
        student's prompt for both), ``DECODE_TOKENS`` new tokens each; both in the compute dtype."""
        import torch

        rows = (self.data.val or self.data.train)[:DECODE_PROMPTS]
        prompts = [row.input_ids[: next(i for i, label in enumerate(row.labels) if label != -100)] or row.input_ids
                   for row in rows]
        student = self.model
        if any(p.dtype != self.compute for p in student.parameters()):
            student = copy.deepcopy(self.model).to(self.compute)
        student.eval()

        def decode(model: Any, ids: list[int], new: int) -> float:
            """Seconds to greedily decode exactly ``new`` tokens after ``ids``."""
            tensor = torch.tensor([ids], device=self.device)
            started = time.perf_counter()
            model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=self.pad_id)
            return time.perf_counter() - started

        models = (student, self.teacher.model)
        seconds = [0.0, 0.0]
        with torch.no_grad():
            for model in models:  # warm-up
                decode(model, prompts[0], 2)
            for ids in prompts:  # interleaved: a load that comes and goes on a shared CPU hits both alike
                for which, model in enumerate(models):
                    seconds[which] += decode(model, ids, DECODE_TOKENS)
        self.model.train()
        tokens = DECODE_TOKENS * len(prompts)
        return tokens / seconds[0], tokens / seconds[1]

    def summary(self) -> dict[str, Any]:
        student_rate, teacher_rate = self.decode_rates()
        return {
            "teacher": self.config.teacher,
            "teacher_params": sum(p.numel() for p in self.teacher.model.parameters()),
            "student_params": count_parameters(self.model)[1],
            "student_layers": self.loaded.model.config.num_hidden_layers if hasattr(self.loaded.model, "config")
            else None,
            "teacher_layers": self.teacher.model.config.num_hidden_layers,
            "agreement": self.measures.get("agreement"),
            "teacher_val_loss": self.teacher_val_loss() if self.data.val else None,
            "decode_speedup": round(student_rate / teacher_rate, 3),
            "student_tokens_per_s": round(student_rate, 2),
            "teacher_tokens_per_s": round(teacher_rate, 2),
            "teacher_context": self.config.teacher_context,
            "teacher_top_k": self.config.teacher_top_k,
            **{key: self.measures[key] for key in ("cache_bytes", "cache_s") if key in self.measures},
        }


def _write_cache(path: Path, cache: dict[str, tuple[Any, Any]], k: int, teacher: str) -> None:
    from safetensors.torch import save

    tensors = {}
    for key, (values, indices) in cache.items():
        tensors[f"{key}.values"] = values.contiguous()
        tensors[f"{key}.indices"] = indices.contiguous()
    write_atomic(path, save(tensors, metadata={"top_k": str(k), "teacher": teacher}))


def _read_cache(path: Path, k: int) -> dict[str, tuple[Any, Any]] | None:
    """The cache at ``path`` if it holds top-``k`` logits; None otherwise (it is then computed again)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("top_k") != str(k):
                return None
            keys = {name.rsplit(".", 1)[0] for name in handle.keys()}
            return {key: (handle.get_tensor(f"{key}.values"), handle.get_tensor(f"{key}.indices")) for key in keys}
    except (OSError, ValueError, RuntimeError) as err:  # a damaged cache is recomputed, never trusted
        logger.warning("teacher cache %s unreadable (%s): computing it again", path, str(err).splitlines()[0])
        return None


# ---- the objective ---------------------------------------------------------------------------------------------------


def check(config: TrainingConfig) -> None:
    """The settings a distillation run cannot use, one line naming the field."""
    method = get_method(config.method)
    if not config.teacher:
        raise ConfigError("teacher: the distillation objective needs a teacher (--teacher RUN_DIR|MODEL)")
    if config.student and config.student_layers is not None:
        raise ConfigError("student: give --student MODEL or --student-layers N, not both")
    if config.student_layers is not None and config.method != "full":
        raise ConfigError(f"method: a --student-layers student is a new, smaller model whose every weight trains; "
                          f"use --method full (got {config.method})")
    if method.prompt_learning:
        raise ConfigError(f"method: {method.title} prepends virtual tokens, which shifts the positions teacher and "
                          "student are compared at; distil with full, freeze or a LoRA-family method")
    if config.teacher_context == "rag" and not config.index:
        raise ConfigError("index: --teacher-context rag needs --index (the knowledge base the teacher reads)")


register_objective(Objective(
    "distillation", "Knowledge distillation",
    "A student learns a frozen teacher's next-token distribution on the answers (KL at temperature T, plus "
    "cross-entropy); the teacher may read retrieved passages the student never sees (context distillation).",
    encode_row, collate, _student_ce, loss_tokens, supports_answer_only_head,
    session=DistillationSession, check=check, fields=OWN_FIELDS,
))
