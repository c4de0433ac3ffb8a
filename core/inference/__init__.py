"""Inference: generation settings and the model.generate path (generation), the continuous-batching decoder
(decoder), the adapter host that serves runs on one shared base model (host), loading or merging a trained run
(loading), a classification run's label predictions (classifier), and vLLM as an optional engine on GPU machines
(vllm: imported only where it is asked for)."""

from core.errors import AdapterError
from core.inference.classifier import Classifier, Prediction, is_classification_run, load_classifier
from core.inference.decoder import generate_batch, generate_reply
from core.inference.generation import DECODERS, Generated, GenerationConfig, Reply, TextCallback, vllm_unavailable
from core.inference.host import BASE, AdapterHost, AdapterInfo
from core.inference.loading import load_trained_model, merge_and_export, merge_refusal
from core.inference.vllm import VllmGenerator, VllmServing, vllm_serving

__all__ = ["BASE", "DECODERS", "AdapterError", "AdapterHost", "AdapterInfo", "Classifier", "Generated",
           "GenerationConfig", "Prediction", "Reply", "TextCallback", "generate_batch", "generate_reply",
           "VllmGenerator", "VllmServing", "is_classification_run", "load_classifier", "load_trained_model",
           "merge_and_export", "merge_refusal", "vllm_serving", "vllm_unavailable"]
