"""FineTuneJob: supervised fine-tuning of a base model on a DomainDataset."""

from __future__ import annotations

from mentor_trainer.config.common import ModelUri
from mentor_trainer.config.sft import FineTuneOptions, TrainingResult

from .common import (
    JobSpecBase,
    KindApi,
    KindInfo,
    PrinterColumn,
    ResourceRef,
    StatusBase,
    age_column,
    immutable,
    phase_column,
)
from .references import DatasetReference


class FineTuneJobSpec(JobSpecBase, FineTuneOptions):
    """A fine-tuning run (the `mentor-trainer sft` stage)."""

    base_model: ModelUri = immutable("Model to fine-tune: s3://, pvc://, file://, mlflow:// or hf:// URI.", name="baseModel")
    dataset_ref: ResourceRef = immutable("DomainDataset to train on.", name="datasetRef")


class TrainingStatus(StatusBase, TrainingResult):
    """Observed state of a training job."""


def training_columns() -> list[PrinterColumn]:
    return [
        phase_column(),
        PrinterColumn(name="Progress", json_path=".status.progress.percent", description="Steps done / planned."),
        PrinterColumn(name="Loss", json_path=".status.progress.loss", type="number", description="Latest training loss."),
        PrinterColumn(name="Eval-Loss", json_path=".status.progress.evalLoss", type="number", priority=1),
        PrinterColumn(name="ETA", json_path=".status.progress.etaSeconds", type="number", priority=1),
        age_column(),
    ]


KIND = KindApi(
    info=KindInfo(
        kind="FineTuneJob",
        plural="finetunejobs",
        singular="finetunejob",
        short_names=["ftj"],
        stage="sft",
        description="Fine-tunes a base model on a DomainDataset with LoRA, QLoRA, DoRA, full or frozen-layer training.",
        columns=training_columns(),
    ),
    spec=FineTuneJobSpec,
    status=TrainingStatus,
    result=TrainingResult,
    references=(DatasetReference(),),
    output_field="modelUri",
)
