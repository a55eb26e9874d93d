"""Config of `mentor-trainer data`: raw domain documents -> training-ready dataset."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    CelRule,
    Endpoint,
    Fraction,
    ModelUri,
    NonNegativeInt,
    PositiveInt,
    Spec,
    StageResult,
    StageRuntime,
    StorageUri,
    exactly_one,
)

SourceFormat = Literal[
    "auto", "pdf", "html", "markdown", "text", "docx", "qa-jsonl", "qa-csv", "preference-jsonl", "payload-log"
]


class InlineDocument(Spec):
    """A document given directly in the resource (handy for seeds and small tests)."""

    id: str = Field(min_length=1, max_length=253, description="Identifier of the document, kept on every chunk.")
    text: str = Field(min_length=1, description="The document's text.")


class Source(Spec):
    """One input: a URI prefix (every object below it is read) or inline documents."""

    cel_rules = (
        exactly_one("uri", "inline"),
        CelRule(
            rule="self.format == 'payload-log' || (!has(self.since) && !has(self.until) && !has(self.maxRecords))",
            message="since, until and maxRecords apply to payload-log sources only",
            field_path=".format",
        ),
        CelRule(
            rule="self.format != 'payload-log' || has(self.uri)",
            message="a payload-log source reads a deployment's payload log URI",
            field_path=".uri",
        ),
    )

    name: str = Field(min_length=1, max_length=63, description="Name of the source, used in statistics.")
    uri: StorageUri | None = Field(default=None, description="Prefix to read: s3://, pvc:// or file://.")
    inline: list[InlineDocument] | None = Field(default=None, description="Documents given inline.")
    format: SourceFormat = Field(default="auto", description="Input format; auto detects by extension and content.")
    encoding: str = Field(
        default="auto", description="Text encoding (auto, utf-8, gb18030, gbk, ...); auto detects per file."
    )
    include: list[str] = Field(default_factory=list, description="Glob patterns of object names to read (all if empty).")
    group: Literal["domain", "general", "scenario"] = Field(
        default="domain", description="Mixture group this source belongs to."
    )
    # payload-log only: a served model's logged traffic and its feedback become examples
    since: str | None = Field(
        default=None, description="payload-log: read requests logged at or after this time (RFC 3339)."
    )
    until: str | None = Field(default=None, description="payload-log: read requests logged at or before this time (RFC 3339).")
    max_records: PositiveInt | None = Field(
        default=None, description="payload-log: use at most this many requests, the newest first (caps dataset growth)."
    )
    min_rating: float = Field(
        default=0.5, ge=-1, le=1,
        description="payload-log: a logged answer rated at least this (-1..1) becomes an example; a correction always does.",
    )


class PiiRedaction(Spec):
    """Redaction of personal data, with counts per kind in the manifest."""

    enabled: bool = Field(default=True, description="Redact personal data.")
    kinds: list[Literal["email", "phone", "national-id", "card-number"]] = Field(
        default_factory=lambda: ["email", "phone", "national-id", "card-number"], description="Kinds to redact."
    )
    replacement: str = Field(default="[{kind}]", description="Replacement text; {kind} is the kind's name.")


class Cleaning(Spec):
    """Text normalisation and cleaning."""

    unicode_nfkc: bool = Field(default=True, description="Unicode NFKC (folds full-width forms).")
    strip_control_chars: bool = Field(default=True, description="Remove control characters.")
    strip_html: bool = Field(default=True, description="Remove HTML remnants (tags, entities).")
    boilerplate_min_documents: PositiveInt = Field(
        default=3, description="A line repeated in at least this many documents is boilerplate and removed."
    )
    drop_patterns: list[str] = Field(default_factory=list, description="Regular expressions; matching lines are dropped.")
    pii: PiiRedaction = Field(default_factory=PiiRedaction, description="Personal-data redaction.")


class NearDuplicate(Spec):
    """MinHash LSH near-duplicate detection."""

    enabled: bool = Field(default=True, description="Drop near-duplicates.")
    threshold: Fraction = Field(default=0.8, description="Jaccard similarity above which two texts are duplicates.")
    num_perm: PositiveInt = Field(default=128, le=1024, description="MinHash permutations.")
    shingle_size: PositiveInt = Field(default=5, le=32, description="Characters per shingle.")


class Dedup(Spec):
    """Duplicate removal across all sources and across the split."""

    exact: bool = Field(default=True, description="Drop exact duplicates (hash of the normalised text).")
    near: NearDuplicate = Field(default_factory=NearDuplicate, description="Near-duplicate removal.")
    across_splits: bool = Field(
        default=True, description="Guarantee no validation/test example near-duplicates a training example."
    )


class Filters(Spec):
    """Quality filters; dropped documents are counted by reason."""

    cel_rules = (
        CelRule(
            rule="!has(self.maxChars) || self.maxChars >= self.minChars",
            message="maxChars must be >= minChars",
            field_path=".maxChars",
        ),
    )

    min_chars: NonNegativeInt = Field(default=50, description="Minimum characters per document.")
    max_chars: PositiveInt | None = Field(default=None, description="Maximum characters per document.")
    max_symbol_ratio: Fraction = Field(default=0.3, description="Maximum share of symbol characters.")
    max_digit_ratio: Fraction = Field(default=0.5, description="Maximum share of digits.")
    max_repeated_ngram_ratio: Fraction = Field(
        default=0.3, description="Maximum share of text covered by repeated word 3-grams."
    )
    languages: list[str] = Field(
        default_factory=list, description="Keep only these languages (ISO 639-1, e.g. zh, en); all if empty."
    )


class Relevance(Spec):
    """Domain relevance filter: TF-IDF similarity to seed keywords or seed documents."""

    cel_rules = (
        CelRule(
            rule="size(self.keywords) > 0 || size(self.seedDocuments) > 0",
            message="relevance needs keywords or seedDocuments",
        ),
    )

    keywords: list[str] = Field(default_factory=list, max_length=10000, description="Seed keywords of the domain.")
    seed_documents: list[StorageUri] = Field(
        default_factory=list, max_length=1000, description="Documents typical of the domain."
    )
    threshold: Fraction = Field(default=0.05, description="Minimum cosine similarity to keep a document.")


class Chunking(Spec):
    """Token-based chunking with overlap, respecting paragraphs and headings."""

    cel_rules = (
        CelRule(
            rule="self.overlapTokens < self.maxTokens",
            message="overlapTokens must be smaller than maxTokens",
            field_path=".overlapTokens",
        ),
    )

    max_tokens: PositiveInt = Field(default=512, le=32768, description="Tokens per chunk.")
    overlap_tokens: NonNegativeInt = Field(default=64, description="Tokens shared by consecutive chunks.")
    respect_structure: bool = Field(default=True, description="Prefer paragraph and heading boundaries.")


class Synthesis(Spec):
    """Synthetic QA and chain-of-thought answers from a teacher model."""

    teacher: Endpoint = Field(description="OpenAI-compatible endpoint of the teacher model.")
    questions_per_chunk: PositiveInt = Field(default=2, le=20, description="Questions generated per chunk.")
    chain_of_thought: bool = Field(default=True, description="Ask for <think> reasoning with each answer.")
    max_examples: PositiveInt | None = Field(default=None, description="Upper bound on synthetic examples.")
    preference_pairs: bool = Field(
        default=False, description="Build preference pairs from teacher (chosen) vs draft (rejected) answers."
    )


class Mixture(Spec):
    """Mixing of domain, general and scenario data by weight."""

    domain: Fraction = Field(default=1.0, description="Weight of domain sources.")
    general: Fraction = Field(default=0.0, description="Weight of general sources.")
    scenario: Fraction = Field(default=0.0, description="Weight of scenario sources.")
    total_examples: PositiveInt | None = Field(
        default=None, description="Size of the mixed set (default: as many as the scarcest group allows)."
    )


class Difficulty(Spec):
    """Per-example difficulty score, stored as a column for curriculum training."""

    method: Literal["length", "entity-density", "perplexity"] = Field(
        default="length", description="How difficulty is scored."
    )
    model_uri: ModelUri | None = Field(default=None, description="Model used for perplexity scoring.")


class Split(Spec):
    """Deterministic split grouped by source document."""

    cel_rules = (
        CelRule(
            rule="self.train + self.validation + self.test > 0.999 && self.train + self.validation + self.test < 1.001",
            message="train + validation + test must sum to 1",
        ),
    )

    train: Fraction = Field(default=0.8, description="Share of documents in the training split.")
    validation: Fraction = Field(default=0.1, description="Share in the validation split.")
    test: Fraction = Field(default=0.1, description="Share in the test split.")
    seed: NonNegativeInt = Field(default=42, description="Seed of the split.")
    documents_in_train: bool = Field(
        default=False,
        description=(
            "Put every document in the training split and split only question-answer records: a model can "
            "only learn a fact it reads (held-out questions then test recall, not unseen documents)."
        ),
    )


class RetrievalIndex(Spec):
    """Retrieval index over the chunks for RAG serving and evaluation."""

    enabled: bool = Field(default=True, description="Build the index.")
    embedding_model: ModelUri | None = Field(
        default=None, description="Sentence-transformers model; without one only BM25 is built."
    )
    bm25: bool = Field(default=True, description="Build a BM25 index beside the dense one.")


class DatasetOptions(Spec):
    """Everything a user declares about how a DomainDataset is built."""

    sources: list[Source] = Field(min_length=1, description="Inputs of the dataset.")
    tokenizer: ModelUri | None = Field(
        default=None, description="Tokenizer used for chunking and token statistics (usually the base model)."
    )
    cleaning: Cleaning = Field(default_factory=Cleaning, description="Text cleaning.")
    dedup: Dedup = Field(default_factory=Dedup, description="Deduplication.")
    filters: Filters = Field(default_factory=Filters, description="Quality filters.")
    relevance: Relevance | None = Field(default=None, description="Domain relevance filter.")
    chunking: Chunking = Field(default_factory=Chunking, description="Chunking.")
    formats: list[Literal["pretrain", "sft", "cot", "preference"]] = Field(
        default_factory=lambda: ["pretrain", "sft"], min_length=1, description="Example formats to build."
    )
    synthesis: Synthesis | None = Field(default=None, description="Synthetic examples from a teacher model.")
    mixture: Mixture = Field(default_factory=Mixture, description="Mixture weights.")
    difficulty: Difficulty = Field(default_factory=Difficulty, description="Difficulty scoring for curricula.")
    split: Split = Field(default_factory=Split, description="Train/validation/test split.")
    index: RetrievalIndex = Field(default_factory=RetrievalIndex, description="Retrieval index.")


class DataStageConfig(StageRuntime, DatasetOptions):
    """The rendered config `mentor-trainer data` reads."""


class DatasetStats(Spec):
    """Counts copied from the dataset's manifest."""

    documents_in: int | None = Field(default=None, description="Documents read.")
    documents_kept: int | None = Field(default=None, description="Documents left after cleaning, dedup and filters.")
    dropped_by_reason: dict[str, int] = Field(default_factory=dict, description="Dropped documents per reason.")
    examples_per_split: dict[str, int] = Field(default_factory=dict, description="Examples in train/validation/test.")
    tokens: int | None = Field(default=None, description="Tokens in the training split.")
    kept: str | None = Field(default=None, description="kept/total documents, for printing.")


class DatasetResult(StageResult):
    """Outcome of `mentor-trainer data`: where the dataset is and what it holds."""

    output_uri: str | None = Field(default=None, description="Where outputs are written.")
    content_hash: str | None = Field(default=None, description="Hash of inputs and config; equal hash, equal data.")
    stats: DatasetStats = Field(default_factory=DatasetStats, description="Counts from the manifest.")
