"""Preference tuning (DPO): the model learns to prefer the chosen answer of each pair over the rejected one, while a
reference, the model it started from, holds it in place (Rafailov et al. 2023; the ``ipo`` loss: Azar et al. 2023).

Data: rows ``{prompt, chosen, rejected}`` in .jsonl/.json/.csv/.tsv (extra keys are ignored, so the pairs that
``python -m core feedback export`` writes from the Arena's votes train as they are). The prompt is the user turn
of the base model's chat template (with ``system_prompt`` when set), as SFT renders an instruction; each answer is
the assistant turn, ending with the template's end-of-turn token. With ``max_prompt_length`` the prompt is first
cut from the left to that many tokens (as TRL's DPOTrainer does); then each prompt + answer sequence holds at most
``max_length`` tokens, the prompt cut from the left first (core.data.encode_for_training). Bad input is one
DataError naming the file and line: a row missing ``chosen`` or ``rejected``, ``chosen == rejected``, an empty
prompt, fewer than 2 training pairs.

Loss. log π(y|x) is summed over the answer tokens only (the prompt is masked). A batch holds B pairs as 2B rows,
the chosen sequences first, then the rejected ones, through one forward pass. With the log-ratio difference
h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)):

- ``sigmoid`` (DPO): −log σ(β h);
- ``ipo``: (h − 1/(2β))², h summed over tokens as above (TRL's ``ipo`` divides each log-ratio by its answer length).

Reference. π_ref is the starting policy. The log-probs of every training and validation pair under it are computed
once, before the first step (no gradients, eval mode, the run's autocast), and kept in the run folder
(``reference_logps.safetensors``). A LoRA-family adapter starts as the identity (LoRA's and AdaLoRA's update 0,
IA3's scales 1, DoRA's magnitude = the weight norm), so for those methods this is the base model, what PEFT's
``disable_adapter()`` gives, without a second copy of the model in memory; for full and freeze it is the starting
weights. A resumed run reads the file back. ``TrainingSession.start`` runs before the loop loads a checkpoint's
weights, so a file missing on resume is recomputed from the starting weights, never from the trained ones.

Measures at each validation pass: ``val_loss`` (the DPO loss), ``reward_accuracy`` (share of pairs whose implicit
reward β (log π − log π_ref) is higher for the chosen answer than for the rejected one; a tie counts as a miss, so it
is 0 at step 0, where policy and reference agree), ``reward_margin`` (mean chosen − rejected reward) and
``logp_accuracy`` (share of pairs whose chosen answer has the higher log-prob under the policy; the reference's
value, ``reference_logp_accuracy`` in the summary, says how often the base model already preferred it). The
summary's ``reward_measured_on`` says which pairs these are: ``validation``, or ``train`` when the run has no
validation pairs (fewer than 10 pairs and no ``val_data``, or ``val_fraction`` 0). The rewards (and the
reference's log-prob accuracy) are then measured once after the last step on the first ``max_eval_examples``
training pairs: how well the run learnt its own pairs, not how well it generalises.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import EncodedExample, Example, encode_for_training, read_rows, split_examples, text_field
from core.errors import DataError
from core.io import write_atomic
from core.limits import MAX_FILE_BYTES
from core.methods import METHODS as METHOD_REGISTRY
from core.training.batches import PreparedData, file_sha256
from core.training.distillation import answer_logits
from core.training.objectives import (
    Objective,
    TrainingSession,
    autocast,
    collate,
    register_objective,
    supports_answer_only_head,
)

if TYPE_CHECKING:
    import torch

    from core.runs import Run
    from core.training.config import TrainingConfig

logger = logging.getLogger(__name__)

DPO = "dpo"
REFERENCE_FILE = "reference_logps.safetensors"
"""The reference log-probs in the run folder: ``keys`` (N, 20) uint8 (each pair's SHA-1), ``chosen`` and
``rejected`` (N,) float32 (summed over answer tokens, nats)."""
COLUMNS = ("prompt", "chosen", "rejected")
OWN_FIELDS = ("dpo_beta", "dpo_loss", "max_prompt_length")
METHODS = tuple(name for name, method in METHOD_REGISTRY.items() if not method.prompt_learning)
"""Every method but prompt learning, whose virtual tokens shift the answer positions the log-probs are read at."""
MIN_PAIRS = 2


# --------------------------------------------------------------------------------------------------------------------
# Data: rows -> pairs -> encoded rows
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferencePair:
    """One row of a preference file: the prompt, the preferred answer and the other one."""

    prompt: str
    chosen: str
    rejected: str
    task: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class PreferenceRow:
    """One encoded pair: the prompt + chosen and prompt + rejected sequences (prompt masked in ``labels``) and the
    pair's key (the SHA-1 of both token sequences: where its reference log-probs are found)."""

    chosen: EncodedExample
    rejected: EncodedExample
    key: str

    @property
    def input_ids(self) -> list[int]:
        """The longer of the two sequences (what the loop's length grouping reads)."""
        return max(self.chosen.input_ids, self.rejected.input_ids, key=len)

    @property
    def answer_tokens(self) -> int:
        return min(self.chosen.answer_tokens, self.rejected.answer_tokens)

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """The pairs of one preference file; bad rows are one DataError naming the file and line."""
    path = Path(path)
    pairs = []
    for line, row in read_rows(path, MAX_FILE_BYTES):
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object {{prompt, chosen, rejected}}, got {type(row).__name__}",
                            line)
        prompt, chosen, rejected = (text_field(path, line, row, column, required=True) for column in COLUMNS)
        if chosen.strip() == rejected.strip():
            raise DataError(path, 'fields "chosen" and "rejected" are the same text (nothing to prefer)', line)
        task = row.get("task")
        pairs.append(PreferencePair(prompt, chosen, rejected, task if isinstance(task, str) else None, line))
    return pairs


