"""Pure retraining logic of a ModelDeployment: whether a drift check starts a retraining, the
resources one is made of, how far it has got, and which model the deployment should serve.

A retraining is four resources sharing one name (and the label mentor.dev/retraining):

- a DomainDataset: the served model's dataset plus the drifted window of logged traffic (a
  ``payload-log`` source: corrections and well-rated answers become examples);
- a FineTuneJob copying the training template's spec, on that dataset, from the deployed model
  (or the template's base model);
- an Evaluation of the candidate against the deployed model with the deployment's gates, on the
  new dataset, and a ``-regression`` Evaluation that holds it to "no worse than the deployed
  model" on the original held-out set.

If both pass (and a manual approval, when asked for, is given), the deployment rolls the
candidate out like any new version (a canary when configured). The name derives from the
drift check, and each resource is created only if absent, so a restarted operator never starts
a second pipeline for the same drift check. The spec is never rewritten (GitOps owns it): the
served model follows status.retrainings while they were started from the model the spec
names now.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from mentor_trainer.config.deploy import Retrain
from mentor_trainer.timestamps import parse_utc

from .api import API_VERSION
from .builders.meta import child_name, owner_reference

APPROVE_ANNOTATION = "mentor.dev/approve"
LABEL_DEPLOYMENT = "mentor.dev/deployment"
LABEL_RETRAINING = "mentor.dev/retraining"
LABEL_DRIFT_CHECK = "mentor.dev/drift-check"
MAX_RETRAINING_RECORDS = 20
ACTIVE_PHASES = ("AwaitingApproval", "Building", "Training", "Evaluating", "RollingOut")
TRAFFIC_FORMAT = "payload-log"
# The spec keys a copied template must not keep: outputs are the new resource's own.
NOT_COPIED = ("outputUri", "suspend")


def retraining_name(deployment: str, drift_check: str) -> str:
    """The same drift check always names the same retraining (the idempotency key)."""
    digest = hashlib.sha256(drift_check.encode()).hexdigest()[:8]
    return child_name(deployment, f"rt-{digest}", limit=52)  # room for "-regression"


def regression_name(retraining: str) -> str:
    return f"{retraining}-regression"


def start_refusal(records: list[dict[str, Any]], policy: Retrain, now: datetime, drift: dict[str, Any]) -> str | None:
    """Why a confirmed drift starts no retraining now (None: start one)."""
    if not policy.enabled:
        return "retraining is off (spec.monitoring.retrain.enabled)"
    if drift.get("labelledRequests") == 0:
        return "the drifted window has no corrections or positive ratings to learn from (send feedback to /v1/feedback)"
    active = [r["name"] for r in records if r.get("phase") in ACTIVE_PHASES]
    if len(active) >= policy.max_concurrent:
        return f"{len(active)} retraining(s) unfinished ({', '.join(active)}; maxConcurrent {policy.max_concurrent})"
    starts = [t for t in (parse_utc(r.get("startTime")) for r in records) if t is not None]
    if starts:
        ready = max(starts) + timedelta(minutes=policy.cooldown_minutes)
        if now < ready:
            return f"cooling down until {ready.strftime('%Y-%m-%dT%H:%M:%SZ')} (cooldownMinutes {policy.cooldown_minutes})"
    return None


@dataclass(frozen=True)
class Templates:
    """What a retraining copies: resource bodies as read from the API server."""

    training: dict[str, Any]  # FineTuneJob
    dataset: dict[str, Any]  # the DomainDataset behind the served model
    evaluation: dict[str, Any]  # the deployment's Evaluation (its gates)
    original_dataset: str  # the training template's dataset: the original held-out set


Lookup = Callable[[str, str], "dict[str, Any] | None"]  # (kind, name) -> the resource in the deployment's namespace


def gather_templates(lookup: Lookup, spec: Any, records: list[dict[str, Any]], served: str | None) -> Templates | str:
    """What a retraining of the deployment (`spec`) copies, or why it cannot start."""
    if served is None:
        return "no model is served yet"
    training_name = spec.monitoring.retrain.training_ref or spec.model_ref.name
    training = lookup("FineTuneJob", training_name)
    evaluation = lookup("Evaluation", spec.evaluation_ref.name)
    if training is None or evaluation is None:
        missing = f"FineTuneJob/{training_name}" if training is None else f"Evaluation/{spec.evaluation_ref.name}"
        return f"the template {missing} does not exist"
    original = training["spec"]["datasetRef"]["name"]
    dataset_name = served_dataset(records, served, original)
    dataset = lookup("DomainDataset", dataset_name)
    if dataset is None:
        return f"the served model's DomainDataset/{dataset_name} does not exist"
    return Templates(training=training, dataset=dataset, evaluation=evaluation, original_dataset=original)


@dataclass(frozen=True)
class Drifted:
    """The drift check that asks for a retraining."""

    check: str
    window_start: str | None
    window_end: str | None
    payload_log_uri: str


@dataclass(frozen=True)
class Retraining:
    record: dict[str, Any]  # the status.retrainings[] entry
    resources: list[dict[str, Any]]  # in creation order


def plan_retraining(
    deployment: dict[str, Any],
    policy: Retrain,
    drifted: Drifted,
    templates: Templates,
    deployed_model: str,
    spec_model: str,
    stamp: str,
) -> Retraining:
    name = retraining_name(deployment["metadata"]["name"], drifted.check)
    training = _copied(templates.training)
    base_model = deployed_model if policy.start_from == "deployed" else training["baseModel"]
    training.update(datasetRef={"name": name}, baseModel=base_model)
    if policy.approval == "manual" and policy.approve_before == "training":
        training["suspend"] = True
    regression = _copied(templates.evaluation)
    for key in ("modelUri", "baselineRef"):
        regression.pop(key, None)
    regression.update(modelRef={"kind": "FineTuneJob", "name": name}, baselineUri=deployed_model)
    # the deployment's gates on the new dataset's held-out split (drifted traffic included, so
    # not the template's own QA file); "no worse" on the original held-out set
    evaluation = {k: v for k, v in regression.items() if k != "qaUri"} | {"datasetRef": {"name": name}}
    regression.update(datasetRef={"name": templates.original_dataset}, gates=no_worse_gates(regression.get("gates") or [], policy.regression_tolerance))
    resources = [
        _resource(deployment, drifted, name, "DomainDataset", name, _dataset_spec(templates.dataset, policy, drifted, name)),
        _resource(deployment, drifted, name, "FineTuneJob", name, training),
        _resource(deployment, drifted, name, "Evaluation", name, evaluation),
        _resource(deployment, drifted, name, "Evaluation", regression_name(name), regression),
    ]
    record = {
        "name": name,
        "driftCheck": drifted.check,
        "phase": "Building",
        "message": f"building {name} from {templates.dataset['metadata']['name']} and the drifted traffic",
        "specModel": spec_model,
        "baseModel": base_model,
        "dataset": name,
        "startTime": stamp,
    }
    return Retraining(record, resources)


def _copied(template: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (template.get("spec") or {}).items() if k not in NOT_COPIED}


def _dataset_spec(template: dict[str, Any], policy: Retrain, drifted: Drifted, name: str) -> dict[str, Any]:
    """The served model's sources plus this window of traffic; only the newest
    `trafficWindows` windows stay, each at most `maxTrafficRecords` requests."""
    spec = _copied(template)
    sources = spec["sources"]
    documents = [s for s in sources if s.get("format") != TRAFFIC_FORMAT]
    previous = [s for s in sources if s.get("format") == TRAFFIC_FORMAT]
    keep = policy.traffic_windows - 1
    traffic = previous[-keep:] if keep else []
    window = {"name": f"traffic-{name.rsplit('-', 1)[-1]}", "uri": drifted.payload_log_uri, "format": TRAFFIC_FORMAT,
              "maxRecords": policy.max_traffic_records}
    window.update({k: v for k, v in (("since", drifted.window_start), ("until", drifted.window_end)) if v})
    spec["sources"] = [*documents, *traffic, window]
    return spec


def no_worse_gates(gates: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """For each gated metric: the candidate at most `tolerance` worse than the baseline."""
    result: dict[str, dict[str, Any]] = {}
    for gate in gates:
        higher_is_better = gate["op"] in (">=", ">")
        result.setdefault(gate["metric"], {
            "metric": gate["metric"],
            "op": ">=" if higher_is_better else "<=",
            "baselineDelta": -tolerance if higher_is_better else tolerance,
        })
    return list(result.values())


def _resource(deployment: dict[str, Any], drifted: Drifted, retraining: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace", "default"),
            "labels": lineage_labels(meta["name"], retraining, drifted.check),
            "ownerReferences": [{**owner_reference(deployment), "controller": False}],
        },
        "spec": spec,
    }


def lineage_labels(deployment: str, retraining: str, drift_check: str) -> dict[str, str]:
    """`kubectl get mentor -l mentor.dev/retraining=<name>` shows one retraining's chain."""
    return {
        "app.kubernetes.io/part-of": "mentor",
        LABEL_DEPLOYMENT: deployment[:63],
        LABEL_RETRAINING: retraining,
        LABEL_DRIFT_CHECK: drift_check[:63],
    }


