"""Ingest: every object under each source -> documents and records (a stream).

Formats: plain text, Markdown, HTML (main content through trafilatura), PDF (pdfplumber),
DOCX (python-docx), question-answer pairs in JSONL, JSON arrays or CSV (``question``/``answer``
or ``instruction``/``output``, optional ``reasoning`` and ``id``), and preference pairs in JSONL
(``prompt``/``chosen``/``rejected``, as strings, optional booleans ``chosenSafe``/``rejectedSafe``
or ``chosen_safe``/``rejected_safe``); a served model's payload log
(``payload-log``, read whole by :mod:`.traffic`).
Text encodings are detected per file (UTF-8 with or without BOM, UTF-16 with BOM, and
whatever charset-normalizer recognises; the GB2312/GBK family is decoded as GB18030, its
superset).

A file that cannot be used is never an exception: it becomes a :class:`Dropped` unit with a
reason (``empty``, ``binary``, ``undecodable``, ``corrupt``, ``encrypted``, ``no-text``,
``unsupported-format``, ``too-large``, ``too-slow``, ``unreadable``, ``invalid-record``). Text files are
streamed: a text file larger than ``MAX_DOCUMENT_CHARS`` becomes several documents cut at
paragraph boundaries, so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import atexit
import codecs
import csv
import io
import json
import logging
import multiprocessing
import os
import posixpath
import re
from typing import IO, Iterable, Iterator

from .. import storage
from ..errors import StageError
from . import traffic
from .records import PREFERENCE, QA, TEXT, Document, Dropped, PreferenceRecord, QARecord, Unit

log = logging.getLogger(__name__)

# A text document longer than this is cut into parts at paragraph boundaries.
MAX_DOCUMENT_CHARS = int(os.environ.get("MENTOR_DATA_MAX_DOCUMENT_CHARS", 1_000_000))
# PDF, DOCX and HTML are parsed whole; larger files are skipped as too-large.
MAX_PARSED_BYTES = int(os.environ.get("MENTOR_DATA_MAX_PARSED_BYTES", 256 << 20))
# A PDF whose parsing takes longer than this (seconds) is skipped as too-slow: a pathological
# file can keep the parser busy for hours.
MAX_PDF_SECONDS = float(os.environ.get("MENTOR_DATA_MAX_PDF_SECONDS", 120))
# A record (a JSONL or CSV line) longer than this is skipped as too-large, unread.
MAX_LINE_CHARS = int(os.environ.get("MENTOR_DATA_MAX_LINE_CHARS", 16 << 20))
SNIFF_BYTES = 64 << 10
READ_BLOCK = 1 << 20

EXTENSIONS = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".docx": "docx",
    ".csv": "qa-csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# Extensions we know we cannot read; skipped without opening.
UNSUPPORTED_EXTENSIONS = {
    ".doc", ".xls", ".xlsx", ".ppt", ".pptx", ".odt", ".rtf", ".epub",
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".svg",
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tar",
    ".exe", ".dll", ".so", ".bin", ".o", ".a", ".class", ".jar", ".pyc",
    ".mp3", ".mp4", ".wav", ".avi", ".mov", ".mkv", ".parquet", ".arrow", ".safetensors", ".pt",
}

QUESTION_KEYS = ("question", "instruction", "query")
ANSWER_KEYS = ("answer", "output", "response")
REASONING_KEYS = ("reasoning", "rationale", "chain_of_thought", "cot")
_GB_FAMILY = {"gb2312", "gbk", "gb18030", "hz", "cp936", "euc_cn", "euc-cn", "iso2022_cn"}


def is_hidden(name: str) -> bool:
    """Names starting with '.' or '_' (in any path component) are metadata, not documents."""
    return any(part.startswith((".", "_")) for part in name.split("/") if part)


# --------------------------------------------------------------------------------------
# Sources


def iter_source(source) -> Iterator[Unit | Dropped]:
    """Every unit of one configured source, in a stable order."""
    if source.inline is not None:
        for doc in source.inline:
            yield Document(
                id=f"inline:{source.name}/{doc.id}",
                source=source.name,
                group=source.group,
                text=doc.text,
                format="text",
                split_key=f"inline:{source.name}/{doc.id}",
            )
        return
    if source.format == "payload-log":  # a whole log directory, not one unit per object
        yield from traffic.iter_traffic(source)
        return
    for info in storage.list_objects(source.uri, include=source.include or None):
        if is_hidden(info.name):
            continue
        yield from iter_object(info, source)


def iter_object(info: storage.ObjectInfo, source) -> Iterator[Unit | Dropped]:
    """Units of one object; any problem with it becomes a Dropped unit."""
    try:
        yield from _iter_object(info, source)
    except StageError as error:
        if not error.permanent:
            raise  # the store went away: not a per-file problem
        yield Dropped(info.uri, source.name, "unreadable", str(error))
    except (OSError, MemoryError) as error:
        yield Dropped(info.uri, source.name, "unreadable", f"{type(error).__name__}: {error}")


def _iter_object(info: storage.ObjectInfo, source) -> Iterator[Unit | Dropped]:
    ext = posixpath.splitext(info.name)[1].lower()
    fmt = source.format
    if info.size == 0:
        yield Dropped(info.uri, source.name, "empty")
        return
    if fmt == "auto" and ext in UNSUPPORTED_EXTENSIONS:
        yield Dropped(info.uri, source.name, "unsupported-format", ext)
        return
    with storage.open_read(info.uri) as stream:
        head = stream.read(SNIFF_BYTES)
        if not head:
            yield Dropped(info.uri, source.name, "empty")
            return
        if fmt == "auto":
            fmt = detect_format(ext, head)
        if fmt is None:
            yield Dropped(info.uri, source.name, "unsupported-format", ext or "no extension")
            return
        if fmt == "jsonl" and ext == ".json" and head.lstrip()[:1] == b"[":
            if info.size > MAX_PARSED_BYTES:
                yield Dropped(info.uri, source.name, "too-large", f"{info.size} bytes > {MAX_PARSED_BYTES}", kind=QA)
                return
            yield from _json_array_records(head + stream.read(), info, source)
            return
        if fmt in ("pdf", "docx", "html"):
            if info.size > MAX_PARSED_BYTES:
                yield Dropped(info.uri, source.name, "too-large", f"{info.size} bytes > {MAX_PARSED_BYTES}")
                return
            data = head + stream.read()
            yield from _parsed(fmt, data, info, source)
            return
        # streamed text formats
        if looks_binary(head):
            yield Dropped(info.uri, source.name, "binary")
            return
        encoding = detect_encoding(head, source.encoding)
        if encoding is None:
            yield Dropped(info.uri, source.name, "undecodable", "no text encoding fits")
            return
        blocks = _decode_stream(head, stream, encoding)
        if fmt in ("markdown", "text"):
            yield from _text_documents(blocks, fmt, info, source)
        elif fmt in ("jsonl", "qa-jsonl", "preference-jsonl"):
            yield from _jsonl_records(blocks, fmt, info, source)
        elif fmt == "qa-csv":
            yield from _csv_records(blocks, info, source)
        else:  # pragma: no cover - formats are a closed set
            yield Dropped(info.uri, source.name, "unsupported-format", fmt)


def detect_format(ext: str, head: bytes) -> str | None:
    """Format from the content's magic bytes first, then the extension."""
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx" if ext in (".docx", "") or b"word/" in head else None
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if ext == ".json":
        return "jsonl"  # JSON Lines, or one JSON array of records
    lowered = head[:2048].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"  # an unknown extension holding text is read as text (binary is caught later)


