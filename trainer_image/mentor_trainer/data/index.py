"""The retrieval index over the dataset's chunks (dense + BM25) and the :class:`Retriever`.

Layout under ``<dataset>/index/`` (no pickles: every file is plain data that any reader
can load, and BM25 is rebuilt from the tokenised corpus):

- ``index.json``: format version, embedding model URI, dimension, counts, file names, the
  BM25 tokenizer and parameters;
- ``chunks.parquet``: one row per chunk: ``id`` (row number = embedding row), ``chunk_id``
  (``<doc_id>#<chunk_index>``), ``doc_id``, ``source``, ``group``, ``split``, ``language``,
  ``chunk_index``, ``char_start``, ``char_end``, ``text``;
- ``embeddings.npy``: float32 ``[chunks, dimension]``, L2-normalised (cosine = dot product),
  only with an embedding model;
- ``bm25.parquet``: ``id`` and ``tokens`` (the tokenised chunk), only when BM25 is enabled.

BM25 tokenisation is CJK-aware: Chinese/Japanese/Korean runs become single characters plus
character bigrams; other scripts become lower-cased words (a few English function words
dropped) and digit runs.

The serving (RAG) and evaluation stages reuse :class:`Retriever`:

    retriever = Retriever.load("s3://bucket/ns/DomainDataset/name/uid/")
    hits = retriever.search("How is Copper Crown dried?", k=5)             # hybrid
    hits = retriever.search("银叶7号的冷萎凋条件", k=5, mode="bm25")
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..errors import StageError
from ..jsonio import write_json
from .filters import CJK_RANGES
from .layout import INDEX_DIR
from ..models import model_location, torch_device

log = logging.getLogger(__name__)

INDEX_VERSION = 1
BM25_TOKENIZER = "cjk-char-bigram+words-v1"
BM25_K1 = 1.5
BM25_B = 0.75
RRF_K = 60
ENCODE_BATCH = 128
MODES = ("hybrid", "dense", "bm25")

_TOKEN = re.compile(f"[{CJK_RANGES}]+|[^\\W\\d_{CJK_RANGES}]+|\\d+(?:[.,]\\d+)?")
_CJK_RUN = re.compile(f"[{CJK_RANGES}]+")
_STOPWORDS = frozenset(
    "a an the and or of to in on at by for with from is are was were be been being it its this that these those "
    "as into than then there their they them he she his her we our you your i do does did how what which who whom "
    "when where why can could should would will shall may might must not no so if but".split()
)

CHUNK_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("group", pa.string()),
        ("split", pa.string()),
        ("language", pa.string()),
        ("chunk_index", pa.int32()),
        ("char_start", pa.int64()),
        ("char_end", pa.int64()),
        ("text", pa.string()),
    ]
)
BM25_SCHEMA = pa.schema([("id", pa.int64()), ("tokens", pa.list_(pa.string()))])


def bm25_tokens(text: str) -> list[str]:
    """CJK characters and character bigrams; lower-cased words (minus function words); digit runs."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        piece = match.group(0)
        if _CJK_RUN.fullmatch(piece):
            tokens.extend(piece)
            tokens.extend(piece[i : i + 2] for i in range(len(piece) - 1))
            continue
        word = piece.lower()
        if word not in _STOPWORDS:
            tokens.append(word)
    return tokens


def load_embedding_model(uri: str, purpose: str = "index.embeddingModel"):
    """A sentence-transformers model from a model URI (the real loading code; offline for local paths)."""
    location = model_location(uri, purpose)
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(location, device=torch_device())
    except Exception as error:  # noqa: BLE001 - the message must name the URI
        raise StageError(f"{purpose}: cannot load sentence-transformers model {uri}: {type(error).__name__}: {str(error)[:300]}") from None


# --------------------------------------------------------------------------------------
# Building


