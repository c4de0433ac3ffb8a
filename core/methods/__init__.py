"""Fine-tuning methods (which weights train): settings (configs), builders, the registry of their facts, the checks
on a run's saved weights (artifacts), task ids for methods that route rows by task (multitask) and weights that
train in some steps only (gates)."""

from core.methods.builders import BuildContext, count_parameters, quantization_config
from core.methods.configs import MethodConfig
from core.methods.multitask import generation_task_ids, routes_tasks, run_tasks, training_task_ids
from core.methods.registry import METHODS, Method, get_method, register_method
from core.runs import FULL_FORMAT, PARTIAL_FORMAT, PEFT_FORMAT

__all__ = ["FULL_FORMAT", "METHODS", "PARTIAL_FORMAT", "PEFT_FORMAT", "BuildContext", "Method", "MethodConfig",
           "count_parameters", "generation_task_ids", "get_method", "quantization_config", "register_method",
           "routes_tasks", "run_tasks", "training_task_ids"]
