"""Pure status logic: metav1.Condition bookkeeping and folding child state into a phase."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mentor_trainer.timestamps import parse_utc, utc_now
from pydantic import ValidationError

from .api import KindApi
from .builders.job import STAGE_CONTAINER, TRAINJOB_REPLICATED_JOB

log = logging.getLogger("mentor.status")

TERMINAL_PHASES = ("Succeeded", "Failed")
# The phases a stage resource has while its runner decides them (what a resync re-reads).
RUNNER_PHASES = ("Pending", "Running", "Suspended")
# On a runner: the digest of the resource spec it was made from (suspend left out, the one
# field a started runner follows).
SPEC_DIGEST_ANNOTATION = "mentor.dev/spec-digest"


def now() -> str:
    return utc_now()


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime only moves when the status flips."""
    status = ("True" if status else "False") if isinstance(status, bool) else status
    result = [dict(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": now() if changed else previous.get("lastTransitionTime", now()),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return sorted(result, key=lambda c: c["type"])


@dataclass
class RunnerState:
    """What a Job (or TrainJob) says about the stage it runs."""

    phase: str
    reason: str = ""
    message: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


def _true_condition(obj: dict[str, Any], *types: str) -> dict[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") in types and condition.get("status") == "True":
            return condition
    return None


def runner_state(runner: dict[str, Any] | None) -> RunnerState:
    """Phase of a Job or TrainJob from its spec and status."""
    if not runner:
        return RunnerState("Pending", "Creating", "creating the job")
    status = runner.get("status") or {}
    start, end = status.get("startTime"), status.get("completionTime")
    done = _true_condition(runner, "Complete", "SuccessCriteriaMet")
    if done:
        return RunnerState("Succeeded", "Completed", done.get("message") or "the stage finished", start, end or done.get("lastTransitionTime"))
    failed = _true_condition(runner, "Failed", "FailureTarget")
    if failed:
        return RunnerState(
            "Failed", failed.get("reason") or "Failed", failed.get("message") or "the stage failed", start, failed.get("lastTransitionTime")
        )
    if (runner.get("spec") or {}).get("suspend") or _true_condition(runner, "Suspended"):
        return RunnerState("Suspended", "Suspended", "the job is suspended", start)
    # A Job counts pending pods as active; `ready` says they really run (TrainJobs lack it).
    if status.get("ready", status.get("active")):
        return RunnerState("Running", "Running", "the stage is running", start)
    return RunnerState("Pending", "PodsPending", "waiting for the stage's pods to start", start)


def overwrites_terminal(current: dict[str, Any], changes: dict[str, Any]) -> bool:
    """Would `changes` put a non-terminal phase over a terminal one of the same generation?
    Such a write is stale (a Job watcher and a handler raced): a finished run stays finished."""
    return (
        current.get("phase") in TERMINAL_PHASES
        and changes.get("phase") not in (None, *TERMINAL_PHASES)
        and changes.get("observedGeneration") == current.get("observedGeneration")
    )


def spec_digest(spec: dict[str, Any]) -> str:
    """A digest of the spec a runner is made from; a suspend flip does not change it."""
    canonical = json.dumps({k: v for k, v in spec.items() if k != "suspend"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def runs_spec(runner: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Was `runner` made from `spec`? (A runner from before digests were recorded: assumed so.)"""
    recorded = (runner["metadata"].get("annotations") or {}).get(SPEC_DIGEST_ANNOTATION)
    return recorded is None or recorded == spec_digest(spec)


def pod_selector(runner: dict[str, Any]) -> str:
    """The label selector of a runner's pods: a Job labels them with its name; a TrainJob's
    pods belong to Jobs of its JobSet (named <trainjob>-node-0-...), which carries its name."""
    name = runner["metadata"]["name"]
    if runner["kind"] == "TrainJob":
        return f"jobset.sigs.k8s.io/jobset-name={name}"
    return f"batch.kubernetes.io/job-name={name}"


# Waiting reasons of a container that is merely on its way (not stuck).
STARTING_REASONS = ("ContainerCreating", "PodInitializing")


def start_problem(pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of why a runner's pods do not start: a container waiting on something
    (ImagePullBackOff, CreateContainerConfigError for a missing Secret...), a pod no node fits
    (Unschedulable), or, with no pod at all, the runner's newest FailedCreate event (a missing
    ServiceAccount, an admission or quota refusal)."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason and reason not in STARTING_REASONS:
                return reason, f"container {container.get('name')}: {waiting.get('message') or reason}"
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return condition.get("reason") or "Unschedulable", condition.get("message") or "no node fits the pod"
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not pods and failed:
        newest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return "FailedCreate", newest.get("message") or "the pods cannot be created"
    return None


def start_overdue(runner: dict[str, Any], pods: list[dict[str, Any]], timeout_seconds: int, at: datetime) -> bool:
    """Has `runner` waited longer than `timeout_seconds` for its pods? Counted from when it
    started or was last resumed (a Job resets its startTime on resume), or from its newest
    pod's creation: a pod that replaces an evicted one waits afresh, however long the job ran."""
    stamps = [(runner.get("status") or {}).get("startTime") or runner["metadata"].get("creationTimestamp")]
    stamps += [pod["metadata"].get("creationTimestamp") for pod in pods]
    since = max(filter(None, map(parse_utc, stamps)), default=None)
    return since is not None and (at - since).total_seconds() > timeout_seconds


def pod_termination(pods: list[dict[str, Any]], phase: str) -> tuple[str, str] | None:
    """(reason, message) of the newest pod in `phase` whose stage container left a termination
    message. The trainer writes its error (on failure) or its result JSON (on success) there;
    other containers (sidecars a mesh or a policy injects) are not read, so they can neither
    hide nor forge the stage's result."""
    best: tuple[str, tuple[str, str]] | None = None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != phase:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            if container.get("name") not in (STAGE_CONTAINER, TRAINJOB_REPLICATED_JOB):
                continue
            terminated = (container.get("state") or {}).get("terminated") or {}
            message = (terminated.get("message") or "").strip()
            if not message and phase == "Failed":
                message = f"container {container.get('name')} exited with code {terminated.get('exitCode')}"
            if message:
                stamp = terminated.get("finishedAt") or ""
                candidate = (terminated.get("reason") or "Error", message)
                if best is None or stamp >= best[0]:
                    best = (stamp, candidate)
    return best[1] if best else None


def parse_result(message: str) -> dict[str, Any]:
    """The result JSON a successful stage leaves as its termination message ({} if none)."""
    try:
        result = json.loads(message)
    except ValueError:
        return {}
    return result if isinstance(result, dict) else {}


def result_status(
    api: KindApi,
    result: dict[str, Any],
    output_uri: str | None,
    conditions: list[dict[str, Any]] | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """Status fields from a finished stage's result (the kind's result model), with the
    conventional output paths for what it did not say. A verdict (an Evaluation's gates)
    also becomes the Passed condition and, when it failed, the status message."""
    try:
        typed = api.result.from_wire(result)
    except ValidationError as error:  # as unreadable as a message that is not JSON
        log.warning("%s result does not fit %s: %s", api.info.kind, api.result.__name__, error)
        typed = api.result()
    typed = typed.with_defaults(output_uri)
    # only what the stage said (and the defaults): a result never blanks other status fields
    changes = typed.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    verdict = typed.verdict()
    if verdict is not None:
        changes["conditions"] = set_condition(conditions, "Passed", verdict.passed, verdict.reason, verdict.message, generation)
        if not verdict.passed:
            changes["message"] = verdict.message
    return changes


def inference_service_phase(isvc: dict[str, Any] | None, was_ready: bool) -> tuple[str, str, str]:
    """(phase, reason, message) of a ModelDeployment from its InferenceService."""
    if not isvc:
        return "Deploying", "Creating", "creating the InferenceService"
    ready = next(
        (c for c in (isvc.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None
    )
    if ready and ready.get("status") == "True":
        return "Ready", "InferenceServiceReady", "serving"
    reason = (ready or {}).get("reason") or "InferenceServiceNotReady"
    message = (ready or {}).get("message") or "waiting for the InferenceService to become ready"
    return ("Degraded" if was_ready else "Deploying"), reason, message
