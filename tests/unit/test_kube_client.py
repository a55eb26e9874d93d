"""kube.Kube against a local HTTP server: credentials from a kubeconfig, the request it sends,
404 as None, errors as ApiException, and a fresh login when the token was rotated."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mentor_operator.kube import ApiException, ConfigError, Kube


class Api(BaseHTTPRequestHandler):
    token = "fresh"  # the token the server accepts
    seen: list[tuple[str, str, str, dict]] = []

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Api.seen.append((self.command, self.path, self.headers["Content-Type"], body))
        self.answer()

    def do_GET(self) -> None:
        Api.seen.append((self.command, self.path, "", {}))
        self.answer()

    def answer(self) -> None:
        if self.headers["Authorization"] != f"Bearer {Api.token}":
            status, payload = 401, {"reason": "Unauthorized"}
        elif "missing" in self.path:
            status, payload = 404, {"reason": "NotFound"}
        elif "forbidden" in self.path:
            status, payload = 403, {"reason": "Forbidden"}
        else:
            status, payload = 200, {"kind": "FineTuneJob", "metadata": {"name": "ft"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server():
    Api.seen, Api.token = [], "fresh"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def kubeconfig(path: Path, server: str, token: str) -> str:
    path.write_text(yaml.safe_dump({
        "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
    }))
    return str(path)


def test_requests_carry_the_kubeconfig_token_and_decode_json(server, tmp_path):
    kube = Kube(kubeconfig(tmp_path / "config", server, "fresh"))
    assert kube.patch_status("FineTuneJob", "team", "ft", {"phase": "Running"}) == {"kind": "FineTuneJob", "metadata": {"name": "ft"}}
    assert kube.list("Job", "team", "batch/v1", "a=b") == []
    assert Api.seen == [
        ("PATCH", "/apis/mentor.dev/v1alpha1/namespaces/team/finetunejobs/ft/status", "application/merge-patch+json",
         {"status": {"phase": "Running"}}),
        ("GET", "/apis/batch/v1/namespaces/team/jobs?labelSelector=a%3Db", "", {}),
    ]


def test_404_is_none_and_other_errors_raise_with_the_status(server, tmp_path):
    kube = Kube(kubeconfig(tmp_path / "config", server, "fresh"))
    assert kube.get("FineTuneJob", "team", "missing") is None
    with pytest.raises(ApiException) as error:
        kube.get("FineTuneJob", "team", "forbidden")
    assert (error.value.status, error.value.reason) == (403, "Forbidden")


def test_a_rotated_token_is_read_again_once(server, tmp_path):
    path = kubeconfig(tmp_path / "config", server, "old")
    kube = Kube(path)
    kubeconfig(Path(path), server, "fresh")  # as the kubelet rewrites a projected token
    assert kube.get("FineTuneJob", "team", "ft") is not None
    assert [method for method, *_ in Api.seen] == ["GET", "GET"]  # one 401, one retry


def test_an_unreadable_kubeconfig_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ConfigError):
        Kube(str(tmp_path / "absent"))


def test_a_kubeconfig_with_an_exec_plugin_logs_in_through_it(server, tmp_path):
    """EKS and GKE kubeconfigs get their token from a command (an exec plugin), as `mentor
    approve` sees them on a user's machine."""
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": {"token": "fresh"}}
    plugin = {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
              "args": ["-c", f"print({json.dumps(json.dumps(credential))})"], "interactiveMode": "Never"}
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"exec": plugin}}],
    }))
    assert Kube(str(path)).get("FineTuneJob", "team", "ft") == {"kind": "FineTuneJob", "metadata": {"name": "ft"}}
