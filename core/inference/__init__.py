"""Inference: generation settings and the model.generate path (generation), the continuous-batching decoder
(decoder), the adapter host that serves runs on one shared base model (host), loading or merging a trained run
(loading), and a classification run's label predictions (classifier)."""

from core.errors import AdapterError
from core.inference.classifier import Classifier, Prediction, is_classification_run, load_classifier
from core.inference.decoder import generate_batch, generate_reply
from core.inference.generation import DECODERS, Generated, GenerationConfig, Reply, TextCallback
from core.inference.host import BASE, AdapterHost, AdapterInfo
from core.inference.loading import load_trained_model, merge_and_export, merge_refusal

__all__ = ["BASE", "DECODERS", "AdapterError", "AdapterHost", "AdapterInfo", "Classifier", "Generated",
           "GenerationConfig", "Prediction", "Reply", "TextCallback", "generate_batch", "generate_reply",
           "is_classification_run", "load_classifier", "load_trained_model", "merge_and_export", "merge_refusal"]
