"""Live progress: a stage pod's account patches its own resource's status.progress, and only that
(RBAC scopes the account to the resource; the generated admission policy to the field).

The pods here are kwok's, so the trainer's reporter runs in the test process with the token
the API server issues to the operator-created stage account: the same request a pod makes.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from mentor_operator.builders.access import stage_identity, status_path
from mentor_trainer.progress import ProgressReporter, StatusEndpoint
from tests.cluster.conftest import pod_annotations, resource, wait_for

pytestmark = pytest.mark.cluster


def stage_endpoint(cluster, ns, body: dict, tmp_path) -> StatusEndpoint:
    """The endpoint and token a pod of `body`'s stage would have."""
    token = cluster.kubectl("create", "token", stage_identity(body), "-n", ns.name).stdout.strip()
    token_file = tmp_path / f"token-{body['metadata']['name']}"
    token_file.write_text(token)
    return StatusEndpoint(cluster.server + status_path(body), token_file, cluster.ca_file)


def send_status(endpoint: StatusEndpoint, status: dict) -> int:
    """A raw status merge patch with the stage's token: the HTTP code the API server answers."""
    request = urllib.request.Request(
        endpoint.url,
        data=json.dumps({"status": status}).encode(),
        method="PATCH",
        headers={"Content-Type": "application/merge-patch+json", "Authorization": f"Bearer {endpoint.token_file.read_text()}"},
    )
    context = ssl.create_default_context(cafile=str(endpoint.ca_file))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def printed_columns(cluster, ns, name: str) -> dict[str, str]:
    out = cluster.kubectl("get", "ftj", name, "-n", ns.name, "-o", "wide").stdout.splitlines()
    return dict(zip(out[0].split(), out[1].split()))


