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
        CelRule(
            rule="!self.monitoring.retrain.enabled || (has(self.monitoring.drift) && has(self.evaluationRef))",
            message="retraining on drift needs monitoring.drift and an evaluationRef (its gates judge the candidate)",
            field_path=".monitoring.retrain.enabled",
        ),
        CelRule(
            rule="!self.monitoring.retrain.enabled || has(self.monitoring.retrain.trainingRef)"
            " || (has(self.modelRef) && self.modelRef.kind == 'FineTuneJob')",
            message="retraining copies a FineTuneJob: set monitoring.retrain.trainingRef, or serve a FineTuneJob's model (modelRef)",
            field_path=".monitoring.retrain.trainingRef",
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
    """Result of the latest drift check, and what was decided on it."""

    check_name: str | None = Field(default=None, description="The drift check Job whose result this is.")
    decided_check: str | None = Field(default=None, description="The last drift check a retraining decision was taken on.")
    decision: str | None = Field(default=None, description="That decision: the retraining started, or why none was.")
    retrain_count: int = Field(default=0, description="Retraining pipelines started on drift.")
    last_retrain_time: str | None = Field(default=None, description="When the last retraining started.")


class RetrainingRecord(Spec):
    """One retraining pipeline a drift check started, and how far it got."""

    name: str = Field(description="Name shared by its DomainDataset, FineTuneJob and Evaluations (label mentor.dev/retraining).")
    drift_check: str = Field(description="The drift check Job that caused it.")
    phase: Literal["AwaitingApproval", "Building", "Training", "Evaluating", "RollingOut", "Succeeded", "Failed"] = Field(
        description="Where the pipeline is."
    )
    message: str = Field(default="", description="What it waits for, or how it ended.")
    approval_stage: Literal["training", "rollout"] | None = Field(
        default=None, description="Set while the pipeline waits for an approval: the step that waits."
    )
    spec_model: str = Field(description="The model the spec named when it started (a new spec model supersedes the retraining).")
    base_model: str = Field(description="The model it fine-tunes.")
    dataset: str = Field(description="The DomainDataset it built.")
    model_version: str | None = Field(default=None, description="The candidate model, once trained.")
    start_time: str | None = Field(default=None, description="When it started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When it ended (RFC 3339).")


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
    retrainings: list[RetrainingRecord] = Field(
        default_factory=list, description="Retraining pipelines started on drift, newest last (at most 20)."
    )


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
