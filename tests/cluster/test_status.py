"""Status that never lies or sticks, against a real control plane: a lost status write is
repaired by the resync, a spec edit a running Job cannot follow is not claimed as applied,
and pods that never start say why and fail after the start timeout.

These tests run their own operator, resyncing every 2 s (60 s by default), on the s-*
namespaces (the session operator keeps the t-* ones), with the same rights and Pod Security
as the session's."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cluster.conftest import Namespace, Operator, operator_kubeconfig, pod_annotations, resource, wait_for

pytestmark = pytest.mark.cluster

DATASET = {"sources": [{"name": "docs", "uri": "s3://bucket/docs/"}]}


@pytest.fixture(scope="module")
def resyncing_operator(cluster, tmp_path_factory) -> Operator:
    op = Operator(cluster, tmp_path_factory.mktemp("status-operator"), extra_args=("--standalone", "-n", "s-*"),
                  env={"MENTOR_RESYNC_SECONDS": "2", "KUBECONFIG": str(operator_kubeconfig(cluster))})
    op.start()
    yield op
    op.stop()


@pytest.fixture
def ns(cluster, resyncing_operator) -> Namespace:
    name = f"s-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield Namespace(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def finetune(name: str, **spec) -> dict:
    return resource("FineTuneJob", name, {"baseModel": "s3://models/base/", "datasetRef": {"name": "docs"}, **spec})


def patch(ns: Namespace, kind: str, name: str, body: dict, *subresource: str) -> None:
    ns.cp.kubectl("patch", kind, name, "-n", ns.name, "--type=merge", "-p", json.dumps(body), *subresource)


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_a_lost_status_write_is_repaired_by_the_resync(ns):
    """A status left Running after its Job succeeded (a write lost in a race, an operator
    that died before writing) gets no new Job event: only the resync puts it right."""
    ns.apply(resource("DomainDataset", "docs", {**DATASET, "scheduling": pod_annotations(run_ms="200")}))
    ns.wait_phase("DomainDataset", "docs", "Succeeded")
    patch(ns, "domaindataset", "docs", {"status": {"phase": "Running", "message": "stale"}}, "--subresource=status")
    status = ns.wait_phase("DomainDataset", "docs", "Succeeded")
    assert status["message"] != "stale" and condition(status, "Succeeded")["status"] == "True"


def test_an_edit_of_a_running_job_is_not_claimed_as_applied(ns):
    ns.apply(resource("DomainDataset", "docs", {**DATASET, "scheduling": pod_annotations(run_ms="100")}),
             finetune("ft", scheduling=pod_annotations(hold="true")))
    ns.wait_phase("FineTuneJob", "ft", "Running", timeout=90)
    patch(ns, "finetunejob", "ft", {"spec": {"hyperparameters": {"learningRate": 0.001}}})
    status = wait_for(lambda: (s := ns.status("FineTuneJob", "ft")) and condition(s, "SpecApplied") and s, 60,
                      what="the SpecApplied condition")
    applied = condition(status, "SpecApplied")
    assert (applied["status"], applied["reason"], applied["observedGeneration"]) == ("False", "RunningWithPreviousSpec", 2)
    assert status["observedGeneration"] == 1 and status["phase"] == "Running"
    wait_for(lambda: any(e["reason"] == "SpecNotApplied" and e["type"] == "Warning" for e in ns.events("ft")), 30,
             what="a SpecNotApplied event")
    # suspend is the one edit a started Job follows
    patch(ns, "finetunejob", "ft", {"spec": {"suspend": True}})
    ns.wait_phase("FineTuneJob", "ft", "Suspended")
    assert ns.get("job", "ft-sft")["spec"]["suspend"] is True


def test_pods_that_never_start_say_why_and_fail_after_the_start_timeout(ns):
    ns.apply(resource("DomainDataset", "docs", {**DATASET, "scheduling": pod_annotations(run_ms="100")}))
    ns.wait_phase("DomainDataset", "docs", "Succeeded")
    too_big = {"gpus": 16, "cpu": "100m", "memory": "128Mi"}  # the fake GPU node has 8
    ns.apply(
        finetune("unschedulable", resources=too_big),
        finetune("no-account", resources={"gpus": 0, "cpu": "100m", "memory": "128Mi"}, scheduling={"serviceAccountName": "missing"}),
        finetune("late", resources=too_big, scheduling={"startTimeoutSeconds": 4}),
    )
    waiting = wait_for(lambda: (s := ns.status("FineTuneJob", "unschedulable")) and condition(s, "Ready").get("reason") == "Unschedulable" and s,
                       60, what="the Unschedulable reason")
    assert waiting["phase"] == "Pending" and "Insufficient nvidia.com/gpu" in waiting["message"]
    refused = wait_for(lambda: (s := ns.status("FineTuneJob", "no-account")) and condition(s, "Ready").get("reason") == "FailedCreate" and s,
                       60, what="the FailedCreate reason")
    assert refused["phase"] == "Pending" and 'serviceaccount "missing" not found' in refused["message"]

    late = ns.wait_phase("FineTuneJob", "late", "Failed", timeout=60)
    assert late["message"].startswith("the stage's pods did not start within 4s")
    assert condition(late, "Succeeded")["reason"] == "StartTimeout"
    assert ns.get("job", "late-sft")["spec"]["suspend"] is True  # its pods no longer wait for a node
    wait_for(lambda: any(e["reason"] == "StageFailed" for e in ns.events("late")), 30, what="a StageFailed event")