def looks_binary(head: bytes) -> bool:
    """NUL bytes or many control bytes mean this is not text (UTF-16 with a BOM excepted)."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return False
    sample = head[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return control > 0.02 * len(sample)


def detect_encoding(head: bytes, declared: str = "auto") -> str | None:
    """The encoding of a text file from its first bytes (``declared`` wins unless auto)."""
    if declared and declared.lower() != "auto":
        try:
            codecs.lookup(declared)
        except LookupError:
            raise StageError(f"unknown encoding {declared!r} in sources[].encoding") from None
        return "gb18030" if declared.lower().replace("-", "") in ("gbk", "gb2312", "cp936") else declared
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if _is_utf8(head):
        return "utf-8"
    import charset_normalizer

    best = charset_normalizer.from_bytes(head).best()
    if best is None:
        return None
    encoding = best.encoding.lower()
    if encoding in _GB_FAMILY or encoding.replace("-", "_") in _GB_FAMILY:
        return "gb18030"
    return encoding


def _is_utf8(head: bytes) -> bool:
    # the sample may end inside a multi-byte character: allow up to 3 trailing bytes
    for cut in range(4):
        try:
            (head[: len(head) - cut] if cut else head).decode("utf-8")
            return True
        except UnicodeDecodeError as error:
            if error.start < len(head) - 4:
                return False
    return False


def _decode_stream(head: bytes, stream: IO[bytes], encoding: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    block = head
    while block:
        text = decoder.decode(block)
        if text:
            yield text
        block = stream.read(READ_BLOCK)
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _undecodable(text: str) -> bool:
    """Too many replacement characters: the bytes were not in the detected encoding."""
    if not text:
        return False
    bad = text.count("\ufffd")
    return bad > 16 and bad > 0.01 * len(text)


# --------------------------------------------------------------------------------------
# Text and Markdown (streamed)


def _text_documents(blocks: Iterable[str], fmt: str, info, source) -> Iterator[Unit | Dropped]:
    part = 0
    for text in _cut_parts(blocks):
        doc_id = _part_id(info.uri, part)
        part += 1
        if _undecodable(text):
            yield Dropped(doc_id, source.name, "undecodable", "replacement characters")
            continue
        if fmt == "markdown":
            text = markdown_to_text(text)
        if text.strip():
            yield Document(doc_id, source.name, source.group, text, fmt, split_key=split_key_of(info, source))
        elif part == 1:
            yield Dropped(doc_id, source.name, "empty", "only whitespace")
    if part == 0:
        yield Dropped(info.uri, source.name, "empty", "no text")


def _part_id(uri: str, part: int) -> str:
    return uri if part == 0 else f"{uri}#part={part}"


def _cut_parts(blocks: Iterable[str]) -> Iterator[str]:
    """Join decoded blocks into documents of at most MAX_DOCUMENT_CHARS, cut at paragraph breaks."""
    buffer: list[str] = []
    size = 0
    for block in blocks:
        buffer.append(block)
        size += len(block)
        while size > MAX_DOCUMENT_CHARS:
            joined = "".join(buffer)
            window = joined[:MAX_DOCUMENT_CHARS]
            cut = window.rfind("\n\n")
            if cut < MAX_DOCUMENT_CHARS // 2:
                cut = window.rfind("\n")
            if cut < MAX_DOCUMENT_CHARS // 2:
                cut = MAX_DOCUMENT_CHARS
            yield joined[:cut]
            rest = joined[cut:]
            buffer, size = [rest], len(rest)
    if size:
        yield "".join(buffer)


_MD_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M)
_MD_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")


def markdown_to_text(text: str) -> str:
    """Light Markdown cleanup: keep headings and structure, drop link targets and front matter."""
    text = text.replace("\r\n", "\n")
    text = _MD_FRONT_MATTER.sub("", text)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_REF_DEF.sub("", text)
    text = _MD_EMPHASIS.sub(r"\2", text)
    return text


# --------------------------------------------------------------------------------------
# PDF, DOCX, HTML (parsed whole)


def _parsed(fmt: str, data: bytes, info, source) -> Iterator[Unit | Dropped]:
    try:
        if fmt == "pdf":
            text = _PDF_PARSER.text(data)
        elif fmt == "docx":
            unpacked = _unpacked_size(data)
            if unpacked > MAX_PARSED_BYTES:  # a zip bomb is small on disk and huge in memory
                yield Dropped(info.uri, source.name, "too-large", f"unpacks to {unpacked} bytes > {MAX_PARSED_BYTES}")
                return
            text = docx_to_text(data)
        else:
            if looks_binary(data[:SNIFF_BYTES]):
                yield Dropped(info.uri, source.name, "binary")
                return
            encoding = detect_encoding(data[:SNIFF_BYTES], source.encoding) or "utf-8"
            html = data.decode(encoding, errors="replace")
            text = html_to_text(html)
    except _Encrypted:
        yield Dropped(info.uri, source.name, "encrypted")
        return
    except _TooSlow:
        yield Dropped(info.uri, source.name, "too-slow", f"parsing took over {MAX_PDF_SECONDS:g} s")
        return
    except StageError:
        raise
    except Exception as error:  # noqa: BLE001 - any parser failure is a corrupt file, never a crash
        yield Dropped(info.uri, source.name, "corrupt", f"{type(error).__name__}: {str(error)[:200]}")
        return
    if not text or not text.strip():
        yield Dropped(info.uri, source.name, "no-text")
        return
    yield Document(info.uri, source.name, source.group, text, fmt, split_key=split_key_of(info, source))


class _Encrypted(Exception):
    pass


class _TooSlow(Exception):
    pass


class _StoppablePdfParser:
    """:func:`pdf_to_text` in a worker process, the only way to stop a parse that runs past
    ``MAX_PDF_SECONDS`` (a thread cannot be killed): the worker is killed with it and the next
    PDF gets a new one. One worker serves every PDF of the run (started on the first), so a
    PDF costs a hand-over, not a process start."""

    def __init__(self) -> None:
        self._pool = None

    def text(self, data: bytes) -> str:
        if self._pool is None:
            # spawn, not fork: the stage may hold threads (tokenizers, storage clients)
            self._pool = multiprocessing.get_context("spawn").Pool(1)
            atexit.register(self.close)  # not left to Pool.__del__ at interpreter exit, which fails
        try:
            return self._pool.apply_async(pdf_to_text, (data,)).get(MAX_PDF_SECONDS)
        except multiprocessing.TimeoutError:
            self.close()
            raise _TooSlow() from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


_PDF_PARSER = _StoppablePdfParser()


def pdf_to_text(data: bytes) -> str:
    """Text of every page, in reading order (pdfplumber, layout-aware word grouping)."""
    import pdfplumber
    from pdfminer.pdfdocument import PDFPasswordIncorrect

    for name in ("pdfminer", "pdfplumber"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not data.lstrip()[:5] == b"%PDF-":
        raise ValueError("no %PDF- header")
    try:
        with pdfplumber.open(io.BytesIO(data)) as pdf:
            pages = []
            for page in pdf.pages:
                text = page.extract_text(x_tolerance=1.5, y_tolerance=3) or ""
                if text.strip():
                    pages.append(text)
    except PDFPasswordIncorrect:
        raise _Encrypted() from None
    except Exception as error:
        if type(error).__name__ in ("PDFEncryptionError", "PDFPasswordIncorrect", "PdfminerException") and "password" in str(error).lower():
            raise _Encrypted() from None
        raise
    return "\n\n".join(pages)


def _unpacked_size(data: bytes) -> int:
    """The bytes a zip container (DOCX) unpacks to, from its directory; 0 when it is not a zip
    (the DOCX parser then says what is wrong)."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return 0


