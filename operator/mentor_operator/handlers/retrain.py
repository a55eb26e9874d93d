"""A ModelDeployment's retrainings on the cluster: start one on a new drift verdict, apply
approvals, and advance each from its resources' state (the logic is in ..retraining)."""

from __future__ import annotations

from typing import Any

from mentor_trainer.timestamps import parse_utc

from ..builders.serving import payload_log_uri
from ..metrics import AWAITING_APPROVAL, RETRAININGS
from ..retraining import (
    ACTIVE_PHASES,
    APPROVE_ANNOTATION,
    Drifted,
    Observed,
    Templates,
    advance,
    approval_for,
    plan_retraining,
    recorded,
    regression_name,
    served_dataset,
    start_refusal,
)
from ..status import now

Event = tuple[str, str, str]  # (type, reason, message)


def step_retrainings(ctx: Any, body: dict[str, Any], spec: Any, spec_model: str, out: str) -> tuple[dict[str, Any], list[Event]]:
    """Status changes (drift decision, retrainings) and events of one reconcile pass."""
    status = body.get("status") or {}
    records = list(status.get("retrainings") or [])
    changes: dict[str, Any] = {}
    events: list[Event] = []
    drift = status.get("drift") or {}
    check = drift.get("checkName")
    if drift.get("drifted") and check and check != drift.get("decidedCheck"):
        records, drift = _decide(ctx, body, spec, spec_model, out, drift, records, events)
        changes["drift"] = drift
    approved = _take_approval(ctx, body, records, events)
    policy = spec.monitoring.retrain
    for record in [r for r in records if r.get("phase") in ACTIVE_PHASES]:
        moved = advance(record, _observe(ctx, body, record), status, policy, spec_model, approved == record["name"])
        if moved != record:
            records = recorded(records, moved)
            if moved["phase"] != record["phase"]:
                kind = "Warning" if moved["phase"] == "Failed" else "Normal"
                events.append((kind, f"Retraining{moved['phase']}", f"{moved['name']}: {moved['message']}"))
                if moved["phase"] in ("Succeeded", "Failed"):
                    RETRAININGS.labels(*_key(body), moved["phase"].lower()).inc()
    AWAITING_APPROVAL.labels(*_key(body)).set(sum(r.get("phase") == "AwaitingApproval" for r in records))
    if records != (status.get("retrainings") or []):
        changes["retrainings"] = records
    return changes, events


def _decide(
    ctx: Any, body: dict[str, Any], spec: Any, spec_model: str, out: str, drift: dict[str, Any],
    records: list[dict[str, Any]], events: list[Event],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start a retraining for the drift check, or say why not; either way decide only once."""
    stamp = now()
    decided = {**drift, "decidedCheck": drift["checkName"]}
    refusal = start_refusal(records, spec.monitoring.retrain, parse_utc(stamp), drift)
    templates = None if refusal else _templates(ctx, body, spec, records)
    if isinstance(templates, str):
        refusal, templates = templates, None
    if refusal or templates is None:
        events.append(("Normal", "RetrainingSkipped", f"drift check {drift['checkName']}: no retraining: {refusal}"))
        return records, {**decided, "decision": f"not retrained: {refusal}"}
    drifted = Drifted(drift["checkName"], drift.get("windowStart"), drift.get("windowEnd"), payload_log_uri(spec, out))
    deployed = (body.get("status") or {})["modelVersion"]
    plan = plan_retraining(body, spec.monitoring.retrain, drifted, templates, deployed, spec_model, stamp)
    for resource in plan.resources:  # create-if-absent: a second pass after a crash adds what is missing
        ctx.kube.create(resource)
    events.append(("Normal", "RetrainingStarted", f"drift check {drift['checkName']} started {plan.record['name']}"))
    RETRAININGS.labels(*_key(body), "started").inc()
    decided.update(
        decision=f"started {plan.record['name']}",
        retrainCount=int(drift.get("retrainCount") or 0) + 1,
        lastRetrainTime=stamp,
    )
    return recorded(records, plan.record), decided


def _templates(ctx: Any, body: dict[str, Any], spec: Any, records: list[dict[str, Any]]) -> Templates | str:
    """What the retraining copies, or why it cannot start."""
    namespace = body["metadata"]["namespace"]
    policy = spec.monitoring.retrain
    served = (body.get("status") or {}).get("modelVersion")
    if served is None:
        return "no model is served yet"
    training_name = policy.training_ref or spec.model_ref.name
    training = ctx.kube.get("FineTuneJob", namespace, training_name)
    evaluation = ctx.kube.get("Evaluation", namespace, spec.evaluation_ref.name)
    if training is None or evaluation is None:
        missing = f"FineTuneJob/{training_name}" if training is None else f"Evaluation/{spec.evaluation_ref.name}"
        return f"the template {missing} does not exist"
    original = training["spec"]["datasetRef"]["name"]
    dataset_name = served_dataset(records, served, original)
    dataset = ctx.kube.get("DomainDataset", namespace, dataset_name)
    if dataset is None:
        return f"the served model's DomainDataset/{dataset_name} does not exist"
    return Templates(training=training, dataset=dataset, evaluation=evaluation, original_dataset=original)


def _take_approval(ctx: Any, body: dict[str, Any], records: list[dict[str, Any]], events: list[Event]) -> str | None:
    """Consume the approve annotation: unsuspend a FineTuneJob waiting to train, or return the
    retraining approved for rollout."""
    meta = body["metadata"]
    name = approval_for(meta.get("annotations"), records)
    if (meta.get("annotations") or {}).get(APPROVE_ANNOTATION) is None:
        return None
    ctx.kube.patch(body["kind"], meta["namespace"], meta["name"], {"metadata": {"annotations": {APPROVE_ANNOTATION: None}}}, body["apiVersion"])
    if name is None:
        events.append(("Warning", "ApprovalIgnored", f"{APPROVE_ANNOTATION}={meta['annotations'][APPROVE_ANNOTATION]} names no retraining awaiting approval"))
        return None
    record = next(r for r in records if r["name"] == name)
    events.append(("Normal", "RetrainingApproved", f"{name} approved ({record.get('approvalStage')})"))
    if record.get("approvalStage") == "training":
        ctx.kube.patch("FineTuneJob", meta["namespace"], name, {"spec": {"suspend": False}}, body["apiVersion"])
    return name


def _key(body: dict[str, Any]) -> tuple[str, str]:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def _observe(ctx: Any, body: dict[str, Any], record: dict[str, Any]) -> Observed:
    namespace, name = body["metadata"]["namespace"], record["name"]
    return Observed(
        dataset=ctx.kube.get("DomainDataset", namespace, record["dataset"]),
        training=ctx.kube.get("FineTuneJob", namespace, name),
        evaluations=[ctx.kube.get("Evaluation", namespace, n) for n in (name, regression_name(name))],
    )