def split_pairs(pairs: list[PreferencePair], fraction: float, seed: int
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic train/validation split, stratified by the rows' ``task`` (core.data's hash order)."""
    examples = [Example(pair.prompt, output=f"{pair.chosen}\x00{pair.rejected}", task=pair.task) for pair in pairs]
    index = {id(example): i for i, example in enumerate(examples)}
    splits = split_examples(examples, validation=fraction, seed=seed)
    return [pairs[index[id(e)]] for e in splits.train], [pairs[index[id(e)]] for e in splits.validation]


def pair_key(chosen_ids: list[int], rejected_ids: list[int]) -> str:
    return hashlib.sha1(f"{chosen_ids}|{rejected_ids}".encode()).hexdigest()


def encode_pair(tokenizer: Any, pair: PreferencePair, system: str | None = None, max_length: int = 1024,
                max_prompt_length: int = 0) -> PreferenceRow:
    """``Objective.encode`` of a pair: both sequences through the chat template, the prompt masked."""
    chosen = encode_for_training(tokenizer, Example(pair.prompt, output=pair.chosen), system, max_length,
                                 max_prompt_length)
    rejected = encode_for_training(tokenizer, Example(pair.prompt, output=pair.rejected), system, max_length,
                                   max_prompt_length)
    return PreferenceRow(chosen, rejected, pair_key(chosen.input_ids, rejected.input_ids))


def prepare(config: TrainingConfig, load_tokenizer: Any) -> PreparedData:
    """``Objective.prepare``: read and check the pairs, split, encode. Every refusal comes before a model loads."""
    train = read_pairs(config.data)
    if config.val_data:
        val = read_pairs(config.val_data)
    elif config.val_fraction > 0 and len(train) >= 10:
        train, val = split_pairs(train, config.val_fraction, config.seed)
    else:
        val = []
    if len(train) < MIN_PAIRS:
        held = f" after {len(val)} were held out for validation" if val and not config.val_data else ""
        raise DataError(config.data, f"{len(train)} training pair{'s' if len(train) != 1 else ''}{held}; DPO needs "
                        f"at least {MIN_PAIRS}")
    val = val[: config.max_eval_examples or len(val)]
    tokenizer = load_tokenizer()
    encode = functools.partial(encode_pair, tokenizer, system=config.system_prompt, max_length=config.max_length,
                               max_prompt_length=config.max_prompt_length)
    train_rows, val_rows = [encode(pair) for pair in train], [encode(pair) for pair in val]
    same = next((pair for pair, row in zip(train, train_rows, strict=True)
                 if row.chosen.labels == row.rejected.labels), None)
    if same is not None:  # distinct texts, the same tokens once cut to max_length: nothing to prefer
        raise DataError(config.data, f"chosen and rejected answers are the same once cut to max_length="
                        f"{config.max_length} tokens", same.line)
    logger.info("%s: %d training pairs, %d validation", Path(config.data).name, len(train_rows), len(val_rows))
    return PreparedData(train_rows, val_rows, file_sha256(config.data, config.val_data),
                        sum(row.truncated for row in train_rows),
                        {"pairs": len(train_rows), "val_pairs": len(val_rows)})


# --------------------------------------------------------------------------------------------------------------------
# Batches and loss
# --------------------------------------------------------------------------------------------------------------------


def collate_pairs(rows: list[PreferenceRow], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """B pairs as 2B right-padded rows, the chosen sequences first. Shapes: input_ids, attention_mask, labels
    (2B, L)."""
    return collate([row.chosen for row in rows] + [row.rejected for row in rows], pad_id, device)


def sequence_logps(model: Any, batch: dict[str, torch.Tensor], fast: bool) -> torch.Tensor:
    """log π(answer | prompt) of each row, summed over its answer tokens, fp32: (R,). ``fast``: the LM head on
    answer positions only."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    keep = labels[:, 1:] != -100  # (R, L-1)
    logits = answer_logits(model, batch["input_ids"], batch["attention_mask"], labels, fast)  # (n_answer, V)
    token_logps = -F.cross_entropy(logits.float(), labels[:, 1:][keep], reduction="none")  # (n_answer,)
    rows = keep.nonzero()[:, 0]  # the row of each answer token, in the order of the boolean mask
    return torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device).index_add(0, rows, token_logps)


