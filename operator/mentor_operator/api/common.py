"""Pieces shared by the five kinds: references, scheduling, resources, status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from mentor_trainer.config.common import (
    ModelUri,
    NonNegativeInt,
    PositiveInt,
    Progress,
    Spec,
    StageResult,
    StorageUri,
    Tracking,
)

from .references import Reference

GROUP = "mentor.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


def immutable(description: str, **kwargs: Any):
    """A field that cannot change once the resource exists (a CEL transition rule)."""
    name = kwargs.pop("name", "this field")
    return Field(
        description=description,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"{name} is immutable"}]
        },
        **kwargs,
    )


class ResourceRef(Spec):
    """A reference to another Mentor resource in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the resource.")


class ModelRef(ResourceRef):
    """A reference to a resource that produces a model."""

    kind: Literal["FineTuneJob", "RLHFJob"] = Field(default="FineTuneJob", description="Kind of the resource.")


class Toleration(Spec):
    """A pod toleration (same fields as core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; all if empty."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class Scheduling(Spec):
    """Where and with which priority the pods run."""

    queue: str | None = Field(
        default=None, max_length=63, pattern=DNS_SUBDOMAIN, description="Kueue LocalQueue; sets kueue.x-k8s.io/queue-name."
    )
    priority_class_name: str | None = Field(default=None, max_length=253, description="PriorityClass of the pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="Tolerations of the pods (default tolerates the usual GPU taint).",
    )
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the pods.")
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on the pods.")
    service_account_name: str | None = Field(default=None, description="ServiceAccount of the pods.")
    start_timeout_seconds: PositiveInt = Field(
        default=900,
        description="How long a stage's pods may take to start (be scheduled, pull the image, find their Secrets "
        "and account), counted from when its job starts or resumes; time in a queue (a suspended job) does not count. "
        "Past it the resource fails with the reason the pods wait for, and its job is suspended. A ModelDeployment's "
        "export jobs are not timed.",
    )


class Resources(Spec):
    """Compute resources of each pod."""

    gpus: NonNegativeInt = Field(default=1, le=16, description="GPUs per pod (requests = limits).")
    gpu_resource_name: str = Field(default="nvidia.com/gpu", description="Extended resource name of the GPU.")
    cpu: str = Field(default="4", pattern=QUANTITY, description="CPU request, e.g. 4 or 500m.")
    memory: str = Field(default="32Gi", pattern=QUANTITY, description="Memory request and limit, e.g. 32Gi.")
    ephemeral_storage: str | None = Field(default=None, pattern=QUANTITY, description="Scratch disk request.")
    shm_size: str = Field(default="8Gi", pattern=QUANTITY, description="Size of /dev/shm (data loaders, NCCL).")


class JobSpecBase(Spec):
    """Fields every kind that runs a job shares."""

    suspend: bool = Field(default=False, description="Suspend the job (pods are removed; resumes when false).")
    image: str | None = Field(default=None, description="Trainer image (default: the operator's setting).")
    resources: Resources = Field(default_factory=Resources, description="Compute resources.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Placement and priority.")
    output_uri: StorageUri | None = Field(
        default=None, description="Where outputs go (default: <artifact root>/<namespace>/<kind>/<name>/<uid>/)."
    )
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow tracking.")
    backoff_limit: NonNegativeInt = Field(default=2, le=20, description="Pod retries before the job fails.")
    active_deadline_seconds: PositiveInt | None = Field(default=None, description="Time limit of the job.")


Phase = Literal["Pending", "Waiting", "Running", "Succeeded", "Failed", "Suspended", "Deploying", "Ready", "Degraded"]


class Condition(Spec):
    """Shaped like metav1.Condition."""

    type: str = Field(description="Type of condition, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="Machine-readable reason in CamelCase.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str | None = Field(default=None, description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="metadata.generation the condition is based on.")


class Children(Spec):
    """Names of the objects the operator created for this resource."""

    config_map: str | None = Field(default=None, description="ConfigMap with the rendered stage config.")
    job: str | None = Field(default=None, description="Job running the stage.")
    train_job: str | None = Field(default=None, description="Kubeflow TrainJob (multi-node).")
    service: str | None = Field(default=None, description="Headless Service for torchrun rendezvous.")
    inference_service: str | None = Field(default=None, description="KServe InferenceService.")
    cron_job: str | None = Field(default=None, description="Drift-check CronJob.")


class StatusBase(Spec):
    """Status fields every kind shares."""

    phase: Phase | None = Field(default=None, description="Lifecycle phase.")
    message: str | None = Field(default=None, description="Why the resource is in this phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Latest observations (Ready, Succeeded, ...).",
    )
    observed_generation: int | None = Field(default=None, description="metadata.generation last acted on.")
    start_time: str | None = Field(default=None, description="When the work started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the work finished (RFC 3339).")
    children: Children = Field(default_factory=Children, description="Objects created for this resource.")
    output_uri: str | None = Field(default=None, description="Where outputs are written.")
    progress: Progress = Field(default_factory=Progress, description="Live progress while the stage runs.")


class PrinterColumn(Spec):
    """An additionalPrinterColumns entry."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0


class KindInfo(Spec):
    """Naming and presentation of one kind; the CRD generator and the operator read it."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    stage: str | None = None
    description: str
    columns: list[PrinterColumn]

    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def phase_column() -> PrinterColumn:
    return PrinterColumn(name="Phase", json_path=".status.phase", description="Lifecycle phase.")


def age_column() -> PrinterColumn:
    return PrinterColumn(name="Age", json_path=".metadata.creationTimestamp", type="date")


Workload = Literal["stage", "serving"]


@dataclass(frozen=True)
class KindApi:
    """Everything that differs per kind, in one place: its models and naming (the CRD generator
    reads them), what it references, what its stage returns, and what the operator runs for it."""

    info: KindInfo
    spec: type[Spec]
    status: type[StatusBase]
    # What the kind's stage returns; its fields are status fields (the status model inherits it).
    result: type[StageResult]
    # The references its spec may hold, each resolved into a field of the stage config, in order.
    references: tuple[Reference, ...] = ()
    # The status field a reference to this kind resolves to (None: nothing may reference it).
    output_field: str | None = None
    # "stage": one Job (or TrainJob) runs the kind's stage and its state is the resource's;
    # "serving": an export Job, then the serving objects (InferenceService, drift CronJob).
    workload: Workload = "stage"


__all__ = [
    "API_VERSION",
    "Children",
    "Condition",
    "GROUP",
    "JobSpecBase",
    "KindApi",
    "KindInfo",
    "ModelRef",
    "ModelUri",
    "PrinterColumn",
    "Progress",
    "ResourceRef",
    "Resources",
    "Scheduling",
    "StatusBase",
    "VERSION",
    "Workload",
    "age_column",
    "phase_column",
    "immutable",
]
