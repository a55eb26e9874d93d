"""Chunking by tokens, with overlap, preferring paragraph and heading boundaries.

The tokenizer is the base model's (``spec.tokenizer``, resolved and loaded by
:mod:`mentor_trainer.models` like every model URI, .gguf files included, and wrapped in
:class:`HFTokenizer`) or, without one, a fallback that counts each CJK character, each word,
each digit run and each symbol as one token.

A document is cut into units: headings, then sentences (CJK and Latin sentence ends) inside
paragraphs; a unit longer than ``max_tokens`` is cut at token boundaries. Units are packed
greedily into chunks of at most ``max_tokens`` tokens (verified on the chunk's own text).
When a chunk must end inside a paragraph and an earlier paragraph boundary leaves it at
least half full, it ends there instead; a heading starts a new chunk once the current one is
a quarter full, and a chunk never ends with a heading. Consecutive chunks of a section share
up to ``overlap_tokens`` tokens: whole sentences when they fit, else the last sentence's final
tokens. Each chunk keeps its character span in
the document and its index.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from .filters import CJK_RANGES

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Tokenizers


class FallbackTokenizer:
    """One token per CJK character, word, digit run or symbol (no model needed)."""

    name = "fallback (CJK character / word / digit run / symbol)"
    fingerprint = "fallback-1"
    _TOKEN = re.compile(f"[{CJK_RANGES}]|[^\\W\\d_{CJK_RANGES}]+|\\d+|[^\\w\\s]|_")

    def count(self, text: str) -> int:
        return len(self._TOKEN.findall(text))

    def count_many(self, texts: list[str]) -> list[int]:
        return [self.count(t) for t in texts]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._TOKEN.finditer(text)]


class HFTokenizer:
    """A transformers tokenizer (special tokens not counted)."""

    def __init__(self, tokenizer, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name
        tokenizer.model_max_length = 1 << 60  # we only count; no "sequence too long" warnings

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        if getattr(self.tokenizer, "is_fast", False):
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return [tuple(span) for span in encoded["offset_mapping"]]
        # slow tokenizers have no offsets: place tokens proportionally (cuts stay approximate)
        n = max(1, self.count(text))
        step = len(text) / n
        return [(int(i * step), int((i + 1) * step)) for i in range(n)]


# --------------------------------------------------------------------------------------
# Units


@dataclass
class Unit:
    start: int
    end: int
    tokens: int = 0
    paragraph_start: bool = False
    heading: bool = False


@dataclass
class Chunk:
    text: str
    index: int
    start: int  # character offsets in the document
    end: int
    tokens: int


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_HEADING_LINE = re.compile(r"^#{1,6}[ \t]+\S.*$", re.M)
# a sentence ends after CJK/Latin terminal punctuation (plus closing quotes), or at a newline
_SENTENCE_END = re.compile(r"(?:[。！？；!?;…]+[”’\"』」)）]*|(?<!\d)\.(?:[”’\"』」)）]*)(?=\s)|\n)\s*")


def _spans(pattern: re.Pattern, text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split [start, end) after each match of ``pattern`` (the separator stays with the left span)."""
    spans = []
    position = start
    for match in pattern.finditer(text, start, end):
        if match.end() > position and match.end() < end:
            spans.append((position, match.end()))
            position = match.end()
    if position < end:
        spans.append((position, end))
    return spans


def structure_units(text: str) -> list[Unit]:
    """Headings and sentences, each flagged when it opens a paragraph."""
    units: list[Unit] = []
    for p_start, p_end in _spans(_PARAGRAPH_BREAK, text, 0, len(text)):
        # headings inside the paragraph become their own units
        pieces: list[tuple[int, int, bool]] = []
        position = p_start
        for match in _HEADING_LINE.finditer(text, p_start, p_end):
            if match.start() > position:
                pieces.append((position, match.start(), False))
            line_end = match.end() + 1 if match.end() < p_end else match.end()
            pieces.append((match.start(), line_end, True))
            position = line_end
        if position < p_end:
            pieces.append((position, p_end, False))
        first = True
        for start, end, heading in pieces:
            if heading:
                units.append(Unit(start, end, paragraph_start=True, heading=True))
                first = True  # the text after a heading opens a paragraph
                continue
            for s_start, s_end in _spans(_SENTENCE_END, text, start, end):
                if units and not text[s_start:s_end].strip():
                    units[-1].end = s_end  # whitespace belongs to the unit before it
                    continue
                units.append(Unit(s_start, s_end, paragraph_start=first))
                first = False
    if units and units[0].start > 0:
        units[0].start = 0
    return units


def _hard_split(text: str, start: int, end: int, tokenizer, max_tokens: int) -> list[tuple[int, int]]:
    """Cut [start, end) at token boundaries into pieces of at most max_tokens tokens."""
    offsets = tokenizer.offsets(text[start:end])
    if len(offsets) <= max_tokens:
        return [(start, end)]
    cuts = [start]
    for i in range(max_tokens, len(offsets), max_tokens):
        cut = start + offsets[i][0]
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(end)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


