"""ProgressReporter against a real local HTTP server standing in for the API server (plain
HTTP; tests/cluster/test_progress.py sends the same reports to a real one over TLS)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mentor_operator.api import KINDS
from mentor_operator.builders.access import build_stage_access, stage_account, stage_identity, status_path
from mentor_operator.settings import Settings
from mentor_trainer.progress import ProgressReporter, StatusEndpoint
from tests.cluster.conftest import wait_for


class FakeApi(BaseHTTPRequestHandler):
    received: list = []
    answer = 200

    def do_PATCH(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.path, self.headers["Content-Type"], self.headers["Authorization"], body))
        self.send_response(type(self).answer)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def api(tmp_path):
    handler = type("Api", (FakeApi,), {"received": [], "answer": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    yield handler, f"http://127.0.0.1:{server.server_port}/apis/x/status", token
    server.shutdown()


def test_reports_are_throttled_and_the_last_state_wins(api, tmp_path):
    handler, url, token = api
    reporter = ProgressReporter(str(tmp_path / "p.json"), StatusEndpoint(url, token), interval=30)
    reporter.update(step=1, loss=3.0)
    wait_for(lambda: len(handler.received) == 1, 5, what="first report")
    for step in range(2, 50):
        reporter.update(step=step)
    assert len(handler.received) == 1  # the interval holds the rest back
    reporter.close()
    assert len(handler.received) == 2
    path, content_type, auth, body = handler.received[-1]
    assert (path, content_type, auth) == ("/apis/x/status", "application/merge-patch+json", "Bearer tok-1")
    assert body["status"]["progress"]["step"] == 49 and body["status"]["progress"]["loss"] == 3.0
    assert json.loads((tmp_path / "p.json").read_text())["step"] == 49


def test_server_errors_are_retried_and_forbidden_stops(api):
    handler, url, token = api
    handler.answer = 500
    reporter = ProgressReporter(None, StatusEndpoint(url, token), interval=0.01)
    reporter.update(step=1)
    wait_for(lambda: len(handler.received) >= 1, 5, what="a report")
    reporter.update(step=2)
    wait_for(lambda: len(handler.received) >= 2, 5, what="a retry after a 500")
    assert reporter.reporting
    handler.answer = 403
    reporter.update(step=3)
    wait_for(lambda: not reporter.reporting, 5, what="the reporter to stop on 403")
    reporter.close()


def test_unreachable_api_never_fails_the_stage(tmp_path):
    token = tmp_path / "token"
    token.write_text("t")
    reporter = ProgressReporter(None, StatusEndpoint("http://127.0.0.1:1/x", token), interval=0.01)
    reporter.update(step=1)
    reporter.close()


def test_endpoint_from_env(tmp_path, monkeypatch):
    monkeypatch.setattr("mentor_trainer.progress.SERVICE_ACCOUNT_DIR", tmp_path)
    env = {"MENTOR_PROGRESS_PATH": "/apis/mentor.dev/v1alpha1/namespaces/a/finetunejobs/b/status", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert StatusEndpoint.from_env(env) is None  # no token mounted
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("ca")
    endpoint = StatusEndpoint.from_env(env)
    assert endpoint == StatusEndpoint("https://10.0.0.1:443" + env["MENTOR_PROGRESS_PATH"], tmp_path / "token", tmp_path / "ca.crt")
    assert StatusEndpoint.from_env({**env, "RANK": "3"}) is None  # rank 0 reports for a distributed job
    assert StatusEndpoint.from_env({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}).url.startswith("https://[fd00::1]:443/")
    assert StatusEndpoint.from_env({k: v for k, v in env.items() if k != "MENTOR_PROGRESS_PATH"}) is None


def test_each_resource_gets_its_own_stage_account_that_may_patch_only_its_status():
    settings = Settings()
    api = KINDS["FineTuneJob"]
    body = {"apiVersion": "mentor.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ft", "namespace": "team-a", "uid": "u1"}}
    spec = api.spec.model_validate({"baseModel": "s3://m/", "datasetRef": {"name": "d"}})
    account, role, binding = build_stage_access(body, spec, settings)
    assert [o["kind"] for o in (account, role, binding)] == ["ServiceAccount", "Role", "RoleBinding"]
    assert {o["metadata"]["name"] for o in (account, role, binding)} == {"mentor-stage-finetunejob-ft"}
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "u1" for o in (account, role, binding))  # deleted with it
    (rule,) = role["rules"]
    assert rule == {"apiGroups": ["mentor.dev"], "resources": ["finetunejobs/status"], "resourceNames": ["ft"], "verbs": ["patch"]}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mentor-stage-finetunejob-ft", "namespace": "team-a"}]
    assert stage_account(body, spec) == "mentor-stage-finetunejob-ft"
    # two kinds may share a name, never an account
    assert stage_identity({**body, "kind": "Evaluation"}) != stage_identity(body)
    # a name at the API's limit still gives a valid, distinct name
    long_a, long_b = (stage_identity({**body, "metadata": {"name": c * 253}}) for c in "ab")
    assert len(long_a) <= 253 and long_a != long_b

    # a user's own account is used as is and granted nothing; nor is anything with reports off
    theirs = api.spec.model_validate({"baseModel": "s3://m/", "datasetRef": {"name": "d"}, "scheduling": {"serviceAccountName": "their-account"}})
    assert build_stage_access(body, theirs, settings) == [] and stage_account(body, theirs) == "their-account"
    assert build_stage_access(body, spec, Settings(report_progress=False)) == []


def test_status_path():
    body = {"kind": "FineTuneJob", "metadata": {"name": "ft", "namespace": "team-a"}}
    assert status_path(body) == "/apis/mentor.dev/v1alpha1/namespaces/team-a/finetunejobs/ft/status"
