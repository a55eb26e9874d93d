"""Operator settings, read once from MENTOR_* environment variables."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

ENV_PREFIX = "MENTOR_"


class Settings(BaseModel):
    """Cluster-wide defaults the builders apply; every field has a MENTOR_<NAME> variable."""

    trainer_image: str = Field(default="ghcr.io/mentor-dev/mentor-trainer:0.1.0", description="Image of training/eval jobs.")
    serve_image: str = Field(default="ghcr.io/mentor-dev/mentor-serve:0.1.0", description="Image of the mentor runtime.")
    image_pull_policy: str = Field(default="IfNotPresent", description="Pull policy of job images.")
    artifact_root: str = Field(default="s3://mentor-artifacts", description="Root of default output URIs.")
    output_roots: list[str] = Field(
        default_factory=list,
        description="Prefixes a resource may write under, `{namespace}` replaced by its namespace (comma-separated; "
        "empty: <artifactRoot>/<namespace>/ only).",
    )
    s3_endpoint: str | None = Field(default=None, description="S3/MinIO endpoint handed to stages (host:port or URL).")
    s3_credentials_secret: str | None = Field(
        default="mentor-s3-credentials",
        description="Secret (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) mounted as env into stage pods.",
    )
    mlflow_tracking_uri: str | None = Field(default=None, description="MLflow tracking URI handed to stages.")
    report_progress: bool = Field(
        default=True,
        description="Stage pods patch their resource's status.progress (each resource's own stage account may do "
        "that and nothing else); false: pods get no API token at all.",
    )
    cluster_training_runtime: str = Field(
        default="torch-distributed", description="Kubeflow ClusterTrainingRuntime of multi-node TrainJobs."
    )
    use_kubeflow_trainer: str = Field(
        default="auto", description="auto: TrainJob when its CRD is installed; always; never (indexed Job)."
    )
    retry_delay_seconds: float = Field(default=10.0, description="Recheck interval while waiting for a dependency.")
    resync_seconds: float = Field(
        default=60.0, description="How long a pending, running or suspended stage resource may sit unchanged before its runner is read again."
    )
    metrics_port: int = Field(default=8080, description="Port of the Prometheus /metrics endpoint (0: off).")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch (comma-separated; empty: all).")
    peering: str = Field(default="mentor", description="kopf peering name; replicas with the same name take turns.")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if not raw:  # unset or empty: keep the default
                continue
            values[name] = [p for p in raw.split(",") if p] if field.annotation == list[str] else raw
        return cls(**values)