@dataclass(frozen=True)
class Observed:
    """A retraining's resources as they are now (None: not found)."""

    dataset: dict[str, Any] | None
    training: dict[str, Any] | None
    evaluations: list[dict[str, Any] | None]


def observe(lookup: Lookup, record: dict[str, Any]) -> Observed:
    name = record["name"]
    return Observed(
        dataset=lookup("DomainDataset", record["dataset"]),
        training=lookup("FineTuneJob", name),
        evaluations=[lookup("Evaluation", n) for n in (name, regression_name(name))],
    )


def advance(
    record: dict[str, Any],
    observed: Observed,
    status: dict[str, Any],
    policy: Retrain,
    spec_model: str,
    approved: bool,
) -> dict[str, Any]:
    """The record after looking at its resources and the deployment's rollouts. Phases only
    move forward; a terminal record never changes."""
    if record.get("phase") not in ACTIVE_PHASES:
        return record
    if spec_model != record.get("specModel"):
        return _ended(record, "Failed", f"superseded: the spec now names {spec_model}")
    if record["phase"] == "RollingOut":
        return _rollout(record, status)
    missing = [n for n, body in (("DomainDataset", observed.dataset), ("FineTuneJob", observed.training)) if body is None]
    if missing or None in observed.evaluations:
        return _ended(record, "Failed", f"cancelled: a {missing[0] if missing else 'Evaluation'} of {record['name']} was deleted")
    failed = _failed(observed.dataset, observed.training, *observed.evaluations)
    if failed:
        return _ended(record, "Failed", failed)
    training = observed.training
    if (training.get("spec") or {}).get("suspend"):
        return _waiting(record, "training", f"approve to train {record['name']}")
    if _phase(observed.dataset) != "Succeeded":
        return {**record, "phase": "Building", "message": _message(observed.dataset, "building the dataset")}
    if _phase(training) != "Succeeded":
        return {**record, "phase": "Training", "message": _message(training, "training")}
    candidate = (training.get("status") or {}).get("modelUri")
    record = {**record, "modelVersion": candidate}
    if any(_phase(e) != "Succeeded" for e in observed.evaluations):
        return {**record, "phase": "Evaluating", "message": "evaluating the candidate against the deployed model"}
    refused = [e for e in observed.evaluations if (e.get("status") or {}).get("passed") is not True]
    if refused:
        gates = "; ".join(g for e in refused for g in (e.get("status") or {}).get("failedGates") or []) or "no verdict"
        return _ended(record, "Failed", f"the candidate did not pass: {gates}")
    if policy.approval == "manual" and policy.approve_before == "rollout" and not approved:
        return _waiting(record, "rollout", f"passed; approve to roll {candidate} out")
    return _rollout({**record, "phase": "RollingOut", "approvalStage": None}, status)


