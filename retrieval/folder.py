"""The index folder on disk: its files, its errors, and the checks that run before anything is loaded.

    <index>/chunks.jsonl         one chunk per line: id, doc_id, source, title, headings, start, end, text, n_tokens,
                                 hash
    <index>/manifest.json        embedding model, dimension, index (store) and chunking settings, documents with hashes,
                                 counts
    <index>/index.faiss          backend faiss: the FAISS index (ids = chunk ids); flat (IndexFlatIP), hnsw or ivf
    <index>/vectors.safetensors  backend qdrant, local mode: ids (n,) int64 and vectors (n, d) float32
                                 (backend qdrant, server mode: the vectors live in the server's collection)

Never pickled: JSON beside the store's own file. Every problem is an IndexFolderError naming the file and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from core.errors import TuneArenaError
from core.io import recover_folder
from retrieval.chunking import ChunkSpan

FORMAT = 1
INDEX_TYPES = ("flat", "hnsw", "ivf")
BACKENDS = ("faiss", "qdrant")
FAISS_FILE = "index.faiss"
VECTORS_FILE = "vectors.safetensors"
FILES = ("chunks.jsonl", "manifest.json")  # every index folder; the store's own files: ``store_files``


@dataclass(frozen=True)
class Chunk(ChunkSpan):
    """A stored chunk: a ChunkSpan with its FAISS ``id`` and the ``hash`` of the exact text that was embedded."""

    id: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["headings"] = list(self.headings)
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Chunk:
        return cls(id=int(row["id"]), doc_id=str(row["doc_id"]), source=str(row["source"]), title=str(row["title"]),
                   headings=tuple(row.get("headings") or ()), start=int(row["start"]), end=int(row["end"]),
                   text=str(row["text"]), n_tokens=int(row["n_tokens"]), hash=str(row["hash"]))


class IndexFolderError(TuneArenaError):
    """A bad index folder or a mismatched embedding model; the message names the folder and what is wrong."""


class NothingToIndexError(TuneArenaError):
    """No document under the given paths could be read."""


class IndexLimitError(TuneArenaError):
    """More documents or chunks than one index takes; the message names the limit and how to raise it."""


def faiss_reason(err: RuntimeError) -> str:
    """FAISS's C++ error as a short reason: "truncated or cut short" for a read past the end, else its check."""
    text = " ".join(str(err).split())
    if "read error" in text:
        return "truncated or incomplete"
    return (text.rsplit("failed: ", 1)[-1] if "failed: " in text else text)[:160] or "unknown error"


def read_chunks(path: Path) -> dict[int, Chunk]:
    """chunks.jsonl as {id: Chunk}; IndexFolderError naming the line of a bad record or a repeated id."""
    chunks: dict[int, Chunk] = {}
    with open(path, "rb") as handle:  # bytes: invalid UTF-8 fails in json.loads, naming the line
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError(f"a JSON {type(row).__name__}, not an object")
                chunk = Chunk.from_dict(row)
            except (ValueError, KeyError, TypeError, RecursionError) as err:
                raise IndexFolderError(f"{path} line {number}: bad chunk record ({str(err)[:200]})") from None
            if chunk.id in chunks:
                raise IndexFolderError(f"{path} line {number}: chunk id {chunk.id} appears twice")
            chunks[chunk.id] = chunk
    return chunks


def read_vectors(path: Path, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,) int64, vectors (n, d) float32) of a vectors.safetensors; IndexFolderError naming it otherwise."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise IndexFolderError(f"{path}: not a readable vectors file ({reason}); rebuild the index") from None
    ids, vectors = tensors.get("ids"), tensors.get("vectors")
    if ids is None or vectors is None:
        raise IndexFolderError(f"{path}: needs the tensors 'ids' and 'vectors', has {sorted(tensors)}; rebuild the "
                               "index")
    if ids.dtype != np.int64 or ids.ndim != 1 or vectors.dtype != np.float32 or vectors.ndim != 2:
        raise IndexFolderError(f"{path}: ids must be int64 (n,) and vectors float32 (n, d), got {ids.dtype} "
                               f"{ids.shape} and {vectors.dtype} {vectors.shape}; rebuild the index")
    if vectors.shape[1] != dimension:
        raise IndexFolderError(f"{path}: vectors of dimension {vectors.shape[1]}, but manifest.json says {dimension}; "
                               "rebuild the index")
    if len(ids) != len(vectors):
        raise IndexFolderError(f"{path}: {len(ids)} ids for {len(vectors)} vectors; rebuild the index")
    if len(ids) and (ids.min() < 0 or len(np.unique(ids)) != len(ids)):
        raise IndexFolderError(f"{path}: chunk ids must be distinct and non-negative; rebuild the index")
    if not np.isfinite(vectors).all():
        raise IndexFolderError(f"{path}: holds NaN or infinite values; rebuild the index")
    return ids, vectors


