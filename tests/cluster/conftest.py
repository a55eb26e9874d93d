"""Session fixtures: a real control plane with our CRDs and the third-party ones, and the
operator running against it as a subprocess (so a test can kill -9 it and start another)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.cluster.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
SHARED_CRDS = ROOT.parent / "shared" / "third_party" / "crds"
PEERING_CRDS = ROOT / "manifests" / "base" / "kopf-peering-crds.yaml"
OPERATOR_RBAC = ROOT / "manifests" / "base" / "rbac.yaml"


def wait_for(check: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = "condition") -> Any:
    """Poll until `check()` returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """`python -m mentor_operator` against the test cluster."""

    def __init__(self, cp: ControlPlane, log_dir: Path, name: str = "operator", extra_args: tuple[str, ...] = ("--standalone",), env: dict | None = None):
        self.cp = cp
        self.log_path = log_dir / f"{name}.log"
        self.extra_args = extra_args
        self.env = {**cp.env, "MENTOR_RETRY_DELAY_SECONDS": "2", **(env or {})}
        self.metrics_port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> "Operator":
        self.metrics_port = free_port()
        env = {**self.env, "MENTOR_METRICS_PORT": str(self.metrics_port)}
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mentor_operator", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        wait_for(self._metrics_up, 60, what=f"operator metrics on :{self.metrics_port} (log: {self.log_path})")
        return self

    def _metrics_up(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> ControlPlane:
    cp = ControlPlane(gpu_nodes=1, cpu_nodes=1)
    cp.start()
    try:
        cp.install_crds([ROOT / "crds", SHARED_CRDS, PEERING_CRDS])
        yield cp
    finally:
        cp.stop()


def operator_kubeconfig(cp: ControlPlane) -> Path:
    """Credentials of the operator's ServiceAccount, bound to the ClusterRole the manifests
    install (the chart's rules are the same): the tested operator holds exactly the rights a
    deployed one does, so a verb missing from the role fails the test that needs it."""
    cp.kubectl("create", "namespace", "mentor-system", check=False)
    cp.apply(OPERATOR_RBAC.read_text())
    return cp.service_account_kubeconfig("mentor-system", "mentor-operator")


@pytest.fixture(scope="session")
def operator(cluster, tmp_path_factory) -> Operator:
    # Watches the t-* namespaces of the `ns` fixture; the peering test uses its own.
    op = Operator(
        cluster,
        tmp_path_factory.mktemp("operator"),
        extra_args=("--standalone", "-n", "t-*"),
        env={"KUBECONFIG": str(operator_kubeconfig(cluster))},
    )
    op.start()
    yield op
    op.stop()


class Namespace:
    """A fresh namespace and helpers to read what the operator did in it."""

    def __init__(self, cp: ControlPlane, name: str):
        self.cp = cp
        self.name = name

    def apply(self, *objects: dict[str, Any]) -> None:
        self.cp.apply([{**o, "metadata": {**o["metadata"], "namespace": self.name}} for o in objects])

    def get(self, kind: str, name: str) -> dict | None:
        result = self.cp.kubectl("get", kind, name, "-n", self.name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, selector: str | None = None) -> list[dict]:
        args = ["get", kind, "-n", self.name] + (["-l", selector] if selector else [])
        return self.cp.kubectl_json(*args)["items"]

    def status(self, kind: str, name: str) -> dict:
        return (self.get(kind, name) or {}).get("status") or {}

    def wait_phase(self, kind: str, name: str, phase: str, timeout: float = 60) -> dict:
        return wait_for(lambda: (s := self.status(kind, name)).get("phase") == phase and s, timeout, what=f"{kind}/{name} phase {phase} (now {self.status(kind, name).get('phase')})")

    def events(self, name: str) -> list[dict]:
        return [e for e in self.items("events") if e["involvedObject"]["name"] == name]


@pytest.fixture
def ns(cluster) -> Namespace:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # every pod the operator's children make passes the real Pod Security admission
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield Namespace(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "mentor.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def pod_annotations(**annotations: str) -> dict[str, Any]:
    """spec.scheduling with kwok steering annotations on the stage's pods."""
    return {"podAnnotations": {f"kwok.mentor.dev/{k.replace('_', '-')}": v for k, v in annotations.items()}}