# --------------------------------------------------------------------------------------
# Chunking


def chunk_text(text: str, tokenizer, max_tokens: int, overlap_tokens: int = 0, respect_structure: bool = True) -> list[Chunk]:
    """Chunks of ``text`` of at most ``max_tokens`` tokens each."""
    if not text.strip():
        return []
    overlap_tokens = min(overlap_tokens, max_tokens - 1)
    if not respect_structure:
        return _window_chunks(text, tokenizer, max_tokens, overlap_tokens)

    units = structure_units(text)
    # cut units longer than a chunk
    counts = tokenizer.count_many([text[u.start : u.end] for u in units])
    fitted: list[Unit] = []
    for unit, count in zip(units, counts):
        if count <= max_tokens:
            unit.tokens = count
            fitted.append(unit)
            continue
        pieces = _hard_split(text, unit.start, unit.end, tokenizer, max_tokens)
        piece_counts = tokenizer.count_many([text[a:b] for a, b in pieces])
        for i, ((a, b), c) in enumerate(zip(pieces, piece_counts)):
            fitted.append(Unit(a, b, tokens=c, paragraph_start=unit.paragraph_start and i == 0, heading=unit.heading and i == 0))
    units = fitted

    chunks: list[Chunk] = []
    n = len(units)
    a = 0
    min_fill = max_tokens // 4
    while a < n:
        b, total = a, 0
        while b < n and total + units[b].tokens <= max_tokens:
            if b > a and units[b].heading and total >= min_fill:
                break
            total += units[b].tokens
            b += 1
        b = max(b, a + 1)
        if b < n and not units[b].paragraph_start:
            # prefer ending at a paragraph boundary when that keeps the chunk half full
            running, best = 0, None
            for p in range(a, b):
                if p > a and units[p].paragraph_start and running >= max_tokens // 2:
                    best = p
                running += units[p].tokens
            if best is not None:
                b = best
        while b - 1 > a and units[b - 1].heading:
            b -= 1  # a heading belongs with the text after it
        # verify on the real text (token merges at unit joins can change the count)
        while True:
            start, end = _trim(text, units[a].start, units[b - 1].end)
            tokens = tokenizer.count(text[start:end])
            if tokens <= max_tokens or b - a == 1:
                break
            b -= 1
        if tokens > max_tokens:  # a single unit whose trimmed text still does not fit
            for s, e in _hard_split(text, start, end, tokenizer, max_tokens):
                s, e = _trim(text, s, e)
                if e > s:
                    chunks.append(Chunk(text[s:e], len(chunks), s, e, tokenizer.count(text[s:e])))
        elif end > start:
            chunks.append(Chunk(text[start:end], len(chunks), start, end, tokens))
        if b >= n:
            break
        if units[b].heading or overlap_tokens == 0:
            a = b
            continue
        s, shared = b, 0
        while s - 1 > a and shared + units[s - 1].tokens <= overlap_tokens:
            s -= 1
            shared += units[s].tokens
        if s == b and not units[b - 1].heading:
            # no whole sentence fits in the overlap: share the last sentence's final tokens
            tail = _tail_unit(text, units[b - 1], tokenizer, overlap_tokens)
            if tail is not None:
                head, rest = tail
                units[b - 1 : b] = [head, rest]
                n += 1
                s = b  # the index of the tail
        a = s
    return chunks


def _tail_unit(text: str, unit: Unit, tokenizer, overlap_tokens: int) -> tuple[Unit, Unit] | None:
    """Split a unit so that its tail holds at most ``overlap_tokens`` tokens."""
    offsets = tokenizer.offsets(text[unit.start : unit.end])
    if len(offsets) <= overlap_tokens:
        return None
    cut = unit.start + offsets[len(offsets) - overlap_tokens][0]
    while cut < unit.end and text[cut].isspace():
        cut += 1
    if not unit.start < cut < unit.end:
        return None
    head = Unit(unit.start, cut, tokens=tokenizer.count(text[unit.start : cut]), paragraph_start=unit.paragraph_start)
    tail = Unit(cut, unit.end, tokens=tokenizer.count(text[cut : unit.end]))
    return head, tail


def _window_chunks(text: str, tokenizer, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    offsets = tokenizer.offsets(text)
    chunks: list[Chunk] = []
    step = max_tokens - overlap_tokens
    i = 0
    while i < len(offsets):
        j = min(i + max_tokens, len(offsets))
        end = offsets[j][0] if j < len(offsets) else len(text)
        start, end = _trim(text, offsets[i][0], end)
        if end > start:
            piece = text[start:end]
            tokens = tokenizer.count(piece)
            while tokens > max_tokens and j - 1 > i:  # merges at the cut can differ: shrink
                j -= 1
                start, end = _trim(text, offsets[i][0], offsets[j][0])
                piece = text[start:end]
                tokens = tokenizer.count(piece)
            chunks.append(Chunk(piece, len(chunks), start, end, tokens))
        if j >= len(offsets):
            break
        i += step if j - i == max_tokens else max(1, j - i - overlap_tokens)
    return chunks

