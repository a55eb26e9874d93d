"""Watches on the objects the operator creates: Jobs, TrainJobs and InferenceServices.
Their state is folded into the owner's status; an owner that succeeds wakes its dependents."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api import KINDS
from ..builders.meta import LABEL_KIND, LABEL_MANAGED_BY, LABEL_NAME, LABEL_STAGE, MANAGED_BY
from ..retraining import LABEL_DEPLOYMENT
from ..status import TERMINAL_PHASES, runner_state
from .kinds import cached_lookup, plain
from .reconcile import Context, fold_drift_check, fold_runner, reconcile

log = logging.getLogger("mentor.children")
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}


def _owner(ctx: Context, child: dict[str, Any]) -> dict[str, Any] | None:
    for ref in child["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") in KINDS:
            owner = ctx.kube.get(ref["kind"], child["metadata"]["namespace"], ref["name"])
            if owner and owner["metadata"]["uid"] == ref["uid"]:
                return owner
    return None


def wake_dependents(ctx: Context, owner: dict[str, Any], indexes: dict[str, Any]) -> None:
    """Reconcile every resource that references `owner`, now that its output exists."""
    meta = owner["metadata"]
    key = (meta["namespace"], owner["kind"], meta["name"])
    for name, index in indexes.items():
        if not name.startswith("dependents_"):
            continue
        for kind, dependent_name in index.get(key, []):
            dependent = ctx.kube.get(kind, meta["namespace"], dependent_name)
            if not dependent or (dependent.get("status") or {}).get("phase") not in (None, "Pending", "Waiting"):
                continue
            try:
                reconcile(ctx, dependent, cached_lookup(ctx, meta["namespace"], indexes))
            except kopf.TemporaryError:
                pass  # still waiting on another reference; its own retry will come back


def _on_runner(ctx: Context, child: dict[str, Any], indexes: dict[str, Any]) -> None:
    if ctx.already_folded(child):
        return
    labels = child["metadata"].get("labels") or {}
    if labels.get(LABEL_STAGE) == "drift":  # a drift check, run by the deployment's CronJob
        owner = ctx.kube.get(labels.get(LABEL_KIND, ""), child["metadata"]["namespace"], labels.get(LABEL_NAME, ""))
        if owner is not None:
            fold_drift_check(ctx, owner, child)
            ctx.folded[child["metadata"]["uid"]] = runner_state(child).phase
            _reconcile_now(ctx, owner)  # a drift verdict may start a retraining
        return
    owner = _owner(ctx, child)
    if owner is None:
        return
    if KINDS[owner["kind"]].workload == "serving":
        # The export Job finishing means the InferenceService can be created now.
        reconcile(ctx, owner)
        return
    phase = fold_runner(ctx, owner, child)
    if phase == "Succeeded":
        wake_dependents(ctx, ctx.kube.get(owner["kind"], owner["metadata"]["namespace"], owner["metadata"]["name"]), indexes)
    deployment = (owner["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)
    if deployment and phase in TERMINAL_PHASES:  # a step of a retraining ended: advance it now
        _reconcile_now(ctx, {"kind": "ModelDeployment", "metadata": {"namespace": owner["metadata"]["namespace"], "name": deployment}})


def _reconcile_now(ctx: Context, owner: dict[str, Any]) -> None:
    fresh = ctx.kube.get(owner["kind"], owner["metadata"]["namespace"], owner["metadata"]["name"])
    if fresh is None:
        return
    try:
        reconcile(ctx, fresh)
    except kopf.TemporaryError:
        pass  # its own retry comes back


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED, id="job-state")
def job_state(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if type == "DELETED":
        memo.ctx.folded.pop(body["metadata"]["uid"], None)
    else:
        _on_runner(memo.ctx, plain(body), kwargs)


# kopf starts these watches when the CRDs appear (Kubeflow Trainer and KServe are optional).
@kopf.on.event("trainer.kubeflow.org", "v1alpha1", "trainjobs", labels=MANAGED, id="trainjob-state")
def trainjob_state(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if type != "DELETED":
        _on_runner(memo.ctx, plain(body), kwargs)


@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices", labels=MANAGED, id="isvc-state")
def isvc_state(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx: Context = memo.ctx
    owner = _owner(ctx, plain(body))
    if owner is not None and type != "DELETED":
        reconcile(ctx, owner)  # the serving state folds in with the rollout's
