"""The classification objective: a sequence-classification head over a base model, labels from the data.

Two kinds of base: an encoder (the bundled all-MiniLM-L6-v2, a BERT: the head reads the pooled [CLS] state) or a
decoder (SmolLM2: the head reads the last non-pad token). ``AutoModelForSequenceClassification`` builds either; the
method decides which weights train (full, freeze, lora, ia3), and the head always does: PEFT's SEQ_CLS task type
puts it in ``modules_to_save``, and for full/freeze this module opens it.

Data, either shape:

- rows ``{text, label}`` (the columns named by ``text_column`` / ``label_column``; labels may be strings or numbers);
- the instruction shapes where the answer is the label (the demo's ticket rows): text = the prompt (instruction,
  then the input), label = the answer. A file mixing tasks keeps only its ``task == "classification"`` rows.

A batch is ``input_ids``/``attention_mask`` (B, L) and ``labels`` (B,) class ids; the loss is the mean
cross-entropy over its rows (units = rows). Each validation pass writes ``val_loss``, ``val_accuracy`` and
``val_macro_f1``. The run keeps its label map in ``labels.json`` (and, for a full run, in the model's config).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import Example, load_examples, read_rows, split_examples
from core.data.examples import SHAPES, detect_shape
from core.errors import ConfigError, DataError
from core.io import write_json
from core.limits import MAX_FILE_BYTES
from core.methods import PEFT_FORMAT, get_method
from core.models import load_sequence_classifier, pick_device
from core.training.batches import PreparedData, file_sha256
from core.training.model import compute_dtype, make_trainable
from core.training.objectives import Objective, TrainingSession, autocast, register_objective

if TYPE_CHECKING:
    import torch

    from core.runs import Run
    from core.training.config import TrainingConfig

logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
LABELS_FILE = "labels.json"
"""The run's label map, in the run folder: ``{"labels": [class 0, class 1, ...], "text_source": ...}``."""
TEXT_COLUMN, LABEL_COLUMN = "text", "label"
TEXT_SOURCES = ("text", "prompt")
"""What a run was trained to read: a text column, or an instruction row's prompt (instruction + input)."""
HEAD_MODULES = ("pre_classifier", "classifier", "score")  # the new head under AutoModelForSequenceClassification
METHODS = ("full", "freeze", "lora", "ia3")


@dataclass(frozen=True)
class LabelledText:
    """One encoded row: token ids of the text (truncated to max_length) and its class id."""

    input_ids: list[int]
    label: int
    truncated: bool = False

    @property
    def answer_tokens(self) -> int:  # what the loop's "anything to learn from" checks count
        return 1


# --------------------------------------------------------------------------------------------------------------------
# Data: rows -> (text, label) -> encoded rows
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    text: str
    label: str
    line: int | None


def example_text(example: Example, text_source: str) -> str:
    """The text a run of ``text_source`` reads from an instruction example: the prompt (instruction, then input),
    or, for a run trained on a text column, the text the instruction applies to (the input, else the
    instruction)."""
    if text_source == "prompt":
        return example.user_text
    return example.input or example.instruction


def _label_value(path: Path, line: int, row: dict[str, Any], column: str) -> str:
    if column not in row or row[column] is None:
        raise DataError(path, f'missing field "{column}" (the label column; name another with --label-column)', line)
    value = row[column]
    if isinstance(value, bool) or isinstance(value, int | str):
        text = str(value).strip()
        if text:
            return text
        raise DataError(path, f'field "{column}" is empty', line)
    raise DataError(path, f'field "{column}" must be a string or an integer label, got {type(value).__name__}', line)


def _text_value(path: Path, line: int, row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        raise DataError(path, f'missing field "{column}" (the text column; name another with --text-column)', line)
    if not isinstance(value, str):
        raise DataError(path, f'field "{column}" must be a string, got {type(value).__name__}', line)
    if not value.strip():
        raise DataError(path, f'field "{column}" is empty', line)
    return value


def read_labelled(path: str | Path, config: TrainingConfig) -> tuple[list[_Row], str]:
    """(rows, text_source) of one data file: a text/label column file, or instruction rows (answer = label)."""
    path = Path(path)
    rows = read_rows(path, MAX_FILE_BYTES)
    first = rows[0][1] if rows else {}
    if not isinstance(first, dict):
        raise DataError(path, f"expected a JSON object, got {type(first).__name__}", rows[0][0])
    columns = (config.text_column or config.label_column or TEXT_COLUMN in first
               or (LABEL_COLUMN in first and detect_shape(first) is None))
    if columns:
        text_column, label_column = config.text_column or TEXT_COLUMN, config.label_column or LABEL_COLUMN
        out = []
        for line, row in rows:
            if not isinstance(row, dict):
                raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line)
            out.append(_Row(_text_value(path, line, row, text_column), _label_value(path, line, row, label_column),
                            line))
        return out, "text"
    if config.data_shape != "auto" and config.data_shape not in SHAPES:
        raise ConfigError(f"data_shape: unknown value {config.data_shape!r}")
    examples = load_examples(path, config.data_shape).examples
    tasks = Counter(example.task for example in examples)
    if tasks.get(CLASSIFICATION):
        kept = [example for example in examples if example.task == CLASSIFICATION]
        if len(kept) < len(examples):
            logger.info("%s: %d classification rows kept, %d rows of other tasks left out", path.name, len(kept),
                        len(examples) - len(kept))
        examples = kept
    return [_Row(example.user_text, (example.output or "").strip(), None) for example in examples], "prompt"


