"""Status that never lies or sticks: conditional status writes, spec edits a started job
cannot follow, pods that never start, disruptions, and where a runner's pods are found.
The reconcile code runs against an in-memory API (FakeKube) with resourceVersion semantics."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from mentor_operator.api import KINDS
from mentor_operator.builders import plan_job_children
from mentor_operator.handlers import reconcile as rec
from mentor_operator.kube import ApiException
from mentor_operator.settings import Settings
from mentor_operator.status import SPEC_DIGEST_ANNOTATION, pod_selector, spec_digest, start_problem

SPEC = {"baseModel": "s3://m/base/", "datasetRef": {"name": "docs"}, "hyperparameters": {"learningRate": 0.0001}}


class FakeKube:
    """Objects by (kind, namespace, name); a status patch carrying a stale resourceVersion
    gets 409 Conflict, as from the API server."""

    def __init__(self, *objects: dict[str, Any]):
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.version = 0
        self.status_patches: list[dict[str, Any]] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        for obj in objects:
            self.put(obj)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, kind, namespace, name, api_version=None):
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(self, kind, namespace, api_version, label_selector=None, field_selector=None):
        wanted = dict(part.split("=", 1) for part in (label_selector or "").split(",") if part)
        return [
            copy.deepcopy(o) for (k, ns, _), o in self.objects.items()
            if k == kind and ns == namespace and wanted.items() <= (o["metadata"].get("labels") or {}).items()
        ]

    def patch_status(self, kind, namespace, name, status, resource_version=None):
        obj = self.objects[(kind, namespace, name)]
        if resource_version and resource_version != obj["metadata"]["resourceVersion"]:
            conflict = ApiException.__new__(ApiException)  # its constructor's arguments are no concern here
            conflict.status, conflict.reason = 409, "Conflict"
            raise conflict
        self.status_patches.append(status)
        return self.put({**obj, "status": {**(obj.get("status") or {}), **status}})

    def patch(self, kind, namespace, name, patch, api_version):
        self.patches.append((name, patch))
        obj = self.objects[(kind, namespace, name)]
        return self.put({**obj, "spec": {**obj["spec"], **patch["spec"]}})


def resource(status: dict[str, Any] | None = None, generation: int = 1, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    return {
        "apiVersion": "mentor.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "ft", "namespace": "ns", "uid": "u-ft", "generation": generation},
        "spec": spec,
        "status": status or {},
    }


def job(status: dict[str, Any], spec: dict[str, Any] = SPEC, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "ft-sft", "namespace": "ns", "uid": "u-job", "creationTimestamp": created,
                     "annotations": {SPEC_DIGEST_ANNOTATION: spec_digest(spec)}},
        "spec": {"suspend": False},
        "status": status,
    }


def context(kube: FakeKube) -> rec.Context:
    return rec.Context(kube=kube, settings=Settings())


@pytest.fixture
def warnings(monkeypatch) -> list[dict[str, Any]]:
    """Events the reconcile code posts (kopf would post them to the API)."""
    posted: list[dict[str, Any]] = []
    monkeypatch.setattr(rec.kopf, "warn", lambda body, **event: posted.append(event))
    monkeypatch.setattr(rec.kopf, "info", lambda body, **event: None)
    return posted


RUNNING = {"phase": "Running", "observedGeneration": 1, "message": "the stage is running"}
SUCCEEDED = {"phase": "Succeeded", "observedGeneration": 1, "message": "the stage finished"}


def test_a_stale_running_write_never_overwrites_a_succeeded_status():
    """The Job watcher wrote Succeeded after the handler read the resource as Running: the
    handler's Running write meets a newer version, re-reads, and leaves Succeeded alone."""
    kube = FakeKube(resource(RUNNING))
    read_by_handler = kube.get("FineTuneJob", "ns", "ft")
    kube.patch_status("FineTuneJob", "ns", "ft", SUCCEEDED)  # the watcher, meanwhile
    rec._write_status(context(kube), read_by_handler, {**RUNNING, "message": "the stage is running (again)"})
    assert kube.get("FineTuneJob", "ns", "ft")["status"]["phase"] == "Succeeded"
    assert kube.status_patches == [SUCCEEDED]


def test_a_conflicting_write_is_retried_against_the_fresh_version():
    """A progress report from the stage pod changed the resource: the operator's write is not
    lost, it is made again on the fresh version (and keeps the progress)."""
    kube = FakeKube(resource({"phase": "Pending", "observedGeneration": 1}))
    read = kube.get("FineTuneJob", "ns", "ft")
    kube.patch_status("FineTuneJob", "ns", "ft", {"progress": {"step": 5}})
    rec._write_status(context(kube), read, RUNNING)
    assert kube.get("FineTuneJob", "ns", "ft")["status"] == {**RUNNING, "progress": {"step": 5}}


