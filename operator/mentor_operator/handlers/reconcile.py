"""The one reconciliation every kind shares, callable from any handler.

Level-triggered and idempotent: it reads the resource and its runner, applies children with
server-side apply, and writes status only when something changed. kopf calls it on
create/update/resume; the child watchers call it when a dependency has succeeded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from mentor_trainer.config import RolloutResult
from mentor_trainer.config.deploy import DriftResult
from mentor_trainer.timestamps import parse_utc
from mentor_trainer.config.common import ADMITTED

from ..api import KINDS
from ..api.common import Scheduling
from ..builders import plan_export, plan_job_children, plan_rollout_analysis, plan_serving
from ..builders.config import output_uri
from ..builders.inputs import Lookup, Resolution, resolve_inputs
from ..builders.uris import uri_problems
from ..builders.serving import served_model_uri
from ..kube import ApiException, Kube
from ..metrics import DRIFT_SCORE, DRIFT_SIGNAL_SCORE, DRIFTED, PHASES, RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES, ROLLOUTS
from ..retraining import target_model
from ..rollout import ROLLOUT_ANNOTATION, Versions, analysis_due, choose_versions, manual_decision, recorded
from ..settings import Settings
from ..status import (
    SPEC_DIGEST_ANNOTATION,
    TERMINAL_PHASES,
    RunnerState,
    inference_service_phase,
    now,
    overwrites_terminal,
    parse_result,
    pod_selector,
    pod_termination,
    result_status,
    runner_state,
    runs_spec,
    set_condition,
    spec_digest,
    start_overdue,
    start_problem,
)

from .retrain import step_retrainings

log = logging.getLogger("mentor.reconcile")
# A status write that keeps meeting a newer version (stage progress reports, another handler)
# gives up after this many tries; kopf then retries the handler with a fresh read.
STATUS_WRITE_ATTEMPTS = 4

@dataclass
class Context:
    kube: Kube
    settings: Settings
    kubeflow_trainer: bool = False
    # runner uid -> the phase this replica last folded from it: a runner event that does not
    # change the phase needs no read of its owner (most Job events during a burst).
    folded: dict[str, str] = field(default_factory=dict)

    def already_folded(self, runner: dict[str, Any]) -> bool:
        return self.folded.get(runner["metadata"]["uid"]) == runner_state(runner).phase


def format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        parts.append(f"spec.{path}: {item['msg']}" if path else f"spec: {item['msg']}")
    return "; ".join(parts)


def _write_status(ctx: Context, body: dict[str, Any], changes: dict[str, Any], event: tuple[str, str] | None = None) -> dict[str, Any]:
    """Merge `changes` into status when they change anything; post `event` (type, reason) then.
    The write is conditional on the version it was decided from: on a conflict it is decided
    again against the fresh status, so a stale non-terminal write never hides a finished run."""
    meta = body["metadata"]
    current = body.get("status") or {}
    version = meta.get("resourceVersion")
    for _ in range(STATUS_WRITE_ATTEMPTS):
        if overwrites_terminal(current, changes) or all(current.get(key) == value for key, value in changes.items()):
            return current
        try:
            ctx.kube.patch_status(body["kind"], meta["namespace"], meta["name"], changes, version)
            break
        except ApiException as error:
            if error.status != 409:
                raise
        fresh = ctx.kube.get(body["kind"], meta["namespace"], meta["name"])
        if fresh is None:  # deleted meanwhile: nothing to write to
            return current
        current, version = fresh.get("status") or {}, fresh["metadata"]["resourceVersion"]
    else:
        raise kopf.TemporaryError(f"status of {meta['name']} kept changing under {STATUS_WRITE_ATTEMPTS} writes", delay=1)
    merged = {**current, **changes}
    PHASES.observe(body["kind"], meta["namespace"], meta["name"], merged.get("phase"))
    if event and changes.get("message") and changes.get("message") != current.get("message"):
        kind, reason = event
        (kopf.warn if kind == "Warning" else kopf.info)(body, reason=reason, message=changes["message"])
    return merged


def _phase_status(body: dict[str, Any], phase: str, reason: str, message: str, ready: bool = False) -> dict[str, Any]:
    current = body.get("status") or {}
    generation = body["metadata"].get("generation")
    conditions = set_condition(current.get("conditions"), "Ready", ready, reason, message, generation)
    if phase in TERMINAL_PHASES:
        conditions = set_condition(conditions, "Succeeded", phase == "Succeeded", reason, message, generation)
    return {"phase": phase, "message": message, "conditions": conditions, "observedGeneration": generation}


def reconcile(ctx: Context, body: dict[str, Any], lookup: Lookup | None = None) -> None:
    """Bring one resource's children and status in line with its spec.
    Raises kopf.TemporaryError while it waits for a dependency (kopf retries)."""
    kind = body["kind"]
    started = time.perf_counter()
    try:
        namespace = body["metadata"]["namespace"]
        outcome = _reconcile(ctx, body, lookup or (lambda kind, name: ctx.kube.get(kind, namespace, name)))
        RECONCILES.labels(kind, outcome).inc()
    except kopf.TemporaryError:
        RECONCILES.labels(kind, "waiting").inc()
        raise
    except Exception:
        RECONCILE_ERRORS.labels(kind).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)


# status.children entries that name a stage's runner: (kind, apiVersion)
RUNNERS = {"job": ("Job", "batch/v1"), "trainJob": ("TrainJob", "trainer.kubeflow.org/v1alpha1")}


def resync(ctx: Context, body: dict[str, Any], lookup: Lookup | None = None) -> None:
    """The periodic pass over a stage resource that has not changed for a while: re-fold the
    runner its status names (one read, no writes unless the status is stale); without one
    (none recorded yet, or it was deleted) a full reconcile makes it."""
    meta = body["metadata"]
    children = (body.get("status") or {}).get("children") or {}
    for field_name, (kind, api_version) in RUNNERS.items():
        runner = children.get(field_name) and ctx.kube.get(kind, meta["namespace"], children[field_name], api_version)
        if runner:
            fold_runner(ctx, body, runner)
            return
    reconcile(ctx, body, lookup)


def _reconcile(ctx: Context, body: dict[str, Any], lookup: Lookup) -> str:
    api = KINDS[body["kind"]]
    meta = body["metadata"]
    status = body.get("status") or {}
    try:
        spec = api.spec.model_validate(body.get("spec") or {}, context=ADMITTED)
    except ValidationError as error:
        message = format_validation_error(error)
        _write_status(ctx, body, _phase_status(body, "Failed", "InvalidSpec", message), ("Warning", "InvalidSpec"))
        return "invalid"
    if status.get("phase") in TERMINAL_PHASES and status.get("observedGeneration") == meta.get("generation"):
        return "done"
    if status.get("phase") in TERMINAL_PHASES and api.workload == "stage" and _ran(status):
        # an edit after the run ended: its Job is done and immutable, so nothing reruns
        _write_status(ctx, body, _previous_spec_status(body, status, status["phase"]))
        return "done"

    resolution = resolve_inputs(body["kind"], body["spec"], lookup)
    if not resolution.ready:
        blocked = bool(resolution.blocked)
        message = "; ".join(resolution.blocked or resolution.waiting)
        reason = "DependencyNotUsable" if blocked else "WaitingForDependency"
        phase = "Failed" if blocked else "Waiting"
        _write_status(ctx, body, _phase_status(body, phase, reason, message), ("Warning" if blocked else "Normal", reason))
        delay = ctx.settings.retry_delay_seconds * (6 if blocked else 1)
        raise kopf.TemporaryError(message, delay=delay)

    out = output_uri(spec, body, ctx.settings)
    problems = uri_problems(spec, body, resolution.values, out, ctx.settings, cluster=True)
    if problems:
        _write_status(ctx, body, _phase_status(body, "Failed", "InvalidStorage", "; ".join(problems)), ("Warning", "InvalidStorage"))
        return "invalid"
    reconcile_workload = _reconcile_serving if api.workload == "serving" else _reconcile_stage
    return reconcile_workload(ctx, body, spec, resolution, out)


def _reconcile_stage(ctx: Context, body: dict[str, Any], spec: Any, resolution: Resolution, out: str) -> str:
    """A kind whose stage Job (or TrainJob) is the resource: apply it, fold its state."""
    status = body.get("status") or {}
    plan = plan_job_children(body, spec, resolution.values, ctx.settings, ctx.kubeflow_trainer)
    runner_meta = plan.runner["metadata"]
    runner_meta["annotations"] = {**(runner_meta.get("annotations") or {}), SPEC_DIGEST_ANNOTATION: spec_digest(body["spec"])}
    runner = _apply(ctx, plan.children, plan.runner)
    extra = {"outputUri": out, "children": _children_names(plan.children), **resolution.status}
    if not status.get("startTime"):
        extra["startTime"] = now()
    fold_runner(ctx, {**body, "status": {**status}}, runner, extra)
    return "applied"


def _apply(ctx: Context, children: list[dict[str, Any]], runner_plan: dict[str, Any] | None) -> dict[str, Any] | None:
    """Create what does not exist yet; an existing runner only gets its suspend flag. Job
    templates are immutable and a running stage keeps the config it started with, so the
    create-if-absent is the idempotent step: a restarted operator never makes a second Job."""
    runner = None
    for child in children:
        created = ctx.kube.create(child)
        if child is not runner_plan:
            continue
        m = child["metadata"]
        runner = created or ctx.kube.get(child["kind"], m["namespace"], m["name"], child["apiVersion"])
        wanted = child["spec"].get("suspend", False)
        if runner is not None and bool((runner.get("spec") or {}).get("suspend")) != wanted:
            runner = ctx.kube.patch(child["kind"], m["namespace"], m["name"], {"spec": {"suspend": wanted}}, child["apiVersion"])
    return runner


def _children_names(children: list[dict[str, Any]]) -> dict[str, str]:
    """status.children: each child's name under its kind in lowerCamelCase (job, configMap...)."""
    names: dict[str, str] = {}
    for child in children:
        names.setdefault(child["kind"][0].lower() + child["kind"][1:], child["metadata"]["name"])
    return names


