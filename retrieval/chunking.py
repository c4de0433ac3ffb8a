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

from core.errors import ConfigError
from retrieval.documents import Document

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")  # "## C#" is "C#"; "## B ##" is "B"
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


class TokenSpans(Protocol):
    """Anything that gives the character span of each token of a text (special tokens excluded)."""

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


@dataclass
class ChunkingConfig:
    """How documents are cut. Defaults fit all-MiniLM-L6-v2, which reads at most 256 tokens per text."""

    chunk_size: int = field(default=200, metadata={
        "help": "most tokens per chunk, counted by the embedding model's tokenizer (all-MiniLM-L6-v2 reads 256)"})
    overlap: int = field(default=32, metadata={
        "help": "tokens repeated from the previous chunk of the same section (at most half the chunk size)"})
    min_chunk_tokens: int = field(default=32, metadata={
        "help": "a section shorter than this is joined with the next one instead of ending its chunk at a heading"})

    def __post_init__(self) -> None:
        for name in ("chunk_size", "overlap", "min_chunk_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: must be an integer, got {value!r}")
        if not 16 <= self.chunk_size <= 8192:
            raise ConfigError(f"chunk_size: must be between 16 and 8192 tokens, got {self.chunk_size}")
        if not 0 <= self.overlap <= self.chunk_size // 2:
            half = self.chunk_size // 2
            raise ConfigError(f"overlap: must be between 0 and chunk_size/2 = {half}, got {self.overlap}")
        if not 0 <= self.min_chunk_tokens <= self.chunk_size:
            raise ConfigError(f"min_chunk_tokens: must be between 0 and chunk_size, got {self.min_chunk_tokens}")

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
    lead: int | None = None  # start of the heading lines that end ``current`` with no text after them yet

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

    def cut_long(start: int, end: int, path: tuple[str, ...]) -> int:
        """Emit overlapping pieces of ``[start, end)`` cut at line, sentence or word boundaries while it is longer
        than a chunk; returns where the rest (at most ``size`` tokens) starts."""
        while counter.count(start, end) > size:
            limit = counter.char_after_tokens(start, size) or end
            cut = _best_break(text, start, limit)
            if cut <= start:
                cut = limit
            emit(start, cut, path)
            following = _overlap_start(text, counter, cut, overlap, start)
            start = following if start < following < cut else cut
        return start

    for block in split_blocks(text):
        if block.level:
            if current:
                body_end = current[1] if lead is None else lead  # the text before any trailing heading lines
                body = counter.count(current[0], body_end)
                if body and (body >= config.min_chunk_tokens or counter.count(current[0], block.end) > size):
                    emit(current[0], body_end, current[2])  # trailing heading lines move on with this heading
                    current = [] if lead is None else [lead, current[1], current[2]]
                if current and counter.count(current[0], block.end) > size:  # heading lines only, over a chunk
                    emit(cut_long(current[0], current[1], current[2]), current[1], current[2])
                    current = []
            while headings and headings[-1][0] >= block.level:
                headings.pop()
            headings.append((block.level, HEADING.match(text[block.start:block.end]).group(2)))
            if current:  # a short section (or heading lines): the new heading joins it
                current[1] = block.end
                lead = block.start if lead is None else lead
            else:
                current = [block.start, block.end, ()]
                lead = block.start
            if lead == current[0]:  # heading lines only so far: the chunk sits under the latest of them
                current[2] = path_now()
            continue
        if current and counter.count(current[0], block.end) <= size:
            current[1] = block.end
            lead = None
            continue
        if current and lead is not None and lead > current[0]:
            # text, then heading lines it cannot share a chunk with: the headings lead this block's first chunk
            emit(current[0], lead, current[2])
            current = [lead, block.end, path_now()]
        elif current and lead is None and counter.count(current[0], current[1]) >= config.min_chunk_tokens:
            emit(*current)
            begin = _overlap_start(text, counter, current[1], overlap, current[0])
            if counter.count(begin, block.end) > size:
                begin = block.start
            current = [begin, block.end, current[2] if begin < block.start else path_now()]
        elif current:  # too short to stand alone, or heading lines only: it leads this block's first chunk
            current[1] = block.end
        else:
            current = [block.start, block.end, path_now()]
        lead = None
        if counter.count(current[0], current[1]) > size:  # the block alone is longer than a chunk: cut it
            current = [cut_long(current[0], block.end, current[2]), block.end, current[2]]
    if current:
        if lead == current[0] and chunks and counter.count(chunks[-1].start, current[1]) <= size:
            last = chunks.pop()  # only heading lines are left (an empty last section): they end the previous chunk
            emit(last.start, current[1], last.headings)
        else:
            emit(*current)
    return chunks