def test_a_new_generation_may_leave_a_terminal_phase():
    kube = FakeKube(resource(SUCCEEDED, generation=2))
    rec._write_status(context(kube), kube.get("FineTuneJob", "ns", "ft"), {**RUNNING, "observedGeneration": 2})
    assert kube.get("FineTuneJob", "ns", "ft")["status"]["phase"] == "Running"


def test_an_edit_of_a_running_job_is_not_claimed_as_applied(warnings):
    """Generation 2 edits the learning rate of a job started from generation 1: the job
    cannot follow, so status stays at generation 1 and says so, once."""
    edited = {**SPEC, "hyperparameters": {"learningRate": 0.001}}
    kube = FakeKube(resource(RUNNING, generation=2, spec=edited), job({"active": 1, "ready": 1}))
    ctx = context(kube)
    rec.fold_runner(ctx, kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft"))
    status = kube.get("FineTuneJob", "ns", "ft")["status"]
    assert status["phase"] == "Running" and status["observedGeneration"] == 1
    (applied,) = [c for c in status["conditions"] if c["type"] == "SpecApplied"]
    assert (applied["status"], applied["reason"], applied["observedGeneration"]) == ("False", "RunningWithPreviousSpec", 2)
    assert "create a new FineTuneJob" in applied["message"]
    assert [w["reason"] for w in warnings] == ["SpecNotApplied"]
    rec.fold_runner(ctx, kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft"))
    assert len(warnings) == 1  # said once per generation

    # reverted to the spec the job runs: applied again, and generation 3 is observed
    kube.put(resource(status, generation=3))
    rec.fold_runner(ctx, kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft"))
    status = kube.get("FineTuneJob", "ns", "ft")["status"]
    assert status["observedGeneration"] == 3
    assert [c["status"] for c in status["conditions"] if c["type"] == "SpecApplied"] == ["True"]


def test_a_suspend_edit_is_applied(warnings):
    kube = FakeKube(resource(RUNNING, generation=2, spec={**SPEC, "suspend": True}), job({}))
    kube.objects[("Job", "ns", "ft-sft")]["spec"]["suspend"] = True
    rec.fold_runner(context(kube), kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft"))
    status = kube.get("FineTuneJob", "ns", "ft")["status"]
    assert status["phase"] == "Suspended" and status["observedGeneration"] == 2
    assert not [c for c in status["conditions"] if c["type"] == "SpecApplied"] and not warnings


def test_an_edit_after_the_run_ended_keeps_its_generation(warnings):
    finished = {**SUCCEEDED, "children": {"job": "ft-sft"}, "conditions": []}
    kube = FakeKube(resource(finished, generation=2, spec={**SPEC, "hyperparameters": {"learningRate": 0.001}}))
    assert rec._reconcile(context(kube), kube.get("FineTuneJob", "ns", "ft"), lambda kind, name: None) == "done"
    status = kube.get("FineTuneJob", "ns", "ft")["status"]
    assert status["phase"] == "Succeeded" and status["observedGeneration"] == 1
    assert [c["reason"] for c in status["conditions"]] == ["FinishedWithPreviousSpec"]
    assert [w["reason"] for w in warnings] == ["SpecNotApplied"]


def test_the_resync_refolds_the_runner_status_names(warnings, monkeypatch):
    """A Job that succeeded while its status write was lost: the resync reads it (and creates
    nothing: FakeKube has no create) and the resource succeeds."""
    done = job({"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-01-01T01:00:00Z"})
    result = {"exitCode": 0, "reason": "Completed", "message": json.dumps({"modelUri": "s3://out/model/"})}
    pod = {"kind": "Pod", "metadata": {"name": "ft-sft-x", "namespace": "ns", "labels": {"batch.kubernetes.io/job-name": "ft-sft"}},
           "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": result}}]}}
    kube = FakeKube(resource({**RUNNING, "children": {"job": "ft-sft"}}), done, pod)
    rec.resync(context(kube), kube.get("FineTuneJob", "ns", "ft"))
    status = kube.get("FineTuneJob", "ns", "ft")["status"]
    assert (status["phase"], status["modelUri"], status["completionTime"]) == ("Succeeded", "s3://out/model/", "2026-01-01T01:00:00Z")
    # no runner recorded (or it is gone): a full reconcile makes one
    reconciled = []
    monkeypatch.setattr(rec, "reconcile", lambda ctx, body, lookup=None: reconciled.append(body["metadata"]["name"]))
    rec.resync(context(FakeKube()), resource({**RUNNING, "children": {"job": "gone"}}))
    assert reconciled == ["ft"]


def pending_pod(created: str = "2026-01-01T00:00:00Z", **status: Any) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": "ft-sft-x", "namespace": "ns", "creationTimestamp": created,
                                        "labels": {"batch.kubernetes.io/job-name": "ft-sft"}},
            "status": {"phase": "Pending", **status}}


