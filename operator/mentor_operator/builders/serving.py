"""Pure builders of a ModelDeployment's serving objects: KServe InferenceService and the
drift-check CronJob."""

from __future__ import annotations

import hashlib
from typing import Any

from mentor_trainer.config import DriftStageConfig, ServeStageConfig

from ..api.common import Resources
from ..api.modeldeployment import ModelDeploymentSpec
from ..settings import Settings
from .job import CONFIG_DIR, CONFIG_FILE, RESTRICTED_CONTAINER_SECURITY, build_pod_template, container_resources, stage_env
from .meta import child_name, labels, object_meta

# runtime -> (KServe ServingRuntime, model format it serves)
KSERVE_RUNTIMES = {
    "huggingface": ("kserve-huggingfaceserver", "huggingface"),
    "vllm": ("kserve-vllmserver", "vLLM"),
    "triton": ("kserve-tritonserver", "triton"),
}
DRIFT_RESOURCES = Resources(gpus=0, cpu="1", memory="2Gi", shm_size="64Mi")
ANALYSIS_RESOURCES = Resources(gpus=0, cpu="1", memory="1Gi", shm_size="64Mi")


def version_id(model_version: str) -> str:
    """A short, stable name for a source model: names its export Job and folder."""
    return hashlib.sha256(model_version.encode()).hexdigest()[:8]


def export_uri(output_uri: str, model_version: str) -> str:
    """Where the export of one model version is written (the export stage's output URI)."""
    return f"{output_uri.rstrip('/')}/export/{version_id(model_version)}/"


def served_model_uri(output_uri: str, runtime: str, model_version: str) -> str:
    """What the runtime loads from an export: a Triton model repository for `triton`, the
    exported Hugging Face directory otherwise (KServe reads s3:// and pvc://)."""
    return f"{export_uri(output_uri, model_version)}{'triton' if runtime == 'triton' else 'model'}/"


def export_resources(spec: ModelDeploymentSpec) -> Resources:
    """The export runs on CPU with the replica's CPU and memory; only quantisation that needs
    the hardware (int4, fp8) asks for the replica's GPUs."""
    gpus = spec.resources.gpus if spec.quantization.method in ("int4", "fp8") else 0
    return spec.resources.model_copy(update={"gpus": gpus})


def payload_log_uri(spec: ModelDeploymentSpec, output_uri: str) -> str | None:
    if not spec.logging.enabled:
        return None
    return spec.logging.uri or f"{output_uri.rstrip('/')}/payloads/"


def build_inference_service(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    settings: Settings,
    stable: tuple[ServeStageConfig, str],
    canary: tuple[ServeStageConfig, str] | None = None,
) -> dict[str, Any]:
    """The InferenceService serving the stable version and, during a rollout, the canary next
    to it with spec.canary.trafficPercent of the requests. `stable` and `canary` are each the
    serve config and the name of its ConfigMap."""
    isvc_spec: dict[str, Any] = {"predictor": _predictor(body, spec, settings, *stable)}
    if canary is not None and spec.canary is not None:
        isvc_spec["canary"] = [{"predictor": _predictor(body, spec, settings, *canary), "trafficPercent": spec.canary.traffic_percent}]
    meta = object_meta(body, body["metadata"]["name"], "serve")
    meta["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": isvc_spec,
    }


def _predictor(body: dict[str, Any], spec: ModelDeploymentSpec, settings: Settings, config: ServeStageConfig, config_map: str) -> dict[str, Any]:
    name = body["metadata"]["name"]
    predictor: dict[str, Any] = {
        "minReplicas": spec.scaling.min_replicas,
        "maxReplicas": spec.scaling.max_replicas,
    }
    if spec.scaling.target_concurrency:
        predictor.update(scaleMetric="concurrency", scaleTarget=spec.scaling.target_concurrency)
    sched = spec.scheduling
    if sched.node_selector:
        predictor["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        predictor["tolerations"] = [t.to_wire() for t in sched.tolerations]
    if sched.priority_class_name:
        predictor["priorityClassName"] = sched.priority_class_name
    if spec.runtime == "mentor":
        # Our own KServe ModelServer: RAG, calibrated temperature and payload logging built in.
        predictor["containers"] = [
            {
                "name": "kserve-container",
                "image": spec.image or settings.serve_image,
                "command": ["mentor-trainer", "serve", "--config", CONFIG_FILE],
                # the object store for the model, index and payload logs; no status reports
                # (predictor pods run without the stage account)
                "env": stage_env(body, settings, config, progress=False),
                "ports": [{"name": "http1", "containerPort": config.http_port, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": config.http_port}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": config.http_port}, "periodSeconds": 15, "failureThreshold": 4},
                "resources": container_resources(spec),
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
                "volumeMounts": [
                    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                    {"name": "scratch", "mountPath": "/tmp"},
                ],
            }
        ]
        predictor["volumes"] = [
            {"name": "config", "configMap": {"name": config_map}},
            {"name": "scratch", "emptyDir": {}},
        ]
    else:
        runtime, model_format = KSERVE_RUNTIMES[spec.runtime]
        predictor["model"] = {
            "name": "kserve-container",  # the canary's schema requires the container's name
            "modelFormat": {"name": model_format},
            "runtime": runtime,
            "storageUri": config.model_uri,
            "resources": container_resources(spec),
            "args": [f"--model_name={name}"],
            "securityContext": RESTRICTED_CONTAINER_SECURITY,
        }
        if spec.runtime == "triton":
            predictor["model"]["protocolVersion"] = "v2"
    return predictor


def build_drift_cron_job(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    settings: Settings,
    config: DriftStageConfig,
    config_map: str,
) -> dict[str, Any]:
    drift_spec = spec.model_copy(update={"resources": DRIFT_RESOURCES})
    template = build_pod_template(body, drift_spec, settings, config, "drift", config_map)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": object_meta(body, child_name(body["metadata"]["name"], "drift"), "drift"),
        "spec": {
            "schedule": config.drift.schedule,
            "concurrencyPolicy": "Forbid",
            "suspend": spec.suspend,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            # labelled like every stage Job, so the operator's Job watch folds each check's result
            "jobTemplate": {"metadata": {"labels": labels(body["kind"], body["metadata"]["name"], "drift")},
                            "spec": {"backoffLimit": 1, "template": template}},
        },
    }