def check_index_kind(folder: Path, index: faiss.Index, index_type: str, dimension: int) -> None:
    """The FAISS structure the manifest's index_type builds, of the manifest's dimension."""
    kind_ok = isinstance(index, faiss.IndexIVF) if index_type == "ivf" else isinstance(index, faiss.IndexIDMap2)
    if not kind_ok:
        raise IndexFolderError(f"{folder / 'index.faiss'}: a {type(index).__name__}, not the {index_type} index "
                               "that manifest.json describes; rebuild the index")
    if index.d != dimension:
        raise IndexFolderError(f"{folder / 'index.faiss'}: vectors of dimension {index.d}, but manifest.json says "
                               f"{dimension}; rebuild the index")


def faiss_ids(index: faiss.Index) -> np.ndarray | None:
    """The external ids an index holds (IDMap2 and IVF), None for other structures."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(index.nlist)
                 if lists.list_size(i)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return None


def check_manifest_fields(path: Path, manifest: dict[str, Any]) -> None:
    """Types of the fields a load relies on (a hand-edited or foreign manifest fails here, naming the field)."""
    def wrong(key: str, expected: str) -> IndexFolderError:
        return IndexFolderError(f"{path}: field '{key}' must be {expected}, got {manifest[key]!r:.80}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(manifest["embedding_model"], str) or not manifest["embedding_model"]:
        raise wrong("embedding_model", "a model name")
    if not is_int(manifest["dimension"]) or manifest["dimension"] < 1:
        raise wrong("dimension", "a positive integer")
    for key in ("index", "chunking", "documents", "counts"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise wrong(key, "a JSON object")
    for key in ("trained_on", "next_id"):
        if key in manifest and (not is_int(manifest[key]) or manifest[key] < 0):
            raise wrong(key, "a non-negative integer")
    for key in ("created", "updated", "build_s"):
        if key in manifest and (isinstance(manifest[key], bool) or not isinstance(manifest[key], int | float)):
            raise wrong(key, "a number")
    if not all(is_int(value) for value in manifest.get("counts", {}).values()):
        raise wrong("counts", "an object of integers")
    for source, doc in manifest.get("documents", {}).items():
        if (not isinstance(doc, dict) or not isinstance(doc.get("sha256"), str)
                or not isinstance(doc.get("chunk_ids"), list) or not all(is_int(i) for i in doc["chunk_ids"])):
            raise IndexFolderError(f"{path}: document {source!r:.120}: needs sha256 and a list of chunk_ids")


def store_files(settings: dict[str, Any]) -> tuple[str, ...]:
    """The files the vector store of manifest ``index`` settings keeps in the folder: index.faiss (faiss, also when
    the manifest predates backends), vectors.safetensors (qdrant local mode), none (qdrant server mode). An unknown
    backend needs none here: loading its settings names it."""
    backend = settings.get("backend", "faiss")
    if backend == "faiss":
        return (FAISS_FILE,)
    if backend == "qdrant":
        return () if settings.get("qdrant_url") else (VECTORS_FILE,)
    return ()


def is_index_folder(folder: str | Path) -> bool:
    return (Path(folder).expanduser() / "manifest.json").is_file()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an index folder; IndexFolderError naming the folder if it is not one."""
    folder = Path(folder).expanduser()
    if folder.parent.is_dir():
        recover_folder(folder)
    if not folder.is_dir():
        raise IndexFolderError(f"index folder {folder} does not exist; build it with `python -m core index`")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise IndexFolderError(f"{folder} is not an index folder (missing {', '.join(missing)})")
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IndexFolderError(f"{folder / 'manifest.json'}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{folder / 'manifest.json'}: unknown index format {manifest.get('format')!r}"
                          if isinstance(manifest, dict) else f"{folder / 'manifest.json'}: not a JSON object")
    for key in ("embedding_model", "dimension"):
        if key not in manifest:
            raise IndexFolderError(f"{folder / 'manifest.json'}: missing field '{key}'")
    check_manifest_fields(folder / "manifest.json", manifest)
    missing = [name for name in store_files(manifest.get("index", {})) if not (folder / name).is_file()]
    if missing:
        raise IndexFolderError(f"{folder} is not an index folder (missing {', '.join(missing)})")
    return manifest