def _split(rows: list[_Row], fraction: float, seed: int) -> tuple[list[_Row], list[_Row]]:
    """Deterministic train/validation split, stratified by label (core.data's hash order, label as the task)."""
    examples = [Example(row.text, output=row.label, task=row.label, uid=str(i)) for i, row in enumerate(rows)]
    splits = split_examples(examples, validation=fraction, seed=seed)
    return [rows[int(e.uid)] for e in splits.train], [rows[int(e.uid)] for e in splits.validation]


def _max_length(tokenizer: Any, config: TrainingConfig) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    return min(config.max_length, limit) if isinstance(limit, int) and limit < 1_000_000 else config.max_length


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> list[tuple[list[int], bool]]:
    """(token ids cut to ``max_length``, whether they were cut) per text, special tokens included."""
    if not texts:
        return []
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=True)
    mapping = encoded.get("overflow_to_sample_mapping")
    if mapping is None:  # a slow tokenizer: no overflow rows, so no truncation report
        return [(ids, False) for ids in encoded["input_ids"]]
    out: list[tuple[list[int], bool] | None] = [None] * len(texts)
    for ids, sample in zip(encoded["input_ids"], mapping, strict=True):
        out[sample] = (ids, False) if out[sample] is None else (out[sample][0], True)  # type: ignore[index]
    return out  # type: ignore[return-value]


def _encode(tokenizer: Any, example: Example, system: str | None, max_length: int) -> LabelledText:
    """``Objective.encode``: an instruction example's prompt (label -1: ``prepare`` assigns the class ids)."""
    (ids, cut), = encode_texts(tokenizer, [example.user_text], max_length)
    return LabelledText(ids, -1, cut)


def prepare(config: TrainingConfig, load_tokenizer: Any) -> PreparedData:
    """``Objective.prepare``: read the rows, check the labels, split, encode. Bad input is one DataError naming the
    file (and line): a missing label column, a single label, validation labels the training rows lack."""
    train, text_source = read_labelled(config.data, config)
    name = Path(config.data).name
    if config.val_data:
        val, val_source = read_labelled(config.val_data, config)
        if val_source != text_source:
            raise DataError(config.val_data, f"rows of another shape than {name} (a text column in one, instruction "
                            "rows in the other)")
    elif config.val_fraction > 0 and len(train) >= 10:
        train, val = _split(train, config.val_fraction, config.seed)
    else:
        val = []
    counts = Counter(row.label for row in train)
    if len(counts) < 2:
        only = next(iter(counts), None)
        raise DataError(config.data, f"every training row has the label {only!r}; classification needs at least two "
                        "labels")
    labels = sorted(counts)
    unseen = next((row for row in val if row.label not in counts), None)
    if unseen is not None:
        where = config.val_data or config.data
        raise DataError(where, f"validation label {unseen.label!r} does not occur in the training rows of {name} "
                        f"(labels: {', '.join(labels)})", unseen.line)
    tokenizer = load_tokenizer()
    limit = _max_length(tokenizer, config)
    index = {label: i for i, label in enumerate(labels)}

    def encode(rows: list[_Row]) -> list[LabelledText]:
        return [LabelledText(ids, index[row.label], cut)
                for row, (ids, cut) in zip(rows, encode_texts(tokenizer, [row.text for row in rows], limit),
                                           strict=True)]

    train_enc = encode(train)
    val_enc = encode(val[: config.max_eval_examples or len(val)])
    info = {"labels": labels, "text_source": text_source, "label_counts": dict(sorted(counts.items()))}
    logger.info("%s: %d training rows, %d validation, %d labels (%s)", name, len(train_enc), len(val_enc),
                len(labels), ", ".join(labels))
    return PreparedData(train_enc, val_enc, file_sha256(config.data, config.val_data),
                        sum(e.truncated for e in train_enc), info)


# --------------------------------------------------------------------------------------------------------------------
# Batches and loss
# --------------------------------------------------------------------------------------------------------------------


