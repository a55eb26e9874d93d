"""Retrieval for serving: the dataset's index (dense + BM25 fusion), then a re-ranking.

:meth:`RagPipeline.load` never raises: a missing or broken index, no index URI, or RAG
switched off give a pipeline with ``available`` False and a ``reason`` (which names the
URI), and the server answers without retrieval and says so. An index whose embedding model
cannot be loaded on the serving pod is used for BM25 alone (``mode`` says which retrieval
runs, ``note`` why it is less than the index offers).

Retrieval (:meth:`RagPipeline.retrieve`):

1. **First stage**: :meth:`mentor_trainer.data.index.Retriever.search` in ``hybrid`` mode,
   which fuses the dense (cosine) and BM25 rankings with reciprocal-rank fusion when the index
   has both (else the one it has). Without re-ranking the ``top_k`` best are returned with
   their fused scores.
2. **Re-ranking** (``options.rerank``): the first stage returns a wider candidate set
   (``RERANK_DEPTH * top_k``), and each candidate is re-scored by a cross-check against the
   question, then the ``top_k`` best are kept. The score returned is the final one:

   ``score = W_PRIOR * prior + W_LEXICAL * coverage [+ W_DENSE * cosine]``

   - ``prior`` = ``(RRF_K + 1) / (RRF_K + rank)``: the candidate's first-stage rank on the
     reciprocal-rank scale (1 for the first, 0.75 for the 21st), independent of which
     retriever produced the ranking;
   - ``coverage``: the IDF-weighted share of the question's content terms that occur in the
     passage, ``sum(idf(t) for t in Q & P) / sum(idf(t) for t in Q)``, with the index's own
     BM25 tokenizer (CJK-aware) and IDF table (uniform weights for an index without BM25;
     terms the corpus never contains are left out: no passage can hold them). BM25 rewards a
     passage that repeats one rare question term; coverage asks whether the passage speaks
     to *all* of the question, the check a reader makes first;
   - ``cosine``: question-passage cosine of the index's sentence-embedding model (clipped at
     0), only when the index has embeddings and the model is loaded: the question is encoded
     once, the passages' vectors are read from the index.

   Weights: ``W_PRIOR, W_LEXICAL, W_DENSE = 0.3, 0.4, 0.3`` with embeddings, ``0.4, 0.6`` (no
   dense term) without; all terms are in [0, 1], so the score is in [0, 1]. Measured on the
   example corpus's 40 held-out questions (``examples/corpus/docs``, 96-token chunks, top 5),
   where the gold chunk ranks: BM25 index: MRR 0.909 -> 0.926, first 85% -> 88%; dense +
   BM25 index (all-MiniLM-L6-v2): MRR 0.894 -> 0.954, first 83% -> 93%, top 3 98% -> 100%
   (other weightings within 0.015; ``tests/serving/test_rag.py`` keeps the BM25 figure).
   Cost: a set intersection per candidate and, with embeddings, a dot product per candidate
   (the question's vector is the first stage's, cached): about a millisecond on CPU.

Thread safety: calls into the retriever (and its encoder) are serialised by a lock.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from ..config.deploy import Rag

log = logging.getLogger(__name__)

RERANK_DEPTH = 4  # candidates = RERANK_DEPTH * top_k
RRF_K = 60  # the first stage's reciprocal-rank constant (data.index.RRF_K)
W_PRIOR, W_LEXICAL, W_DENSE = 0.3, 0.4, 0.3  # with embeddings
W_PRIOR_BM25, W_LEXICAL_BM25 = 0.4, 0.6  # without
MAX_QUESTION_CHARS = 20_000  # longer questions are cut before retrieval


@dataclass
class Passage:
    """One retrieved chunk: ``id`` is the index's chunk id (``<doc_id>#<chunk_index>``),
    ``source`` the document it comes from (its ``doc_id``), ``score`` the final score."""

    id: str
    text: str
    score: float
    source: str


class RagPipeline:
    """Retrieval over a dataset's index for the model server (see the module docstring)."""

    def __init__(self, retriever=None, options: Rag | None = None, *, index_uri: str | None = None,
                 reason: str = "", note: str = "") -> None:
        self.retriever = retriever
        self.options = options
        self.index_uri = index_uri
        self.available = retriever is not None
        self.reason = reason if not self.available else ""
        self.note = note
        self.failures = 0  # retrieve() calls that failed (logged, answered with no passages)
        self._lock = threading.Lock()  # the encoder is not guaranteed thread-safe
        self._failure_lock = threading.Lock()
        self._idf: dict[str, float] | None = None
        if retriever is not None:
            bm25 = getattr(retriever, "bm25", None)
            self._idf = {t: max(float(v), 0.0) for t, v in bm25.idf.items()} if bm25 is not None else None

    @property
    def mode(self) -> str | None:
        """``hybrid`` (dense + BM25), ``dense``, ``bm25``, or None when unavailable."""
        if self.retriever is None:
            return None
        modes = self.retriever.modes
        if not modes:
            return None
        if "dense" in modes and "bm25" in modes:
            return "hybrid"
        return modes[-1]

    @property
    def top_k(self) -> int:
        return self.options.top_k if self.options is not None else 0

    @classmethod
    def load(cls, index_uri: str | None, options: Rag | None, workdir: str | None = None) -> "RagPipeline":
        """The pipeline over the index at ``index_uri`` (a dataset URI or its ``index/``);
        never raises: ``available`` False and ``reason`` when it cannot retrieve."""
        if options is None:
            return cls(options=None, index_uri=index_uri, reason="RAG is not configured (spec.rag is not set)")
        if not options.enabled:
            return cls(options=options, index_uri=index_uri, reason="RAG is disabled (spec.rag.enabled is false)")
        if not index_uri:
            return cls(options=options, index_uri=None,
                       reason="RAG is enabled but no retrieval index URI was given (the dataset has no index?)")
        from ..data.index import Retriever

        note = ""
        try:
            retriever = Retriever.load(index_uri, workdir=workdir)
        except Exception as error:  # noqa: BLE001 - the server must start without RAG
            first = _describe(error)
            if "embedding model" not in first:
                return cls._unavailable(options, index_uri, first)
            # the index is there but its embedding model is not on this pod: BM25 alone
            try:
                retriever = Retriever.load(index_uri, embedding_model=_NO_MODEL, workdir=workdir)
                retriever.model = None
            except Exception as second:  # noqa: BLE001
                return cls._unavailable(options, index_uri, _describe(second))
            note = f"dense retrieval off, BM25 only: {first}"
            log.warning("RAG index %s: %s", index_uri, note)
        if not retriever.modes:
            return cls._unavailable(options, index_uri, note.replace("dense retrieval off, BM25 only: ", "")
                                    if note else "the index has neither embeddings nor a BM25 part")
        if len(retriever) == 0:
            return cls._unavailable(options, index_uri, "the index holds no chunks")
        if retriever.model is not None:
            retriever.model = _CachedEncoder(retriever.model)  # the re-ranking reuses the question's vector
        pipeline = cls(retriever, options, index_uri=index_uri, note=note)
        log.info("RAG over %s: %d chunks, %s retrieval, top %d%s", index_uri, len(retriever), pipeline.mode,
                 options.top_k, ", re-ranked" if options.rerank else "")
        return pipeline

    @classmethod
    def _unavailable(cls, options: Rag, index_uri: str, why: str) -> "RagPipeline":
        reason = f"retrieval index {index_uri} cannot be used: {why}"
        log.warning("RAG off: %s", reason)
        return cls(options=options, index_uri=index_uri, reason=reason)

    # ------------------------------------------------------------------ retrieval

    def retrieve(self, question: str) -> list[Passage]:
        """The ``top_k`` passages for ``question``, best first (empty when unavailable or the
        question is empty). A failure is logged and counted (``failures``), never raised: a
        request is answered without context rather than failed."""
        if not self.available or not isinstance(question, str) or not question.strip():
            return []
        question = question[:MAX_QUESTION_CHARS]
        try:
            return self._retrieve(question)
        except Exception as error:  # noqa: BLE001
            with self._failure_lock:
                self.failures += 1
            log.warning("retrieval failed for a question of %d characters: %s", len(question), _describe(error))
            return []

    def _retrieve(self, question: str) -> list[Passage]:
        top_k = self.options.top_k
        if not self.options.rerank:
            hits = self._search(question, top_k)
            return [_passage(h, h["score"]) for h in hits]
        hits = self._search(question, RERANK_DEPTH * top_k)
        if not hits:
            return []
        scored = sorted(
            zip(self.cross_check(question, hits), range(len(hits))), key=lambda pair: (-pair[0], pair[1])
        )
        return [_passage(hits[i], score) for score, i in scored[:top_k]]

    def _search(self, question: str, k: int) -> list[dict]:
        with self._lock:
            return self.retriever.search(question, k=k, mode="hybrid")

    def cross_check(self, question: str, hits: list[dict]) -> list[float]:
        """The re-ranking score of each first-stage hit (in the hits' order)."""
        from ..data.index import bm25_tokens

        question_terms = set(bm25_tokens(question))
        idf = self._idf
        if idf is not None:
            weights = {t: idf[t] for t in question_terms if t in idf}
        else:
            weights = dict.fromkeys(question_terms, 1.0)
        total = sum(weights.values())
        cosines = self._cosines(question, hits)
        scores = []
        for position, hit in enumerate(hits):
            rank = hit.get("rank") or position + 1
            prior = (RRF_K + 1) / (RRF_K + rank)
            if total > 0:
                terms = set(bm25_tokens(hit["text"]))
                coverage = sum(w for t, w in weights.items() if t in terms) / total
            else:
                coverage = 0.0
            if cosines is None:
                score = W_PRIOR_BM25 * prior + W_LEXICAL_BM25 * coverage
            else:
                score = W_PRIOR * prior + W_LEXICAL * coverage + W_DENSE * max(0.0, cosines[position])
            scores.append(float(score))
        return scores

    def _cosines(self, question: str, hits: list[dict]) -> list[float] | None:
        retriever = self.retriever
        if retriever.embeddings is None or retriever.model is None:
            return None
        import numpy as np

        with self._lock:
            vector = retriever.model.encode([question], normalize_embeddings=True, convert_to_numpy=True,
                                            show_progress_bar=False)[0]
        rows = np.asarray(retriever.embeddings[[h["id"] for h in hits]], dtype=np.float32)
        cosines = rows @ vector.astype(np.float32)
        return [float(c) if math.isfinite(float(c)) else 0.0 for c in cosines]


class _CachedEncoder:
    """The embedding model, remembering the vectors of the last few single-text queries (the
    first stage and the cross-check encode the same question). Used under the pipeline's lock."""

    SIZE = 64

    def __init__(self, model) -> None:
        self.model = model
        self._cache: dict[tuple, object] = {}

    def encode(self, sentences, **kwargs):
        if isinstance(sentences, list) and len(sentences) == 1 and isinstance(sentences[0], str):
            key = (sentences[0], tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
            hit = self._cache.get(key)
            if hit is None:
                hit = self.model.encode(sentences, **kwargs)
                if len(self._cache) >= self.SIZE:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = hit
            return hit
        return self.model.encode(sentences, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


class _NoModel:
    """Stands in for the embedding model while an index is loaded for BM25 alone."""


_NO_MODEL = _NoModel()


def _passage(hit: dict, score: float) -> Passage:
    return Passage(id=str(hit["chunk_id"]), text=str(hit["text"]), score=float(score), source=str(hit["doc_id"]))


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text if type(error).__name__ == "StageError" else f"{type(error).__name__}: {text}"[:500]
