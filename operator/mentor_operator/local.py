"""`mentor run`: the same resource files, models, resolution and rendered configs as on a
cluster, with each stage run as a local process in dependency order, artifacts under a
file:// root and MLflow on SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from .api import KINDS
from .builders import render_export_config, render_serve_config
from .builders.config import output_uri, render_stage_config
from .builders.inputs import resolve_inputs
from .builders.uris import uri_problems
from .resources import Document
from .settings import Settings
from .status import TERMINAL_PHASES, now, parse_result, result_status


READY_TIMEOUT_SECONDS = 300


def _wait_ready(url: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    return False


def example_call(url: str, request: dict[str, Any]) -> str:
    """One chat request to the served model: its answer and what it retrieved, for the console."""
    call = urllib.request.Request(
        f"{url}/v1/chat/completions", data=json.dumps(request).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(call, timeout=300) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError) as error:
        return f"the example request failed: {error}"
    text = " ".join(answer["choices"][0]["message"]["content"].split())
    retrieved = ", ".join(r["id"].rsplit("/", 1)[-1] for r in (answer.get("mentor") or {}).get("retrieved") or [])
    return f"Q: {request['messages'][0]['content']}\n      A: {text[:300]}" + (f"\n      retrieved: {retrieved}" if retrieved else "")


@dataclass
class Server:
    """A mentor runtime serving on localhost."""

    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        """Gracefully: the server flushes its payload logs on SIGTERM."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def read_progress(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or mid-replace
        return {}


@dataclass
class StepResult:
    kind: str
    name: str
    phase: str
    message: str = ""
    seconds: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)


