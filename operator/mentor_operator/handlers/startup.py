"""Operator start-up: settings, API client, persistence, peering, metrics."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..kube import Kube
from ..metrics import serve as serve_metrics
from ..settings import Settings
from .reconcile import Context

TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"
WORKERS = 16  # threads running the (blocking) reconcile handlers


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    config = Settings.from_env()
    kube = Kube(pool_size=WORKERS + 4)  # a connection per handler thread, and a few spare
    use_trainer = config.use_kubeflow_trainer
    kubeflow = use_trainer == "always" or (use_trainer == "auto" and kube.crd_installed(TRAINJOB_CRD))
    memo.ctx = Context(kube=kube, settings=config, kubeflow_trainer=kubeflow)
    # Progress and diff-base in annotations: our status schema is structural and would prune
    # kopf's own status fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="mentor.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="mentor.dev")
    settings.persistence.finalizer = "mentor.dev/finalizer"
    # Events for warnings and our own explicit ones only: an Event per handler run would
    # double the API writes of a busy operator.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = WORKERS
    settings.watching.server_timeout = 300
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    # The peering name and priority come from `mentor operator` (kopf.run); without a
    # peering object kopf runs unpaused, as a single replica would.
    settings.peering.mandatory = False
    serve_metrics(config.metrics_port)
    logger.info("mentor operator: Kubeflow TrainJob %s", "enabled" if kubeflow else "not installed; indexed Jobs")
