"""Shared fakes for the retrieval unit tests: a deterministic bag-of-words embedder, a hand-made PDF, file helpers.

Nothing here loads a model or touches the network.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WORD_TOKEN = re.compile(r"\S+")


def bucket(word: str, dimension: int) -> int:
    """A well-mixed hash (crc32 is linear: words that differ only in a numeric suffix collide in its low bits)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % dimension


class FakeEmbedder:
    """Hashed bag of lowercase words, L2-normalised float32; tokens are ``\\S+`` words.

    ``embedded`` counts the texts sent to ``embed`` and ``texts`` keeps them, so tests can assert on re-embedding.
    """

    def __init__(self, name: str = "fake-bow", dimension: int = 64, max_tokens: int = 256) -> None:
        self.name = name
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.embedded = 0
        self.texts: list[str] = []

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in WORD_TOKEN.finditer(text)]

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, on_progress=None) -> np.ndarray:
        self.embedded += len(texts)
        self.texts.extend(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)  # (n, d)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, bucket(word, self.dimension)] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if on_progress:
            on_progress(len(texts), len(texts))
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)

    def reset(self) -> None:
        self.embedded = 0
        self.texts = []


def count_tokens(text: str) -> int:
    """What FakeEmbedder counts: whitespace-separated words."""
    return len(WORD_TOKEN.findall(text))


def tiny_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A PDF with one Helvetica text stream per page (``pages``: lines per page), written byte by byte with a
    correct xref table; ``title`` goes into the /Info dictionary."""
    n_pages = len(pages)
    font_obj = 3 + 2 * n_pages
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [" + " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
               + f"] /Count {n_pages} >>"]
    for number, lines in enumerate(pages):
        stream = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * number} 0 R "
                       f"/Resources << /Font << /F1 {font_obj} 0 R >> >> >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info = ""
    if title is not None:
        objects.append(f"<< /Title ({title}) >>")
        info = f" /Info {len(objects)} 0 R"
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def words(n: int, start: int = 0, prefix: str = "w") -> str:
    """``n`` distinct words ``w<start> .. w<start+n-1>`` separated by single spaces."""
    return " ".join(f"{prefix}{i}" for i in range(start, start + n))


def sentences(n: int, length: int, start: int = 0, prefix: str = "s") -> str:
    """``n`` sentences of ``length`` distinct words each, every one ending with a full stop."""
    return " ".join(words(length, start + i * length, prefix) + "." for i in range(n))
