"""Prometheus metrics of the operator (served on settings.metrics_port)."""

from __future__ import annotations

import threading
from collections import Counter as Tally

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

RECONCILES = Counter("mentor_reconciles_total", "Reconciliations by kind and outcome.", ["kind", "outcome"])
RECONCILE_ERRORS = Counter("mentor_reconcile_errors_total", "Reconciliations that raised an unexpected error.", ["kind"])
RECONCILE_SECONDS = Histogram(
    "mentor_reconcile_duration_seconds",
    "Time spent in one reconciliation.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

DRIFT_SCORE = Gauge(
    "mentor_drift_score", "Share of drift signals that drifted in a deployment's latest check.", ["namespace", "name"]
)
DRIFT_SIGNAL_SCORE = Gauge(
    "mentor_drift_signal_score", "Each drift signal's effect score in a deployment's latest check (on the signal's own scale).",
    ["namespace", "name", "signal"],
)
DRIFTED = Gauge("mentor_drifted", "1 when a deployment's latest drift check found drift.", ["namespace", "name"])
ROLLOUTS = Counter(
    "mentor_rollouts_total", "Model versions rolled out, by outcome (promoted, rolledBack, replaced).", ["namespace", "name", "outcome"]
)
RETRAININGS = Counter(
    "mentor_retrainings_total", "Retraining pipelines started on drift, and how they ended (started, succeeded, failed).",
    ["namespace", "name", "outcome"],
)
AWAITING_APPROVAL = Gauge(
    "mentor_retrainings_awaiting_approval", "Retraining pipelines of a deployment waiting for a manual approval.", ["namespace", "name"]
)


class PhaseTracker:
    """Current phase of every resource this replica has seen; exported as a gauge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str, str], str] = {}

    def observe(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((kind, namespace, name), None)
            else:
                self._phases[(kind, namespace, name)] = phase

    def counts(self) -> Tally:
        with self._lock:
            return Tally((kind, phase) for (kind, _, _), phase in self._phases.items())

    def collect(self):
        family = GaugeMetricFamily("mentor_resources", "Mentor resources by kind and phase.", labels=["kind", "phase"])
        for (kind, phase), count in sorted(self.counts().items()):
            family.add_metric([kind, phase], count)
        yield family


PHASES = PhaseTracker()
REGISTRY.register(PHASES)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
