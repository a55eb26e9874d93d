"""Live progress of a stage, reported while it runs.

Two sinks, both best effort (a progress report never fails a stage):

- a JSON file (``progress_file`` in the stage config), which `mentor run` prints as it changes;
- inside a pod, a JSON merge patch of the owning resource's ``status.progress``. The operator
  names the status URL in ``MENTOR_PROGRESS_PATH`` and runs the pod under a ServiceAccount
  whose namespaced Role may patch only the status of mentor resources. The report lives on
  the resource itself, so it needs no operator in the loop and survives operator restarts.

Remote reports go out from a background thread at most every ``interval`` seconds (the
latest state wins), so a slow API server never slows training; ``close()`` sends the last one.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config.common import Progress
from .timestamps import utc_now

log = logging.getLogger("mentor.progress")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REPORT_INTERVAL_SECONDS = 10.0
FILE_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class StatusEndpoint:
    """Where and how to patch the owning resource's status."""

    url: str
    token_file: Path
    ca_file: Path | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "StatusEndpoint | None":
        environ = os.environ if environ is None else environ
        path = environ.get("MENTOR_PROGRESS_PATH")
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not path or not host:
            return None
        if int(environ.get("RANK", "0")) != 0:  # one reporter per distributed job
            return None
        token = SERVICE_ACCOUNT_DIR / "token"
        if not token.exists():
            log.info("no service account token in this pod: progress is not reported to the resource")
            return None
        host = f"[{host}]" if ":" in host else host
        ca = SERVICE_ACCOUNT_DIR / "ca.crt"
        return cls(f"https://{host}:{port}{path}", token, ca if ca.exists() else None)

    def patch(self, progress: dict[str, Any], timeout: float = 5.0) -> None:
        body = json.dumps({"status": {"progress": progress}}).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="PATCH",
            headers={
                "Content-Type": "application/merge-patch+json",
                # read each time: projected tokens are rotated by the kubelet
                "Authorization": f"Bearer {self.token_file.read_text().strip()}",
            },
        )
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        with urllib.request.urlopen(request, timeout=timeout, context=context):
            pass


class ProgressReporter:
    """Collects progress fields and publishes them to the file and the resource."""

    def __init__(
        self,
        path: str | None = None,
        endpoint: StatusEndpoint | None = None,
        interval: float = REPORT_INTERVAL_SECONDS,
    ) -> None:
        self.path = Path(path) if path else None
        self.endpoint = endpoint
        self.interval = interval
        self.state = Progress()
        self._file_written = 0.0
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if endpoint is not None:
            self._thread = threading.Thread(target=self._send_loop, name="progress-reporter", daemon=True)
            self._thread.start()

    @classmethod
    def for_stage(cls, progress_file: str | None) -> "ProgressReporter":
        return cls(progress_file, StatusEndpoint.from_env())

    def update(self, force: bool = False, **fields: Any) -> None:
        """Merge ``fields`` (:class:`Progress` fields, e.g. ``total_steps=``) into the state;
        ``force`` writes the file at once (phase changes). An unknown field is a bug: it raises."""
        with self._lock:
            changed = Progress.model_validate(fields).model_dump(exclude_unset=True)
            self.state = self.state.model_copy(update={**changed, "updated_at": utc_now()})
            snapshot = self.state.to_wire()
        if self.path is not None and (force or time.monotonic() - self._file_written >= FILE_INTERVAL_SECONDS):
            self._file_written = time.monotonic()
            self._write_file(snapshot)
        self._dirty.set()

    @property
    def reporting(self) -> bool:
        """Whether reports still go to the resource (they stop for good on 401/403/404)."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Publish the final state and stop the sender."""
        if self._thread is not None:
            self._stopped.set()
            self._dirty.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self.path is not None and self.state.updated_at:
            self._write_file(self.state.to_wire())

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _write_file(self, snapshot: dict[str, Any]) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(snapshot, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as error:
            log.debug("cannot write progress to %s: %s", self.path, error)

    def _send_loop(self) -> None:
        assert self.endpoint is not None
        while True:
            self._dirty.wait()
            stopping = self._stopped.is_set()
            self._dirty.clear()
            with self._lock:
                snapshot = self.state.to_wire()
            if snapshot and not self._send(snapshot):
                return
            if stopping:
                return
            self._stopped.wait(self.interval)  # throttle; close() cuts the wait short

    def _send(self, snapshot: dict[str, Any]) -> bool:
        """Patch the resource; False when reporting cannot work at all (stop trying)."""
        try:
            self.endpoint.patch(snapshot)  # type: ignore[union-attr]
            return True
        except urllib.error.HTTPError as error:
            if error.code in (401, 403, 404):
                log.warning(
                    "progress reports stop: patching %s answered %s %s (the pod's ServiceAccount needs "
                    "patch on the resource's status; the operator grants it to its stage account)",
                    self.endpoint.url, error.code, error.reason,  # type: ignore[union-attr]
                )
                return False
            log.info("progress report failed (%s %s); retrying with the next one", error.code, error.reason)
        except (OSError, ValueError) as error:  # unreachable API server, timeout, TLS
            log.info("progress report failed (%s); retrying with the next one", error)
        return True
