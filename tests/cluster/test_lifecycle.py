"""The operator's process lifecycle against a real control plane: a prompt exit on SIGTERM
while busy, and a standby replica taking over from a killed active one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mentor_operator.kube import Kube
from tests.cluster.conftest import Operator, pod_annotations, resource, wait_for

pytestmark = pytest.mark.cluster

BUSY = 300  # FineTuneJobs queued at once: minutes of handler work on a 2-core machine
EXIT_BOUND = 10  # seconds; Kubernetes kills after 30, kopf's own backstop is 20


def namespace(cluster, name: str) -> Kube:
    cluster.kubectl("create", "namespace", name)
    return Kube(str(cluster.kubeconfig), pool_size=16)


def dataset(name: str, ns: str) -> dict:
    body = resource("DomainDataset", name, {"sources": [{"name": "docs", "uri": "s3://bucket/docs/"}],
                                            "scheduling": pod_annotations(run_ms="300")})
    return {**body, "metadata": {"name": name, "namespace": ns}}


def phase(kube: Kube, kind: str, ns: str, name: str) -> str | None:
    return ((kube.get(kind, ns, name) or {}).get("status") or {}).get("phase")


def jobs(kube: Kube, ns: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in kube.list("Job", ns, "batch/v1"))


def test_sigterm_while_busy_exits_promptly_and_a_restart_finishes_the_rest(cluster, tmp_path):
    """SIGTERM with hundreds of reconciles queued: the queued ones are dropped, not run, so
    the process exits well inside Kubernetes' grace period; nothing is recorded for them, so
    the next operator does them all."""
    ns = "lifecycle-busy"
    kube = namespace(cluster, ns)
    operator = Operator(cluster, tmp_path, "busy", ("--standalone", "-n", ns)).start()
    try:
        kube.apply(dataset("corpus", ns))
        wait_for(lambda: phase(kube, "DomainDataset", ns, "corpus") == "Succeeded", 60, what="the dataset")
        # suspended Jobs: the test measures the operator, not kwok running pods
        jobs_spec = {"baseModel": "s3://models/base/", "datasetRef": {"name": "corpus"}, "suspend": True}
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(kube.apply, [{**resource("FineTuneJob", f"ft-{i:03d}", jobs_spec),
                                        "metadata": {"name": f"ft-{i:03d}", "namespace": ns}} for i in range(BUSY)]))
        wait_for(lambda: len(jobs(kube, ns)) >= 10 + 1, 60, interval=0.2, what="the operator to be busy")
        started = time.monotonic()
        operator.process.terminate()
        operator.process.wait(30)
        seconds = time.monotonic() - started
        made = len(jobs(kube, ns)) - 1  # the dataset's Job
        assert seconds < EXIT_BOUND, f"exit took {seconds:.1f}s:\n{operator.log_tail()}"
        assert operator.process.returncode == 0, f"not a graceful exit ({operator.process.returncode}):\n{operator.log_tail()}"
        assert made < BUSY, "the operator finished everything before SIGTERM: it was not busy"

        operator.start()
        wait_for(lambda: len(jobs(kube, ns)) == BUSY + 1, 240, interval=2, what=f"all {BUSY} Jobs after the restart ({made} before)")
        wait_for(lambda: all((f.get("status") or {}).get("phase") == "Suspended"
                             for f in kube.list("FineTuneJob", ns, "mentor.dev/v1alpha1")),
                 120, what="every status after the restart")
    finally:
        operator.kill()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_standby_takes_over_when_the_active_replica_is_killed(cluster, tmp_path):
    """Two peered replicas; kill -9 the active one (no goodbye in the peering object): the
    standby resumes once the dead one's record expires, reconciles what is created after the
    kill, and re-reconciling what the dead one did creates no second Job."""
    ns = "lifecycle-takeover"
    kube = namespace(cluster, ns)
    cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "mentor-takeover", "namespace": ns}})
    args = ("--peering", "mentor-takeover", "-n", ns, "--priority")
    active = Operator(cluster, tmp_path, "active", (*args, "100"))
    standby = Operator(cluster, tmp_path, "standby", (*args, "10"))
    standby.start()
    active.start()
    try:
        wait_for(lambda: "Pausing operations" in standby.log_path.read_text(), 60, what=f"the standby to pause:\n{standby.log_tail()}")
        kube.apply(dataset("before", ns))
        wait_for(lambda: phase(kube, "DomainDataset", ns, "before") == "Succeeded", 60, what="the active replica to finish 'before'")
        assert "Handler 'reconcile' succeeded" not in standby.log_path.read_text()

        active.kill()
        killed = time.monotonic()
        kube.apply(dataset("after", ns))
        wait_for(lambda: phase(kube, "DomainDataset", ns, "after") == "Succeeded", 90, what=f"the standby to finish 'after':\n{standby.log_tail()}")
        # the dead replica's peering record lives 15 s, plus a keep-alive's slack and the run
        assert time.monotonic() - killed < 60
        assert "Resuming operations" in standby.log_path.read_text()
        assert jobs(kube, ns) == ["after-data", "before-data"]
        assert len(kube.list("ConfigMap", ns, "v1", "app.kubernetes.io/managed-by=mentor-operator")) == 2
    finally:
        active.kill()
        standby.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
