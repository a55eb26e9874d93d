"""Evaluation: measure a model's expertise, compare it with a baseline, gate promotion."""

from __future__ import annotations

from pydantic import Field

from mentor_trainer.config.common import CelRule, ModelUri, exactly_one
from mentor_trainer.config.evaluate import EvaluationOptions, EvaluationResult

from .common import (
    JobSpecBase,
    KindApi,
    KindInfo,
    ModelRef,
    PrinterColumn,
    ResourceRef,
    StatusBase,
    age_column,
    immutable,
    phase_column,
)
from .references import DatasetReference, ModelReference


class EvaluationSpec(JobSpecBase, EvaluationOptions):
    """An evaluation run (the `mentor-trainer evaluate` stage)."""

    cel_rules = (
        exactly_one("modelRef", "modelUri"),
        CelRule(
            rule="!(has(self.baselineRef) && has(self.baselineUri))",
            message="set at most one of baselineRef or baselineUri",
            field_path=".baselineRef",
        ),
        CelRule(
            rule="self.gates.all(g, !has(g.baselineFactor) && !has(g.baselineDelta)) || has(self.baselineRef) || has(self.baselineUri)",
            message="relative gates need baselineRef or baselineUri",
            field_path=".gates",
        ),
    )

    model_ref: ModelRef | None = immutable("Resource whose model is evaluated.", default=None, name="modelRef")
    model_uri: ModelUri | None = immutable("Model URI to evaluate.", default=None, name="modelUri")
    baseline_ref: ModelRef | None = Field(default=None, description="Resource whose model is the baseline.")
    baseline_uri: ModelUri | None = Field(default=None, description="Baseline model URI (e.g. the base model).")
    dataset_ref: ResourceRef = immutable("DomainDataset whose test split is used.", name="datasetRef")


class EvaluationStatus(StatusBase, EvaluationResult):
    """Observed state of an Evaluation."""


KIND = KindApi(
    info=KindInfo(
        kind="Evaluation",
        plural="evaluations",
        singular="evaluation",
        short_names=["eval"],
        stage="evaluate",
        description="Evaluates a model on domain suites, compares it with a baseline and gates its promotion.",
        columns=[
            phase_column(),
            PrinterColumn(name="Passed", json_path=".status.passed", type="boolean", description="All gates passed."),
            PrinterColumn(name="Summary", json_path=".status.summary", description="Key metric."),
            age_column(),
        ],
    ),
    spec=EvaluationSpec,
    status=EvaluationStatus,
    result=EvaluationResult,
    references=(
        ModelReference("modelRef", "modelUri", into="model_uri", run_id_into="training_run_id", record_as="modelUri"),
        ModelReference("baselineRef", "baselineUri", into="baseline_uri"),
        DatasetReference(),
    ),
    output_field="modelUri",
)
