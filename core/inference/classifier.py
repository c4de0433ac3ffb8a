"""A classification run at inference: its head and weights loaded, texts in, a label and the class probabilities out.

A classification run (``config.json`` objective ``classification``, core.training.classification) has no generation:
the Arena and Evaluate answer its ``finetuned`` variant with the predicted label. Any of its methods loads: full (a
whole AutoModelForSequenceClassification folder), freeze (the trained tensors, head included, over the base) or a
PEFT adapter (its head restored from ``modules_to_save``). Its base need not be the arena's base model (the bundled
MiniLM encoder is not a chat model), so it is loaded on its own, never through the AdapterHost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import Example
from core.errors import AdapterError, RunStateError
from core.io import read_json
from core.methods import FULL_FORMAT, PARTIAL_FORMAT, get_method
from core.methods.artifacts import check_run_weights
from core.methods.loading import apply_partial_weights
from core.models import LoadedModel, load_sequence_classifier, pick_device, pick_dtype, resolve_base_model
from core.runs import Run

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
LABELS_FILE = "labels.json"  # written by core.training.classification beside the run's weights


@dataclass(frozen=True)
class Prediction:
    """One text's class: ``label`` and every class's probability (summing to 1), most likely first."""

    label: str
    probabilities: dict[str, float]


def is_classification_run(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` trained a classification head (its config.json says so)."""
    path = Path(run_dir) / "config.json"
    try:
        config = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("objective") == CLASSIFICATION


def read_labels(run_dir: str | Path) -> tuple[list[str], str]:
    """(labels in class-id order, text_source) from a classification run's labels.json; AdapterError otherwise."""
    path = Path(run_dir) / LABELS_FILE
    try:
        saved = read_json(path)
    except FileNotFoundError:
        raise AdapterError(f"adapter: {Path(run_dir).name} has no {LABELS_FILE} (a classification run saves its "
                           "label map when training ends)") from None
    except (OSError, ValueError) as err:
        raise AdapterError(f"adapter: {path}: {str(err).splitlines()[0]}") from None
    labels = saved.get("labels") if isinstance(saved, dict) else None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise AdapterError(f"adapter: {path}: labels must be a list of at least two strings")
    return labels, str(saved.get("text_source") or "prompt")


class Classifier:
    """A loaded classification run. ``predict(texts)`` -> one Prediction per text, in batches; ``text_of(example)``:
    the text the run was trained to read from an instruction example (core.training.classification)."""

    def __init__(self, loaded: LoadedModel, labels: list[str], text_source: str, run_dir: Path,
                 max_length: int = 512) -> None:
        self.loaded, self.labels, self.text_source, self.run_dir = loaded, labels, text_source, run_dir
        self.max_length = max_length

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def text_of(self, example: Example) -> str:
        if self.text_source == "prompt":
            return example.user_text
        return example.input or example.instruction

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), num_labels) fp32 logits of one batch."""
        import torch

        batch = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True,
                               return_tensors="pt").to(self.loaded.device)
        with torch.no_grad():
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def predict(self, texts: Sequence[str], *, batch_size: int = 16) -> list[Prediction]:
        """The label and class probabilities of each text (batches of ``batch_size``, sorted by length)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[Prediction | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            probabilities = self.logits([texts[i] for i in rows]).softmax(-1).cpu()  # (B, num_labels)
            for row, probs in zip(rows, probabilities.tolist(), strict=True):
                ranked = sorted(zip(self.labels, probs, strict=True), key=lambda pair: -pair[1])
                out[row] = Prediction(ranked[0][0], {label: round(p, 6) for label, p in ranked})
        return out  # type: ignore[return-value]


def load_classifier(run_dir: str | Path, *, device: str | None = None, dtype: str | None = None) -> Classifier:
    """A classification run ready to predict, in eval mode. Its files are checked first (core.methods.artifacts:
    truncated, garbled or pickled weights are an AdapterError naming the file)."""
    run = Run(Path(run_dir))
    if not is_classification_run(run.path):
        raise AdapterError(f"adapter: {run.run_id} is not a classification run")
    check_run_weights(run.path)
    labels, text_source = read_labels(run.path)
    values = run.config
    method = get_method(values.get("method"))
    weights = run.weights_dir
    if weights is None:
        raise RunStateError(f"run: {run.run_id} saved no weights (status {run.state})")
    start = time.perf_counter()
    if method.save_format == FULL_FORMAT:
        loaded = _load_full(weights, device, dtype)
    else:
        loaded = load_sequence_classifier(values.get("base_model"), labels, device=device, dtype=dtype)
        model = loaded.model
        if method.save_format == PARTIAL_FORMAT:
            apply_partial_weights(model, weights / method.storage.weights_file, run.run_id)
        else:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(weights))
        model.eval()
        loaded = LoadedModel(model, loaded.tokenizer, loaded.resolved, loaded.device, loaded.dtype, loaded.load_s)
    id2label = {int(i): label for i, label in loaded.model.config.id2label.items()}
    if [id2label.get(i) for i in range(len(labels))] != labels:
        raise AdapterError(f"adapter: {run.run_id}: the model's labels differ from {LABELS_FILE}")
    limit = int(values.get("max_length") or 512)
    logger.info("classifier %s (%s, %d labels) loaded in %.1f s", run.run_id, method.name, len(labels),
                time.perf_counter() - start)
    return Classifier(loaded, labels, text_source, run.path, limit)


def _load_full(folder: Path, device: str | None, dtype: str | None) -> LoadedModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.perf_counter()
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch_dtype).to(device).eval()
    return LoadedModel(model, tokenizer, resolve_base_model(str(folder)), device, torch_dtype,
                       time.perf_counter() - start)
