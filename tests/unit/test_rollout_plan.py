"""The ModelDeployment's rollout decisions (pure): which versions to export and serve, when a
canary's analysis is due, how outcomes are recorded."""

from __future__ import annotations

from datetime import datetime, timezone

from mentor_operator.rollout import (
    MAX_ROLLOUT_RECORDS,
    Versions,
    analysis_due,
    choose_versions,
    manual_decision,
    recorded,
)


def test_first_version_is_served_and_a_new_one_is_a_canary_only_when_configured():
    assert choose_versions({}, "s3://m/a/", canary_configured=True) == Versions(serve="s3://m/a/")
    stable = {"modelVersion": "s3://m/a/"}
    assert choose_versions(stable, "s3://m/a/", True) == Versions(serve="s3://m/a/")
    assert choose_versions(stable, "s3://m/b/", True) == Versions(serve="s3://m/a/", canary="s3://m/b/")
    assert choose_versions(stable, "s3://m/b/", False) == Versions(serve="s3://m/b/")  # replaced in place


def test_a_rolled_back_version_is_held_back_until_the_spec_names_another():
    status = {"modelVersion": "s3://m/a/", "rollouts": recorded({}, "s3://m/b/", "rolledBack", "errors", "2026-11-30T01:00:00Z")}
    assert choose_versions(status, "s3://m/b/", True) == Versions(serve="s3://m/a/", held_back="s3://m/b/")
    assert choose_versions(status, "s3://m/c/", True) == Versions(serve="s3://m/a/", canary="s3://m/c/")


def test_analysis_falls_due_every_period_after_the_canary_started():
    canary = {"startTime": "2026-11-30T01:00:00Z", "analyses": 0}
    at = lambda h, m: datetime(2026, 11, 30, h, m, tzinfo=timezone.utc)  # noqa: E731
    assert not analysis_due(canary, 30, at(1, 29))
    assert analysis_due(canary, 30, at(1, 30))
    assert not analysis_due({**canary, "analyses": 1}, 30, at(1, 59))  # a 'wait' defers a period
    assert analysis_due({**canary, "analyses": 1}, 30, at(2, 0))
    assert not analysis_due({"analyses": 0}, 30, at(3, 0))  # not started


def test_manual_decision_and_bounded_history():
    assert manual_decision({"mentor.dev/rollout": " Promote "}) == "promote"
    assert manual_decision({"mentor.dev/rollout": "rollback"}) == "rollback"
    assert manual_decision({"mentor.dev/rollout": "maybe"}) is None and manual_decision(None) is None
    status: dict = {}
    for i in range(MAX_ROLLOUT_RECORDS + 3):
        status["rollouts"] = recorded(status, f"s3://m/{i}/", "promoted", "ok", "2026-11-30T01:00:00Z")
    assert len(status["rollouts"]) == MAX_ROLLOUT_RECORDS and status["rollouts"][-1]["modelVersion"] == f"s3://m/{MAX_ROLLOUT_RECORDS + 2}/"
