"""Retrieval: documents -> chunks -> embeddings -> a FAISS knowledge base you can search and evaluate.

A library of its own: it never imports gradio nor the engine (only core's base layer: errors, io, limits), and takes
the embedding model as an ``Embedder`` it is given. Typical use::

    embedder = SentenceTransformerEmbedder.load(path)        # a sentence-transformers folder or hub id
    build_index(["assets/demo/corpus"], "workspace/indexes/demo", embedder)
    kb = KnowledgeBase.load("workspace/indexes/demo", embedder)
    hits = kb.search("What does E22 mean?", k=3)
"""

from retrieval.build import build_index
from retrieval.chunking import ChunkingConfig, chunk_document
from retrieval.documents import Document, Skipped, load_documents
from retrieval.embeddings import Embedder, SentenceTransformerEmbedder
from retrieval.evaluation import RetrievalReport, evaluate_retrieval, load_cases
from retrieval.folder import (
    Chunk,
    IndexFolderError,
    IndexLimitError,
    NothingToIndexError,
    is_index_folder,
    read_manifest,
)
from retrieval.index import BuildResult, IndexConfig, KnowledgeBase, SearchHit

__all__ = [
    "BuildResult", "Chunk", "ChunkingConfig", "Document", "Embedder", "IndexConfig", "IndexFolderError",
    "IndexLimitError", "KnowledgeBase", "NothingToIndexError", "RetrievalReport", "SearchHit",
    "SentenceTransformerEmbedder", "Skipped", "build_index", "chunk_document", "evaluate_retrieval",
    "is_index_folder", "load_cases", "load_documents", "read_manifest",
]
