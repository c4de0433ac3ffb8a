"""Retrieval: documents -> chunks -> embeddings -> a FAISS knowledge base you can search and evaluate.

Never imports gradio. Typical use::

    embedder = SentenceTransformerEmbedder.load()            # bundled all-MiniLM-L6-v2
    build_index(["assets/demo/corpus"], "workspace/indexes/demo", embedder)
    kb = KnowledgeBase.load("workspace/indexes/demo", embedder)
    hits = kb.search("What does E22 mean?", k=3)
"""

from retrieval.chunking import ChunkingConfig, chunk_document
from retrieval.documents import Document, Skipped, load_documents
from retrieval.embeddings import Embedder, SentenceTransformerEmbedder
from retrieval.evaluation import RetrievalReport, evaluate_retrieval, load_cases
from retrieval.index import (
    BuildResult,
    Chunk,
    IndexConfig,
    IndexFolderError,
    IndexLimitError,
    KnowledgeBase,
    NothingToIndexError,
    SearchHit,
    build_index,
    is_index_folder,
    read_manifest,
)

__all__ = [
    "BuildResult", "Chunk", "ChunkingConfig", "Document", "Embedder", "IndexConfig", "IndexFolderError",
    "IndexLimitError", "KnowledgeBase", "NothingToIndexError", "RetrievalReport", "SearchHit",
    "SentenceTransformerEmbedder", "Skipped", "build_index", "chunk_document", "evaluate_retrieval",
    "is_index_folder", "load_cases", "load_documents", "read_manifest",
]