def _rollout(record: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    outcome = next((r for r in reversed(status.get("rollouts") or []) if r.get("modelVersion") == record.get("modelVersion")), None)
    if outcome is None:
        return {**record, "phase": "RollingOut", "message": f"rolling out {record.get('modelVersion')}"}
    if outcome.get("outcome") == "rolledBack":
        return _ended(record, "Failed", f"rolled back: {outcome.get('reason', '')}", outcome.get("time"))
    return _ended(record, "Succeeded", f"rolled out ({outcome['outcome']}): {outcome.get('reason', '')}", outcome.get("time"))


def _ended(record: dict[str, Any], phase: str, message: str, when: str | None = None) -> dict[str, Any]:
    return {**record, "phase": phase, "message": message[:1024], "approvalStage": None, "completionTime": when or record.get("completionTime")}


def _waiting(record: dict[str, Any], stage: str, message: str) -> dict[str, Any]:
    how = f"mentor approve <deployment> --retraining {record['name']} (or annotate {APPROVE_ANNOTATION}={record['name']})"
    return {**record, "phase": "AwaitingApproval", "approvalStage": stage, "message": f"{message}: {how}"}


def _phase(body: dict[str, Any]) -> str | None:
    return (body.get("status") or {}).get("phase")


def _message(body: dict[str, Any], default: str) -> str:
    return (body.get("status") or {}).get("message") or default


def _failed(*bodies: dict[str, Any]) -> str | None:
    for body in bodies:
        if _phase(body) == "Failed":
            return f"{body['kind']} {body['metadata']['name']} failed: {_message(body, 'no message')}"
    return None


def approval_for(annotations: dict[str, str] | None, records: list[dict[str, Any]]) -> str | None:
    """The waiting retraining the approve annotation names ("latest": the newest waiting one)."""
    value = (annotations or {}).get(APPROVE_ANNOTATION, "").strip()
    waiting = [r["name"] for r in records if r.get("phase") == "AwaitingApproval"]
    if value == "latest":
        return waiting[-1] if waiting else None
    return value if value in waiting else None


def target_model(records: list[dict[str, Any]], spec_model: str) -> str:
    """The model to serve: the newest retraining of the spec's model that is rolling out or
    rolled out, else the spec's model."""
    for record in reversed(records):
        if record.get("specModel") == spec_model and record.get("phase") in ("RollingOut", "Succeeded") and record.get("modelVersion"):
            return record["modelVersion"]
    return spec_model


def served_dataset(records: list[dict[str, Any]], served_model: str | None, template_dataset: str) -> str:
    """The dataset behind the served model: a retraining's, or the training template's."""
    for record in reversed(records):
        if record.get("phase") == "Succeeded" and record.get("modelVersion") == served_model:
            return record["dataset"]
    return template_dataset


def recorded(records: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """status.retrainings with `record` added or replaced (by name), oldest dropped past the limit."""
    kept = [r for r in records if r["name"] != record["name"]]
    return [*kept, record][-MAX_RETRAINING_RECORDS:]
