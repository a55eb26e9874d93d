"""The statistics of a canary analysis: pure functions over logged requests and ratings.

See :mod:`mentor_trainer.rollout` for the decision rules. Nothing here reads storage: the
records are :class:`~mentor_trainer.serve.payload_log.PayloadRecord` objects (or dicts with
the same keys), the feedback a mapping ``request_id -> rating``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from ..config.deploy import Canary, RolloutResult
from ..timestamps import parse_utc

OK_STATUS = "ok"
MIN_RATINGS = 10  # ratings needed on each side before feedback is compared
LATENCY_PERCENTILE = 95.0


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (naive means UTC), or None if unparseable."""
    parsed = parse_utc(value)
    return parsed.timestamp() if parsed else None


def _get(record: Any, name: str, default: Any = None) -> Any:
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


def version_key(value: Any) -> str:
    """A model version as compared: surrounding blanks and a trailing "/" (URIs) do not count."""
    text = str(value).strip()
    return text.rstrip("/") or text


def split_records(records: Iterable[Any], stable_version: str, canary_version: str, since: str | None) -> tuple[list, list]:
    """The records of the stable and of the canary version logged at or after ``since``.

    Versions are compared without surrounding blanks or a trailing "/" (a model URI with or
    without it is the same version). Records of any other version, without a version, before ``since`` or with an unparseable
    timestamp (when ``since`` is given) are left out. ValueError for an unparseable ``since``."""
    since_epoch = None
    if since:
        since_epoch = parse_time(since)
        if since_epoch is None:
            raise ValueError(f"since must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not {since!r}")
    stable_version, canary_version = version_key(stable_version), version_key(canary_version)
    stable, canary = [], []
    for record in records:
        version = _get(record, "model_version")
        if version is None:
            continue
        version = version_key(version)
        if version == canary_version:
            side = canary
        elif version == stable_version:
            side = stable
        else:
            continue
        if since_epoch is not None:
            at = parse_time(_get(record, "timestamp"))
            if at is None or at < since_epoch:
                continue
        side.append(record)
    return stable, canary


def is_error(record: Any) -> bool:
    """A request failed when its status is anything but ``ok``."""
    return str(_get(record, "status", OK_STATUS) or OK_STATUS).lower() != OK_STATUS


def latencies(records: Sequence[Any]) -> np.ndarray:
    """Latencies (ms) of the successful requests (finite values only)."""
    values = []
    for record in records:
        if is_error(record):
            continue
        value = _get(record, "latency_ms")
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value >= 0:
            values.append(value)
    return np.asarray(values, dtype=float)


def ratings(records: Sequence[Any], feedback: Mapping[str, float]) -> np.ndarray:
    """The ratings of these records' requests (joined by request_id; unrated ones are skipped)."""
    values = []
    for record in records:
        rating = feedback.get(str(_get(record, "request_id")))
        if rating is None:
            continue
        rating = float(rating)
        if math.isfinite(rating):
            values.append(rating)
    return np.asarray(values, dtype=float)


def p95(values: np.ndarray) -> float | None:
    """The 95th percentile (linear interpolation, numpy's default), None when empty."""
    return float(np.percentile(values, LATENCY_PERCENTILE)) if values.size else None


def error_rate_p_value(canary_errors: int, canary_total: int, stable_errors: int, stable_total: int) -> float:
    """One-sided Fisher exact test that the canary's error rate is higher than the stable one's:
    P(at least ``canary_errors`` of all errors land on the canary's requests | the margins)."""
    table = [[canary_errors, canary_total - canary_errors], [stable_errors, stable_total - stable_errors]]
    p = float(stats.fisher_exact(table, alternative="greater").pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)


