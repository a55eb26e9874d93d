"""ModelDeployment: serve a model with KServe, watch its traffic for drift, retrain on drift."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mentor_trainer.config.common import CelRule, ModelUri, Spec, exactly_one
from mentor_trainer.config.deploy import DriftResult, ExportResult, ServingOptions

from .common import (
    JobSpecBase,
    KindApi,
    KindInfo,
    ModelRef,
    PrinterColumn,
    ResourceRef,
    Resources,
    StatusBase,
    age_column,
    phase_column,
)
from .references import ModelReference, PassedEvaluation, ServedIndex, TrainingDataset


class ModelDeploymentSpec(JobSpecBase, ServingOptions):
    """A served model: export job, InferenceService and drift monitoring."""

    cel_rules = (
        exactly_one("modelRef", "modelUri"),
        CelRule(
            rule="!has(self.monitoring.drift) || self.logging.enabled",
            message="drift monitoring needs payload logging enabled",
            field_path=".logging.enabled",
        ),
    )

    model_ref: ModelRef | None = Field(default=None, description="Resource whose model is served.")
    model_uri: ModelUri | None = Field(default=None, description="Model URI to serve.")
    evaluation_ref: ResourceRef | None = Field(
        default=None, description="Evaluation that must have passed before this model rolls out."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(gpus=1, cpu="2", memory="16Gi"), description="Resources of each replica."
    )


class DriftStatus(DriftResult):
    """Result of the latest drift check, and the retraining it caused."""

    retrain_count: int = Field(default=0, description="Retraining pipelines started on drift.")
    last_retrain_time: str | None = Field(default=None, description="When the last retraining started.")


class CanaryStatus(Spec):
    """A new model version serving part of the traffic next to the stable one."""

    model_version: str = Field(description="The source model of the canary.")
    model_uri: str | None = Field(default=None, description="The canary's exported artefact.")
    traffic_percent: int | None = Field(default=None, description="Share of requests it receives.")
    start_time: str | None = Field(default=None, description="When it started receiving traffic (RFC 3339).")
    analyses: int = Field(default=0, description="Analyses run so far (each after promoteAfterMinutes).")


class RolloutRecord(Spec):
    """How a model version's rollout ended."""

    model_version: str = Field(description="The source model rolled out.")
    outcome: Literal["promoted", "rolledBack", "replaced"] = Field(description="promoted or rolledBack (canary), replaced (no canary).")
    reason: str = Field(default="", description="The analysis' reasons, or who decided.")
    time: str | None = Field(default=None, description="When (RFC 3339).")


class ModelDeploymentStatus(StatusBase, ExportResult):
    """Observed state of a ModelDeployment."""

    url: str | None = Field(default=None, description="URL of the InferenceService.")
    model_version: str | None = Field(default=None, description="The source model being served (what was exported).")
    canary: CanaryStatus | None = Field(default=None, description="The new version while it receives canary traffic.")
    rollouts: list[RolloutRecord] = Field(default_factory=list, description="Latest rollouts, newest last (at most 10).")
    drift: DriftStatus = Field(default_factory=DriftStatus, description="Drift monitoring.")


KIND = KindApi(
    info=KindInfo(
        kind="ModelDeployment",
        plural="modeldeployments",
        singular="modeldeployment",
        short_names=["md"],
        stage="export",
        description="Serves a model with KServe (mentor, Hugging Face/vLLM or Triton runtime), monitors drift and retrains on it.",
        columns=[
            phase_column(),
            PrinterColumn(name="Runtime", json_path=".spec.runtime"),
            PrinterColumn(name="URL", json_path=".status.url"),
            PrinterColumn(name="Drift", json_path=".status.drift.score", type="number", description="Latest drift score."),
            age_column(),
        ],
    ),
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    result=ExportResult,
    references=(
        ModelReference("modelRef", "modelUri", into="model_uri"),
        PassedEvaluation(model_from="model_uri", temperature_into="temperature"),
        ServedIndex(),
        TrainingDataset(),
    ),
    workload="serving",
)
