"""DomainDataset: raw domain documents -> training-ready data, manifest and index."""

from __future__ import annotations

from pydantic import Field

from mentor_trainer.config.data import DatasetOptions, DatasetResult

from .common import JobSpecBase, KindApi, KindInfo, PrinterColumn, Resources, StatusBase, age_column, phase_column


class DomainDatasetSpec(JobSpecBase, DatasetOptions):
    """Sources and processing of a domain dataset (the `mentor-trainer data` stage)."""

    resources: Resources = Field(
        default_factory=lambda: Resources(gpus=0, cpu="2", memory="8Gi"),
        description="Compute resources (data processing needs no GPU by default).",
    )


class DomainDatasetStatus(StatusBase, DatasetResult):
    """Observed state of a DomainDataset."""


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
    result=DatasetResult,
    output_field="outputUri",
)
