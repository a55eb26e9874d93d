"""Pure functions: (resource, resolved inputs, settings) -> the child objects to apply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mentor_trainer.config import StageRuntime

from ..api import KINDS
from ..api.common import JobSpecBase
from ..settings import Settings
from .access import build_stage_access
from .config import output_uri, render_stage_config
from .job import build_config_map, build_indexed_job, build_job, build_train_job
from .meta import child_name
from .serving import (
    ANALYSIS_RESOURCES,
    build_drift_cron_job,
    build_inference_service,
    export_resources,
    export_uri,
    payload_log_uri,
    served_model_uri,
    version_id,
)


@dataclass(frozen=True)
class Plan:
    """The children of one resource, in apply order (ConfigMaps before what mounts them)."""

    children: list[dict[str, Any]]
    runner: dict[str, Any] | None  # the Job/TrainJob whose state is the resource's state


def _stage_objects(body, spec, settings, resolved, stage, kubeflow_trainer: bool) -> Plan:
    config = render_stage_config(spec, body, resolved, settings, stage)
    config_map = build_config_map(body, config, stage)
    cm_name = config_map["metadata"]["name"]
    access = build_stage_access(body, spec, settings)  # before the pods that run as its account
    nodes = getattr(getattr(spec, "distributed", None), "nodes", 1)
    if nodes > 1 and kubeflow_trainer:
        runner = build_train_job(body, spec, settings, config, stage, cm_name)
        return Plan([*access, config_map, runner], runner)
    if nodes > 1:
        runner, service = build_indexed_job(body, spec, settings, config, stage, cm_name)
        return Plan([*access, config_map, service, runner], runner)
    runner = build_job(body, spec, settings, config, stage, cm_name)
    return Plan([*access, config_map, runner], runner)


def plan_job_children(
    body: dict[str, Any], spec: JobSpecBase, resolved: dict[str, Any], settings: Settings, kubeflow_trainer: bool
) -> Plan:
    """Children of DomainDataset, FineTuneJob, RLHFJob and Evaluation."""
    stage = KINDS[body["kind"]].info.stage
    return _stage_objects(body, spec, settings, resolved, stage, kubeflow_trainer)


def render_export_config(
    body: dict[str, Any], spec: Any, model_version: str, resolved: dict[str, Any], settings: Settings
) -> StageRuntime:
    """The export stage's config for one model version (also what `mentor run` exports with)."""
    out = output_uri(spec, body, settings)
    # Each version publishes under its own prefix: publishing replaces what is under it, and
    # the deployment's root also holds the payload logs and the other versions.
    export_spec = spec.model_copy(update={"output_uri": export_uri(out, model_version)})
    inputs = {**resolved, "model_uri": model_version, "serving_gpus": spec.resources.gpus}
    return render_stage_config(export_spec, body, inputs, settings, "export")


def render_serve_config(
    body: dict[str, Any], spec: Any, model_version: str, resolved: dict[str, Any], settings: Settings
) -> StageRuntime:
    """The mentor runtime's config for one model version: its export, its source as the
    version every logged request carries, the deployment's payload logs."""
    out = output_uri(spec, body, settings)
    serve_inputs = {
        **resolved,
        "model_uri": served_model_uri(out, spec.runtime, model_version),
        "model_version": model_version,
        "payload_log_uri": payload_log_uri(spec, out),
    }
    return render_stage_config(spec, body, serve_inputs, settings, "serve")


def plan_export(body: dict[str, Any], spec: Any, model_version: str, resolved: dict[str, Any], settings: Settings) -> Plan:
    """The ConfigMap and Job exporting one model version (on CPU unless its quantisation needs a GPU)."""
    instance = f"export-{version_id(model_version)}"
    config = render_export_config(body, spec, model_version, resolved, settings)
    config_map = build_config_map(body, config, "export", instance)
    export_spec = spec.model_copy(update={"resources": export_resources(spec)})
    job = build_job(body, export_spec, settings, config, "export", config_map["metadata"]["name"], instance)
    # the deployment's stage account, for its exports and its later analyses and drift checks
    return Plan([*build_stage_access(body, spec, settings), config_map, job], job)


def render_drift_config(body: dict[str, Any], spec: Any, resolved: dict[str, Any], settings: Settings, stable: str) -> StageRuntime:
    """The drift check's config (also what `mentor loop` checks with): the deployment's logged
    traffic against its reference, the served version's tokenizer."""
    out = output_uri(spec, body, settings)
    inputs = {
        "drift": spec.monitoring.drift,
        "payload_log_uri": payload_log_uri(spec, out),  # logging is on: CEL requires it for drift
        # the training dataset's validation prompts, unless the spec names a reference
        "reference_uri": spec.monitoring.drift.reference_uri or resolved.get("dataset_uri"),
        "tokenizer_uri": f"{export_uri(out, stable)}model/",
    }
    return render_stage_config(spec, body, inputs, settings, "drift")


def plan_serving(
    body: dict[str, Any], spec: Any, resolved: dict[str, Any], settings: Settings, stable: str, canary: str | None = None
) -> list[dict[str, Any]]:
    """The serving objects once the versions are exported: a serve ConfigMap per version, the
    InferenceService (stable, plus the canary during a rollout) and, with drift monitoring,
    the drift-check CronJob."""
    children: list[dict[str, Any]] = []
    served: list[tuple[Any, str]] = []
    for version in (stable, canary):
        if version is None:
            continue
        config = render_serve_config(body, spec, version, resolved, settings)
        config_map = build_config_map(body, config, "serve", f"serve-{version_id(version)}")
        children.append(config_map)
        served.append((config, config_map["metadata"]["name"]))
    children.append(build_inference_service(body, spec, settings, served[0], served[1] if len(served) > 1 else None))
    if spec.monitoring.drift:
        drift_config = render_drift_config(body, spec, resolved, settings, stable)
        drift_cm = build_config_map(body, drift_config, "drift")
        children += [drift_cm, build_drift_cron_job(body, spec, settings, drift_config, drift_cm["metadata"]["name"])]
    return children


def plan_rollout_analysis(
    body: dict[str, Any], spec: Any, settings: Settings, stable: str, canary: str, since: str, attempt: int
) -> Plan:
    """The Job comparing the canary with the stable version on their logged requests."""
    out = output_uri(spec, body, settings)
    instance = f"rollout-{version_id(canary)}-{attempt}"
    analysis_spec = spec.model_copy(update={"resources": ANALYSIS_RESOURCES, "output_uri": f"{out.rstrip('/')}/rollouts/{instance}/"})
    inputs = {
        "payload_log_uri": payload_log_uri(spec, out),  # logging is on: CEL requires it for drift
        "stable_version": stable,
        "canary_version": canary,
        "since": since,
        "canary": spec.canary,
    }
    config = render_stage_config(analysis_spec, body, inputs, settings, "rollout")
    config_map = build_config_map(body, config, "rollout", instance)
    job = build_job(body, analysis_spec, settings, config, "rollout", config_map["metadata"]["name"], instance)
    return Plan([config_map, job], job)


__all__ = [
    "Plan",
    "child_name",
    "plan_export",
    "plan_job_children",
    "plan_rollout_analysis",
    "plan_serving",
    "render_drift_config",
    "render_export_config",
    "render_serve_config",
    "version_id",
]