def fold_runner(ctx: Context, body: dict[str, Any], runner: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> str:
    """Fold the runner's state (and, at the end, its pods' termination messages) into status."""
    kind = body["kind"]
    meta = body["metadata"]
    state = runner_state(runner)
    if state.phase == "Pending" and runner is not None:
        state = _pending_state(ctx, body, runner, state)
    changes = _phase_status(body, state.phase, state.reason, state.message, ready=state.phase == "Succeeded")
    changes.update(extra or {})
    if state.start_time:
        changes["startTime"] = (body.get("status") or {}).get("startTime") or state.start_time
    event = None
    if state.phase in TERMINAL_PHASES and runner is not None:
        changes["completionTime"] = state.completion_time or now()
        termination = _termination(ctx, runner, state.phase)
        if state.phase == "Failed":
            if termination:
                changes.update(_phase_status(body, "Failed", termination[0], termination[1]))
            event = ("Warning", "StageFailed")
        else:
            result = parse_result(termination[1]) if termination else {}
            out = changes.get("outputUri") or (body.get("status") or {}).get("outputUri")
            changes.update(result_status(KINDS[kind], result, out, changes["conditions"], meta.get("generation")))
            event = ("Warning", "GatesFailed") if result.get("passed") is False else ("Normal", "StageSucceeded")
    if runner is not None:
        changes.update(_spec_applied_status(body, {**(body.get("status") or {}), **changes}, runner, state.phase))
    _write_status(ctx, body, changes, event)
    if runner is not None:
        ctx.folded[runner["metadata"]["uid"]] = state.phase
    return state.phase


def _ran(status: dict[str, Any]) -> bool:
    """Did a runner take this resource to its end (not a spec or dependency refusal)?"""
    children = status.get("children") or {}
    return bool(children.get("job") or children.get("trainJob"))


def _spec_applied_status(body: dict[str, Any], status: dict[str, Any], runner: dict[str, Any], phase: str) -> dict[str, Any]:
    """SpecApplied and observedGeneration from whether the runner was made from the current
    spec; the condition only appears once an edit was not applied (and flips back on a revert)."""
    if not runs_spec(runner, body.get("spec") or {}):
        return _previous_spec_status(body, status, phase)
    if not any(c.get("type") == "SpecApplied" for c in status.get("conditions") or []):
        return {}
    generation = body["metadata"].get("generation")
    message = "the job runs with the current spec"
    return {"conditions": set_condition(status.get("conditions"), "SpecApplied", True, "Applied", message, generation)}


def _previous_spec_status(body: dict[str, Any], status: dict[str, Any], phase: str) -> dict[str, Any]:
    """A runner follows the spec it was made from (only suspend reaches a started one): the
    status keeps the generation that spec had, SpecApplied=False says so, and a Warning event
    the first time for a generation."""
    generation = body["metadata"].get("generation")
    ran_with = (body.get("status") or {}).get("observedGeneration")
    said = next((c for c in status.get("conditions") or [] if c.get("type") == "SpecApplied"), {})
    if phase in TERMINAL_PHASES:
        reason, doing = "FinishedWithPreviousSpec", "finished"
    else:
        reason, doing = "RunningWithPreviousSpec", "keeps running"
    message = (
        f"generation {generation} edits the spec, but the job {doing} with generation {ran_with}'s spec "
        f"(a started job only follows spec.suspend): create a new {body['kind']} to run with the edited spec"
    )
    if (said.get("status"), said.get("observedGeneration")) != ("False", generation):
        kopf.warn(body, reason="SpecNotApplied", message=message)
    conditions = set_condition(status.get("conditions"), "SpecApplied", False, reason, message, generation)
    return {"conditions": conditions, "observedGeneration": ran_with}


def _pending_state(ctx: Context, body: dict[str, Any], runner: dict[str, Any], state: RunnerState) -> RunnerState:
    """A runner still waiting for its pods: why (once it was seen pending before: a burst of
    new Jobs lists no pods), and Failed once past spec.scheduling.startTimeoutSeconds, with
    the runner suspended so its pods stop holding nodes, quota or image pulls."""
    meta = runner["metadata"]
    if ctx.folded.get(meta["uid"]) != "Pending":
        return state
    pods = _pods(ctx, runner)
    problem = start_problem(pods, [] if pods else _events(ctx, runner))
    timeout = Scheduling.model_validate((body.get("spec") or {}).get("scheduling") or {}).start_timeout_seconds
    if start_overdue(runner, pods, timeout, datetime.now(timezone.utc)):
        ctx.kube.patch(runner["kind"], meta["namespace"], meta["name"], {"spec": {"suspend": True}}, runner["apiVersion"])
        why = f": {problem[0]}: {problem[1]}" if problem else ""
        return RunnerState("Failed", "StartTimeout", f"the stage's pods did not start within {timeout}s{why}", state.start_time)
    if problem:
        return RunnerState("Pending", problem[0], f"the stage's pods do not start: {problem[1]}", state.start_time)
    return state


def _events(ctx: Context, obj: dict[str, Any]) -> list[dict[str, Any]]:
    meta = obj["metadata"]
    selector = f"involvedObject.kind={obj['kind']},involvedObject.name={meta['name']}"
    return ctx.kube.list("Event", meta["namespace"], "v1", field_selector=selector)


def _pods(ctx: Context, runner: dict[str, Any]) -> list[dict[str, Any]]:
    return ctx.kube.list("Pod", runner["metadata"]["namespace"], "v1", pod_selector(runner))


def _reconcile_serving(ctx: Context, body: dict[str, Any], spec: Any, resolution: Resolution, out: str) -> str:
    """A served model: each model version is exported by its own Job, then served; a new
    version rolls out as a canary and is promoted or rolled back (rollout.py says when)."""
    status = body.get("status") or {}
    stamp = now()
    spec_model = resolution.values["model_uri"]
    changes, events = step_retrainings(ctx, body, spec, spec_model, out) if spec.monitoring.drift else ({}, [])
    desired = target_model(changes.get("retrainings", status.get("retrainings") or []), spec_model)
    versions = choose_versions(status, desired, spec.canary is not None)
    exports = {}
    for version in filter(None, (versions.serve, versions.canary)):
        export = plan_export(body, spec, version, resolution.values, ctx.settings)
        exports[version] = _apply(ctx, export.children, export.runner)
    changes.update(outputUri=out, startTime=status.get("startTime") or stamp)
    stable = status.get("modelVersion")

    served = runner_state(exports[versions.serve])
    if versions.serve != stable and served.phase == "Succeeded":
        changes.update(_export_result(ctx, body, exports[versions.serve]))
        if stable is not None:
            changes["rollouts"] = recorded(status, versions.serve, "replaced", f"replaced {stable} (no canary configured)", stamp)
            ROLLOUTS.labels(body["metadata"]["namespace"], body["metadata"]["name"], "replaced").inc()
            events.append(("Normal", "Replaced", f"serving {versions.serve} in place of {stable}"))
        stable = changes["modelVersion"] = versions.serve
    elif versions.serve != stable and served.phase == "Failed":
        reason, message = _termination(ctx, exports[versions.serve], "Failed") or (served.reason, served.message)
        if stable is None:
            _write_status(ctx, body, {**changes, **_phase_status(body, "Failed", reason, f"export failed: {message}")}, ("Warning", "ExportFailed"))
            return "applied"
        events.append(("Warning", "ExportFailed", f"export of {versions.serve} failed, still serving {stable}: {message}"))

    canary = _canary(ctx, body, spec, versions, exports, stable, stamp, changes, events)
    stable = changes.get("modelVersion", stable)  # a promotion serves the canary as stable now
    if stable is None:
        phase = "Suspended" if served.phase == "Suspended" else "Deploying"
        changes.update(_phase_status(body, phase, "Exporting", f"exporting the model ({served.message})"))
    else:
        children = plan_serving(body, spec, resolution.values, ctx.settings, stable, canary and canary["modelVersion"])
        applied = {child["kind"]: ctx.kube.apply(child) for child in children}
        isvc = applied.get("InferenceService")
        phase, reason, message = inference_service_phase(isvc, status.get("phase") in ("Ready", "Degraded"))
        if versions.held_back:
            message += f"; {versions.held_back} was rolled back and is not rolled out again (name another model to roll out)"
        changes.update(_phase_status(body, phase, reason, message, ready=phase == "Ready"))
        changes["children"] = _children_names([*filter(None, exports.values()), *children])
        if ((isvc or {}).get("status") or {}).get("url"):
            changes["url"] = isvc["status"]["url"]
        if phase == "Ready" and status.get("phase") != "Ready":
            events.append(("Normal", "Serving", f"serving {stable}"))
    changes["canary"] = canary
    _write_status(ctx, body, changes)
    for kind, reason, message in events:
        (kopf.warn if kind == "Warning" else kopf.info)(body, reason=reason, message=message)
    return "applied"


def _canary(
    ctx: Context,
    body: dict[str, Any],
    spec: Any,
    versions: Versions,
    exports: dict[str, Any],
    stable: str | None,
    stamp: str,
    changes: dict[str, Any],
    events: list[tuple[str, str, str]],
) -> dict[str, Any] | None:
    """The canary's status after this pass; a promotion or roll-back is written into `changes`."""
    status = body.get("status") or {}
    version = versions.canary
    if version is None or stable is None:
        return None
    state = runner_state(exports[version])
    if state.phase == "Failed":
        message = (_termination(ctx, exports[version], "Failed") or (state.reason, state.message))[1]
        return _decide(body, version, "rollback", f"export failed: {message}", stamp, changes, events)
    if state.phase != "Succeeded":
        return None
    canary = dict(status.get("canary") or {})
    if canary.get("modelVersion") != version:
        out = output_uri(spec, body, ctx.settings)
        canary = {
            "modelVersion": version,
            "modelUri": served_model_uri(out, spec.runtime, version),
            "trafficPercent": spec.canary.traffic_percent,
            "startTime": stamp,
            "analyses": 0,
        }
        events.append(("Normal", "CanaryStarted", f"{version} receives {spec.canary.traffic_percent}% of the requests"))
    manual = manual_decision(body["metadata"].get("annotations"))
    if manual:
        meta = body["metadata"]
        ctx.kube.patch(body["kind"], meta["namespace"], meta["name"], {"metadata": {"annotations": {ROLLOUT_ANNOTATION: None}}}, body["apiVersion"])
        if manual == "promote":
            changes.update(_export_result(ctx, body, exports[version]))
        return _decide(body, version, manual, f"{manual} by the {ROLLOUT_ANNOTATION} annotation", stamp, changes, events)
    if not analysis_due(canary, spec.canary.promote_after_minutes, parse_utc(stamp)):
        return canary
    analysis = plan_rollout_analysis(body, spec, ctx.settings, stable, version, canary["startTime"], canary["analyses"])
    job = _apply(ctx, analysis.children, analysis.runner)
    outcome = runner_state(job)
    if outcome.phase == "Succeeded":
        termination = _termination(ctx, job, "Succeeded")
        result = RolloutResult.from_wire(parse_result(termination[1]) if termination else {})
        reason = "; ".join(result.reasons) or "no reasons given"
        if result.decision in ("promote", "rollback"):
            if result.decision == "promote":
                changes.update(_export_result(ctx, body, exports[version]))
            return _decide(body, version, result.decision, reason, stamp, changes, events)
        events.append(("Normal", "CanaryWaiting", f"analysis {canary['analyses'] + 1}: {reason}"))
        canary["analyses"] += 1
    elif outcome.phase == "Failed":
        message = (_termination(ctx, job, "Failed") or (outcome.reason, outcome.message))[1]
        events.append(("Warning", "AnalysisFailed", f"analysis {canary['analyses'] + 1} of {version} failed, retrying later: {message}"))
        canary["analyses"] += 1
    return canary


def _decide(
    body: dict[str, Any], version: str, decision: str, reason: str, stamp: str, changes: dict[str, Any], events: list[tuple[str, str, str]]
) -> None:
    """Record a canary's promotion or roll-back; the next serving plan follows `changes`."""
    status, namespace, name = body.get("status") or {}, body["metadata"]["namespace"], body["metadata"]["name"]
    outcome = "promoted" if decision == "promote" else "rolledBack"
    changes["rollouts"] = recorded({**status, **changes}, version, outcome, reason, stamp)
    ROLLOUTS.labels(namespace, name, outcome).inc()
    if decision == "promote":
        changes["modelVersion"] = version
        events.append(("Normal", "CanaryPromoted", f"{version} promoted: {reason}"))
    else:
        events.append(("Warning", "CanaryRolledBack", f"{version} rolled back: {reason}"))
    return None


def _termination(ctx: Context, job: dict[str, Any] | None, phase: str) -> tuple[str, str] | None:
    if job is None:
        return None
    return pod_termination(_pods(ctx, job), phase)


def _export_result(ctx: Context, body: dict[str, Any], export_job: dict[str, Any]) -> dict[str, Any]:
    """Status fields from a succeeded export's result: the served artefact and what its
    quantisation cost."""
    termination = _termination(ctx, export_job, "Succeeded")
    return result_status(KINDS[body["kind"]], parse_result(termination[1]) if termination else {}, None)


def fold_drift_check(ctx: Context, body: dict[str, Any], job: dict[str, Any]) -> None:
    """A finished drift check: its result becomes status.drift (the retraining history kept),
    the gauges follow it, and an Event marks when drift starts or ends."""
    state = runner_state(job)
    if state.phase not in TERMINAL_PHASES:
        return
    meta = body["metadata"]
    previous = (body.get("status") or {}).get("drift") or {}
    if state.phase == "Failed":
        message = (_termination(ctx, job, "Failed") or (state.reason, state.message))[1]
        kopf.warn(body, reason="DriftCheckFailed", message=f"drift check {job['metadata']['name']} failed: {message}")
        return
    termination = _termination(ctx, job, "Succeeded")
    result = DriftResult.from_wire(parse_result(termination[1]) if termination else {})
    drift = {**previous, **result.model_dump(mode="json", by_alias=True, exclude_none=True), "checkName": job["metadata"]["name"]}
    for stale in ("drifted", "score", "skipped", "window_start", "window_end"):  # a skipped check decides nothing: no stale verdict
        if getattr(result, stale) is None:
            drift.pop(DriftResult.model_fields[stale].alias or stale, None)
    _write_status(ctx, body, {"drift": drift})
    if result.score is not None:
        DRIFT_SCORE.labels(meta["namespace"], meta["name"]).set(result.score)
    for signal in result.signals:
        if signal.score is not None:
            DRIFT_SIGNAL_SCORE.labels(meta["namespace"], meta["name"], signal.name).set(signal.score)
    if result.drifted is not None:
        DRIFTED.labels(meta["namespace"], meta["name"]).set(int(result.drifted))
        if result.drifted != bool(previous.get("drifted")):
            reason, verb = ("DriftDetected", "found") if result.drifted else ("DriftEnded", "no longer finds")
            drifted = [sig.name for sig in result.signals if sig.drifted]
            message = f"the drift check {verb} drift (score {result.score})" + (f": {', '.join(drifted)}" if drifted else "")
            (kopf.warn if result.drifted else kopf.info)(body, reason=reason, message=message)
