"""Pure builders of the objects that run a stage: ConfigMap, pod template, Job, indexed Job
with its headless Service, and Kubeflow TrainJob."""

from __future__ import annotations

import json
from typing import Any

from mentor_trainer.config import StageRuntime
from mentor_trainer.config.common import secret_refs
from mentor_trainer.storage import DEFAULT_PVC_ROOT

from ..api.common import JobSpecBase
from ..settings import Settings
from .access import reports_progress, stage_account, status_path
from .meta import KUEUE_QUEUE_LABEL, child_name, labels, object_meta
from .uris import claims

CONFIG_DIR = "/etc/mentor"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# The trainer exits with this code when retrying cannot help (bad config, missing input);
# the Job's podFailurePolicy then fails at once instead of burning its retries.
EXIT_CODE_PERMANENT = 2
TORCHRUN_PORT = 29500

STAGE_CONTAINER = "trainer"  # the container that runs the stage and writes its termination message
RESTRICTED_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def build_config_map(body: dict[str, Any], config: StageRuntime, stage: str, instance: str | None = None) -> dict[str, Any]:
    """The stage's rendered config; `instance` names one of several runs of a stage."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(body, child_name(body["metadata"]["name"], f"{instance or stage}-config"), stage),
        "data": {"config.json": json.dumps(config.to_wire(), indent=2, sort_keys=True)},
    }


def stage_env(body: dict[str, Any], settings: Settings, config: StageRuntime, *, progress: bool) -> list[dict[str, Any]]:
    """What a stage's container needs besides its config file: a writable HOME, no hub, the
    object store and its credentials, tracking, secrets; `progress`: where to report it."""
    env: list[dict[str, Any]] = [
        {"name": "MENTOR_CONFIG", "value": CONFIG_FILE},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if progress:
        env.append({"name": "MENTOR_PROGRESS_PATH", "value": status_path(body)})
    if config.tracking.uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": config.tracking.uri})
    if settings.s3_endpoint:
        env.append({"name": "MENTOR_S3_ENDPOINT", "value": settings.s3_endpoint})
    for ref in secret_refs(config):  # teacher / judge API keys, straight from their Secrets
        env.append({"name": ref.env_name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if settings.s3_credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append(
                {
                    "name": key,
                    "valueFrom": {
                        "secretKeyRef": {"name": settings.s3_credentials_secret, "key": key, "optional": True}
                    },
                }
            )
    return env


def container_resources(spec: JobSpecBase) -> dict[str, Any]:
    res = spec.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if res.ephemeral_storage:
        requests["ephemeral-storage"] = res.ephemeral_storage
    if res.gpus:
        requests[res.gpu_resource_name] = str(res.gpus)
        limits[res.gpu_resource_name] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def build_pod_template(
    body: dict[str, Any],
    spec: JobSpecBase,
    settings: Settings,
    config: StageRuntime,
    stage: str,
    config_map: str,
) -> dict[str, Any]:
    sched = spec.scheduling
    container = {
        "name": STAGE_CONTAINER,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["mentor-trainer", stage, "--config", CONFIG_FILE],
        "env": stage_env(body, settings, config, progress=reports_progress(spec, settings)),
        "resources": container_resources(spec),
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": config_map}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}},
        ],
    }
    _mount_claims(pod_spec, claims(config.to_wire()))
    pod_spec.update(_placement(body, spec))
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if not settings.report_progress and not sched.service_account_name:  # no use for an API token then
        pod_spec["automountServiceAccountToken"] = False
    return {"metadata": _pod_metadata(body, spec, stage), "spec": pod_spec}


def _mount_claims(pod_spec: dict[str, Any], claimed: dict[str, bool]) -> None:
    """Mount each PersistentVolumeClaim the stage's pvc:// URIs name where the stage looks for
    it (read-only unless the stage writes there)."""
    container = pod_spec["containers"][0]
    for index, (claim, writable) in enumerate(sorted(claimed.items())):
        volume = f"pvc-{index}"  # claim names may exceed a volume name's 63 characters
        pod_spec["volumes"].append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}})
        container["volumeMounts"].append({"name": volume, "mountPath": f"{DEFAULT_PVC_ROOT}/{claim}", "readOnly": not writable})


def _placement(body: dict[str, Any], spec: JobSpecBase) -> dict[str, Any]:
    """Where a stage pod may run and as whom (shared by Jobs and TrainJob runtime patches)."""
    sched = spec.scheduling
    placement: dict[str, Any] = {"serviceAccountName": stage_account(body, spec)}
    if sched.node_selector:
        placement["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        placement["tolerations"] = [t.to_wire() for t in sched.tolerations]
    return placement


def _pod_metadata(body: dict[str, Any], spec: JobSpecBase, stage: str) -> dict[str, Any]:
    sched = spec.scheduling
    pod_labels = {**sched.pod_labels, **labels(body["kind"], body["metadata"]["name"], stage)}
    if sched.queue:
        pod_labels[KUEUE_QUEUE_LABEL] = sched.queue
    metadata: dict[str, Any] = {"labels": pod_labels}
    if sched.pod_annotations:
        metadata["annotations"] = dict(sched.pod_annotations)
    return metadata


def _job_meta(body: dict[str, Any], spec: JobSpecBase, name: str, stage: str) -> dict[str, Any]:
    meta = object_meta(body, name, stage)
    if spec.scheduling.queue:
        meta["labels"][KUEUE_QUEUE_LABEL] = spec.scheduling.queue
    return meta


def build_job(
    body: dict[str, Any],
    spec: JobSpecBase,
    settings: Settings,
    config: StageRuntime,
    stage: str,
    config_map: str,
    instance: str | None = None,
) -> dict[str, Any]:
    """A single-pod Job running `mentor-trainer <stage>`; `instance` names one of several runs."""
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "suspend": spec.suspend,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [EXIT_CODE_PERMANENT]},
                },
                # A pod preempted, evicted or drained off its node did not fail: its retry
                # (from the last checkpoint) does not use up backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": build_pod_template(body, spec, settings, config, stage, config_map),
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _job_meta(body, spec, child_name(body["metadata"]["name"], instance or stage), stage),
        "spec": job_spec,
    }


def torchrun_command(stage: str, nodes: int, gpus_per_node: int, master_addr: str) -> list[str]:
    """torchrun with static rendezvous on pod index 0 (JOB_COMPLETION_INDEX is the node rank),
    through `mentor-trainer launch`: plain torchrun exits 1 whatever its ranks exited with, so
    a permanent failure (exit 2, which the podFailurePolicy fails at once) would burn every
    retry, and the termination message would be whichever rank wrote last."""
    script = (
        f"exec mentor-trainer launch --nnodes={nodes} --nproc-per-node={gpus_per_node} "
        f"--node-rank=$JOB_COMPLETION_INDEX --master-addr={master_addr} --master-port={TORCHRUN_PORT} "
        f"-m mentor_trainer.cli {stage} --config {CONFIG_FILE}"
    )
    return ["/bin/sh", "-c", script]


def build_indexed_job(
    body: dict[str, Any],
    spec: Any,
    settings: Settings,
    config: StageRuntime,
    stage: str,
    config_map: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Multi-node without Kubeflow Trainer: an indexed Job (one pod per node) and the headless
    Service that gives pod 0 a stable DNS name for the torchrun rendezvous."""
    dist = spec.distributed
    name = child_name(body["metadata"]["name"], stage)
    namespace = body["metadata"].get("namespace", "default")
    master = f"{name}-0.{name}.{namespace}.svc"
    job = build_job(body, spec, settings, config, stage, config_map)
    pod = job["spec"]["template"]
    pod["spec"]["subdomain"] = name
    pod["spec"]["containers"][0]["command"] = torchrun_command(stage, dist.nodes, dist.gpus_per_node, master)
    pod["spec"]["containers"][0]["ports"] = [{"name": "rendezvous", "containerPort": TORCHRUN_PORT}]
    job["spec"].update(
        completionMode="Indexed",
        completions=dist.nodes,
        parallelism=dist.nodes,
        backoffLimitPerIndex=spec.backoff_limit,
        maxFailedIndexes=0,
    )
    del job["spec"]["backoffLimit"]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(body, name, stage),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": name},
            "ports": [{"name": "rendezvous", "port": TORCHRUN_PORT, "targetPort": TORCHRUN_PORT}],
        },
    }
    return job, service


