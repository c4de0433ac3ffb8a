"""Shared fixtures. Tests never download: the hub is switched off before anything imports transformers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from tiny_models import build_tiny_llama, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Llama + tokenizer saved as a transformers folder (safetensors)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tune_home(tmp_path, monkeypatch) -> Path:
    """An empty $TUNE_ARENA_HOME for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNE_ARENA_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def bundled_home(tmp_path_factory) -> Path:
    """One $TUNE_ARENA_HOME shared by the integration tests, so the GGUF conversion runs once per session."""
    return tmp_path_factory.mktemp("tune-arena-home")
