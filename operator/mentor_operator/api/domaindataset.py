"""DomainDataset: raw domain documents -> training-ready data, manifest and index."""

from __future__ import annotations

from pydantic import Field

from mentor_trainer.config.data import DatasetOptions

from mentor_trainer.config.common import Spec

from .common import JobSpecBase, KindApi, KindInfo, PrinterColumn, Resources, StatusBase, age_column, phase_column


class DomainDatasetSpec(JobSpecBase, DatasetOptions):
    """Sources and processing of a domain dataset (the `mentor-trainer data` stage)."""

    resources: Resources = Field(
        default_factory=lambda: Resources(gpus=0, cpu="2", memory="8Gi"),
        description="Compute resources (data processing needs no GPU by default).",
    )


class DatasetStats(Spec):
    """Counts copied from the dataset's manifest."""

    documents_in: int | None = Field(default=None, description="Documents read.")
    documents_kept: int | None = Field(default=None, description="Documents left after cleaning, dedup and filters.")
    dropped_by_reason: dict[str, int] = Field(default_factory=dict, description="Dropped documents per reason.")
    examples_per_split: dict[str, int] = Field(default_factory=dict, description="Examples in train/validation/test.")
    tokens: int | None = Field(default=None, description="Tokens in the training split.")
    kept: str | None = Field(default=None, description="kept/total documents, for printing.")


class DomainDatasetStatus(StatusBase):
    """Observed state of a DomainDataset."""

    stats: DatasetStats = Field(default_factory=DatasetStats, description="Counts from the manifest.")
    content_hash: str | None = Field(default=None, description="Hash of inputs and config; equal hash, equal data.")


KIND = KindApi(
    info=KindInfo(
        kind="DomainDataset",
        plural="domaindatasets",
        singular="domaindataset",
        short_names=["dds"],
        stage="data",
        description="A domain dataset built from raw documents: cleaned, deduplicated, filtered, chunked, mixed, split and indexed.",
        columns=[
            phase_column(),
            PrinterColumn(name="Kept", json_path=".status.stats.kept", description="Documents kept / read."),
            PrinterColumn(name="Tokens", json_path=".status.stats.tokens", type="integer", description="Training tokens."),
            age_column(),
        ],
    ),
    spec=DomainDatasetSpec,
    status=DomainDatasetStatus,
)
