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
    Lookup,
    advance,
    approval_for,
    gather_templates,
    observe,
    plan_retraining,
    recorded,
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
    lookup = _lookup(ctx, body)
    for record in [r for r in records if r.get("phase") in ACTIVE_PHASES]:
        moved = advance(record, observe(lookup, record), status, policy, spec_model, approved == record["name"])
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
    served = (body.get("status") or {}).get("modelVersion")
    templates = refusal or gather_templates(_lookup(ctx, body), spec, records, served)  # or why not
    if isinstance(templates, str):
        events.append(("Normal", "RetrainingSkipped", f"drift check {drift['checkName']}: no retraining: {templates}"))
        return records, {**decided, "decision": f"not retrained: {templates}"}
    drifted = Drifted(drift["checkName"], drift.get("windowStart"), drift.get("windowEnd"), payload_log_uri(spec, out))
    plan = plan_retraining(body, spec.monitoring.retrain, drifted, templates, served, spec_model, stamp)
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


def _lookup(ctx: Any, body: dict[str, Any]) -> Lookup:
    namespace = body["metadata"]["namespace"]
    return lambda kind, name: ctx.kube.get(kind, namespace, name)


def _key(body: dict[str, Any]) -> tuple[str, str]:
    return body["metadata"]["namespace"], body["metadata"]["name"]