def collate(rows: list[LabelledText], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Shapes: input_ids, attention_mask (B, L); labels (B,)."""
    import torch

    width = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row.input_ids)] = torch.tensor(row.input_ids)
        mask[i, : len(row.input_ids)] = 1
    labels = torch.tensor([row.label for row in rows], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def class_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, num_labels) logits of the head, in fp32."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def _loss(model: Any, batch: dict[str, torch.Tensor], fast: bool) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(class_logits(model, batch), batch["labels"])


def _units(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["labels"].shape[0])


def macro_f1(gold: list[int], predicted: list[int]) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in ``gold`` or ``predicted`` (sklearn's
    ``f1_score(average="macro")``)."""
    classes = sorted(set(gold) | set(predicted))
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


# --------------------------------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------------------------------


def head_modules(model: Any) -> list[Any]:
    """The modules of the classification head (and a BERT's pooler, which only the head reads)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = [getattr(base, name) for name in HEAD_MODULES if getattr(base, name, None) is not None]
    encoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    pooler = getattr(encoder, "pooler", None)
    return found + ([pooler] if pooler is not None else [])


def _method_config_for(config: TrainingConfig, model: Any) -> TrainingConfig:
    """IA3's default modules name a Llama's layers (k_proj, v_proj, down_proj); for another architecture (a BERT's
    key, value, output.dense) left at the defaults, PEFT's own mapping for that model type is used instead."""
    if config.method != "ia3":
        return config
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    defaults = get_method("ia3").make_config({}).to_dict()
    chosen = config.method_config
    kind = getattr(model.config, "model_type", None)
    same = all(chosen.get(key) == defaults[key] for key in ("target_modules", "feedforward_modules"))
    if not same or kind not in TARGETS or TARGETS[kind] == TARGETS.get("llama"):
        return config
    logger.info("ia3 on a %s: target_modules %s, feedforward_modules %s (PEFT's defaults for it)", kind,
                TARGETS[kind], FEEDFORWARD[kind])
    values = {**chosen, "target_modules": list(TARGETS[kind]), "feedforward_modules": list(FEEDFORWARD[kind])}
    return dataclasses.replace(config, method_config=values)


class ClassificationSession(TrainingSession):
    """A classification run: the base with a fresh head over the data's labels, trained by the method."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.last: dict[str, float | None] = {}  # the latest validation measures (for summary)
        super().__init__(*args, **kwargs)

    @property
    def labels(self) -> list[str]:
        return list(self.data.info["labels"])

    def load_model(self) -> tuple[Any, Any, torch.dtype]:
        import torch

        method = get_method(self.config.method)
        device = pick_device(self.config.device)
        compute = compute_dtype(self.config, device)
        store = compute if method.save_format == PEFT_FORMAT else torch.float32  # trained weights stay fp32
        loaded = load_sequence_classifier(self.config.base_model, self.labels, device=device, dtype=store)
        if loaded.tokenizer.pad_token_id is None:
            raise ConfigError(f"base_model: {loaded.resolved.name} has no pad or eos token")
        config = _method_config_for(self.config, loaded.model)
        model = make_trainable(loaded.model, config, loaded.tokenizer, self.total_steps, task_type="SEQ_CLS")
        if method.save_format != PEFT_FORMAT:  # PEFT trains the head through modules_to_save; full/freeze: open it
            for module in head_modules(model):
                module.requires_grad_(True)
                module.float()
        return model, loaded, compute

    def evaluate(self, examples: list[Any]) -> dict[str, float | None]:
        """Mean cross-entropy, accuracy and macro-F1 over ``examples`` (None each when there are none)."""
        import torch
        import torch.nn.functional as F

        if not examples:
            return {"val_loss": None, "val_accuracy": None, "val_macro_f1": None}
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding
        total, gold, predicted = 0.0, [], []
        with torch.no_grad(), autocast(self.device, self.compute):
            for start in range(0, len(order), self.config.batch_size):
                batch = self.collate([examples[i] for i in order[start : start + self.config.batch_size]])
                logits = class_logits(self.model, batch)  # (B, num_labels)
                total += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
                gold += batch["labels"].tolist()
                predicted += logits.argmax(-1).tolist()
        self.model.train(was_training)
        accuracy = sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)
        self.last = {"val_loss": total / len(gold), "val_accuracy": round(accuracy, 6),
                     "val_macro_f1": round(macro_f1(gold, predicted), 6)}
        return dict(self.last)

    def save(self, run: Run) -> Path:
        """The method's weights (full: a whole AutoModelForSequenceClassification folder with the label map in its
        config; PEFT: the adapter with the head; freeze: the trained tensors, head included), then labels.json."""
        folder = super().save(run)
        write_json(run.path / LABELS_FILE, {"labels": self.labels, "text_source": self.data.info["text_source"],
                                            "base_model": self.base_model_name,
                                            "model_type": getattr(self.loaded.model.config, "model_type", None)})
        return folder

    def summary(self) -> dict[str, Any]:
        return {"labels": self.labels, "val_accuracy": self.last.get("val_accuracy"),
                "val_macro_f1": self.last.get("val_macro_f1")}


def _check(config: TrainingConfig) -> None:
    for name in ("text_column", "label_column"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{name}: must name a column of the data, got {value!r}")
    if config.text_column and config.text_column == config.label_column:
        raise ConfigError(f"label_column: must differ from text_column (both {config.text_column!r})")


register_objective(Objective(
    CLASSIFICATION, "Classification head",
    "A sequence-classification head over the base model (an encoder's [CLS] state or a decoder's last token), "
    "trained with cross-entropy on labels from the data; the method decides what else trains.",
    _encode, collate, _loss, _units, lambda model: False, session=ClassificationSession, prepare=prepare,
    check=_check, methods=METHODS, fields=("text_column", "label_column"),
))
