"""Hybrid recipes the loop applies on top of a method: learning rates by depth and gradual unfreezing.

``parameter_groups`` gives AdamW its groups once, at the start of a run (and checks that the method allows the
recipe); ``before_step`` runs before each optimizer step. With the defaults (``layerwise_lr_decay`` 1.0,
``gradual_unfreezing`` 0) they are one group of the trainable weights and (for most methods) a no-op.

- ``layerwise_lr_decay`` d (full, freeze): a block k blocks below the top one trains at lr * d**k; what lies below
  every block (the embeddings) at the lowest rate, lr * d**n_blocks; what lies above (the final norm, the LM or
  classification head) at lr. A tied embedding / LM head is one tensor: it counts as the embeddings.
- ``gradual_unfreezing`` N (freeze): the top block trains from step 0, and one more, from the top, every N steps
  until all ``trainable_layers`` blocks train; the final norm and head train throughout and the embeddings (when
  ``train_embeddings``) open with the last block. Every candidate weight is in the optimizer from the start and keeps
  ``requires_grad``; a closed one's gradient is dropped after backward (core.methods.gates), so AdamW skips it and it
  stays bit-identical until it opens, and a resumed run opens the same blocks (they follow from the step).

``config`` arguments are TrainingConfigs, annotated ``Any``: core.training.config imports this module.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError
from core.methods import get_method
from core.methods.builders import find_blocks
from core.methods.gates import gate_of

BLOCK_METHODS = ("full", "freeze")  # methods whose trainable weights are whole blocks


def check(config: Any) -> None:
    """ConfigError naming the field when the method cannot use a hybrid setting."""
    if config.layerwise_lr_decay != 1.0 and config.method not in BLOCK_METHODS:
        raise ConfigError(f"layerwise_lr_decay: only full and freeze train whole blocks; got method {config.method}")
    if config.gradual_unfreezing and config.method != "freeze":
        raise ConfigError(f"gradual_unfreezing: only freeze opens blocks one by one; got method {config.method}")


def _depths(model: Any) -> tuple[int, dict[int, int]]:
    """(number of blocks, {id(param): depth}) where depth is 0 for the top block's weights, k for the block k below
    it, n_blocks for weights below every block (embeddings) and -1 for weights above them (final norm, head)."""
    _, blocks = find_blocks(model)
    n = len(blocks)
    depth: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for param in block.parameters():
            depth[id(param)] = n - 1 - index
    seen_block = False
    for param in model.parameters():  # registration order: embeddings, blocks, final norm, head
        if id(param) in depth:
            seen_block = True
        else:
            depth[id(param)] = -1 if seen_block else n
    return n, depth


def parameter_groups(model: Any, config: Any, lr: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: one group of every trainable weight at ``lr``, or with ``layerwise_lr_decay`` one
    group per depth (``"depth"``: 0 = top block, -1 = above the blocks) at lr * decay**max(depth, 0). Sets up
    gradual unfreezing. ConfigError naming the field when the method cannot use the setting."""
    check(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.gradual_unfreezing:
        _gate_blocks(model, config)
    if config.layerwise_lr_decay == 1.0:
        return [{"params": trainable, "lr": lr}]
    _, depth = _depths(model)
    groups: dict[int, list[Any]] = {}
    for param in trainable:
        groups.setdefault(depth[id(param)], []).append(param)
    return [{"params": params, "lr": lr * config.layerwise_lr_decay ** max(d, 0), "depth": d}
            for d, params in sorted(groups.items())]


def open_blocks(config: Any, step: int) -> int:
    """How many of the top candidate blocks train at optimizer step ``step`` (0-based) under gradual unfreezing."""
    layers = get_method(config.method).make_config(config.method_config).trainable_layers
    return min(layers, 1 + step // config.gradual_unfreezing)


def _gate_blocks(model: Any, config: Any) -> None:
    """Gradual unfreezing: the k-th candidate block from the top (k = 0 the top) opens at step k * N."""
    n, depth = _depths(model)
    layers = get_method(config.method).make_config(config.method_config).trainable_layers
    by_depth: dict[int, list[Any]] = {}
    for param in model.parameters():
        if param.requires_grad:
            by_depth.setdefault(depth[id(param)], []).append(param)
    gate = gate_of(model, create=True)
    every = config.gradual_unfreezing
    for d, params in by_depth.items():
        if d == -1:
            continue  # final norm and head: train throughout
        opens_at = (layers - 1 if d == n else d) * every  # embeddings open with the last candidate block
        gate.add(params, lambda step, opens_at=opens_at: step >= opens_at)


def before_step(model: Any, config: Any, step: int) -> None:
    """Before optimizer step ``step`` + 1: tell the model's gate (gradual unfreezing, multi-task prompt tuning's
    stages) which step runs, so it drops the gradients of the weights closed at that step."""
    gate = gate_of(model)
    if gate is not None:
        gate.set_step(step)