def absolute_file_uris(value: Any, base: Path) -> Any:
    """file:// URIs without a leading "/" are relative to the resource file's directory, so
    an example runs from any working directory."""
    if isinstance(value, dict):
        return {k: absolute_file_uris(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [absolute_file_uris(v, base) for v in value]
    if isinstance(value, str) and value.startswith("file://") and not value.startswith("file:///"):
        relative = value[len("file://") :]
        resolved = (base / relative).resolve()
        return resolved.as_uri() + ("/" if relative.endswith("/") else "")
    return value


class LocalExecutor:
    def __init__(
        self,
        root: Path,
        out: TextIO | None = None,
        python: str = sys.executable,
        serve_seconds: float | None = 0,
        serve_port: int = 8080,
        example_question: str = "What can you tell me about this domain?",
        keep_serving: bool = False,
    ):
        self.root = root.resolve()
        self.out = out or sys.stdout
        self.python = python
        # A ModelDeployment is exported, served, asked `example_question`, then kept serving
        # this long (None: until Ctrl-C; 0: stopped right after the example).
        self.serve_seconds = serve_seconds
        self.serve_port = serve_port
        self.example_question = example_question
        # keep_serving: a served ModelDeployment stays up after its example (in self.servers,
        # by name) until the caller stops it, instead of serving for serve_seconds
        self.keep_serving = keep_serving
        self.servers: dict[str, Server] = {}
        self.settings = Settings(
            artifact_root=(self.root / "artifacts").as_uri(),
            mlflow_tracking_uri=f"sqlite:///{self.root / 'mlflow.db'}",
        )
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {}

    def lookup(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.bodies.get((kind, name))

    def run(self, documents: list[Document], on_step: Callable[[StepResult], None] | None = None) -> list[StepResult]:
        """Run every resource (already validated and ordered); a failure stops its dependents."""
        (self.root / "configs").mkdir(parents=True, exist_ok=True)
        results = []
        for doc in documents:
            result = self.run_one(doc)
            results.append(result)
            if on_step:
                on_step(result)
        return results

    def _body(self, doc: Document) -> dict[str, Any]:
        meta = doc.body.get("metadata") or {}
        return {
            "apiVersion": doc.body["apiVersion"],
            "kind": doc.kind,
            "metadata": {"name": doc.name, "namespace": meta.get("namespace", "default"), "uid": "local", "generation": 1},
            "spec": absolute_file_uris(doc.body["spec"], doc.path.parent.resolve()),
            "status": {},
        }

    def run_one(self, doc: Document, model_version: str | None = None) -> StepResult:
        """Run one resource whose inputs have run; a ModelDeployment serves `model_version`
        instead of the model its spec resolves to when given (a retraining's candidate)."""
        body = self._body(doc)
        self.bodies[(doc.kind, doc.name)] = body
        api = KINDS[doc.kind]
        spec = api.spec.model_validate(body["spec"])
        started = time.perf_counter()
        resolution = resolve_inputs(doc.kind, body["spec"], self.lookup)
        if not resolution.ready:
            return self._finish(body, "Failed", "; ".join(resolution.blocked or resolution.waiting), started)
        out = output_uri(spec, body, self.settings)
        problems = uri_problems(spec, body, resolution.values, out, self.settings, cluster=False)
        if problems:
            return self._finish(body, "Failed", "; ".join(problems), started)
        body["status"].update(phase="Running", startTime=now(), outputUri=out, **resolution.status)
        stage = api.info.stage
        model = model_version or resolution.values.get("model_uri")
        if api.workload == "serving":
            config = render_export_config(body, spec, model, resolution.values, self.settings)
        else:
            config = render_stage_config(spec, body, resolution.values, self.settings, stage)
        ok, message = self.run_stage(doc, stage, config)
        if not ok:
            return self._finish(body, "Failed", message, started)
        status = result_status(api, parse_result(message), out, body["status"].get("conditions"), body["metadata"].get("generation"))
        body["status"].update(status)
        if api.workload == "serving":
            body["status"]["modelVersion"] = model
            if spec.runtime != "mentor":
                return self._finish(body, "Succeeded", f"exported for the {spec.runtime} runtime; only the mentor runtime serves locally", started)
            serve_config = render_serve_config(body, spec, model, resolution.values, self.settings)
            ok, message = self._serve(doc, body, serve_config.model_copy(update={"http_port": self.serve_port, "grpc_port": self.serve_port + 1}))
            if not ok:
                return self._finish(body, "Failed", message, started)
        return self._finish(body, "Succeeded", status.get("message", ""), started)

    def _serve(self, doc: Document, body: dict[str, Any], config: Any) -> tuple[bool, str]:
        """Start the mentor runtime on localhost, say how to call it, keep it up for
        serve_seconds (None: until Ctrl-C), then stop it gracefully (or leave it up:
        keep_serving)."""
        config_path = self.root / "configs" / f"{doc.kind.lower()}-{doc.name}-serve.json"
        config_path.write_text(json.dumps(config.to_wire(), indent=2, sort_keys=True))
        url = f"http://127.0.0.1:{config.http_port}"
        self.out.write(f"==> {doc.kind}/{doc.name}: mentor-trainer serve --config {config_path}\n")
        self.out.flush()
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.settings.mlflow_tracking_uri}
        process = subprocess.Popen([self.python, "-m", "mentor_trainer.cli", "serve", "--config", str(config_path)], env=env)
        server, kept = Server(process, url), False
        try:
            if not _wait_ready(f"{url}/v2/health/ready", process, READY_TIMEOUT_SECONDS):
                return False, f"the server did not become ready within {READY_TIMEOUT_SECONDS}s (exit code {process.poll()})"
            body["status"]["url"] = url
            request = {"model": doc.name, "messages": [{"role": "user", "content": self.example_question}], "max_tokens": 48}
            self.out.write(
                f"    [{doc.name}] serving at {url} (OpenAI: {url}/v1, Open Inference Protocol v2: {url}/v2)\n"
                f"    [{doc.name}] try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{json.dumps(request)}'\n"
            )
            self.out.write(f"    [{doc.name}] {example_call(url, request)}\n")
            self.out.flush()
            if self.keep_serving:
                self.servers[doc.name], kept = server, True
                return True, ""
            process.wait(timeout=self.serve_seconds)
        except subprocess.TimeoutExpired:
            pass  # served as long as asked
        except KeyboardInterrupt:
            self.out.write(f"    [{doc.name}] stopping\n")
        finally:
            if not kept:
                server.stop()
        return True, ""

    def run_stage(self, doc: Document, stage: str, config: Any) -> tuple[bool, str]:
        """Run one stage of `doc` as a process, its output prefixed with the name; (ok, the
        result JSON or the failure)."""
        config_path = self.root / "configs" / f"{doc.kind.lower()}-{doc.name}-{stage}.json"
        progress = config_path.with_suffix(".progress.json")
        progress.unlink(missing_ok=True)
        config = config.model_copy(update={"progress_file": str(progress)})
        config_path.write_text(json.dumps(config.to_wire(), indent=2, sort_keys=True))
        termination = config_path.with_suffix(".result")
        termination.unlink(missing_ok=True)
        env = {**os.environ, "MENTOR_TERMINATION_LOG": str(termination), "MLFLOW_TRACKING_URI": self.settings.mlflow_tracking_uri}
        self.out.write(f"==> {doc.kind}/{doc.name}: mentor-trainer {stage} --config {config_path}\n")
        self.out.flush()
        process = subprocess.Popen(
            [self.python, "-m", "mentor_trainer.cli", stage, "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        shown: dict[str, Any] = {}
        next_check = 0.0
        for line in process.stdout:
            self.out.write(f"    [{doc.name}] {line}")
            if time.monotonic() >= next_check:  # stages rewrite the file at most once a second
                next_check = time.monotonic() + 1.0
                shown = self._show_progress(doc.name, progress, shown)
            self.out.flush()
        code = process.wait()
        self.bodies[(doc.kind, doc.name)]["status"]["progress"] = self._show_progress(doc.name, progress, shown)
        message = termination.read_text() if termination.exists() else ""
        if code != 0:
            return False, message or f"mentor-trainer {stage} exited with code {code}"
        return True, message

    def _show_progress(self, name: str, path: Path, shown: dict[str, Any]) -> dict[str, Any]:
        """One line whenever the stage's step or phase moved (what `kubectl get` would show);
        returns the latest progress."""
        current = read_progress(path) or shown
        moved = current.get("step") != shown.get("step") or current.get("phase") != shown.get("phase")
        if moved and current.get("totalSteps"):
            parts = [f"step {current.get('step')}/{current['totalSteps']}"]
            parts += [f"{label} {current[key]}" for key, label in (("loss", "loss"), ("evalLoss", "eval loss"), ("etaSeconds", "eta s")) if current.get(key) is not None]
            self.out.write(f"    [{name}] progress: {', '.join(parts)}\n")
        return current

    def _finish(self, body: dict[str, Any], phase: str, message: str, started: float) -> StepResult:
        assert phase in TERMINAL_PHASES
        body["status"].update(phase=phase, message=message, completionTime=now())
        result = StepResult(
            body["kind"], body["metadata"]["name"], phase, message, time.perf_counter() - started, dict(body["status"])
        )
        status_path = self.root / "status" / f"{body['kind'].lower()}-{body['metadata']['name']}.json"
        status_path.parent.mkdir(parents=True, exist_ok=True)
        status_path.write_text(json.dumps(body, indent=2, sort_keys=True))
        return result