IMAGE_PULL = {"containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "mentor:typo"'}}}]}


def test_why_pods_do_not_start():
    assert start_problem([pending_pod(**IMAGE_PULL)], []) == ("ImagePullBackOff", 'container trainer: Back-off pulling image "mentor:typo"')
    secret = {"containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "judge-key" not found'}}}]}
    assert start_problem([pending_pod(**secret)], []) == ("CreateContainerConfigError", 'container trainer: secret "judge-key" not found')
    unschedulable = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}
    assert start_problem([pending_pod(**unschedulable)], []) == ("Unschedulable", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    creating = {"containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}]}
    assert start_problem([pending_pod(**creating)], []) is None
    events = [
        {"reason": "FailedCreate", "lastTimestamp": "2026-01-01T00:00:01Z", "message": "old"},
        {"reason": "FailedCreate", "lastTimestamp": "2026-01-01T00:00:09Z", "message": 'error looking up service account ns/trainer: serviceaccount "trainer" not found'},
        {"reason": "SuccessfulCreate", "lastTimestamp": "2026-01-01T00:00:10Z", "message": "created pod"},
    ]
    assert start_problem([], events) == ("FailedCreate", 'error looking up service account ns/trainer: serviceaccount "trainer" not found')


def test_a_job_whose_pods_wait_says_why_then_fails_after_the_start_timeout(warnings):
    spec = {**SPEC, "scheduling": {"startTimeoutSeconds": 600}}
    # The Job started long ago, but its pod is new (it replaces an evicted one): it waits afresh.
    started_long_ago = job({"active": 1, "ready": 0, "startTime": "2026-01-01T00:00:00Z"}, spec)
    kube = FakeKube(resource({"phase": "Pending", "observedGeneration": 1}, spec=spec), started_long_ago,
                    pending_pod(created="2999-01-01T00:00:00Z", **IMAGE_PULL))
    ctx = context(kube)
    # the first fold of a new Job lists no pods (a burst of new Jobs would list them for each)
    assert rec.fold_runner(ctx, kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft")) == "Pending"
    assert kube.get("FineTuneJob", "ns", "ft")["status"]["message"] == "waiting for the stage's pods to start"
    rec.fold_runner(ctx, kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft"))
    status = kube.get("FineTuneJob", "ns", "ft")["status"]
    assert status["phase"] == "Pending" and "Back-off pulling image" in status["message"]
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Ready"] == ["ImagePullBackOff"]
    assert kube.patches == []

    kube.put(pending_pod(**IMAGE_PULL))  # the same pod, created long ago: past the timeout
    assert rec.fold_runner(ctx, kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft")) == "Failed"
    status = kube.get("FineTuneJob", "ns", "ft")["status"]
    assert status["phase"] == "Failed" and status["message"].startswith("the stage's pods did not start within 600s: ImagePullBackOff")
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Succeeded"] == ["StartTimeout"]
    assert kube.patches == [("ft-sft", {"spec": {"suspend": True}})]  # its pods stop holding a node
    # the suspended Job's next event is stale news: the resource stays Failed
    rec.fold_runner(ctx, kube.get("FineTuneJob", "ns", "ft"), kube.get("Job", "ns", "ft-sft"))
    assert kube.get("FineTuneJob", "ns", "ft")["status"]["phase"] == "Failed"


def test_trainjob_pods_are_found_by_their_jobset_label(warnings):
    trainjob = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "ft-sft", "namespace": "ns", "uid": "u-tj"},
                "spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "Failed"}]}}
    assert pod_selector(trainjob) == "jobset.sigs.k8s.io/jobset-name=ft-sft"
    assert pod_selector(job({})) == "batch.kubernetes.io/job-name=ft-sft"
    # what JobSet puts on the pods of a TrainJob (its Job is ft-sft-node-0-0, not ft-sft)
    labels = {"jobset.sigs.k8s.io/jobset-name": "ft-sft", "batch.kubernetes.io/job-name": "ft-sft-node-0-0"}
    terminated = {"exitCode": 1, "reason": "Error", "message": "NCCL timeout on rank 3"}
    pod = {"kind": "Pod", "metadata": {"name": "ft-sft-node-0-0-x", "namespace": "ns", "labels": labels},
           "status": {"phase": "Failed", "containerStatuses": [{"name": "node", "state": {"terminated": terminated}}]}}
    kube = FakeKube(resource(RUNNING), pod)
    assert rec.fold_runner(context(kube), kube.get("FineTuneJob", "ns", "ft"), trainjob) == "Failed"
    assert kube.get("FineTuneJob", "ns", "ft")["status"]["message"] == "NCCL timeout on rank 3"


@pytest.mark.parametrize("nodes", [1, 3])
def test_a_disrupted_pod_is_not_a_failed_attempt(nodes):
    spec = {**SPEC, "distributed": {"nodes": nodes, "gpusPerNode": 1}}
    body = resource(spec=spec)
    model = KINDS["FineTuneJob"].spec.model_validate(spec)
    plan = plan_job_children(body, model, {"base_model": "s3://m/base/", "dataset_uri": "s3://a/d/"}, Settings(), False)
    rules = plan.runner["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert rules[0]["action"] == "FailJob"  # a permanent error still fails at once
