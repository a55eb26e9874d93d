"""Find and start the real ``tritonserver`` that the ``nvidia-pytriton`` wheel ships.

Only the wheel's files are used (never pytriton's Python API, whose dependencies are not
installed): ``pytriton/tritonserver/bin/tritonserver``, the python backend
(``backends/python/``), the backend stub built for this Python
(``python_backend_stubs/3.11/triton_python_backend_stub``) and the bundled shared libraries
(``nvidia_pytriton.libs/``).

How it runs:

- a private backend directory (under the caller's work directory) holds the python backend with
  the stub for this interpreter's version beside it, which is where the backend looks for it;
- ``LD_LIBRARY_PATH`` puts this interpreter's ``libpython3.X.so`` first (the stub links it, and
  the system's copy may be another patch release) and then the bundled libraries;
- the stub embeds Python in isolated mode (``PYTHONPATH`` is ignored) and finds its
  interpreter by looking ``python3`` up on ``PATH``; ``PATH`` therefore starts with a small
  virtualenv made for it in the work directory (``stub-env/``: ``pyvenv.cfg``, ``bin/python3``
  pointing at this interpreter, a ``.pth`` file). Through it the stub sees this environment's
  site-packages (torch, transformers), with one exception in front: the stub is built with a
  pybind11 that reads NumPy 1.x's array layout (the wheel requires ``numpy<2``; under NumPy 2
  the stub misreads every BYTES tensor and dies), so NumPy 1.26 comes first, installed once
  with uv into the cache (``$MENTOR_CACHE/bin/triton-stub-numpy-...``) like the other
  binaries the tests need (``MENTOR_TRITON_STUB_SITE`` names a ready one instead);
- HTTP, gRPC and metrics on free loopback ports, python backend shared memory kept small and
  named with a per-server prefix; :meth:`TritonServer.stop` sends SIGINT (a clean shutdown
  within ``--exit-timeout-secs``, once clients have closed their keep-alive connections), then
  kills what is left of the process group and removes the prefix's shared-memory regions.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PY_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
STUB_NUMPY = "1.26.4"  # the newest NumPy 1.x; the stub's pybind11 predates NumPy 2


class TritonUnavailable(RuntimeError):
    """The wheel, its binary or its stub for this Python is not installed here."""


@dataclass(frozen=True)
class TritonDist:
    root: Path  # .../site-packages/pytriton/tritonserver
    binary: Path
    backend: Path  # backends/python
    stub: Path
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @classmethod
    def locate(cls) -> "TritonDist":
        spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise TritonUnavailable("nvidia-pytriton is not installed (the dev extra ships it)")
        package = Path(list(spec.submodule_search_locations)[0])
        root = package / "tritonserver"
        dist = cls(
            root=root,
            binary=root / "bin" / "tritonserver",
            backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub",
            libs=package.parent / "nvidia_pytriton.libs",
        )
        for path in (dist.binary, dist.backend / "libtriton_python.so", dist.stub):
            if not path.exists():
                raise TritonUnavailable(f"{path} is missing from the nvidia-pytriton wheel")
        return dist


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("MENTOR_CACHE") or Path(base) / "mentor")


def _uv() -> list[str]:
    """uv as .ci/env.sh installs it (the cache's tools/), else one on PATH, else pip."""
    tools = sorted((cache_root() / "tools").glob("uv-*/bin/uv"))
    if tools:
        return [str(tools[-1]), "pip", "install", "--python", sys.executable]
    if shutil.which("uv"):
        return [shutil.which("uv"), "pip", "install", "--python", sys.executable]
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]


def stub_site_packages() -> Path:
    """A directory with NumPy 1.x alone, put first on the stubs' PYTHONPATH (see above)."""
    given = os.environ.get("MENTOR_TRITON_STUB_SITE")
    if given:
        return Path(given)
    target = cache_root() / "bin" / f"triton-stub-numpy-{STUB_NUMPY}-py{PY_VERSION}"
    if (target / "numpy" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        subprocess.run(
            [*_uv(), "--quiet", "--no-deps", "--target", str(tmp), f"numpy=={STUB_NUMPY}"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=600,
        )
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "numpy" / "__init__.py").is_file():  # not another process's finished copy
                raise
    except subprocess.CalledProcessError as err:
        raise TritonUnavailable(
            f"cannot install numpy=={STUB_NUMPY} for the tritonserver stub: {err.stderr.decode(errors='replace')}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TritonServer:
    """One ``tritonserver`` process over a model repository; a context manager."""

    model_repository: Path
    work_dir: Path
    shm_bytes: int = 4 * 1024 * 1024
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    shm_prefix: str = ""
    returncode: int | None = None  # the server's exit status once stopped (0: a clean shutdown)
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "tritonserver.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def command(self, dist: TritonDist) -> list[str]:
        backends = self.work_dir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            link = python_backend / name
            if not link.exists():
                link.symlink_to(dist.backend / name)
        stub = python_backend / "triton_python_backend_stub"
        if not stub.exists():
            shutil.copy2(dist.stub, stub)
        return [
            str(dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist.root / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=15",  # not 30 s of waiting on a client's idle keep-alive connection
            "--log-verbose=0",
            f"--backend-config=python,shm-default-byte-size={self.shm_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.shm_bytes}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def stub_env(self) -> Path:
        """The virtualenv the python backend stub runs in (see the module's docstring)."""
        env = self.work_dir / "stub-env"
        site = env / "lib" / f"python{PY_VERSION}" / "site-packages"
        site.mkdir(parents=True, exist_ok=True)
        (env / "bin").mkdir(exist_ok=True)
        base = Path(sys.base_prefix) / "bin" / f"python{PY_VERSION}"
        for name in ("python3", "python"):
            link = env / "bin" / name
            if not link.is_symlink():
                link.symlink_to(base)
        (env / "pyvenv.cfg").write_text(
            f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {PY_VERSION}\n", encoding="utf-8"
        )
        ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
        (site / "mentor-stub.pth").write_text("\n".join([str(stub_site_packages()), *ours]) + "\n", encoding="utf-8")
        return env

    def env(self, dist: TritonDist) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        paths = [p for p in (libdir, str(dist.libs), env.get("LD_LIBRARY_PATH", "")) if p]
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        env["PATH"] = f"{self.stub_env() / 'bin'}:{env.get('PATH', '')}"
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.pop("PYTHONHOME", None)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 240.0) -> "TritonServer":
        dist = TritonDist.locate()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.shm_prefix = f"mentor_triton_{os.getpid()}_{self.http_port}_"
        command = self.command(dist)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env(dist),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,  # its stubs die with its process group
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"tritonserver exited ({code}) before ready:\n{self.log()[-6000:]}")
            if self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log()[-6000:]}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Triton's graceful shutdown
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.returncode = process.poll()
        # the python backend stubs run in the server's session (own process group)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if process.poll() is None:
            process.wait(10)
        # a stub killed before it could clean up leaves its shared-memory region behind
        if self.shm_prefix:
            for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
