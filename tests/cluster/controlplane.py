"""A real Kubernetes control plane for tests, on loopback.

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
(built from Go modules by ``build.sh`` next to this file) on 127.0.0.1 with
random ports, and registers fake nodes that kwok keeps Ready and whose pods it
drives through their lifecycle (see ``kwok-stages.yaml`` for the annotations
that steer a pod: ``kwok.mentor.dev/fail``, ``/hold``, ``/run-ms``)::

    with ControlPlane() as cp:
        cp.install_crds(["../shared/third_party/crds"])
        cp.kubectl("apply", "--server-side", "-f", "-", input=manifest)
        print(cp.kubeconfig)

Only the standard library (and no pytest) is imported at module level, so this
module can be used from fixtures, benchmarks and by hand::

    python tests/cluster/controlplane.py     # prints the kubeconfig path, Ctrl-C stops
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "KubectlError",
    "build_binaries",
    "HERE",
    "BUILD_SCRIPT",
    "DEFAULT_STAGES",
    "FAKE_NODE_ANNOTATION",
]

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
DEFAULT_STAGES = HERE / "kwok-stages.yaml"

#: Annotation (key, value) that makes kwok manage a node.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.0.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)


class ControlPlaneError(RuntimeError):
    """The control plane failed to start, or a wait on it timed out."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        return f"{super().__str__()}\n{(err or '').strip()}"


def build_binaries(quiet: bool = False) -> Path:
    """Run build.sh (a no-op when the binaries are cached) and return the bin dir."""
    env = os.environ.copy()
    res = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
        env=env,
    )
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise ControlPlaneError(
            f"{BUILD_SCRIPT} failed (exit {res.returncode}); run it by hand to see why"
        )
    return Path(lines[-1])


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: SIGKILL the child when the parent dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return "(no log)"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class _Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log


