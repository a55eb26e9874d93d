"""Prometheus metrics of the mentor runtime, on the server's ``/metrics`` (kserve's handler
exposes the default registry, so these appear next to kserve's own ``request_*_seconds``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class ServeMetrics:
    """Every metric family the server exports; one instance per process."""

    def __init__(self, model_name: str, registry: CollectorRegistry = REGISTRY):
        labels = {"model": model_name}
        self.requests = Counter(
            "mentor_requests", "Requests by endpoint and HTTP status.", ["model", "endpoint", "status"], registry=registry
        )
        self.errors = Counter(
            "mentor_request_errors", "Failed requests by endpoint and reason.", ["model", "endpoint", "reason"], registry=registry
        )
        self.latency = Histogram(
            "mentor_request_latency_seconds", "Request latency (to the last token).", ["model", "endpoint"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.ttft = Histogram(
            "mentor_time_to_first_token_seconds", "Time from arrival to the first generated token.", ["model", "endpoint"],
            buckets=TTFT_BUCKETS, registry=registry,
        )
        self.prompt_tokens = Counter("mentor_prompt_tokens", "Prompt tokens processed.", ["model"], registry=registry)
        self.generated_tokens = Counter("mentor_generated_tokens", "Completion tokens generated.", ["model"], registry=registry)
        self.tokens_per_second = Histogram(
            "mentor_batch_tokens_per_second", "Generated tokens per second of each batch.", ["model"],
            buckets=RATE_BUCKETS, registry=registry,
        )
        self.last_tokens_per_second = Gauge(
            "mentor_tokens_per_second", "Generated tokens per second of the latest batch.", ["model"], registry=registry
        )
        self.batch_size = Histogram(
            "mentor_batch_size", "Requests generated together per batch.", ["model"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.in_flight = Gauge("mentor_requests_in_flight", "Generation requests being served.", ["model"], registry=registry)
        self.rag_available = Gauge(
            "mentor_rag_available", "1 when retrieval is on and its index loaded, 0 when it is on and unavailable.",
            ["model"], registry=registry,
        )
        self._labels = labels
        self._payload: Callable[[], tuple[int, int]] | None = None
        registry.register(_PayloadCollector(self))

    def watch_payload_logger(self, counts: Callable[[], tuple[int, int]]) -> None:
        """``counts()`` returns the payload logger's (written, dropped)."""
        self._payload = counts

    def batch(self, size: int, tokens: int, seconds: float) -> None:
        self.batch_size.labels(**self._labels).observe(size)
        if seconds > 0 and tokens:
            rate = tokens / seconds
            self.tokens_per_second.labels(**self._labels).observe(rate)
            self.last_tokens_per_second.labels(**self._labels).set(rate)

    def request(self, endpoint: str, status: int, *, reason: str | None = None) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status), **self._labels).inc()
        if status >= 400:
            self.errors.labels(endpoint=endpoint, reason=reason or ("client" if status < 500 else "server"), **self._labels).inc()

    def generation(self, endpoint: str, *, latency_s: float, ttft_s: float | None, prompt_tokens: int, completion_tokens: int) -> None:
        self.latency.labels(endpoint=endpoint, **self._labels).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(endpoint=endpoint, **self._labels).observe(ttft_s)
        self.prompt_tokens.labels(**self._labels).inc(prompt_tokens)
        self.generated_tokens.labels(**self._labels).inc(completion_tokens)


class _PayloadCollector:
    """The payload logger's written/dropped counts, read at scrape time."""

    def __init__(self, metrics: ServeMetrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        written_family = CounterMetricFamily("mentor_payload_logs_written", "Payload records written to the log sink.", labels=["model"])
        dropped_family = CounterMetricFamily(
            "mentor_payload_logs_dropped", "Payload records dropped (sink down, queue full); requests never fail for it.", labels=["model"]
        )
        written, dropped = (0, 0)
        if self.metrics._payload is not None:
            try:
                written, dropped = self.metrics._payload()
            except Exception:  # noqa: BLE001 - a scrape never fails for the logger
                pass
        model = self.metrics._labels["model"]
        written_family.add_metric([model], written)
        dropped_family.add_metric([model], dropped)
        yield written_family
        yield dropped_family
