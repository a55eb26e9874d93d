"""MLflow helpers shared by the training stages: one run per job, metrics, registration.

The tracking URI comes from the stage config (``tracking.uri``) or ``MLFLOW_TRACKING_URI``;
with neither, tracking is off and the helpers do nothing. A pod restarted after a crash
continues the job's run (found by the ``mentor.job`` tag) instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

JOB_TAG = "mentor.job"


def tracking_uri(config) -> str | None:
    return (config.tracking.uri if config.tracking else None) or os.environ.get("MLFLOW_TRACKING_URI") or None


def job_key(config) -> str:
    run = config.run
    return f"{run.namespace}/{run.kind}/{run.name}/{run.uid}/{run.generation}"


def _artifact_location(uri: str) -> str | None:
    # sqlite without a server: keep artifacts beside the database, not in the working directory.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


class Tracker:
    """A thin wrapper over one MLflow run; every method is a no-op when tracking is off."""

    def __init__(self, config) -> None:
        # one run per job: only the main process of a multi-GPU launch tracks
        self.uri = tracking_uri(config) if int(os.environ.get("RANK", "0") or 0) == 0 else None
        self.config = config
        self.run_id: str | None = None
        self.client = None

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    @contextlib.contextmanager
    def run(self, tags: dict[str, str] | None = None) -> Iterator["Tracker"]:
        if not self.enabled:
            yield self
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        name = self.config.tracking.experiment or f"{self.config.run.namespace}/{self.config.run.kind}"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(name, artifact_location=_artifact_location(self.uri))
        )
        key = job_key(self.config)
        previous = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{key}'", max_results=1, order_by=["attributes.start_time DESC"]
        )
        run_id = previous[0].info.run_id if previous and previous[0].info.status != "FINISHED" else None
        system_metrics = _psutil_available()
        with mlflow.start_run(
            run_id=run_id,
            experiment_id=experiment_id,
            run_name=None if run_id else self.config.run.name,
            tags=None if run_id else {JOB_TAG: key, **(tags or {})},
            log_system_metrics=system_metrics,
        ) as active:
            self.run_id = active.info.run_id
            if run_id:
                log.info("continuing MLflow run %s of %s", run_id, key)
            yield self

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.run_id:
            return
        import mlflow

        flat = {k: str(v)[:500] for k, v in params.items() if v is not None}
        try:
            mlflow.log_params(flat)
        except Exception as error:  # noqa: BLE001 - a resumed run may already hold a param
            log.info("params not (re)logged: %s", str(error)[:200])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.run_id:
            return
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_text(self, text: str, name: str) -> None:
        if self.run_id:
            import mlflow

            try:
                mlflow.log_text(text, name)
            except Exception as error:  # noqa: BLE001 - the artifact store is optional for the run
                log.warning("could not log %s to MLflow: %s", name, str(error)[:200])

    def log_to_run(self, run_id: str, metrics: dict[str, float], texts: dict[str, str]) -> None:
        """Add metrics and text artifacts to another (finished) run, e.g. an evaluation's
        results to the training run of the model it evaluated."""
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        try:
            for key, value in metrics.items():
                client.log_metric(run_id, key, float(value))
            for name, text in texts.items():
                client.log_text(run_id, text, name)
        except Exception as error:  # noqa: BLE001 - the other run may be gone or in another store
            log.warning("could not add results to MLflow run %s: %s", run_id, str(error)[:200])

    def register(self, name: str, source: str) -> str | None:
        """Register ``source`` (a model directory URI) as a new version of ``name``."""
        if not self.run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(name, source=source, run_id=self.run_id)
        return f"mlflow://models/{name}/{version.version}"


def _psutil_available() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def trainer_callback(tracker: Tracker):
    """A transformers TrainerCallback that sends every logged metric to the MLflow run."""
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                tracker.log_metrics({k: v for k, v in logs.items() if k != "epoch"} | {"epoch": state.epoch or 0}, step=state.global_step)

    return MlflowMetrics()
