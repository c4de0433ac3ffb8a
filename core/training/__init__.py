"""Training: settings and presets (config), the objective seam (objectives), data to batches (batches), the loop
(loop), checkpoints (checkpoint), weight saving (weights) and memory (memory). Entry points: ``train``, ``resume``."""

from core.errors import TrainingOutOfMemoryError
from core.training import classification, distillation, dpo  # noqa: F401  (each registers its objective)
from core.training.batches import PreparedData, epoch_batches, prepare_data
from core.training.config import PRESETS_DIR, SCHEDULERS, TrainingConfig, list_presets, load_preset
from core.training.loop import EvalCallback, StepCallback, TrainResult, resume, train
from core.training.memory import is_out_of_memory, out_of_memory_message, release_memory
from core.training.model import load_training_model
from core.training.objectives import (
    OBJECTIVES,
    Objective,
    TrainingResources,
    TrainingSession,
    answer_loss,
    collate,
    evaluate_loss,
    get_objective,
    loss_tokens,
    register_objective,
    supports_answer_only_head,
)

__all__ = [
    "OBJECTIVES", "PRESETS_DIR", "SCHEDULERS", "EvalCallback", "Objective", "PreparedData", "StepCallback",
    "TrainResult", "TrainingConfig", "TrainingOutOfMemoryError", "answer_loss", "collate", "epoch_batches",
    "evaluate_loss", "get_objective", "is_out_of_memory", "list_presets", "load_preset", "load_training_model",
    "loss_tokens", "out_of_memory_message", "prepare_data", "register_objective", "release_memory", "resume",
    "supports_answer_only_head", "train", "TrainingResources", "TrainingSession",
]
