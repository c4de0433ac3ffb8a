"""Retrieval: documents -> chunks -> embeddings -> a knowledge base (FAISS or Qdrant) you can search and evaluate.

A library of its own: it never imports gradio nor the engine (only core's base layer: errors, io, limits), and takes
the embedding model as an ``Embedder`` it is given. Typical use::

    embedder = SentenceTransformerEmbedder.load(path)        # a sentence-transformers folder or hub id
    build_index(["assets/demo/corpus"], "workspace/indexes/demo", embedder)
    kb = KnowledgeBase.load("workspace/indexes/demo", embedder)
    hits = kb.search("What does E22 mean?", k=3)

The vectors go to a ``VectorStore`` picked by ``IndexConfig.backend``: FAISS (default) or Qdrant, in memory from the
index folder or on a server (``IndexConfig(backend="qdrant", qdrant_url="https://...")``).
"""

from retrieval.build import build_index
from retrieval.chunking import ChunkingConfig, chunk_document
from retrieval.documents import Document, Skipped, load_documents
from retrieval.embeddings import Embedder, SentenceTransformerEmbedder
from retrieval.evaluation import RetrievalReport, evaluate_retrieval, load_cases
from retrieval.folder import (
    BACKENDS,
    Chunk,
    IndexFolderError,
    IndexLimitError,
    NothingToIndexError,
    is_index_folder,
    read_manifest,
)
from retrieval.index import BuildResult, IndexConfig, KnowledgeBase, SearchHit
from retrieval.stores import FaissStore, QdrantStore, VectorStore, VectorStoreError

__all__ = [
    "BACKENDS", "BuildResult", "Chunk", "ChunkingConfig", "Document", "Embedder", "FaissStore", "IndexConfig",
    "IndexFolderError", "IndexLimitError", "KnowledgeBase", "NothingToIndexError", "QdrantStore", "RetrievalReport",
    "SearchHit", "SentenceTransformerEmbedder", "Skipped", "VectorStore", "VectorStoreError", "build_index",
    "chunk_document", "evaluate_retrieval", "is_index_folder", "load_cases", "load_documents", "read_manifest",
]