def test_trainer_progress_reaches_status_and_printer_columns(cluster, operator, ns, tmp_path):
    ns.apply(
        resource("DomainDataset", "docs", {"sources": [{"name": "d", "uri": "s3://b/d/"}], "scheduling": pod_annotations(run_ms="200")}),
        resource("FineTuneJob", "ft", {"baseModel": "s3://m/base/", "datasetRef": {"name": "docs"}, "scheduling": pod_annotations(hold="true")}),
    )
    ns.wait_phase("FineTuneJob", "ft", "Running", 90)
    (job,) = [j for j in ns.items("jobs") if j["metadata"]["name"] == "ft-sft"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mentor-stage-finetunejob-ft"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    body = ns.get("FineTuneJob", "ft")
    assert env["MENTOR_PROGRESS_PATH"] == status_path(body)

    reporter = ProgressReporter(tmp_path / "progress.json", stage_endpoint(cluster, ns, body, tmp_path), interval=0.2)
    reporter.update(phase="training", step=20, total_steps=80, loss=2.5, eval_loss=2.75, eta_seconds=61.0, percent="25%")
    progress = wait_for(lambda: ns.status("FineTuneJob", "ft").get("progress", {}).get("step") == 20 and ns.status("FineTuneJob", "ft")["progress"], 15, what="progress in status")
    assert progress["phase"] == "training" and progress["totalSteps"] == 80 and progress["updatedAt"]
    columns = printed_columns(cluster, ns, "ft")
    assert (columns["PROGRESS"], columns["LOSS"], columns["EVAL-LOSS"], columns["ETA"]) == ("25%", "2.5", "2.75", "61")

    # the latest state wins; close() sends the last one without waiting for the interval
    reporter.update(step=40, percent="50%", loss=1.25)
    reporter.update(step=80, percent="100%", loss=0.5, eta_seconds=0.0)
    reporter.close()
    assert ns.status("FineTuneJob", "ft")["progress"]["step"] == 80
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 80

    # an operator restart neither needs nor loses the reports; its own status writes keep them
    operator.kill()
    operator.start()
    cluster.kubectl("patch", "ftj", "ft", "-n", ns.name, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    ns.wait_phase("FineTuneJob", "ft", "Suspended", 60)
    assert ns.status("FineTuneJob", "ft")["progress"]["percent"] == "100%"


def test_stage_account_may_patch_only_its_own_progress(cluster, operator, ns, tmp_path):
    held = {"sources": [{"name": "d", "uri": "s3://b/d/"}], "scheduling": pod_annotations(hold="true")}
    ns.apply(resource("DomainDataset", "docs", held), resource("DomainDataset", "other", held))
    ns.wait_phase("DomainDataset", "docs", "Running", 60)
    ns.wait_phase("DomainDataset", "other", "Running", 60)
    body = ns.get("DomainDataset", "docs")
    endpoint = stage_endpoint(cluster, ns, body, tmp_path)
    endpoint.patch({"phase": "ingest", "documents": 7})
    assert ns.status("DomainDataset", "docs")["progress"]["documents"] == 7

    # its own verdict fields: refused by the admission policy (which starts enforcing shortly
    # after it is installed), naming the field; status unchanged
    forged = wait_for(lambda: (code := send_status(endpoint, {"phase": "Succeeded", "outputUri": "s3://evil/"})) != 200 and code, 30, what="the policy to refuse")
    assert forged == 403
    assert send_status(endpoint, {"progress": {"documents": 8}, "message": "all good"}) == 403
    status = ns.status("DomainDataset", "docs")
    assert status["phase"] == "Running" and status["outputUri"] != "s3://evil/" and status["progress"]["documents"] == 7
    # another resource's status, even its progress: refused by RBAC (the Role names one resource)
    other = StatusEndpoint(cluster.server + status_path(ns.get("DomainDataset", "other")), endpoint.token_file, endpoint.ca_file)
    assert send_status(other, {"progress": {"documents": 1}}) == 403
    assert (ns.status("DomainDataset", "other").get("progress") or {}).get("documents") is None

    spec_endpoint = StatusEndpoint(endpoint.url.removesuffix("/status"), endpoint.token_file, endpoint.ca_file)
    with pytest.raises(urllib.error.HTTPError) as denied:
        spec_endpoint.patch({"phase": "x"})
    assert denied.value.code == 403
    token = endpoint.token_file.read_text()
    for verb, what in (("get", "pods"), ("get", "secrets"), ("patch", "domaindatasets"), ("create", "jobs"), ("patch", "evaluations/status")):
        allowed = cluster.kubectl("auth", "can-i", verb, what, "-n", ns.name, f"--token={token}", check=False).stdout.strip()
        assert allowed == "no", f"the stage account may {verb} {what}"

    # a report the account may not send stops the reporter instead of retrying forever
    reporter = ProgressReporter(None, other, interval=0.05)
    reporter.update(step=1)
    wait_for(lambda: not reporter.reporting, 10, interval=0.05, what="the reporter to give up")
    reporter.close()

    # the account goes with its resource
    cluster.kubectl("delete", "domaindataset", "docs", "-n", ns.name)
    wait_for(lambda: ns.get("serviceaccount", stage_identity(body)) is None, 60, what="the stage account to be garbage-collected")


def test_an_account_the_user_names_is_granted_nothing(cluster, operator, ns):
    cluster.kubectl("create", "serviceaccount", "their-account", "-n", ns.name)
    scheduling = {**pod_annotations(hold="true"), "serviceAccountName": "their-account"}
    ns.apply(resource("DomainDataset", "docs", {"sources": [{"name": "d", "uri": "s3://b/d/"}], "scheduling": scheduling}))
    ns.wait_phase("DomainDataset", "docs", "Running", 60)
    (job,) = ns.items("jobs")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "their-account"
    assert not [b for b in ns.items("rolebindings") if any(s["name"] == "their-account" for s in b.get("subjects") or [])]
    assert not [a for a in ns.items("serviceaccounts") if a["metadata"]["name"].startswith("mentor-stage")]
    allowed = cluster.kubectl("auth", "can-i", "patch", "domaindatasets/status", "-n", ns.name, f"--as=system:serviceaccount:{ns.name}:their-account", check=False)
    assert allowed.stdout.strip() == "no"
