"""A real MinIO server on loopback for tests (stdlib only, apart from `make_bucket`).

    with MinioServer(binary) as server:
        server.make_bucket("datasets")
        env = server.env()  # MENTOR_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ... for mentor_trainer.storage

The server listens on 127.0.0.1 at a free port, keeps its data in a temporary directory and
runs with random root credentials; `stop()` (or leaving the `with` block) kills it and removes
the data. Its log goes to `<data dir's parent>/minio.log` and is quoted when it fails to start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

_ALPHABET = string.ascii_letters + string.digits


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MinioServer:
    """`minio server` on 127.0.0.1:<free port> with a temporary data directory."""

    def __init__(self, binary: str | os.PathLike, start_timeout: float = 60.0, workdir: str | os.PathLike | None = None):
        self.binary = str(binary)
        self.start_timeout = start_timeout
        self.access_key = "mentor-" + _random(12)
        self.secret_key = _random(32)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mentor-minio-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "minio.log"

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MinioServer":
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"MinIO binary {self.binary} is not executable (build it with tests/storage/build-minio.sh)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A free port can be taken between probing and binding: try a few.
        last_error = ""
        for _ in range(5):
            self.port = free_port()
            console_port = free_port()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.workdir),
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_CI_CD": "on",  # a test data dir on the root disk is fine
                "MINIO_PROMETHEUS_AUTH_TYPE": "public",
            }
            log = open(self.log_path, "ab")
            try:
                self.process = subprocess.Popen(
                    [self.binary, "server", "--quiet", "--address", f"127.0.0.1:{self.port}",
                     "--console-address", f"127.0.0.1:{console_port}", str(self.data_dir)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True,
                )
            finally:
                log.close()
            try:
                self._wait_ready()
                return self
            except _Exited as error:
                last_error = str(error)
                if "address already in use" not in last_error.lower():
                    break
        self.stop()
        raise RuntimeError(f"MinIO did not start: {last_error}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        url = f"{self.endpoint}/minio/health/ready"
        while True:
            code = self.process.poll()
            if code is not None:
                raise _Exited(f"exited with {code}; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"MinIO not ready at {url} after {self.start_timeout}s; log:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(10)

    def stop(self) -> None:
        """Stop the server and remove its data (the port is closed afterwards)."""
        self._kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "MinioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------------
    # What storage.py reads besides these, and what a test environment must therefore NOT
    # inherit from the caller's: AWS_SESSION_TOKEN (would be sent with the root credentials),
    # AWS_REGION (set, it skips the GetBucketLocation look-up the operator's pods do).
    UNSET = ("AWS_SESSION_TOKEN", "AWS_REGION")

    def env(self) -> dict[str, str]:
        """What mentor_trainer.storage reads to reach this server (as the operator sets it in
        a pod: the endpoint and the credentials; no region)."""
        return {
            "MENTOR_S3_ENDPOINT": self.endpoint,
            "MENTOR_S3_SECURE": "false",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def process_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with env() applied and UNSET removed: for subprocesses."""
        merged = {k: v for k, v in (os.environ if base is None else base).items() if k not in self.UNSET}
        merged.update(self.env())
        return merged

    def client(self):
        from minio import Minio

        return Minio(f"127.0.0.1:{self.port}", access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def make_bucket(self, name: str) -> str:
        """Create a bucket (no error if it exists); returns its name."""
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return name


class _Exited(RuntimeError):
    pass
