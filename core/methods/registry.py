"""The method registry: name -> settings class, builder and the facts the rest of the product asks about a method.

A method is *which weights train*; it is orthogonal to the training objective (core.training.objectives). Its entry
owns every fact about it: how it saves (core.runs.SaveFormat: folder and weights file), its PEFT type (checked when
a run is loaded), whether its adapters share a batch with other rows at inference, whether it merges into the base.
Add a method: a config class in configs.py, a builder in builders.py, one ``register_method`` call below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from core.errors import ConfigError
from core.methods.builders import (
    Builder,
    build_adalora,
    build_freeze,
    build_full,
    build_ia3,
    build_lora,
    build_multitask_prompt_tuning,
    build_p_tuning,
    build_prefix_tuning,
    build_prompt_tuning,
    build_qlora,
)
from core.methods.configs import (
    AdaLoraConfig,
    FreezeConfig,
    FullConfig,
    IA3Config,
    LoraConfig,
    MethodConfig,
    MultitaskPromptTuningConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    QLoraConfig,
)
from core.registry import Registry
from core.runs import FULL_FORMAT, PARTIAL_FORMAT, PEFT_FORMAT, SAVE_FORMATS, SaveFormat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    description: str
    config_class: type[MethodConfig]
    builder: Builder
    save_format: str  # PEFT_FORMAT, FULL_FORMAT or PARTIAL_FORMAT
    default_lr: float
    peft_type: str | None = None  # PEFT's peft_type in adapter_config.json (PEFT methods)
    mergeable: bool = False  # its weights fold into the base for a standalone export (LoRA family, layer-wise)
    prompt_learning: bool = False  # virtual tokens / prefixes: cannot share a batch with other adapters
    batch_mixable: bool = False  # its adapters share a batch with base rows through PEFT's adapter_names
    task_routed: bool = False  # a batch carries each row's task id (multi-task prompt tuning): rows need a task
    quantized_base: bool = False  # the frozen base loads through bitsandbytes

    @property
    def storage(self) -> SaveFormat:
        """Where and how the trained weights are saved in a run folder."""
        return SAVE_FORMATS[self.save_format]

    @property
    def weights_folder(self) -> str:
        return self.storage.folder

    def mixes_in_batch(self, settings: dict[str, Any] | None = None) -> bool:
        """Whether a run of this method, with its saved ``settings``, shares inference batches with other rows
        (DoRA's magnitude vector is not selectable per row, and fully trained blocks (``unfreeze_top``) are whole
        modules whose forward PEFT cannot split by row, so such a LoRA gets a batch of its own)."""
        settings = settings or {}
        return self.batch_mixable and not settings.get("use_dora") and not settings.get("unfreeze_top")

    def make_config(self, values: dict[str, Any] | MethodConfig | None = None) -> MethodConfig:
        if isinstance(values, self.config_class):
            return values
        if isinstance(values, MethodConfig):
            raise ConfigError(f"method_config: a {type(values).__name__} given for method {self.name}")
        return self.config_class.from_dict(values)  # type: ignore[arg-type]

    def settings(self) -> list[dict[str, Any]]:
        """The method's settings as ``{name, default, type, help}`` rows (for a UI form or ``--help``)."""
        return [{"name": f.name, "default": f.default, "type": f.type, "help": f.metadata.get("help", "")}
                for f in fields(self.config_class)]


METHODS: Registry[Method] = Registry("method")
get_method = METHODS.lookup


def register_method(method: Method) -> Method:
    if method.save_format not in SAVE_FORMATS:
        raise ValueError(f"method {method.name}: unknown save format {method.save_format!r}")
    return METHODS.register(method)


for _method in (
    Method("full", "Full fine-tuning", "Every weight of the model trains.", FullConfig, build_full, FULL_FORMAT, 2e-5),
    Method("freeze", "Layer-wise (freeze)", "Only the top N transformer blocks train; the rest stay frozen.",
           FreezeConfig, build_freeze, PARTIAL_FORMAT, 5e-5, mergeable=True),
    Method("lora", "LoRA", "Low-rank update matrices beside frozen weights (optionally DoRA / rsLoRA).",
           LoraConfig, build_lora, PEFT_FORMAT, 2e-4, peft_type="LORA", mergeable=True, batch_mixable=True),
    Method("qlora", "QLoRA", "LoRA over a 4-bit or 8-bit quantized frozen base (bitsandbytes).",
           QLoraConfig, build_qlora, PEFT_FORMAT, 2e-4, peft_type="LORA", mergeable=True, batch_mixable=True,
           quantized_base=True),
    Method("prompt_tuning", "Prompt tuning", "A learned soft prompt prepended to the input embeddings.",
           PromptTuningConfig, build_prompt_tuning, PEFT_FORMAT, 3e-2, peft_type="PROMPT_TUNING",
           prompt_learning=True),
    Method("multitask_prompt_tuning", "Multi-task prompt tuning",
           "One soft prompt shared by all tasks times a low-rank factor of each task's own; rows carry a task id.",
           MultitaskPromptTuningConfig, build_multitask_prompt_tuning, PEFT_FORMAT, 3e-2,
           peft_type="MULTITASK_PROMPT_TUNING", prompt_learning=True, task_routed=True),
    Method("prefix_tuning", "Prefix tuning", "Learned key/value prefixes in every attention layer.",
           PrefixTuningConfig, build_prefix_tuning, PEFT_FORMAT, 1e-2, peft_type="PREFIX_TUNING",
           prompt_learning=True),
    Method("p_tuning", "P-tuning", "Virtual tokens produced by a small trained prompt encoder (MLP or LSTM).",
           PTuningConfig, build_p_tuning, PEFT_FORMAT, 1e-2, peft_type="P_TUNING", prompt_learning=True),
    Method("ia3", "IA3", "Learned scales on attention keys/values and feed-forward activations.",
           IA3Config, build_ia3, PEFT_FORMAT, 3e-3, peft_type="IA3", mergeable=True),
    Method("adalora", "AdaLoRA", "LoRA whose rank budget is re-allocated across matrices during training.",
           AdaLoraConfig, build_adalora, PEFT_FORMAT, 5e-4, peft_type="ADALORA", mergeable=True),
):
    register_method(_method)
