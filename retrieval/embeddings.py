"""Embedders: texts -> L2-normalised float32 vectors, plus the token spans the chunker counts with.

``SentenceTransformerEmbedder`` wraps any sentence-transformers model (bundled all-MiniLM-L6-v2 by default).
Tests use a small deterministic fake with the same interface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (texts done, texts total)


class Embedder(Protocol):
    """What the index needs from an embedding model."""

    name: str  # recorded in the manifest; an index refuses to load with an embedder of another name
    dimension: int
    max_tokens: int

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, on_progress: Progress | None = None) -> np.ndarray:
        """(len(texts), dimension) float32, each row of unit length."""
        ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); float32, C-contiguous."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class SentenceTransformerEmbedder:
    """A sentence-transformers model as an Embedder. ``name`` is the registry name, hub id or folder it came from."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension = int(get_dimension())
        self.max_tokens = int(model.max_seq_length or 512) - 2  # [CLS] and [SEP]

    @classmethod
    def load(cls, name: str, *, device: str | None = None) -> SentenceTransformerEmbedder:
        """The sentence-transformers model ``name`` (a hub id or a folder) as an Embedder. Resolving the product's
        bundled model names and its cache is the engine's job (``Engine.embedder``); this loads what it is given."""
        from sentence_transformers import SentenceTransformer

        return cls(SentenceTransformer(name, device=device), name)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoded = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(start, end) for start, end in encoded["offset_mapping"] if end > start]

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, on_progress: Progress | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # encode in slices so progress can be reported; each slice is length-sorted inside sentence-transformers
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        step = max(batch_size * 4, 1)
        for begin in range(0, len(order), step):
            index = order[begin:begin + step]
            vectors = self.model.encode([texts[i] for i in index], batch_size=batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False)
            out[index] = vectors
            if on_progress:
                on_progress(min(begin + step, len(texts)), len(texts))
        return normalise(out)