def build_train_job(
    body: dict[str, Any],
    spec: Any,
    settings: Settings,
    config: StageRuntime,
    stage: str,
    config_map: str,
) -> dict[str, Any]:
    """Multi-node with Kubeflow Trainer: a TrainJob on the torch ClusterTrainingRuntime, which
    launches torchrun itself; the stage config reaches it through MENTOR_CONFIG_JSON."""
    dist = spec.distributed
    resources = container_resources(spec)
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _job_meta(body, spec, child_name(body["metadata"]["name"], stage), stage),
        "spec": {
            "suspend": spec.suspend,
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": settings.cluster_training_runtime,
            },
            "trainer": {
                "image": spec.image or settings.trainer_image,
                # the torch runtime sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and the
                # master address, which torchrun's arguments default to
                "command": ["mentor-trainer", "launch", "-m", "mentor_trainer.cli", stage, "--config-env", "MENTOR_CONFIG_JSON"],
                "numNodes": dist.nodes,
                "numProcPerNode": dist.gpus_per_node,
                "resourcesPerNode": resources,
                "env": [
                    e for e in stage_env(body, settings, config, progress=reports_progress(spec, settings)) if "valueFrom" not in e or "secretKeyRef" in e["valueFrom"]
                ]
                + [{"name": "MENTOR_CONFIG_JSON", "valueFrom": {"configMapKeyRef": {"name": config_map, "key": "config.json"}}}],
            },
            "runtimePatches": [train_job_pod_patch(body, spec, config, stage)],
        },
    }


TRAINJOB_PATCH_MANAGER = "mentor.dev/operator"
TRAINJOB_REPLICATED_JOB = "node"  # the torch ClusterTrainingRuntime's replicated job and container


def train_job_pod_patch(body: dict[str, Any], spec: Any, config: StageRuntime, stage: str) -> dict[str, Any]:
    """What the TrainJob API lets us set on the runtime's pods (a runtime patch): the same
    placement, account, labels, claims and restricted security context as a single-node Job.
    The API has no priorityClassName here; put it on the ClusterTrainingRuntime."""
    pod_spec: dict[str, Any] = {
        **_placement(body, spec),
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [{"name": TRAINJOB_REPLICATED_JOB, "securityContext": RESTRICTED_CONTAINER_SECURITY, "volumeMounts": []}],
        "volumes": [],
    }
    _mount_claims(pod_spec, claims(config.to_wire()))
    if not pod_spec["volumes"]:  # nothing to patch: leave the runtime's own lists alone
        del pod_spec["volumes"], pod_spec["containers"][0]["volumeMounts"]
    pod = {"metadata": _pod_metadata(body, spec, stage), "spec": pod_spec}
    replicated_job = {"name": TRAINJOB_REPLICATED_JOB, "template": {"spec": {"template": pod}}}
    return {
        "manager": TRAINJOB_PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated_job]}}},
    }