def docx_to_text(data: bytes) -> str:
    """Paragraphs (headings as Markdown headings) and tables of a DOCX, in document order."""
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(io.BytesIO(data))
    out: list[str] = []
    for block in document.element.body.iterchildren():
        tag = block.tag.rsplit("}", 1)[-1]
        if tag == "p":
            paragraph = Paragraph(block, document)
            text = paragraph.text.strip()
            if not text:
                continue
            style = (paragraph.style.name if paragraph.style is not None else "") or ""
            level = re.match(r"Heading (\d)", style)
            if style == "Title":
                out.append(f"# {text}")
            elif level:
                out.append("#" * min(6, int(level.group(1)) + 1) + " " + text)
            else:
                out.append(text)
        elif tag == "tbl":
            table = Table(block, document)
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
            out.append("\n".join(rows))
    return "\n\n".join(out)


def html_to_text(html: str) -> str:
    """Main content of a page (trafilatura), without navigation, headers and footers."""
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    text = trafilatura.extract(
        html,
        output_format="markdown",
        include_comments=False,
        include_tables=True,
        include_links=False,
        include_images=False,
        favor_recall=True,
        deduplicate=False,
    )
    if not text or not text.strip():
        text = _html_fallback(html)
    return markdown_to_text(text or "")


def _html_fallback(html: str) -> str:
    """For pages too small for trafilatura's heuristics: visible text minus nav/header/footer."""
    from html.parser import HTMLParser

    skip_tags = {"script", "style", "nav", "header", "footer", "aside", "form", "noscript", "template", "head"}
    block_tags = {"p", "div", "section", "article", "main", "li", "tr", "br", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol"}

    class Extractor(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.depth = 0
            self.parts: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag in skip_tags:
                self.depth += 1
            elif tag in block_tags:
                self.parts.append("\n\n")
                if tag in ("h1", "h2", "h3", "h4", "h5", "h6") and not self.depth:
                    self.parts.append("#" * int(tag[1]) + " ")

        def handle_endtag(self, tag):
            if tag in skip_tags and self.depth:
                self.depth -= 1
            elif tag in block_tags:
                self.parts.append("\n\n")

        def handle_data(self, data):
            if not self.depth:
                self.parts.append(data)

    parser = Extractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


# --------------------------------------------------------------------------------------
# Question-answer and preference records


class LongLine(int):
    """A line over MAX_LINE_CHARS, in place of its text: its length in characters."""


def _lines(blocks: Iterable[str], limit: int | None = None) -> Iterator[str | LongLine]:
    """The lines of a stream of text blocks. Each block is split once (a line spanning many
    blocks is joined once, not re-split per block: linear in the input); a line longer than
    ``limit`` characters is not kept, only its length (a LongLine)."""
    limit = limit or MAX_LINE_CHARS
    parts: list[str] = []  # the line being read
    length = 0

    def finish(tail: str) -> str | LongLine:
        line = LongLine(length + len(tail)) if length + len(tail) > limit else "".join(parts) + tail
        parts.clear()
        return line

    for block in blocks:
        *complete, rest = block.split("\n")
        for n, piece in enumerate(complete):
            yield finish(piece) if n == 0 else (LongLine(len(piece)) if len(piece) > limit else piece)
            length = 0
        length += len(rest)
        if length <= limit:
            parts.append(rest)
        else:
            parts.clear()  # over the limit: only its length is kept
    if length:
        yield finish("")


def _first(record: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


class InvalidRecord(ValueError):
    """A record whose fields are there but malformed; the message says which."""


def _safety_label(record: dict, camel: str, snake: str) -> bool | None:
    value = record.get(camel, record.get(snake))
    if value is not None and not isinstance(value, bool):
        raise InvalidRecord(f"{camel} is not a boolean: {str(value)[:40]!r}")
    return value


def record_from_dict(record: dict, fmt: str, rid: str, source, split_key: str) -> QARecord | PreferenceRecord | None:
    """A QA or preference record from one JSON object / CSV row; None when fields are missing,
    :class:`InvalidRecord` when a safety label is not a boolean."""
    if fmt in ("jsonl", "preference-jsonl") and "chosen" in record and "rejected" in record:
        prompt, chosen, rejected = (record.get(k) for k in ("prompt", "chosen", "rejected"))
        if all(isinstance(v, str) and v.strip() for v in (prompt, chosen, rejected)):
            return PreferenceRecord(
                rid, source.name, source.group, prompt, chosen, rejected, split_key,
                chosen_safe=_safety_label(record, "chosenSafe", "chosen_safe"),
                rejected_safe=_safety_label(record, "rejectedSafe", "rejected_safe"),
            )
        return None
    if fmt == "preference-jsonl":
        return None
    question = _first(record, QUESTION_KEYS)
    if question is None and isinstance(record.get("prompt"), str) and record["prompt"].strip():
        question = record["prompt"]
    answer = _first(record, ANSWER_KEYS)
    if question is None or answer is None:
        return None
    reasoning = _first(record, REASONING_KEYS) or ""
    evidence = _first(record, ("evidence",)) or ""
    fact = _first(record, ("fact", "key_fact")) or ""
    return QARecord(
        rid, source.name, source.group, question, answer, split_key, reasoning=reasoning, evidence=evidence, fact=fact
    )


def split_key_of(info, source, record_id: str = "") -> str:
    """What the split groups by: the source, the object's name under it and the record's id
    within it, never the absolute location, so that a dataset splits the same wherever its files
    are checked out or mirrored."""
    return f"{source.name}:{info.name}{record_id.removeprefix(info.uri)}"


def _record_id(record: dict, uri: str, line: int) -> str:
    value = record.get("id")
    return f"{uri}#{value}" if isinstance(value, (str, int)) and str(value) else f"{uri}#L{line}"


def _jsonl_records(blocks: Iterable[str], fmt: str, info, source) -> Iterator[Unit | Dropped]:
    total = 0
    for number, line in enumerate(_lines(blocks), start=1):
        if isinstance(line, LongLine):
            total += 1
            yield Dropped(f"{info.uri}#L{number}", source.name, "too-large", f"line of {int(line)} characters > {MAX_LINE_CHARS}", kind=QA)
            continue
        line = line.strip()
        if not line:
            continue
        total += 1
        try:
            record = json.loads(line)
        except ValueError:
            yield Dropped(f"{info.uri}#L{number}", source.name, "invalid-record", "not JSON", kind=QA)
            continue
        if not isinstance(record, dict):
            yield Dropped(f"{info.uri}#L{number}", source.name, "invalid-record", "not an object", kind=QA)
            continue
        rid = _record_id(record, info.uri, number)
        try:
            unit = record_from_dict(record, fmt, rid, source, split_key=split_key_of(info, source, rid))
        except InvalidRecord as error:
            yield Dropped(rid, source.name, "invalid-record", str(error), kind=PREFERENCE)
            continue
        if unit is None:
            kind = PREFERENCE if "chosen" in record or fmt == "preference-jsonl" else QA
            yield Dropped(rid, source.name, "invalid-record", "missing fields", kind=kind)
        else:
            yield unit
    if total == 0:
        yield Dropped(info.uri, source.name, "empty", "no records", kind=QA)


def _json_array_records(data: bytes, info, source) -> Iterator[Unit | Dropped]:
    """A JSON file holding an array of records (the Alpaca layout)."""
    encoding = detect_encoding(data[:SNIFF_BYTES], source.encoding) or "utf-8"
    try:
        records = json.loads(data.decode(encoding, errors="strict"))
    except (ValueError, UnicodeDecodeError) as error:
        yield Dropped(info.uri, source.name, "corrupt", f"json: {str(error)[:200]}", kind=QA)
        return
    if not records:
        yield Dropped(info.uri, source.name, "empty", "no records", kind=QA)
        return
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            yield Dropped(f"{info.uri}#{number}", source.name, "invalid-record", "not an object", kind=QA)
            continue
        rid = _record_id(record, info.uri, number)
        try:
            unit = record_from_dict(record, "jsonl", rid, source, split_key=split_key_of(info, source, rid))
        except InvalidRecord as error:
            yield Dropped(rid, source.name, "invalid-record", str(error), kind=PREFERENCE)
            continue
        if unit is None:
            kind = PREFERENCE if "chosen" in record else QA
            yield Dropped(rid, source.name, "invalid-record", "missing fields", kind=kind)
        else:
            yield unit


def _csv_records(blocks: Iterable[str], info, source) -> Iterator[Unit | Dropped]:
    too_long: list[int] = []

    def kept_lines() -> Iterator[str]:
        for line in _lines(blocks):
            if isinstance(line, LongLine):
                too_long.append(int(line))
            else:
                yield line

    reader = csv.DictReader(kept_lines())
    total = 0
    try:
        for number, row in enumerate(reader, start=2):
            while too_long:
                yield Dropped(info.uri, source.name, "too-large", f"row of {too_long.pop()} characters > {MAX_LINE_CHARS}", kind=QA)
            total += 1
            row = {(k or "").strip().lower(): v for k, v in row.items() if isinstance(v, str)}
            rid = _record_id(row, info.uri, number)
            unit = record_from_dict(row, "qa-csv", rid, source, split_key=split_key_of(info, source, rid))
            if unit is None:
                yield Dropped(rid, source.name, "invalid-record", "missing question/answer", kind=QA)
            else:
                yield unit
    except csv.Error as error:
        yield Dropped(info.uri, source.name, "corrupt", f"csv: {error}", kind=QA)
        return
    for length in too_long:
        yield Dropped(info.uri, source.name, "too-large", f"row of {length} characters > {MAX_LINE_CHARS}", kind=QA)
    if total == 0 and not too_long:
        yield Dropped(info.uri, source.name, "empty", "no rows", kind=QA)


def read_seed_document(uri: str, field: str = "relevance.seedDocuments") -> str:
    """Text of one seed document (relevance), through the same extractors."""
    texts = []

    class _Seed:
        name = "relevance-seed"
        group = "domain"
        format = "auto"
        encoding = "auto"
        include: list[str] = []

    for info in storage.list_objects(uri):
        if is_hidden(info.name):
            continue
        for unit in iter_object(info, _Seed):
            if isinstance(unit, Document):
                texts.append(unit.text)
            elif isinstance(unit, QARecord):
                texts.append(f"{unit.question}\n{unit.answer}")
    if not any(t.strip() for t in texts):
        raise StageError(f"{field}: {uri} holds no readable text")
    return "\n\n".join(texts)


__all__ = ["iter_source", "iter_object", "detect_encoding", "detect_format", "looks_binary", "TEXT", "QA", "PREFERENCE"]
