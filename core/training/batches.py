"""Training data as batches: load, split and encode (through the objective), one epoch's micro-batches (grouped by
length, reproducible per seed and epoch). Collation is the objective's."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import Example, load_examples, split_examples
from core.errors import ConfigError
from core.methods import training_task_ids
from core.training.objectives import PreparedData, get_objective

if TYPE_CHECKING:
    from core.training.config import TrainingConfig


def file_sha256(*paths: str | None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def prepare_data(config: TrainingConfig, load_tokenizer: Callable[[], Any]) -> PreparedData:
    """Load, split and encode the training and validation examples. ``load_tokenizer`` is called once the data
    files have been read: a bad file fails before any model loads. An objective that reads its data its own way
    (``Objective.prepare``) does it instead."""
    objective = get_objective(config.objective)
    if objective.prepare is not None:
        return objective.prepare(config, load_tokenizer)
    train: list[Example] = load_examples(config.data, config.data_shape).examples
    if config.val_data:
        val: list[Example] = load_examples(config.val_data, config.data_shape).examples
    elif config.val_fraction > 0 and len(train) >= 10:
        splits = split_examples(train, validation=config.val_fraction, seed=config.seed)
        train, val = splits.train, splits.validation
    else:
        val = []
    val = val[: config.max_eval_examples or len(val)]
    train_tasks = training_task_ids(config.method, config.method_config, train, config.data)  # None: no routing
    val_tasks = None if train_tasks is None else training_task_ids(config.method, config.method_config, val,
                                                                   config.val_data or config.data)
    tokenizer = load_tokenizer()
    encode = lambda ex: objective.encode(tokenizer, ex, config.system_prompt, config.max_length)  # noqa: E731
    train_enc = [encode(ex) for ex in train]
    val_enc = [encode(ex) for ex in val]
    if train_tasks is not None:  # multi-task prompt tuning: each row carries its task id
        train_enc = [replace(e, task_id=t) for e, t in zip(train_enc, train_tasks, strict=True)]
        val_enc = [replace(e, task_id=t) for e, t in zip(val_enc, val_tasks or [], strict=True)]
    if not any(e.answer_tokens for e in train_enc):
        raise ConfigError(f"data: {Path(config.data).name} has no answer tokens to learn from")
    return PreparedData(train_enc, val_enc, file_sha256(config.data, config.val_data),
                        sum(e.truncated for e in train_enc))


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Index lists of one epoch's micro-batches; the same (seed, epoch) always gives the same batches.

    Group by length: shuffle, cut into windows of 16 batches, sort each window by length, cut into batches, shuffle
    the batches. Padding then stays small while the order stays random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


PASS_COST_TOKENS = 64
"""What one more forward+backward pass costs on a CPU, in padded tokens: a pass reads every weight twice whatever its
size (135M bf16 model, 2-core AMD EPYC: 1 x 16 tokens 0.30 s, 1 x 256 0.85 s; 64 vs 128 within the noise, 0 at 56%
of the speed: README, "Every lever, measured")."""


def split_by_tokens(rows: list[int], lengths: list[int], max_tokens: int,
                    pass_cost: int = PASS_COST_TOKENS) -> list[list[int]]:
    """One forward pass's rows cut into parts of at most ``max_tokens`` padded tokens each (rows x the longest row's
    length), in the cheapest way: rows sorted longest first, cut where the padding saved is worth more than
    ``pass_cost`` tokens of another pass (exact, by dynamic programming over the cut points). A row longer than
    ``max_tokens`` goes alone. ``max_tokens`` 0, or one part is cheapest: ``[rows]`` unchanged. The loop weighs each
    part's loss by its units, so the step's gradient is the same sum whatever the parts."""
    if not rows or not max_tokens:
        return [rows]
    order = sorted(rows, key=lambda i: lengths[i], reverse=True)
    # cost[j]: the cheapest parts of order[:j]; the part order[i:j] costs (j - i) * lengths[order[i]] + pass_cost
    cost = [0] + [None] * len(order)
    first: list[int] = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j - 1, -1, -1):
            size = (j - i) * lengths[order[i]]
            if size > max_tokens and i < j - 1:
                break  # a longer part (smaller i) only grows
            total = cost[i] + size + pass_cost
            if cost[j] is None or total < cost[j]:
                cost[j], first[j] = total, i
    parts, j = [], len(order)
    while j:
        parts.append(order[first[j] : j])
        j = first[j]
    return parts[::-1] if len(parts) > 1 else [rows]  # one part: the rows as they came
