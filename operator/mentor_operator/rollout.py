"""Pure rollout logic of a ModelDeployment: which model versions to export and serve, when a
canary's analysis is due, and how an outcome is recorded.

A model version is the source model's URI (what `modelRef`/`modelUri` resolves to). The
first version is served as soon as it is exported. A later one, with `spec.canary`, serves
next to the stable version until an analysis of both versions' logged requests (the
`mentor-trainer rollout` stage, every `promoteAfterMinutes`) promotes or rolls it back;
without `spec.canary` it replaces the stable version once exported. A version that was rolled
back is not rolled out again until the spec names another model. The annotation
`mentor.dev/rollout: promote` (or `rollback`) decides at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from mentor_trainer.timestamps import parse_utc

ROLLOUT_ANNOTATION = "mentor.dev/rollout"
MAX_ROLLOUT_RECORDS = 10

Decision = Literal["promote", "rollback"]


@dataclass(frozen=True)
class Versions:
    """What to export and serve for the model the spec names now."""

    serve: str  # the stable version once exported (the new one on a first rollout or a replacement)
    canary: str | None = None  # the new version, served next to the stable one
    held_back: str | None = None  # the version the spec names, not rolled out because it was rolled back


def choose_versions(status: dict[str, Any], desired: str, canary_configured: bool) -> Versions:
    stable = status.get("modelVersion")
    if stable is None or desired == stable:
        return Versions(serve=desired)
    if desired in rolled_back(status):
        return Versions(serve=stable, held_back=desired)
    if not canary_configured:
        return Versions(serve=desired)
    return Versions(serve=stable, canary=desired)


def rolled_back(status: dict[str, Any]) -> set[str]:
    return {r["modelVersion"] for r in status.get("rollouts") or [] if r.get("outcome") == "rolledBack"}


def manual_decision(annotations: dict[str, str] | None) -> Decision | None:
    value = (annotations or {}).get(ROLLOUT_ANNOTATION, "").strip().lower()
    return value if value in ("promote", "rollback") else None  # type: ignore[return-value]


def analysis_due(canary: dict[str, Any], promote_after_minutes: int, now: datetime) -> bool:
    """Analyses run after every promoteAfterMinutes of canary traffic (a 'wait' defers to the next)."""
    started = parse_utc(canary.get("startTime"))
    if started is None:
        return False
    return now >= started + timedelta(minutes=promote_after_minutes * (canary.get("analyses", 0) + 1))


def recorded(status: dict[str, Any], version: str, outcome: str, reason: str, time: str) -> list[dict[str, Any]]:
    """status.rollouts with one more record, newest last, the oldest dropped beyond the limit."""
    record = {"modelVersion": version, "outcome": outcome, "reason": reason[:1024], "time": time}
    return [*(status.get("rollouts") or []), record][-MAX_ROLLOUT_RECORDS:]
