"""The dataset's identity and record: its content hash, and manifest.json (what the data stage
built, from what and how; the dataset card renders it).

:class:`StageRecord` is what the stage counts while it runs; :func:`build_manifest` turns it,
the configuration and the written splits into the manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..config.data import DataStageConfig
from ..timestamps import utc_now
from . import ingest, layout
from .examples import SCHEMAS, SPLITS
from .output import SplitWriter
from .records import PREFERENCE, QA, TEXT, Counter

MANIFEST_VERSION = 1
PIPELINE_VERSION = 3  # 2: origin column, retrieval index, synthesis, mixture sampling, perplexity; 3: location-free split keys
# fields of the stage config that name this run, not the data: outside the content hash and the manifest's config
RUNTIME_FIELDS = {"run", "output_uri", "tracking", "progress_file"}


def content_hash(config: DataStageConfig, inputs_digest: str, tokenizer_fingerprint: str) -> str:
    """Same hash, same data: the configuration, the inputs, the tokenizer and the pipeline version."""
    payload = {
        "pipeline": PIPELINE_VERSION,
        "options": config.model_dump(mode="json", by_alias=True, exclude=RUNTIME_FIELDS),
        "inputs": inputs_digest,
        "tokenizer": tokenizer_fingerprint,
        "maxDocumentChars": ingest.MAX_DOCUMENT_CHARS,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class StageRecord:
    """What the data stage counted while it ran."""

    sources: dict[str, dict]  # per source name: name, group, uri, documents read, kept
    inputs: dict = field(default_factory=dict)  # the inputs' fingerprint: files, bytes, digest
    tokenizer: str = ""
    counter: Counter = field(default_factory=Counter)  # units dropped, per reason and kind
    units_in_by_kind: dict[str, int] = field(default_factory=lambda: {TEXT: 0, QA: 0, PREFERENCE: 0})
    documents_in: int = 0
    documents_kept: int = 0
    chunks: int = 0
    steps: dict[str, int] = field(default_factory=dict)  # units left after each step, in order
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pass
    cleaning: dict[str, int] = field(
        default_factory=lambda: {"boilerplateLines": 0, "boilerplateLinesRemoved": 0, "patternLinesRemoved": 0}
    )
    pii_redacted: dict[str, int] = field(default_factory=dict)
    relevance: dict | None = None
    train_examples_per_group: dict[str, int] = field(default_factory=dict)
    train_tokens_per_group: dict[str, int] = field(default_factory=dict)
    examples_dropped: dict[str, int] = field(default_factory=dict)  # examples (not units) dropped, per reason
    mixture: dict = field(default_factory=lambda: {"sampled": False})  # the mixer's report, when it sampled
    perplexity: dict | None = None  # the difficulty scorer's summary, when it scored by perplexity
    synthesis: dict | None = None
    index: dict | None = None

    @classmethod
    def for_config(cls, config: DataStageConfig) -> "StageRecord":
        return cls(sources={s.name: {"name": s.name, "group": s.group, "uri": s.uri, "documents": 0, "kept": 0} for s in config.sources})


def dataset_stats(record: StageRecord, splits: SplitWriter) -> dict:
    """The summary the stage result carries (and the manifest's ``stats``)."""
    return {
        "documentsIn": record.documents_in,
        "documentsKept": record.documents_kept,
        "droppedByReason": dict(sorted(record.counter.dropped.items())),
        "examplesPerSplit": splits.examples_per_split(),
        "tokens": splits.tokens,
        "kept": f"{record.documents_kept}/{record.documents_in}",
    }


def build_manifest(config: DataStageConfig, content_hash: str, record: StageRecord, splits: SplitWriter) -> dict:
    formats, sinks = splits.formats, splits.sinks
    stats = dataset_stats(record, splits)
    train_total = sum(record.train_examples_per_group.values()) or 1
    return {
        "manifestVersion": MANIFEST_VERSION,
        "contentHash": content_hash,
        "pipelineVersion": PIPELINE_VERSION,
        "createdAt": utc_now(),
        "run": config.run.model_dump(mode="json", by_alias=True),
        "outputUri": config.output_uri,
        "config": config.model_dump(mode="json", by_alias=True, exclude=RUNTIME_FIELDS),
        "inputs": {**record.inputs, "list": layout.INPUTS_LIST},
        "tokenizer": record.tokenizer,
        "sources": list(record.sources.values()),
        "stats": stats,
        "steps": record.steps,
        "droppedByKind": record.counter.dropped_by_kind,
        "droppedList": layout.DROPPED_LIST,
        "unitsInByKind": record.units_in_by_kind,
        "cleaning": {**record.cleaning, "piiRedacted": record.pii_redacted},
        "relevance": record.relevance,
        "examplesDroppedByReason": record.examples_dropped,
        "formats": formats,
        "splits": {s: {f: sinks[(s, f)].stats() for f in formats} for s in SPLITS},
        "tokens": {
            "total": stats["tokens"],
            "perSplit": {s: sum(sinks[(s, f)].tokens for f in formats) for s in SPLITS},
            "perFormat": {f: sum(sinks[(s, f)].tokens for s in SPLITS) for f in formats},
        },
        "mixture": {
            "weights": {"domain": config.mixture.domain, "general": config.mixture.general, "scenario": config.mixture.scenario},
            "realised": {g: round(n / train_total, 4) for g, n in sorted(record.train_examples_per_group.items())},
            "trainExamplesPerGroup": dict(sorted(record.train_examples_per_group.items())),
            "trainTokensPerGroup": dict(sorted(record.train_tokens_per_group.items())),
            **record.mixture,
        },
        "difficulty": {
            "method": config.difficulty.method,
            "column": "difficulty",
            **({"perplexity": record.perplexity} if record.perplexity is not None else {}),
        },
        "synthesis": record.synthesis,
        "index": record.index,
        "schemas": {f: [column.name for column in SCHEMAS[f]] for f in formats},
        "timingsSeconds": record.timings,
    }
