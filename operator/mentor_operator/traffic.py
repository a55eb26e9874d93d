"""`mentor traffic`: send a file of prompts to a served model through its OpenAI API, and the
users' feedback (a correction, a rating) on each answer to /v1/feedback, so that the
deployment's payload log holds traffic a drift check and a retraining can use.

A prompt file is JSON lines: ``{"prompt": str, "correction": str (optional), "rating": float
in [-1, 1] (optional)}``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT_SECONDS = 600  # a CPU server answers a batch of long prompts slowly


@dataclass
class TrafficReport:
    sent: int = 0
    failed: int = 0
    feedback: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few, for the console

    def __str__(self) -> str:
        line = f"{self.sent} request(s) answered, {self.failed} failed (request or feedback), {self.feedback} feedback posted in {self.seconds:.1f}s"
        return line + "".join(f"\n      error: {e}" for e in self.errors)


def load_prompts(path: Path) -> list[dict[str, Any]]:
    """The lines of a prompt file; ValueError names the first bad line."""
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ValueError(f"{path}:{number}: each line needs a non-empty string \"prompt\"")
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        return json.loads(response.read())


def _send_one(url: str, item: dict[str, Any], max_tokens: int | None) -> int:
    """One chat request (to the one model the server serves) and its feedback, if any;
    returns the feedback posted (0 or 1)."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": item["prompt"]}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    answer = _post(f"{url}/v1/chat/completions", body)
    feedback = {k: item[k] for k in ("correction", "rating") if item.get(k) is not None}
    if not feedback:
        return 0
    _post(f"{url}/v1/feedback", {"request_id": answer["id"], **feedback})
    return 1


def _error(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}: {error.read().decode(errors='replace')[:200]}"
    return f"{type(error).__name__}: {error}"


def send_traffic(
    url: str,
    prompts: list[dict[str, Any]],
    count: int | None = None,
    concurrency: int = 4,
    max_tokens: int | None = None,
) -> TrafficReport:
    """Send `count` prompts (default: each once; more cycle through the list) with
    `concurrency` requests in flight. A failed request is counted, not raised."""
    items = [prompts[i % len(prompts)] for i in range(count if count is not None else len(prompts))]
    report, started = TrafficReport(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(_send_one, url.rstrip("/"), item, max_tokens) for item in items]
        for future in futures:
            try:
                report.feedback += future.result()
                report.sent += 1
            except (OSError, ValueError, KeyError) as error:
                report.failed += 1
                if len(report.errors) < 3:
                    report.errors.append(_error(error))
    report.seconds = time.perf_counter() - started
    return report
