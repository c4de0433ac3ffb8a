"""Session fixtures over the bundled models: the demo corpus indexed once with all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import demo_path


@pytest.fixture(scope="session")
def embedder():
    """The bundled all-MiniLM-L6-v2 as a retrieval Embedder, resolved as the engine does (core.models)."""
    from core.models import default_embedding_model, load_embedding_model
    from retrieval import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(load_embedding_model(), default_embedding_model())


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory, embedder) -> tuple[Path, object]:
    """(index folder, BuildResult) of the demo corpus with the default settings."""
    from retrieval import build_index

    folder = tmp_path_factory.mktemp("indexes") / "demo"
    result = build_index([str(demo_path("corpus"))], folder, embedder)
    return folder, result
