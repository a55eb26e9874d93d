"""Operator scale benchmark (not a timed test): N FineTuneJobs applied at once against the
real control plane; seconds until every Job exists and every status is set, the operator's
peak RSS, and — as the physical limit — the raw create rate of the same API server measured
in the same run.

    make bench-operator            # N=1000
    python bench/operator_scale.py --n 200

Target (DESIGN.md section 5): <= 30 s for 1,000 and RSS <= 150 MB; anchor: a
controller-runtime operator reconciles 1,000 CRs in ~39 s on kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster.controlplane import ControlPlane  # noqa: E402

from mentor_operator.kube import Kube  # noqa: E402

NAMESPACE = "bench"
THREADS = 16
GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def create_all(kube: Kube, objects: list[dict]) -> float:
    """Create objects with THREADS parallel clients; returns seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(kube.apply, objects))
    return time.perf_counter() - started


def raw_create_rate(kube: Kube, n: int) -> float:
    """Jobs/s the API server accepts from plain parallel creates (no operator): the ceiling."""
    jobs = [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"raw-{i}", "namespace": NAMESPACE},
            "spec": {
                "suspend": True,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
            },
        }
        for i in range(n)
    ]
    seconds = create_all(kube, jobs)
    kube.request("DELETE", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", query=[("labelSelector", ""), ("propagationPolicy", "Background")])
    return n / seconds


def finetune_job(i: int) -> dict:
    return {
        "apiVersion": "mentor.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"ftj-{i:04d}", "namespace": NAMESPACE},  # -1: the warm-up job
        "spec": {
            "baseModel": "s3://models/base/",
            "datasetRef": {"name": "corpus"},
            # a suspended Job: the benchmark measures the operator, not kwok running 1,000 pods
            "suspend": True,
        },
    }


def stop(operator: subprocess.Popen) -> float | None:
    """SIGTERM, as Kubernetes stops a pod; seconds to exit, or None past the grace period
    (then SIGKILL, as the kubelet would)."""
    started = time.perf_counter()
    operator.terminate()
    try:
        operator.wait(GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait()
        return None
    return time.perf_counter() - started


def report(args: argparse.Namespace, figures: dict, log: Path) -> int:
    n, done = args.n, figures["done"]
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "n": n}))
    print(f"applied {n} FineTuneJobs in {figures['create_seconds']:.1f}s (client side, {THREADS} threads)")
    print(f"operator peak RSS: {figures['peak_rss']:.0f} MB  (target <= 150 MB)")
    raw_rate = figures["raw_rate"]
    print(f"raw API server create rate, same run: {raw_rate:.0f} Jobs/s -> {n / raw_rate:.1f}s for {n} Jobs alone")
    if done is None:
        print(f"NOT DONE within {args.timeout}s; operator log: {log}")
        return 1
    cpu = figures["operator_cpu"]
    print(f"all Jobs created and every status set: {done:.1f}s  (target <= 30 s; controller-runtime anchor ~39 s on kind)")
    print(f"operator CPU: {cpu:.1f} s for {n} resources ({cpu / n * 1000:.1f} ms each); "
          f"the API server, etcd, controllers and the client share the other {2 * done - cpu:.0f} core-seconds")
    print(f"operator: {n / done:.0f} resources/s = {(n / done) / raw_rate:.2f} of the raw Job create rate")
    return 0


def measure(args: argparse.Namespace, kube: Kube, operator: subprocess.Popen, log: Path) -> dict:
    """Warm up, apply N FineTuneJobs, poll until every Job and status is there."""
    peak = [0.0]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set() and operator.poll() is None:
            peak[0] = max(peak[0], rss_peak_mb(operator.pid))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    if os.environ.get("MENTOR_BENCH_PROFILE"):  # e.g. py-spy record --pid {pid} -o flame.txt -f raw
        subprocess.Popen(os.environ["MENTOR_BENCH_PROFILE"].format(pid=operator.pid), shell=True)
    # Warm-up: the clock starts once the operator handles resources (watches up, CRDs served).
    kube.apply(finetune_job(-1))
    while not kube.get("Job", NAMESPACE, "ftj--001-sft", "batch/v1"):
        if operator.poll() is not None:
            raise SystemExit(f"operator exited; log: {log}")
        time.sleep(0.2)
    cpu_before = cpu_seconds(operator.pid)
    started = time.perf_counter()
    create_seconds = create_all(kube, [finetune_job(i) for i in range(args.n)])
    done = None
    while time.perf_counter() - started < args.timeout:
        jobs = kube.list("Job", NAMESPACE, "batch/v1", "mentor.dev/kind=FineTuneJob")
        ftjs = kube.request("GET", f"/apis/mentor.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs")["items"]
        with_status = sum(1 for f in ftjs if (f.get("status") or {}).get("phase") == "Suspended")
        if len(jobs) >= args.n + 1 and with_status >= args.n + 1:
            done = time.perf_counter() - started
            break
        print(f"  {time.perf_counter() - started:6.1f}s: {len(jobs)} Jobs, {with_status} statuses", file=sys.stderr, flush=True)
        time.sleep(1)
    stop_sampling.set()
    return {"create_seconds": create_seconds, "done": done, "peak_rss": max(peak[0], rss_peak_mb(operator.pid)),
            "operator_cpu": cpu_seconds(operator.pid) - cpu_before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="FineTuneJobs to apply (default 1000).")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    with ControlPlane(gpu_nodes=1, cpu_nodes=0) as cp:
        cp.install_crds([ROOT / "crds"])
        cp.kubectl("create", "namespace", NAMESPACE)
        kube = Kube(str(cp.kubeconfig), pool_size=THREADS * 2)
        print("measuring the raw create rate", file=sys.stderr, flush=True)
        raw_rate = raw_create_rate(Kube(str(cp.kubeconfig), pool_size=THREADS * 2), min(args.n, 500))

        # The dataset every job references, already succeeded.
        kube.apply({"apiVersion": "mentor.dev/v1alpha1", "kind": "DomainDataset", "metadata": {"name": "corpus", "namespace": NAMESPACE},
                    "spec": {"sources": [{"name": "s", "uri": "s3://b/k/"}], "suspend": True}})
        kube.patch_status("DomainDataset", NAMESPACE, "corpus", {"phase": "Succeeded", "outputUri": "s3://b/corpus/"})

        log = Path(tempfile.mkdtemp()) / "operator.log"
        env = {**cp.env, "MENTOR_METRICS_PORT": "0"}
        operator = subprocess.Popen(
            [sys.executable, "-m", "mentor_operator", "--standalone", "-n", NAMESPACE],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        try:
            figures = measure(args, kube, operator, log)
            code = report(args, {**figures, "raw_rate": raw_rate}, log)
        finally:
            # Measured and printed first: a slow exit is a figure, never a lost run.
            seconds = stop(operator)
        exit_figure = f"{seconds:.1f}s" if seconds is not None else f"still running after {GRACE_SECONDS}s, killed"
        print(f"operator exit after SIGTERM: {exit_figure}  (Kubernetes kills after {GRACE_SECONDS} s by default)")
    return code


if __name__ == "__main__":
    sys.exit(main())