class IndexBuilder:
    """Chunks are added while the dataset is built (spooled to disk); :meth:`write` builds the index."""

    def __init__(self, options, workdir: Path) -> None:
        self.options = options
        self.workdir = Path(workdir)
        self.path = self.workdir / "index-chunks.jsonl"
        self.handle = open(self.path, "w", encoding="utf-8")
        self.count = 0

    def add(self, *, doc_id: str, source: str, group: str, split: str, language: str, chunk_index: int,
            char_start: int, char_end: int, text: str) -> None:
        row = {
            "id": self.count, "chunk_id": f"{doc_id}#{chunk_index}", "doc_id": doc_id, "source": source, "group": group,
            "split": split, "language": language, "chunk_index": chunk_index, "char_start": char_start,
            "char_end": char_end, "text": text,
        }
        self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += 1

    def _batches(self, size: int) -> Iterable[list[dict]]:
        batch: list[dict] = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                batch.append(json.loads(line))
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def write(self, staging: Path) -> dict:
        """Write ``index/`` under the staging directory; returns what the manifest records."""
        self.handle.close()
        options = self.options
        root = staging / INDEX_DIR
        root.mkdir(parents=True, exist_ok=True)
        model = None
        dimension = None
        if options.embedding_model:
            model = load_embedding_model(options.embedding_model)
            dimension = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension())
        embeddings = None
        if model is not None and self.count:
            embeddings = np.lib.format.open_memmap(root / "embeddings.npy", mode="w+", dtype=np.float32, shape=(self.count, dimension))
        chunk_writer = pq.ParquetWriter(root / "chunks.parquet", CHUNK_SCHEMA, compression="zstd")
        bm25_writer = pq.ParquetWriter(root / "bm25.parquet", BM25_SCHEMA, compression="zstd") if options.bm25 else None
        bm25_tokens_total = 0
        position = 0
        try:
            for batch in self._batches(ENCODE_BATCH):
                chunk_writer.write_table(pa.Table.from_pylist(batch, schema=CHUNK_SCHEMA))
                texts = [row["text"] for row in batch]
                if bm25_writer is not None:
                    tokens = [bm25_tokens(t) for t in texts]
                    bm25_tokens_total += sum(len(t) for t in tokens)
                    bm25_writer.write_table(pa.Table.from_pylist(
                        [{"id": row["id"], "tokens": t} for row, t in zip(batch, tokens)], schema=BM25_SCHEMA
                    ))
                if embeddings is not None:
                    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                           show_progress_bar=False)
                    embeddings[position : position + len(batch)] = vectors.astype(np.float32)
                position += len(batch)
        finally:
            chunk_writer.close()
            if bm25_writer is not None:
                bm25_writer.close()
        if embeddings is not None:
            embeddings.flush()
            del embeddings
        elif model is not None:
            np.save(root / "embeddings.npy", np.zeros((0, dimension), dtype=np.float32))
        self.path.unlink(missing_ok=True)
        info = {
            "indexVersion": INDEX_VERSION,
            "chunks": self.count,
            "files": {
                "chunks": "chunks.parquet",
                "embeddings": "embeddings.npy" if model is not None else None,
                "bm25": "bm25.parquet" if options.bm25 else None,
            },
            "dense": None
            if model is None
            else {"model": options.embedding_model, "dimension": dimension, "normalized": True, "similarity": "cosine"},
            "bm25": None
            if not options.bm25
            else {"tokenizer": BM25_TOKENIZER, "k1": BM25_K1, "b": BM25_B, "tokens": bm25_tokens_total},
        }
        write_json(root / "index.json", info)
        return {**info, "path": INDEX_DIR}


# --------------------------------------------------------------------------------------
# Searching