def log_ratio_difference(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) per pair: (B,) from (2B,) log-probs, chosen
    first."""
    chosen, rejected = (policy - reference).chunk(2)
    return chosen - rejected


def pair_losses(h: torch.Tensor, beta: float, kind: str) -> torch.Tensor:
    """The loss of each pair from its log-ratio difference ``h`` (B,): sigmoid −log σ(β h), ipo (h − 1/(2β))²."""
    import torch.nn.functional as F

    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * h)


def preference_loss(model: Any, batch: dict[str, torch.Tensor], fast: bool, beta: float = 0.1,
                    kind: str = "sigmoid") -> torch.Tensor:
    """``Objective.loss``: the mean pair loss of a batch from ``PreferenceSession.collate`` (which adds the
    reference log-probs, ``reference_logps`` (2B,)); a run's session passes its ``dpo_beta`` and ``dpo_loss``."""
    h = log_ratio_difference(sequence_logps(model, batch, fast), batch["reference_logps"])
    return pair_losses(h, beta, kind).mean()


def pair_units(batch: dict[str, torch.Tensor]) -> int:
    """Pairs in a batch (the loss is a mean over them)."""
    return int(batch["input_ids"].shape[0]) // 2


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; 4-bit layers keep their training layout (see
    core.training.objectives.evaluate_loss). The previous mode is restored."""
    was_training = model.training
    model.eval()
    for module in model.modules():
        if type(module).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4"):
            module.training = True
    try:
        yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------------------------------


class PreferenceSession(TrainingSession):
    """A DPO run: the method's model is the policy; the reference log-probs come from the start (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference: dict[str, tuple[float, float]] = {}  # pair key -> (chosen, rejected) log-probs
        self.measures: dict[str, Any] = {}

    # the reference

    def start(self, run: Run, resumed: bool) -> None:
        """Read the run's reference log-probs (a resumed run) or compute them once and write them."""
        path = run.path / REFERENCE_FILE
        rows = [*self.data.train, *self.data.val]
        saved = read_reference(path) if path.is_file() else None
        if saved is not None and all(row.key in saved for row in rows):
            self.reference = saved
            logger.info("reference log-probs of %d pairs read from %s", len(saved), path.name)
        else:
            if resumed:
                logger.warning("%s missing or incomplete: computing the reference log-probs again from the starting "
                               "weights", path.name)
            started = time.perf_counter()
            for part in (self.data.train, self.data.val):  # apart: the validation pass at step 0 repeats its batches
                self.reference.update(zip((row.key for row in part), self.logps(part).tolist(), strict=True))
            write_reference(path, self.reference, self.base_model_name)
            self.measures["reference_s"] = round(time.perf_counter() - started, 3)
            logger.info("reference log-probs of %d pairs computed in %.1f s", len(self.reference),
                        self.measures["reference_s"])
        chosen_wins = [self.reference[row.key][0] > self.reference[row.key][1] for row in self.measured_rows()]
        self.measures["reference_logp_accuracy"] = (round(sum(chosen_wins) / len(chosen_wins), 6) if chosen_wins
                                                    else None)

    def measured_rows(self) -> list[PreferenceRow]:
        """The pairs the rewards are reported on: the validation pairs, or without any the first
        ``max_eval_examples`` training pairs."""
        return self.data.val or self.data.train[: self.config.max_eval_examples or len(self.data.train)]

    def logps(self, rows: list[PreferenceRow]) -> torch.Tensor:
        """The current model's (chosen, rejected) log-probs of ``rows``, in their order: (N, 2), no gradients, eval
        mode, batches of ``batch_size`` pairs in length order."""
        import torch

        out = torch.zeros(len(rows), 2)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
        with torch.no_grad(), evaluating(self.model), autocast(self.device, self.compute):
            for start in range(0, len(order), self.config.batch_size):
                chunk = order[start : start + self.config.batch_size]
                batch = collate_pairs([rows[i] for i in chunk], self.pad_id, self.device)
                logps = sequence_logps(self.model, batch, self.fast).float().cpu()  # (2B,)
                out[chunk] = torch.stack(logps.chunk(2), dim=1)
        return out

    def reference_of(self, rows: list[PreferenceRow]) -> torch.Tensor:
        """The reference log-probs of ``rows``: (2B,), chosen first (the layout of ``collate_pairs``)."""
        import torch

        chosen = [self.reference[row.key][0] for row in rows]
        rejected = [self.reference[row.key][1] for row in rows]
        return torch.tensor(chosen + rejected, dtype=torch.float32, device=self.device)

    # batches and loss

    def collate(self, rows: list[PreferenceRow]) -> dict[str, torch.Tensor]:
        batch = collate_pairs(rows, self.pad_id, self.device)
        batch["reference_logps"] = self.reference_of(rows)
        return batch

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return preference_loss(self.model, batch, self.fast, self.config.dpo_beta, self.config.dpo_loss)

    # measures

    def evaluate(self, examples: list[PreferenceRow]) -> dict[str, float | None]:
        """The DPO loss (``val_loss``), reward accuracy and margin and the policy's log-prob accuracy over
        ``examples`` (None each when there are none)."""
        if not examples:
            return {"val_loss": None, "reward_accuracy": None, "reward_margin": None, "logp_accuracy": None}
        beta = self.config.dpo_beta
        policy = self.logps(examples)  # (N, 2)
        reference = self.reference_of(examples).cpu().view(2, -1).T  # (N, 2)
        rewards = beta * (policy - reference)  # (N, 2): the implicit reward of each answer
        h = (policy - reference) @ policy.new_tensor([1.0, -1.0])  # (N,)
        measures = {
            "val_loss": float(pair_losses(h, beta, self.config.dpo_loss).mean()),
            "reward_accuracy": round(float((rewards[:, 0] > rewards[:, 1]).float().mean()), 6),
            "reward_margin": round(float((rewards[:, 0] - rewards[:, 1]).mean()), 6),
            "reward_chosen": round(float(rewards[:, 0].mean()), 6),
            "reward_rejected": round(float(rewards[:, 1].mean()), 6),
            "logp_accuracy": round(float((policy[:, 0] > policy[:, 1]).float().mean()), 6),
        }
        self.measures.update({key: measures[key] for key in ("reward_accuracy", "reward_margin", "logp_accuracy")})
        return measures

    def summary(self) -> dict[str, Any]:
        """The run's rewards (the last validation pass's; with no validation pairs, measured now on the training
        pairs: ``reward_measured_on``), settings and pair counts."""
        if not self.data.val:
            self.evaluate(self.measured_rows())
        return {
            "objective": DPO, "reward_measured_on": "validation" if self.data.val else "train",
            "reward_accuracy": self.measures.get("reward_accuracy"),
            "reward_margin": self.measures.get("reward_margin"), "logp_accuracy": self.measures.get("logp_accuracy"),
            "reference_logp_accuracy": self.measures.get("reference_logp_accuracy"),
            "dpo_beta": self.config.dpo_beta, "dpo_loss": self.config.dpo_loss,
            "pairs": len(self.data.train), "val_pairs": len(self.data.val),
            **{key: self.measures[key] for key in ("reference_s",) if key in self.measures},
        }