def mann_whitney_p_value(canary: np.ndarray, stable: np.ndarray, alternative: str) -> float:
    """One-sided Mann-Whitney U test of the canary's values against the stable ones
    (``alternative``: "greater" = the canary is larger, "less" = smaller). scipy's method
    "auto": exact for small samples without ties, else the normal approximation with tie and
    continuity corrections. All values tied: p = 1."""
    if canary.size == 0 or stable.size == 0:
        return 1.0
    p = float(stats.mannwhitneyu(canary, stable, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)


@dataclass
class _Side:
    requests: int
    errors: int
    latencies: np.ndarray
    ratings: np.ndarray

    @classmethod
    def of(cls, records: Sequence[Any], feedback: Mapping[str, float]) -> "_Side":
        return cls(
            requests=len(records),
            errors=sum(1 for r in records if is_error(r)),
            latencies=latencies(records),
            ratings=ratings(records, feedback),
        )

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def feedback_mean(self) -> float | None:
        return float(self.ratings.mean()) if self.ratings.size else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _p(value: float) -> str:
    return f"{value:.3g}"


def analyse(
    stable: Sequence[Any],
    canary: Sequence[Any],
    feedback: Mapping[str, float],
    options: Canary,
    confidence: float = 0.95,
) -> RolloutResult:
    """Judge the canary's requests against the stable model's (already split by version and
    time, see :func:`split_records`); ``feedback``: request_id -> rating. The rules are those
    of :mod:`mentor_trainer.rollout`."""
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), not {confidence}")
    alpha = 1.0 - confidence
    s, c = _Side.of(stable, feedback), _Side.of(canary, feedback)
    result = RolloutResult(
        stable_requests=s.requests,
        canary_requests=c.requests,
        stable_error_rate=s.error_rate,
        canary_error_rate=c.error_rate,
        stable_latency_p95_ms=p95(s.latencies),
        canary_latency_p95_ms=p95(c.latencies),
        stable_feedback=s.feedback_mean,
        canary_feedback=c.feedback_mean,
    )
    if c.requests < options.min_requests:
        result.decision = "wait"
        result.reasons = [
            f"waiting: the canary has {c.requests} logged request(s), {options.min_requests} needed"
            f" (stable: {s.requests})"
        ]
        return result

    failed = False
    reasons: list[str] = []
    comparable = s.requests > 0
    if not comparable:
        reasons.append("no stable traffic since the canary started: judged by absolute thresholds only")

    # 1. error rate against the absolute threshold
    if c.error_rate > options.max_error_rate:
        failed = True
        reasons.append(
            f"error rate: FAIL, canary {_pct(c.error_rate)} ({c.errors}/{c.requests}) > max {_pct(options.max_error_rate)}"
        )
    else:
        reasons.append(
            f"error rate: pass, canary {_pct(c.error_rate)} ({c.errors}/{c.requests}) <= max {_pct(options.max_error_rate)}"
        )

    # 2. error rate against the stable model's (one-sided Fisher exact test)
    if comparable:
        p = error_rate_p_value(c.errors, c.requests, s.errors, s.requests)
        result.error_rate_p_value = p
        figures = (
            f"canary {_pct(c.error_rate)} ({c.errors}/{c.requests}) vs stable {_pct(s.error_rate)}"
            f" ({s.errors}/{s.requests}), one-sided Fisher exact p={_p(p)}"
        )
        if p < alpha:
            failed = True
            reasons.append(f"error rate vs stable: FAIL, significantly higher: {figures} < {_p(alpha)}")
        else:
            reasons.append(f"error rate vs stable: pass, {figures} >= {_p(alpha)}")
    else:
        reasons.append("error rate vs stable: skipped, no stable requests")

    # 3. latency: p95 ratio beyond the threshold and significantly slower (one-sided Mann-Whitney U)
    c95, s95 = result.canary_latency_p95_ms, result.stable_latency_p95_ms
    if not comparable:
        reasons.append(f"latency: skipped, no stable requests (canary p95 {_ms(c95)})")
    elif c95 is None or s95 is None:
        reasons.append(
            f"latency: skipped, no successful requests to time (canary {c.latencies.size}, stable {s.latencies.size})"
        )
    else:
        p = mann_whitney_p_value(c.latencies, s.latencies, "greater")
        result.latency_p_value = p
        ratio = c95 / s95 if s95 > 0 else (math.inf if c95 > 0 else 1.0)
        figures = (
            f"canary p95 {_ms(c95)} vs stable p95 {_ms(s95)} = {ratio:.2f}x (max {options.max_latency_ratio:g}x),"
            f" one-sided Mann-Whitney U p={_p(p)}"
        )
        if ratio > options.max_latency_ratio and p < alpha:
            failed = True
            reasons.append(f"latency: FAIL, slower beyond the ratio and significantly: {figures} < {_p(alpha)}")
        elif ratio > options.max_latency_ratio:
            reasons.append(f"latency: pass, beyond the ratio but not significantly slower: {figures} >= {_p(alpha)}")
        else:
            reasons.append(f"latency: pass, {figures}")

    # 4. feedback ratings (one-sided Mann-Whitney U), with enough ratings on each side
    n_c, n_s = c.ratings.size, s.ratings.size
    if not comparable:
        reasons.append(f"feedback: skipped, no stable requests (canary: {n_c} rating(s))")
    elif n_c < MIN_RATINGS or n_s < MIN_RATINGS:
        reasons.append(f"feedback: skipped, {MIN_RATINGS} ratings needed on each side (canary {n_c}, stable {n_s})")
    else:
        p = mann_whitney_p_value(c.ratings, s.ratings, "less")
        result.feedback_p_value = p
        figures = (
            f"canary mean {c.feedback_mean:.2f} (n={n_c}) vs stable {s.feedback_mean:.2f} (n={n_s}),"
            f" one-sided Mann-Whitney U p={_p(p)}"
        )
        if p < alpha:
            failed = True
            reasons.append(f"feedback: FAIL, rated significantly lower: {figures} < {_p(alpha)}")
        else:
            reasons.append(f"feedback: pass, {figures} >= {_p(alpha)}")

    result.decision = "rollback" if failed else "promote"
    result.reasons = reasons
    return result
