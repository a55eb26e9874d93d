"""Pure functions: (resource, resolved inputs, settings) -> the child objects to apply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mentor_trainer.config import StageRuntime

from ..api import KINDS
from ..api.common import JobSpecBase
from ..settings import Settings
from .config import output_uri, render_stage_config
from .job import build_config_map, build_indexed_job, build_job, build_train_job
from .meta import child_name
from .serving import build_drift_cron_job, build_inference_service, export_resources, export_uri, payload_log_uri, served_model_uri


@dataclass(frozen=True)
class Plan:
    """The children of one resource, in apply order (ConfigMaps before what mounts them)."""

    children: list[dict[str, Any]]
    runner: dict[str, Any] | None  # the Job/TrainJob whose state is the resource's state


def _stage_objects(body, spec, settings, resolved, stage, kubeflow_trainer: bool) -> Plan:
    config = render_stage_config(spec, body, resolved, settings, stage)
    config_map = build_config_map(body, config, stage)
    cm_name = config_map["metadata"]["name"]
    nodes = getattr(getattr(spec, "distributed", None), "nodes", 1)
    if nodes > 1 and kubeflow_trainer:
        runner = build_train_job(body, spec, settings, config, stage, cm_name)
        return Plan([config_map, runner], runner)
    if nodes > 1:
        runner, service = build_indexed_job(body, spec, settings, config, stage, cm_name)
        return Plan([config_map, service, runner], runner)
    runner = build_job(body, spec, settings, config, stage, cm_name)
    return Plan([config_map, runner], runner)


def plan_job_children(
    body: dict[str, Any], spec: JobSpecBase, resolved: dict[str, Any], settings: Settings, kubeflow_trainer: bool
) -> Plan:
    """Children of DomainDataset, FineTuneJob, RLHFJob and Evaluation."""
    stage = KINDS[body["kind"]].info.stage
    return _stage_objects(body, spec, settings, resolved, stage, kubeflow_trainer)


def render_export_config(body: dict[str, Any], spec: Any, resolved: dict[str, Any], settings: Settings) -> StageRuntime:
    """The export stage's config (also what `mentor run` exports with)."""
    out = output_uri(spec, body, settings)
    # The export publishes under its own prefix: publishing replaces what is under it, and
    # the deployment's root also holds the payload logs.
    export_spec = spec.model_copy(update={"output_uri": export_uri(out)})
    return render_stage_config(export_spec, body, {**resolved, "serving_gpus": spec.resources.gpus}, settings, "export")


def render_serve_config(body: dict[str, Any], spec: Any, resolved: dict[str, Any], settings: Settings) -> StageRuntime:
    """The mentor runtime's config: the exported model, its source as the version, the logs."""
    out = output_uri(spec, body, settings)
    serve_inputs = {
        **resolved,
        "model_uri": served_model_uri(out, spec.runtime),
        "model_version": resolved.get("model_uri"),
        "payload_log_uri": payload_log_uri(spec, out),
    }
    return render_stage_config(spec, body, serve_inputs, settings, "serve")


def plan_deployment_children(
    body: dict[str, Any], spec: Any, resolved: dict[str, Any], settings: Settings, exported: bool
) -> Plan:
    """Children of a ModelDeployment: the export ConfigMap and Job first; once it has
    succeeded, the InferenceService and (with drift monitoring) the drift-check CronJob."""
    out = output_uri(spec, body, settings)
    export_config = render_export_config(body, spec, resolved, settings)
    export_cm = build_config_map(body, export_config, "export")
    export_spec = spec.model_copy(update={"resources": export_resources(spec)})
    export_job = build_job(body, export_spec, settings, export_config, "export", export_cm["metadata"]["name"])
    if not exported:
        return Plan([export_cm, export_job], export_job)
    serve_config = render_serve_config(body, spec, resolved, settings)
    serve_cm = build_config_map(body, serve_config, "serve")
    children = [export_cm, export_job, serve_cm, build_inference_service(body, spec, settings, serve_config, serve_cm["metadata"]["name"])]
    if spec.monitoring.drift:
        log_uri = payload_log_uri(spec, out) or f"{out.rstrip('/')}/payloads/"
        drift_config = render_stage_config(
            spec,
            body,
            {
                "drift": spec.monitoring.drift,
                "payload_log_uri": log_uri,
                "reference_uri": spec.monitoring.drift.reference_uri or resolved.get("reference_uri") or log_uri,
            },
            settings,
            "drift",
        )
        drift_cm = build_config_map(body, drift_config, "drift")
        children += [drift_cm, build_drift_cron_job(body, spec, settings, drift_config, drift_cm["metadata"]["name"])]
    return Plan(children, export_job)


__all__ = ["Plan", "child_name", "plan_deployment_children", "plan_job_children", "render_export_config", "render_serve_config"]