def write_reference(path: Path, reference: dict[str, tuple[float, float]], base_model: str) -> None:
    import torch
    from safetensors.torch import save

    keys = sorted(reference)
    tensors = {
        "keys": torch.tensor([list(bytes.fromhex(key)) for key in keys], dtype=torch.uint8).reshape(-1, 20),
        "chosen": torch.tensor([reference[key][0] for key in keys], dtype=torch.float32),
        "rejected": torch.tensor([reference[key][1] for key in keys], dtype=torch.float32),
    }
    write_atomic(path, save(tensors, metadata={"format": "1", "base_model": base_model}))


def read_reference(path: Path) -> dict[str, tuple[float, float]] | None:
    """The log-probs at ``path``, by pair key; None when the file cannot be read (it is then computed again)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        keys = [bytes(row).hex() for row in tensors["keys"].tolist()]
        return dict(zip(keys, zip(tensors["chosen"].tolist(), tensors["rejected"].tolist(), strict=True),
                        strict=True))
    except (OSError, KeyError, ValueError, RuntimeError) as err:  # damaged: recomputed, never trusted
        logger.warning("%s unreadable (%s)", path, str(err).splitlines()[0])
        return None


# --------------------------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------------------------


register_objective(Objective(
    DPO, "Preference tuning (DPO)",
    "Preference pairs {prompt, chosen, rejected}: the model learns to prefer each chosen answer over the rejected "
    "one (the DPO loss, or IPO), held near the model it started from; reference log-probs are computed once.",
    encode_pair, collate_pairs, preference_loss, pair_units, supports_answer_only_head,
    session=PreferenceSession, prepare=prepare, methods=METHODS, fields=OWN_FIELDS,
))
