"""The real `mentor-trainer serve` as a subprocess on free loopback ports, for tests and the
benchmark. The test process never imports kserve (its protobuf symbols clash with
tritonclient.grpc's when both load in one process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_config(name: str, model_dir: Path, out_dir: Path, **fields) -> dict:
    """A ServeStageConfig (wire form) for ``model_dir`` on two free ports; ``fields`` override."""
    config = {
        "run": {"kind": "ModelDeployment", "name": name, "namespace": "tests"},
        "outputUri": Path(out_dir).as_uri(),
        "modelUri": Path(model_dir).as_uri(),
        "httpPort": free_port(),
        "grpcPort": free_port(),
        "logging": {"enabled": False},
    }
    config.update(fields)
    return config


class MentorServer:
    """``python -m mentor_trainer.cli serve --config FILE`` until :meth:`stop`."""

    def __init__(self, config: dict, workdir: Path, *, threads: int = 1, env: dict | None = None):
        self.config = config
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = self.workdir / "serve.json"
        self.config_file.write_text(json.dumps(config))
        self.termination_log = self.workdir / "termination-log"
        self.log_file = self.workdir / "server.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "trainer_image"), str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
            "MENTOR_TERMINATION_LOG": str(self.termination_log),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def name(self) -> str:
        return self.config["run"]["name"]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config['httpPort']}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.config['httpPort']}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.config['grpcPort']}"

    def start(self, timeout: float = 180.0, wait: bool = True) -> "MentorServer":
        self._log = open(self.log_file, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mentor_trainer.cli", "serve", "--config", str(self.config_file)],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/v2/models/{self.name}/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()[-4000:]}")

    def wait(self, timeout: float) -> int:
        self.returncode = self.process.wait(timeout)
        self._log.close()
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.wait(10)
            raise

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=10) as response:
            return response.read().decode()

    def __enter__(self) -> "MentorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in Prometheus text exposition (``None`` if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        found = {key: raw.strip('"') for key, raw in found.items()}
        if all(found.get(key) == wanted for key, wanted in (labels or {}).items()):
            return float(value)
    return None