class Retriever:
    """Search a dataset's index: ``dense`` (cosine), ``bm25`` or ``hybrid`` (reciprocal-rank fusion)."""

    def __init__(self, directory: Path, info: dict, embedding_model=None) -> None:
        self.directory = directory
        self.info = info
        table = pq.read_table(directory / info["files"]["chunks"])
        self.chunks = table.to_pylist()
        self.embeddings = None
        self.model = embedding_model
        if info["files"].get("embeddings"):
            self.embeddings = np.load(directory / info["files"]["embeddings"], mmap_mode="r")
        self.bm25 = None
        if info["files"].get("bm25"):
            from rank_bm25 import BM25Okapi

            tokens = pq.read_table(directory / info["files"]["bm25"]).column("tokens").to_pylist()
            if tokens:
                bm25 = info["bm25"]
                # an empty token list would make BM25Okapi divide by zero: give it a placeholder
                self.bm25 = BM25Okapi([t or ["\u0000"] for t in tokens], k1=bm25["k1"], b=bm25["b"])

    @classmethod
    def load(cls, uri: str, embedding_model=None, workdir: str | None = None) -> "Retriever":
        """Load from a dataset URI or its ``index/`` URI (file://, pvc://, s3://, or a local path).

        ``embedding_model``: a loaded SentenceTransformer or a model URI overriding the one
        recorded in ``index.json`` (e.g. a copy of it on the serving pod's volume)."""
        if "://" not in uri:
            uri = f"file://{Path(uri).resolve()}"
        base = uri.rstrip("/")
        index_uri = base if base.endswith("/" + INDEX_DIR) else f"{base}/{INDEX_DIR}"
        u = storage.parse(index_uri)
        if u.is_local:
            directory = storage.local_path(u)
            if not (directory / "index.json").exists():
                raise StageError(f"no retrieval index at {index_uri} (index.json missing)")
        else:
            directory = Path(tempfile.mkdtemp(prefix="mentor-index-", dir=workdir))
            storage.download(index_uri, directory)
            if not (directory / "index.json").exists():
                raise StageError(f"no retrieval index at {index_uri} (index.json missing)")
        info = json.loads((directory / "index.json").read_text())
        if info.get("indexVersion") != INDEX_VERSION:
            raise StageError(f"retrieval index at {index_uri} has version {info.get('indexVersion')}, expected {INDEX_VERSION}")
        model = embedding_model
        if isinstance(model, str):
            model = load_embedding_model(model, "embedding model")
        elif model is None and info.get("dense") and info["dense"].get("model"):
            model = load_embedding_model(info["dense"]["model"], f"embedding model of the index at {index_uri}")
        return cls(directory, info, model)

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def modes(self) -> tuple[str, ...]:
        dense = self.embeddings is not None and self.model is not None
        available = [m for m, ok in (("dense", dense), ("bm25", self.bm25 is not None)) if ok]
        return tuple((["hybrid"] if available else []) + available)

    # each ranking: [(row, score)] best first
    def _dense(self, query: str, n: int) -> list[tuple[int, float]]:
        vector = self.model.encode([query], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
        scores = np.asarray(self.embeddings) @ vector.astype(np.float32)
        return _top(scores, n)

    def _bm25(self, query: str, n: int) -> list[tuple[int, float]]:
        tokens = bm25_tokens(query)
        if not tokens:
            return []
        scores = self.bm25.get_scores(tokens)
        return [(i, s) for i, s in _top(scores, n) if s > 0]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[dict]:
        """The ``k`` best chunks for ``query``: dicts of the chunk table plus ``score`` and ``rank``.

        ``hybrid`` fuses the dense and BM25 rankings with reciprocal-rank fusion
        (score = sum of 1 / (60 + rank)); with only one of them built it is that one."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not self.chunks or k <= 0:
            return []
        has_dense = self.embeddings is not None and self.model is not None
        has_bm25 = self.bm25 is not None
        if mode == "dense" and not has_dense:
            raise ValueError("this index has no dense embeddings (or no embedding model was loaded)")
        if mode == "bm25" and not has_bm25:
            raise ValueError("this index has no BM25 part")
        if mode == "dense" or (mode == "hybrid" and not has_bm25):
            ranking = self._dense(query, k) if has_dense else []
        elif mode == "bm25" or (mode == "hybrid" and not has_dense):
            ranking = self._bm25(query, k)
        else:
            depth = max(50, 4 * k)
            fused: dict[int, float] = {}
            for ranked in (self._dense(query, depth), self._bm25(query, depth)):
                for rank, (row, _) in enumerate(ranked):
                    fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank + 1)
            ranking = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [{**self.chunks[row], "score": float(score), "rank": rank + 1} for rank, (row, score) in enumerate(ranking[:k])]


def _top(scores: np.ndarray, n: int) -> list[tuple[int, float]]:
    scores = np.asarray(scores, dtype=np.float64)
    n = min(n, len(scores))
    if n <= 0:
        return []
    candidates = np.argpartition(-scores, n - 1)[:n]
    ordered = sorted(candidates.tolist(), key=lambda i: (-scores[i], i))
    return [(i, float(scores[i])) for i in ordered]