class ControlPlane:
    """A throw-away Kubernetes control plane on 127.0.0.1.

    Args:
        bin_dir: directory with the six binaries; default: ``$MENTOR_K8S_BIN``
            if set, else the output of ``build.sh`` (builds on first use).
        workdir: where certificates, kubeconfig, etcd data and logs go; default:
            a new temp dir, removed by ``stop()``. A given dir is kept.
        gpu_nodes: number of fake GPU nodes ``gpu-node-<i>`` (8 nvidia.com/gpu).
        cpu_nodes: number of fake CPU-only nodes ``cpu-node-<i>``.
        stages: kwok Stage config file(s); default: ``kwok-stages.yaml``.
        start_timeout: seconds ``start()`` may take before it gives up.
        keep_workdir: keep the temp dir after ``stop()`` (for post-mortems).
        verbosity: klog ``-v`` level of the Kubernetes components.
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike | None = None,
        *,
        workdir: str | os.PathLike | None = None,
        gpu_nodes: int = 1,
        cpu_nodes: int = 1,
        stages: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        start_timeout: float = 120.0,
        keep_workdir: bool = False,
        verbosity: int = 0,
    ) -> None:
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self._given_workdir = Path(workdir) if workdir else None
        self.gpu_nodes = gpu_nodes
        self.cpu_nodes = cpu_nodes
        if stages is None:
            stages = [DEFAULT_STAGES]
        elif isinstance(stages, (str, os.PathLike)):
            stages = [stages]
        self.stages = [Path(s) for s in stages]
        self.start_timeout = start_timeout
        self.keep_workdir = keep_workdir
        self.verbosity = verbosity

        self._dir: Path | None = None
        self._procs: dict[str, _Proc] = {}
        self._token = ""
        self._ports: dict[str, int] = {}
        self._ssl: ssl.SSLContext | None = None
        self._started = False
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ API

    @property
    def bin_dir(self) -> Path:
        """Directory holding the binaries (resolved on first use)."""
        if self._bin_dir is None:
            env = os.environ.get("MENTOR_K8S_BIN")
            self._bin_dir = Path(env) if env else build_binaries()
        return self._bin_dir

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise ControlPlaneError("control plane not started")
        return self._dir

    @property
    def kubeconfig(self) -> Path:
        """Path of the admin kubeconfig (token of a system:masters user)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        """API server URL, e.g. ``https://127.0.0.1:34567``."""
        return f"https://127.0.0.1:{self._ports['apiserver']}"

    @property
    def token(self) -> str:
        """Bearer token of the admin user (group system:masters)."""
        return self._token

    @property
    def ca_file(self) -> Path:
        """CA certificate that signed the API server's serving certificate."""
        return self.workdir / "pki" / "ca.crt"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['etcd']}"

    @property
    def logs(self) -> dict[str, Path]:
        """Log file of each component, by name (etcd, kube-apiserver, ...)."""
        return {name: p.log for name, p in self._procs.items()}

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` plus KUBECONFIG pointing at the admin kubeconfig."""
        env = os.environ.copy()
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    @property
    def node_names(self) -> list[str]:
        return [f"gpu-node-{i}" for i in range(self.gpu_nodes)] + [
            f"cpu-node-{i}" for i in range(self.cpu_nodes)
        ]

    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "ControlPlane":
        """Start everything and wait until the cluster can run pods."""
        if self._started:
            return self
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        bin_dir = self.bin_dir
        for b in BINARIES:
            if not os.access(bin_dir / b, os.X_OK):
                raise ControlPlaneError(f"missing binary {bin_dir / b}")
        if self._given_workdir:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self._dir = self._given_workdir
        else:
            self._dir = Path(tempfile.mkdtemp(prefix="mentor-k8s-"))
        self._started = True
        atexit.register(self.stop)
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Kill all components (their process groups) and remove the temp dir."""
        if not self._started:
            return
        self._started = False
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass
        # Clients first, then the API server, then etcd: an API server whose
        # etcd is gone takes seconds to give up.
        for p in list(self._procs.values())[::-1]:
            self._signal(p, signal.SIGTERM)
            try:
                p.popen.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            self._signal(p, signal.SIGKILL)
            try:
                p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._dir is not None and not self._given_workdir and not self.keep_workdir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def kubectl(
        self,
        *args: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess:
        """Run the built kubectl with the admin kubeconfig; output is captured.

        Text in, text out when ``input`` is a str or None; bytes when bytes.
        Raises KubectlError (a CalledProcessError) on a non-zero exit if check.
        """
        cmd = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *map(str, args),
        ]
        res = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=not isinstance(input, bytes),
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise KubectlError(res.returncode, cmd, res.stdout, res.stderr)
        return res

    def kubectl_json(self, *args: str, **kw: Any) -> Any:
        """``kubectl <args> -o json`` parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def apply(self, manifest: str | Mapping | Sequence[Mapping]) -> str:
        """Server-side apply YAML/JSON text or object(s); returns kubectl's output."""
        if not isinstance(manifest, str):
            items = [manifest] if isinstance(manifest, Mapping) else list(manifest)
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return self.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=tests",
            "-f", "-", input=manifest,
        ).stdout

    def install_crds(
        self, paths: Iterable[str | os.PathLike] | str | os.PathLike, timeout: float = 60
    ) -> list[str]:
        """Server-side apply CRD files/dirs and wait until all are Established.

        Directories are searched recursively for *.yaml, *.yml and *.json; a
        directory without any is skipped, a missing path raises
        FileNotFoundError. Returns the CRD names.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        args: list[str] = []
        for p in map(Path, paths):
            if p.is_dir():
                files = sorted(
                    f for f in p.rglob("*")
                    if f.is_file() and f.suffix in (".yaml", ".yml", ".json")
                )
            elif p.exists():
                files = [p]
            else:
                raise FileNotFoundError(p)
            for f in files:
                args += ["-f", str(f)]
        if not args:
            return []
        out = self.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=tests",
            "-o", "name", *args,
        ).stdout
        names = list(dict.fromkeys(
            line.split("/", 1)[1]
            for line in out.split()
            if line.startswith("customresourcedefinition.")
        ))
        if names:
            self.kubectl(
                "wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                *[f"crd/{n}" for n in names],
                timeout=timeout + 30,
            )
            self._wait_served(names, timeout)
        return names

    def _wait_served(self, names: list[str], timeout: float) -> None:
        """Wait until every CRD's resources can be listed: an Established CRD may still answer
        429 "storage is (re)initializing" for a moment, and a controller that starts then
        (kopf's initial listing) can stall on it."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            pending = [n for n in pending if self.kubectl("get", n, "-A", "-o", "name", check=False).returncode != 0]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"CRDs established but not served after {timeout}s: {', '.join(pending)}")
            if pending:
                time.sleep(0.5)

    def create_node(
        self,
        name: str,
        *,
        gpus: int = 0,
        cpu: str = "64",
        memory: str = "512Gi",
        pods: str = "1000",
        labels: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 30,
    ) -> dict:
        """Register a fake node that kwok manages; wait until it is Ready."""
        res = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "1Ti"}
        lab = {
            "type": "kwok",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        if gpus:
            res["nvidia.com/gpu"] = str(gpus)
            lab["nvidia.com/gpu.present"] = "true"
        lab.update(labels or {})
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {
                    FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1],
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": lab,
            },
            "spec": {},
            "status": {"capacity": res, "allocatable": dict(res)},
        }
        created = self._api("POST", "/api/v1/nodes", node)
        if wait:
            self.wait_nodes_ready([name], timeout=timeout)
        return created

    def wait_nodes_ready(self, names: Sequence[str], timeout: float = 30) -> None:
        """Wait until the nodes are Ready and carry no not-ready taint."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while True:
            for name in sorted(pending):
                st, node = self._api_try("GET", f"/api/v1/nodes/{name}")
                if st == 200 and self._node_ready(node):
                    pending.discard(name)
            if not pending:
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"nodes {sorted(pending)} not Ready after {timeout}s\n"
                    + self._log_report("kwok", "kube-controller-manager")
                )
            time.sleep(0.1)

    # ------------------------------------------------------------- internals

    def _start(self, deadline: float) -> None:
        d = self.workdir
        ports = _free_ports(5)
        self._ports = dict(zip(["etcd", "etcd-peer", "apiserver", "kcm", "scheduler"], ports))
        self._token = secrets.token_hex(24)
        self._make_pki(d / "pki")
        pki = d / "pki"
        (d / "tokens.csv").write_text(f'{self._token},admin,admin-uid,"system:masters"\n')
        (d / "tokens.csv").chmod(0o600)
        self._write_kubeconfig(self.kubeconfig)
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        v = f"--v={self.verbosity}"

        etcd_port, peer = self._ports["etcd"], self._ports["etcd-peer"]
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self._ports['apiserver']}",
                f"--cert-dir={d / 'apiserver'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # 127.0.0.1 is not a valid Endpoints address for the
                # "kubernetes" Service; nothing in tests needs it.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--allow-privileged=true",
                "--profiling=false",
                v,
            ],
        )
        self._wait_http(
            "kube-apiserver", f"{self.server}/readyz", deadline, auth=True, ctx=self._ssl
        )

        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self._ports['kcm']}",
                f"--cert-dir={d / 'kcm'}",
                "--leader-elect=false",
                "--controllers=*",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                "--use-service-account-credentials=false",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-job-syncs=20",
                "--concurrent-cron-job-syncs=10",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--profiling=false",
                v,
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self._ports['scheduler']}",
                f"--cert-dir={d / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
                v,
            ],
        )
        kwok_home = d / "kwok-home"
        kwok_home.mkdir(exist_ok=True)
        kwok_args = [
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector="
            f"{FAKE_NODE_ANNOTATION[0]}={FAKE_NODE_ANNOTATION[1]}",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
        ]
        for s in self.stages:
            kwok_args.append(f"--config={s}")
        # HOME/KWOK_WORKDIR: keep a user's ~/.kwok/kwok.yaml out of it.
        self._spawn(
            "kwok",
            kwok_args,
            env={"HOME": str(kwok_home), "KWOK_WORKDIR": str(kwok_home)},
        )

        for name in self.node_names:
            gpus = 8 if name.startswith("gpu-") else 0
            self.create_node(name, gpus=gpus, wait=False)

        # The default ServiceAccount comes from the controller-manager; the
        # admission plugin rejects pods until it exists.
        while True:
            st, _ = self._api_try("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            if st == 200:
                break
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    "default ServiceAccount not created\n"
                    + self._log_report("kube-controller-manager")
                )
            time.sleep(0.1)
        self.wait_nodes_ready(self.node_names, timeout=max(1.0, deadline - time.monotonic()))
        self._wait_http(
            "kube-scheduler",
            f"https://127.0.0.1:{self._ports['scheduler']}/readyz",
            deadline,
            ctx=ssl._create_unverified_context(),
        )

    def _make_pki(self, pki: Path) -> None:
        pki.mkdir(parents=True, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def openssl(*args: str) -> None:
            res = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=pki)
            if res.returncode != 0:
                raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{res.stderr}")

        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "3650", "-subj", "/CN=mentor-test-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        san = ",".join([
            "IP:127.0.0.1", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ])
        openssl("req", "-x509", *ec, "-CA", "ca.crt", "-CAkey", "ca.key",
                "-keyout", "apiserver.key", "-out", "apiserver.crt", "-days", "3650",
                "-subj", "/CN=kube-apiserver",
                "-addext", f"subjectAltName={san}",
                "-addext", "basicConstraints=critical,CA:FALSE",
                "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
                "-addext", "extendedKeyUsage=serverAuth")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-out", "sa.key")
        openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        for f in ("ca.key", "apiserver.key", "sa.key"):
            (pki / f).chmod(0o600)

    def service_account_kubeconfig(self, namespace: str, name: str, hours: int = 12) -> Path:
        """A kubeconfig with a token of the (existing) ServiceAccount namespace/name."""
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={hours}h").stdout.strip()
        path = self.workdir / f"{namespace}-{name}.kubeconfig"
        self._write_kubeconfig(path, name, token)
        return path

    def _write_kubeconfig(self, path: Path, user: str = "admin", token: str | None = None) -> None:
        # JSON is YAML; no dependency needed.
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mentor-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.ca_file),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token or self._token}}],
            "contexts": [
                {
                    "name": "mentor-test",
                    "context": {"cluster": "mentor-test", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "mentor-test",
        }
        path.write_text(json.dumps(cfg, indent=2))
        path.chmod(0o600)

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        full_env = os.environ.copy()
        full_env.pop("KUBECONFIG", None)
        full_env.update(env or {})
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=full_env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._procs[name] = _Proc(name, popen, log)

    @staticmethod
    def _signal(p: _Proc, sig: int) -> None:
        # Only while the group leader is unreaped, so the id cannot be reused.
        if p.popen.poll() is not None:
            return
        try:
            os.killpg(p.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _check_alive(self) -> None:
        for p in self._procs.values():
            rc = p.popen.poll()
            if rc is not None:
                raise ControlPlaneError(
                    f"{p.name} exited with code {rc}; log {p.log}:\n{_tail(p.log)}"
                )

    def _log_report(self, *names: str) -> str:
        out = []
        for n in names:
            p = self._procs.get(n)
            if p:
                out.append(f"--- {n} ({p.log}):\n{_tail(p.log)}")
        return "\n".join(out)

    def _wait_http(
        self, name: str, url: str, deadline: float, *, auth: bool = False, ctx: ssl.SSLContext
    ) -> None:
        last = ""
        while True:
            req = urllib.request.Request(url)
            if auth:
                req.add_header("Authorization", f"Bearer {self._token}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[-2000:].decode(errors='replace')}"
            except (OSError, ssl.SSLError) as e:
                last = repr(e)
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not ready at {url}: {last}\n" + self._log_report(name)
                )
            time.sleep(0.1)

    def _api_try(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"null")
            except ValueError:
                return e.code, None
        except (OSError, ssl.SSLError) as e:
            return 0, repr(e)

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        st, obj = self._api_try(method, path, body)
        if not 200 <= st < 300:
            raise ControlPlaneError(f"{method} {path}: HTTP {st}: {obj}")
        return obj

    @staticmethod
    def _node_ready(node: Mapping) -> bool:
        conds = (node.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        taints = (node.get("spec") or {}).get("taints") or []
        tainted = any(
            t.get("key") in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
            for t in taints
        )
        return ready and not tainted


def _main(argv: Sequence[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir")
    ap.add_argument("--workdir", help="keep everything here instead of a temp dir")
    ap.add_argument("--crds", nargs="*", default=[], help="CRD files/dirs to install")
    ap.add_argument("--gpu-nodes", type=int, default=1)
    ap.add_argument("--cpu-nodes", type=int, default=1)
    ap.add_argument("-v", "--verbosity", type=int, default=0)
    a = ap.parse_args(argv)
    cp = ControlPlane(
        a.bin_dir, workdir=a.workdir, gpu_nodes=a.gpu_nodes, cpu_nodes=a.cpu_nodes,
        verbosity=a.verbosity,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cp:
        if a.crds:
            cp.install_crds(a.crds)
        print(f"started in {cp.startup_seconds:.1f}s; logs in {cp.workdir}", file=sys.stderr)
        print(f"export KUBECONFIG={cp.kubeconfig}", file=sys.stderr)
        print(cp.kubeconfig, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
