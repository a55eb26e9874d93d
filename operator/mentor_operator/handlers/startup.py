"""Operator start-up: settings, API client, persistence, peering, shutdown, metrics."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import kopf

from ..kube import Kube
from ..metrics import serve as serve_metrics
from ..settings import Settings
from .reconcile import Context

TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"
WORKERS = 16  # threads running the (blocking) reconcile handlers


class HandlerExecutor(ThreadPoolExecutor):
    """kopf's pool for blocking handlers, without the backlog at shutdown. kopf shields a
    handler's thread from cancellation and waits for it, so on SIGTERM every queued handler
    (up to one per resource under load) would still run before the process exits. A queued
    handler whose kopf task has been cancelled meanwhile is dropped; running ones finish."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not called from the event loop
            task = None
        return super().submit(_unless_cancelled, task, fn, *args, **kwargs)


def _unless_cancelled(task: asyncio.Task | None, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if task is not None and task.cancelling():
        # kopf treats it as the cancellation it is: nothing is recorded on the resource
        raise asyncio.CancelledError("operator stopping: handler dropped before it started")
    return fn(*args, **kwargs)


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
    settings.execution.executor = HandlerExecutor(max_workers=WORKERS)
    # Bounded exit: SIGTERM drops queued handlers (above), and should anything still hang,
    # kopf kills the process before Kubernetes' default 30 s grace period ends.
    settings.process.ultimate_exiting_timeout = 20
    settings.watching.server_timeout = 300
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    # The peering name and priority come from `mentor operator` (kopf.run); without a
    # peering object kopf runs unpaused, as a single replica would.
    settings.peering.mandatory = False
    # A standby resumes this long after the active replica dies without a goodbye (kill -9, a
    # lost node); controller-runtime's leader lease is 15 s too. Keep-alives every 5-10 s.
    settings.peering.lifetime = 15
    serve_metrics(config.metrics_port)
    logger.info("mentor operator: Kubeflow TrainJob %s", "enabled" if kubeflow else "not installed; indexed Jobs")
