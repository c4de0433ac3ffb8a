"""Token-based chunking that prefers heading, paragraph, line and sentence boundaries.

Sizes count tokens of the embedding model's tokenizer (special tokens excluded). A chunk is always an exact slice
of its document: ``document.text[start:end] == chunk.text``. Every chunk keeps its document id, title and the path
of Markdown headings (``# A`` > ``## B``) it sits under.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field
from typing import Protocol

from retrieval.documents import Document

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


class TokenSpans(Protocol):
    """Anything that gives the character span of each token of a text (special tokens excluded)."""

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


@dataclass
class ChunkingConfig:
    """How documents are cut. Defaults fit all-MiniLM-L6-v2, which reads at most 256 tokens per text."""

    chunk_size: int = field(default=200, metadata={"help": "most tokens per chunk (embedding tokenizer)"})
    overlap: int = field(default=32, metadata={"help": "tokens repeated from the previous chunk of the same section"})
    min_chunk_tokens: int = field(default=32, metadata={
        "help": "a section shorter than this is joined with the next one instead of ending its chunk at a heading"})

    def __post_init__(self) -> None:
        for name in ("chunk_size", "overlap", "min_chunk_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: must be an integer, got {value!r}")
        if not 16 <= self.chunk_size <= 8192:
            raise ValueError(f"chunk_size: must be between 16 and 8192 tokens, got {self.chunk_size}")
        if not 0 <= self.overlap <= self.chunk_size // 2:
            half = self.chunk_size // 2
            raise ValueError(f"overlap: must be between 0 and chunk_size/2 = {half}, got {self.overlap}")
        if not 0 <= self.min_chunk_tokens <= self.chunk_size:
            raise ValueError(f"min_chunk_tokens: must be between 0 and chunk_size, got {self.min_chunk_tokens}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ChunkSpan:
    """A piece of one document: ``text == document.text[start:end]``."""

    doc_id: str
    source: str
    title: str
    headings: tuple[str, ...]
    start: int
    end: int
    text: str
    n_tokens: int


@dataclass(frozen=True)
class _Block:
    start: int
    end: int
    level: int  # 1..6 for a heading line, 0 for a paragraph


def split_blocks(text: str) -> list[_Block]:
    """Paragraphs (separated by blank lines) and heading lines (``#`` .. ``######``) with their character spans."""
    blocks: list[_Block] = []
    para_start: int | None = None
    para_end = 0
    position = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        line_start, line_end = position, position + len(line.rstrip("\n"))
        position += len(line)
        heading = HEADING.match(stripped)
        if not stripped or heading:
            if para_start is not None:
                blocks.append(_Block(para_start, para_end, 0))
                para_start = None
            if heading:
                offset = line.index(stripped)
                blocks.append(_Block(line_start + offset, line_start + offset + len(stripped), len(heading.group(1))))
            continue
        if para_start is None:
            para_start = line_start + (len(line) - len(line.lstrip()))
        para_end = line_end
    if para_start is not None:
        blocks.append(_Block(para_start, para_end, 0))
    return blocks


class _Counter:
    """Token counts over character ranges of one text, from the token start offsets."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.starts = [start for start, _ in spans]
        self.spans = spans

    def count(self, start: int, end: int) -> int:
        return bisect.bisect_left(self.starts, end) - bisect.bisect_left(self.starts, start)

    def char_after_tokens(self, start: int, n: int) -> int | None:
        """Character position where the ``n``-th token at or after ``start`` begins; None if fewer tokens remain."""
        index = bisect.bisect_left(self.starts, start) + n
        return self.starts[index] if index < len(self.starts) else None

    def char_before_tokens(self, end: int, n: int) -> int:
        """Start of the ``n``-th token counting back from ``end``."""
        index = max(0, bisect.bisect_left(self.starts, end) - n)
        return self.starts[index] if self.starts else end


def _best_break(text: str, start: int, limit: int) -> int:
    """A break position in (start, limit]: the last line end, else sentence end, else space past 40% of the window."""
    floor = start + int(0.4 * (limit - start))
    window = text[floor:limit]
    newline = window.rfind("\n")
    if newline >= 0:
        return floor + newline + 1
    ends = [match.end() for match in SENTENCE_END.finditer(window)]
    if ends:
        return floor + ends[-1]
    space = window.rfind(" ")
    if space >= 0:
        return floor + space + 1
    return limit


def _overlap_start(text: str, counter: _Counter, end: int, overlap: int, floor: int) -> int:
    """Start of a chunk that repeats the last ``overlap`` tokens before ``end``, snapped to a sentence/word start."""
    if overlap <= 0:
        return end
    raw = max(floor, counter.char_before_tokens(end, overlap))
    region = text[raw:end]
    sentence = SENTENCE_END.search(region)
    if sentence and sentence.end() < len(region):
        return raw + sentence.end()
    if raw > 0 and not text[raw - 1].isspace():
        space = region.find(" ")
        if 0 <= space < len(region) - 1:
            return raw + space + 1
    return raw


def chunk_document(document: Document, tokenizer: TokenSpans, config: ChunkingConfig | None = None) -> list[ChunkSpan]:
    """Cut one document into chunks of at most ``config.chunk_size`` tokens."""
    config = config or ChunkingConfig()
    text = document.text
    counter = _Counter(tokenizer.token_spans(text))
    size, overlap = config.chunk_size, config.overlap
    headings: list[tuple[int, str]] = []
    chunks: list[ChunkSpan] = []
    current: list = []  # [start, end, headings] of the chunk being built

    def emit(start: int, end: int, path: tuple[str, ...]) -> None:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        n_tokens = counter.count(start, end)
        if n_tokens == 0:
            return
        chunks.append(ChunkSpan(document.doc_id, document.source, document.title, path, start, end,
                                text[start:end], n_tokens))

    def path_now() -> tuple[str, ...]:
        return tuple(title for _, title in headings)

    for block in split_blocks(text):
        if block.level:
            if current and counter.count(current[0], current[1]) >= config.min_chunk_tokens:
                emit(*current)
                current = []
            while headings and headings[-1][0] >= block.level:
                headings.pop()
            headings.append((block.level, HEADING.match(text[block.start:block.end]).group(2)))
            if current:  # a short section: keep it, and the new heading joins it
                current[1] = block.end
            else:
                current = [block.start, block.end, path_now()]
            continue
        if current and counter.count(current[0], block.end) <= size:
            current[1] = block.end
            continue
        if current and counter.count(current[0], current[1]) >= config.min_chunk_tokens:
            emit(*current)
            begin = _overlap_start(text, counter, current[1], overlap, current[0])
            if counter.count(begin, block.end) > size:
                begin = block.start
            current = [begin, block.end, current[2] if begin < block.start else path_now()]
        elif current:  # too short to stand alone (e.g. a heading line): it leads this block's first chunk
            current[1] = block.end
        else:
            current = [block.start, block.end, path_now()]
        if counter.count(current[0], current[1]) <= size:
            continue
        # the block alone is longer than a chunk: cut it at line, sentence or word boundaries
        start = current[0]
        while counter.count(start, block.end) > size:
            limit = counter.char_after_tokens(start, size) or block.end
            cut = _best_break(text, start, limit)
            if cut <= start:
                cut = limit
            emit(start, cut, current[2])
            following = _overlap_start(text, counter, cut, overlap, start)
            start = following if start < following < cut else cut
        current = [start, block.end, current[2]]
    if current:
        emit(*current)
    return chunks
