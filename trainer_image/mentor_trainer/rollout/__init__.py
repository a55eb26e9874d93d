"""`mentor-trainer rollout`: the canary analysis of a ModelDeployment (as Flagger's and Argo
Rollouts' analyses): promote the canary, roll it back, or wait for more traffic.

The operator runs this stage ``spec.canary.promoteAfterMinutes`` after the canary started and
acts on :attr:`RolloutResult.decision`. Input: the deployment's payload logs and feedback
(:mod:`mentor_trainer.serve.payload_log`) under ``config.payload_log_uri``.

Decision rules (``alpha = 1 - config.confidence``; the thresholds are ``config.canary``):

1. **Split.** Requests logged at or after ``config.since`` with ``model_version`` equal to
   ``stable_version`` or ``canary_version`` (compared without blanks or a trailing "/", so a
   model URI with or without it is one version); every other record (other versions, no version,
   earlier, unparseable timestamp) is ignored. A request failed when its ``status`` is not
   ``"ok"``. Feedback is joined by ``request_id``; the latest rating of a request counts,
   feedback without a rating (a correction only) is ignored.
2. **Wait** when the canary has fewer than ``canary.minRequests`` requests (the reason says how
   many it has); the figures are filled in, no check is judged.
3. **Error rate, absolute:** roll back when the canary's error rate > ``canary.maxErrorRate``.
4. **Error rate against stable:** roll back when the canary's error rate is significantly higher
   than the stable model's: one-sided **Fisher exact test** on the 2x2 table
   (canary errors, canary successes / stable errors, stable successes), ``alternative="greater"``,
   ``p < alpha``. Exact, so valid for the few errors a healthy model makes (a z-test is not).
5. **Latency:** p95 (numpy's linear interpolation) of the latencies of *successful* requests
   (failed requests often return early and would hide a slow model). Roll back when canary p95 >
   ``canary.maxLatencyRatio`` x stable p95 **and** the canary is significantly slower: one-sided
   **Mann-Whitney U** test (canary > stable, scipy's "auto" method), ``p < alpha``. Both are
   required: the ratio alone is noise on small samples, the test alone flags harmless slowdowns.
6. **Feedback:** when both sides have >= 10 ratings, roll back when the canary's ratings are
   significantly lower: one-sided **Mann-Whitney U** (canary < stable), ``p < alpha``; else the
   check is skipped (said so).
7. **Promote** when no check failed.

Every check contributes one reason line (pass, FAIL or skipped) with its figures. With no
stable traffic at all since ``since`` (e.g. 100% of it went to the canary), only the absolute
threshold (3) is judged; 4-6 are skipped and a first reason line says so.
"""

from __future__ import annotations

import logging
import math

from ..config.deploy import RolloutResult, RolloutStageConfig
from ..errors import StageError
from ..progress import ProgressReporter
from .analysis import analyse, parse_time, split_records, version_key

log = logging.getLogger(__name__)

__all__ = ["main", "analyse", "split_records", "feedback_by_request"]


def feedback_by_request(entries: list[dict]) -> dict[str, float]:
    """request_id -> rating from feedback entries (oldest first: the latest rating wins;
    entries without a numeric rating are skipped)."""
    ratings: dict[str, float] = {}
    for entry in entries:
        request_id, rating = entry.get("request_id"), entry.get("rating")
        if not isinstance(request_id, str) or rating is None or isinstance(rating, bool):
            continue
        try:
            rating = float(rating)
        except (TypeError, ValueError):
            continue
        if math.isfinite(rating):
            ratings[request_id] = rating
    return ratings


def main(config: RolloutStageConfig) -> RolloutResult:
    if parse_time(config.since) is None:
        raise StageError(f"since must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not {config.since!r}")
    if version_key(config.stable_version) == version_key(config.canary_version):
        raise StageError(f"the stable and the canary version are the same ({config.canary_version!r}): nothing to compare")
    from ..serve.payload_log import read_feedback, read_records

    with ProgressReporter.for_stage(config.progress_file) as progress:
        progress.update(phase="reading payload logs", force=True)
        try:
            records = read_records(config.payload_log_uri, since=config.since)
            feedback = feedback_by_request(read_feedback(config.payload_log_uri))
        except StageError:
            raise
        except Exception as error:  # storage down: another try may work
            raise StageError(
                f"cannot read the payload logs under {config.payload_log_uri}: {type(error).__name__}: {error}",
                permanent=False,
            ) from error
        progress.update(phase="analysing", force=True)
        stable, canary = split_records(records, config.stable_version, config.canary_version, config.since)
        result = analyse(stable, canary, feedback, config.canary, config.confidence)
        log.info(
            "canary %s vs stable %s: %s (%s)",
            config.canary_version, config.stable_version, result.decision, "; ".join(result.reasons),
        )
        progress.update(phase=f"decided: {result.decision}", force=True)
    return result
