"""Live progress: a stage pod's account patches its resource's status.progress, and only that.

The pods here are kwok's, so the trainer's reporter runs in the test process with the token
the API server issues to the operator-created stage account: the same request a pod makes.
"""

from __future__ import annotations

import json
import urllib.error

import pytest

from mentor_operator.builders.access import status_path
from mentor_trainer.progress import ProgressReporter, StatusEndpoint
from tests.cluster.conftest import pod_annotations, resource, wait_for

pytestmark = pytest.mark.cluster


def stage_endpoint(cluster, ns, body: dict, tmp_path) -> StatusEndpoint:
    token = cluster.kubectl("create", "token", "mentor-stage", "-n", ns.name).stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    return StatusEndpoint(cluster.server + status_path(body), token_file, cluster.ca_file)


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
    assert pod["serviceAccountName"] == "mentor-stage"
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


def test_stage_account_may_patch_only_status(cluster, operator, ns, tmp_path):
    ns.apply(resource("DomainDataset", "docs", {"sources": [{"name": "d", "uri": "s3://b/d/"}], "scheduling": pod_annotations(hold="true")}))
    ns.wait_phase("DomainDataset", "docs", "Running", 60)
    body = ns.get("DomainDataset", "docs")
    endpoint = stage_endpoint(cluster, ns, body, tmp_path)
    endpoint.patch({"phase": "ingest", "documents": 7})
    assert ns.status("DomainDataset", "docs")["progress"]["documents"] == 7

    spec_endpoint = StatusEndpoint(endpoint.url.removesuffix("/status"), endpoint.token_file, endpoint.ca_file)
    with pytest.raises(urllib.error.HTTPError) as denied:
        spec_endpoint.patch({"phase": "x"})
    assert denied.value.code == 403
    token = endpoint.token_file.read_text()
    for verb, what in (("get", "pods"), ("get", "secrets"), ("patch", "domaindatasets"), ("create", "jobs")):
        allowed = cluster.kubectl("auth", "can-i", verb, what, "-n", ns.name, f"--token={token}", check=False).stdout.strip()
        assert allowed == "no", f"the stage account may {verb} {what}"

    # a report the account may not send stops the reporter instead of retrying forever
    other = ns.name.replace("t-", "t-other-")
    forbidden = StatusEndpoint(endpoint.url.replace(f"/namespaces/{ns.name}/", f"/namespaces/{other}/"), endpoint.token_file, endpoint.ca_file)
    reporter = ProgressReporter(None, forbidden, interval=0.05)
    reporter.update(step=1)
    wait_for(lambda: not reporter.reporting, 10, interval=0.05, what="the reporter to give up")
    reporter.close()
