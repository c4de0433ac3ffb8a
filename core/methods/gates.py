"""Parameters that train in some optimizer steps only (gradual unfreezing, the stages of multi-task prompt tuning).

A closed parameter keeps ``requires_grad`` but its gradient is dropped (set to None) right after backward
accumulates it, so AdamW skips it entirely (no update, no weight decay, no optimizer state), exactly as if it were
frozen. Toggling ``requires_grad`` instead would change which tensors a checkpoint holds from step to step, and a
resumed run could not tell which ones to load; here the trainable set never changes and what is open follows from
the step alone. The price: backward still computes the closed parameters' gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

GATE_ATTRIBUTE = "tune_arena_gate"

StepRule = Callable[[int], bool]  # optimizer step (0-based, the one about to run) -> whether the parameters train


class GradientGate:
    """Rules ``step -> open`` for groups of parameters; ``set_step`` before each optimizer step."""

    def __init__(self) -> None:
        self.step = 0
        self._hooks: list[Any] = []

    def add(self, params: Iterable[Any], is_open: StepRule) -> None:
        for param in params:
            self._hooks.append(param.register_post_accumulate_grad_hook(partial(self._drop, is_open)))

    def _drop(self, is_open: StepRule, param: Any) -> None:
        if not is_open(self.step):
            param.grad = None

    def set_step(self, step: int) -> None:
        self.step = step

    def remove(self) -> None:
        """Take the hooks off (the parameters then always train)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def gate_of(model: Any, *, create: bool = False) -> GradientGate | None:
    """The model's gate (made and attached on first use with ``create``), or None."""
    gate = getattr(model, GATE_ATTRIBUTE, None)
    if gate is None and create:
        gate = GradientGate()
        setattr(model, GATE_ATTRIBUTE, gate)  # a plain attribute (not a submodule): it goes with the model
    return gate
