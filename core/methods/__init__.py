"""Fine-tuning methods (which weights train): settings (configs), builders, the registry of their facts, and the
checks on a run's saved weights (artifacts)."""

from core.methods.builders import BuildContext, count_parameters, quantization_config
from core.methods.configs import MethodConfig
from core.methods.registry import METHODS, Method, get_method, register_method
from core.runs import FULL_FORMAT, PARTIAL_FORMAT, PEFT_FORMAT

__all__ = ["FULL_FORMAT", "METHODS", "PARTIAL_FORMAT", "PEFT_FORMAT", "BuildContext", "Method", "MethodConfig",
           "count_parameters", "get_method", "quantization_config", "register_method"]
