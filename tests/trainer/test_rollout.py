"""`mentor-trainer rollout`: the canary analysis on constructed records (the rules, with wide
margins) and end to end through the payload logger's files and the CLI."""

from __future__ import annotations

import json
from itertools import count

import numpy as np
import pytest

from mentor_trainer.config.deploy import Canary, PayloadLogging, RolloutResult, RolloutStageConfig
from mentor_trainer.errors import StageError
from mentor_trainer.rollout import analyse, feedback_by_request, main, split_records
from mentor_trainer.serve.payload_log import PayloadLogger, PayloadRecord

SINCE = "2026-01-10T12:00:00Z"
AFTER = "2026-01-10T12:30:00Z"
BEFORE = "2026-01-10T11:00:00Z"
_ids = count()


def records(version: str, n: int, errors: int = 0, latency=(100.0, 200.0), seed: int = 0, timestamp: str = AFTER) -> list:
    """n requests of a version, the first ``errors`` of them failed; successful latencies
    uniform in ``latency`` (ms), seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        failed = i < errors
        out.append(
            PayloadRecord(
                request_id=f"{version}-{next(_ids)}",
                endpoint="/v1/chat/completions",
                prompt="q",
                completion="" if failed else "a",
                retrieved_ids=[],
                retrieval_scores=[],
                latency_ms=float(rng.uniform(*latency)),
                ttft_ms=None,
                prompt_tokens=3,
                completion_tokens=0 if failed else 5,
                model_version=version,
                status="error" if failed else "ok",
                error="boom" if failed else None,
                timestamp=timestamp,
            )
        )
    return out


def rate(recs: list, values: list[float]) -> dict[str, float]:
    """Ratings for the first len(values) records."""
    return {r.request_id: v for r, v in zip(recs, values)}


def judge(stable, canary, feedback=None, **canary_options) -> RolloutResult:
    options = Canary(**{"min_requests": 50, **canary_options})
    return analyse(stable, canary, feedback or {}, options, 0.95)


def line(result: RolloutResult, prefix: str) -> str:
    found = [r for r in result.reasons if r.startswith(prefix + ":")]
    assert len(found) == 1, result.reasons
    return found[0]


def test_healthy_canary_promotes():
    stable, canary = records("v1", 400, errors=2, seed=1), records("v2", 100, errors=1, seed=2)
    feedback = {**rate(stable, [1.0, 0.5, 0.0, 1.0] * 10), **rate(canary, [1.0, 0.5, 1.0, 0.0] * 5)}
    result = judge(stable, canary, feedback)
    assert result.decision == "promote", result.reasons
    assert result.verdict().passed and result.verdict().reason == "CanaryHealthy"
    assert (result.stable_requests, result.canary_requests) == (400, 100)
    assert result.canary_error_rate == pytest.approx(0.01) and result.stable_error_rate == pytest.approx(0.005)
    assert 150 < result.canary_latency_p95_ms <= 200 and 150 < result.stable_latency_p95_ms <= 200
    assert result.error_rate_p_value > 0.05 and result.latency_p_value > 0.05 and result.feedback_p_value > 0.05
    assert result.canary_feedback == pytest.approx(0.625) and result.stable_feedback == pytest.approx(0.625)
    for check in ("error rate", "error rate vs stable", "latency", "feedback"):
        assert line(result, check).startswith(f"{check}: pass"), result.reasons
    assert len(result.reasons) == 4
    assert "Fisher exact" in line(result, "error rate vs stable")
    assert "Mann-Whitney U" in line(result, "latency")


def test_canary_with_20_percent_errors_rolls_back_on_the_threshold():
    result = judge(records("v1", 400, seed=1), records("v2", 100, errors=20, seed=2))
    assert result.decision == "rollback"
    assert result.canary_error_rate == pytest.approx(0.2)
    assert line(result, "error rate").startswith("error rate: FAIL")
    assert "20.0% (20/100) > max 5.0%" in line(result, "error rate")
    verdict = result.verdict()
    assert not verdict.passed and verdict.reason == "CanaryUnhealthy" and "20.0%" in verdict.message


def test_four_percent_errors_roll_back_when_significantly_above_stable():
    # 16/400 vs 0/2000: below the 5% threshold, but far beyond chance (p ~ 1e-12)
    result = judge(records("v1", 2000, seed=1), records("v2", 400, errors=16, seed=2))
    assert result.decision == "rollback", result.reasons
    assert line(result, "error rate").startswith("error rate: pass")
    assert line(result, "error rate vs stable").startswith("error rate vs stable: FAIL")
    assert result.error_rate_p_value < 1e-6


def test_four_percent_errors_promote_when_not_significant():
    # 2/50 vs 0/50: Fisher's one-sided p = 0.247
    result = judge(records("v1", 50, seed=1), records("v2", 50, errors=2, seed=2))
    assert result.decision == "promote", result.reasons
    assert result.canary_error_rate == pytest.approx(0.04)
    assert result.error_rate_p_value == pytest.approx(0.2475, abs=1e-3)
    assert line(result, "error rate vs stable").startswith("error rate vs stable: pass")


def test_slow_canary_rolls_back():
    result = judge(records("v1", 300, seed=1), records("v2", 100, latency=(400.0, 800.0), seed=2))
    assert result.decision == "rollback", result.reasons
    assert result.canary_latency_p95_ms / result.stable_latency_p95_ms > 3
    assert result.latency_p_value < 1e-10
    assert line(result, "latency").startswith("latency: FAIL")


def test_latency_needs_both_the_ratio_and_significance():
    # significantly slower (shifted by 20%) but within the ratio: passes
    shifted = judge(records("v1", 300, seed=1), records("v2", 100, latency=(120.0, 240.0), seed=2))
    assert shifted.decision == "promote" and shifted.latency_p_value < 0.05
    # beyond the ratio only through 5 outliers in 60 (the rest a little faster than stable),
    # not significantly slower (p ~ 0.99): passes, said so
    stable = records("v1", 300, seed=1)
    canary = records("v2", 60, latency=(80.0, 180.0), seed=2)
    for r in canary[:5]:
        r.latency_ms = 2000.0
    outliers = judge(stable, canary)
    assert outliers.canary_latency_p95_ms > 1.5 * outliers.stable_latency_p95_ms
    assert outliers.latency_p_value > 0.5
    assert outliers.decision == "promote", outliers.reasons
    assert "not significantly slower" in line(outliers, "latency")


def test_failed_requests_do_not_count_for_latency():
    stable = records("v1", 300, seed=1)
    canary = records("v2", 100, errors=2, seed=2)
    for r in canary[:2]:
        r.latency_ms = 60_000.0  # timeouts: counted as errors, not as latency
    result = judge(stable, canary)
    assert result.canary_latency_p95_ms <= 200 and result.decision == "promote", result.reasons


def test_low_feedback_rolls_back():
    stable, canary = records("v1", 300, seed=1), records("v2", 100, seed=2)
    feedback = {**rate(stable, [1.0, 1.0, 0.5, 1.0, 0.0] * 8), **rate(canary, [-1.0, -1.0, 0.0, -0.5, 1.0] * 6)}
    result = judge(stable, canary, feedback)
    assert result.decision == "rollback", result.reasons
    assert result.canary_feedback < result.stable_feedback
    assert result.feedback_p_value < 1e-4
    assert line(result, "feedback").startswith("feedback: FAIL")
    assert line(result, "error rate").startswith("error rate: pass") and line(result, "latency").startswith("latency: pass")


def test_feedback_needs_ten_ratings_on_each_side():
    stable, canary = records("v1", 300, seed=1), records("v2", 100, seed=2)
    feedback = {**rate(stable, [1.0] * 40), **rate(canary, [-1.0] * 9)}
    result = judge(stable, canary, feedback)
    assert result.decision == "promote" and result.feedback_p_value is None
    assert result.canary_feedback == -1.0  # the figure is still reported
    assert line(result, "feedback") == "feedback: skipped, 10 ratings needed on each side (canary 9, stable 40)"


def test_too_few_canary_requests_waits():
    result = judge(records("v1", 400, seed=1), records("v2", 12, errors=6, seed=2))
    assert result.decision == "wait" and result.verdict() is None
    assert result.canary_requests == 12 and result.canary_error_rate == pytest.approx(0.5)
    assert result.reasons == ["waiting: the canary has 12 logged request(s), 50 needed (stable: 400)"]
    assert judge([], []).decision == "wait"


def test_no_stable_traffic_judges_absolute_thresholds_only():
    healthy = judge([], records("v2", 100, errors=2, latency=(1000.0, 5000.0), seed=2))
    assert healthy.decision == "promote", healthy.reasons
    assert healthy.reasons[0] == "no stable traffic since the canary started: judged by absolute thresholds only"
    assert healthy.error_rate_p_value is None and healthy.latency_p_value is None and healthy.feedback_p_value is None
    assert line(healthy, "latency").startswith("latency: skipped") and line(healthy, "feedback").startswith("feedback: skipped")
    broken = judge([], records("v2", 100, errors=30, seed=2))
    assert broken.decision == "rollback" and line(broken, "error rate").startswith("error rate: FAIL")


def test_records_before_since_and_of_other_versions_are_ignored():
    stable = records("v1", 200, seed=1)
    canary = records("v2", 100, seed=2)
    noise = (
        records("v2", 500, errors=500, seed=3, timestamp=BEFORE)  # the canary's earlier life
        + records("v1", 50, latency=(5000.0, 9000.0), seed=4, timestamp=BEFORE)
        + records("v3", 300, errors=300, seed=5)  # another version
        + records("v2", 10, errors=10, seed=6, timestamp="not a time")
    )
    for r in noise[-5:]:
        r.model_version = None
    mixed = noise[:300] + canary + noise[300:700] + stable + noise[700:]
    s, c = split_records(mixed, "v1", "v2", SINCE)
    assert [r.request_id for r in s] == [r.request_id for r in stable]
    assert [r.request_id for r in c] == [r.request_id for r in canary]
    assert split_records(records("v2", 3, timestamp=SINCE), "v1", "v2", SINCE)[1]  # at `since` counts
    uris = records("s3://m/b/", 2) + records("s3://m/a", 3) + records("s3://m/ab/", 4)
    assert [len(side) for side in split_records(uris, "s3://m/a/", "s3://m/b", SINCE)] == [3, 2]
    assert judge(s, c).decision == "promote"
    with pytest.raises(ValueError, match="RFC 3339"):
        split_records(mixed, "v1", "v2", "yesterday")


def test_dicts_work_like_records_and_feedback_keeps_the_latest_rating():
    stable = [r.__dict__ for r in records("v1", 100, seed=1)]
    canary = [r.__dict__ for r in records("v2", 60, errors=30, seed=2)]
    assert judge(*split_records(stable + canary, "v1", "v2", SINCE)).decision == "rollback"
    entries = [
        {"request_id": "a", "rating": -1.0},
        {"request_id": "a", "rating": 1.0},
        {"request_id": "b", "rating": None, "correction": "x"},
        {"request_id": "c", "rating": True},
    ]
    assert feedback_by_request(entries) == {"a": 1.0}


# ---- main(), through the payload logger's files and the CLI


def log_traffic(uri: str, stable: list, canary: list, feedback: dict[str, float]) -> None:
    logger = PayloadLogger(uri, PayloadLogging(flush_every=100, flush_seconds=3600), "mentor")
    for record in stable + canary:
        logger.log(record)
    for request_id, value in feedback.items():
        logger.feedback(request_id, value, None)
    logger.close()
    assert logger.dropped == 0 and logger.written == len(stable) + len(canary) + len(feedback)


def config(tmp_path, uri: str, **overrides) -> RolloutStageConfig:
    return RolloutStageConfig.model_validate(
        {
            "run": {"kind": "ModelDeployment", "name": "mentor", "namespace": "tests"},
            "outputUri": (tmp_path / "out").as_uri(),
            "payloadLogUri": uri,
            "stableVersion": "v1",
            "canaryVersion": "v2",
            "since": SINCE,
            "canary": {"minRequests": 50},
            "progressFile": str(tmp_path / "progress.json"),
            **overrides,
        }
    )


def test_main_reads_the_payload_logs(tmp_path):
    uri = (tmp_path / "logs").as_uri()
    stable, canary = records("v1", 150, seed=1), records("v2", 80, seed=2)
    early = records("v2", 100, errors=100, seed=3, timestamp=BEFORE)
    feedback = {**rate(stable, [1.0, 1.0, 0.5] * 10), **rate(canary, [-1.0, -0.5, -1.0] * 10)}
    log_traffic(uri, early + stable, canary + records("v3", 40, errors=40, seed=4), feedback)

    result = main(config(tmp_path, uri))
    assert (result.stable_requests, result.canary_requests) == (150, 80)
    assert result.canary_error_rate == 0.0
    assert result.decision == "rollback" and line(result, "feedback").startswith("feedback: FAIL"), result.reasons
    assert json.loads((tmp_path / "progress.json").read_text())["phase"] == "decided: rollback"

    assert main(config(tmp_path, uri, canary={"minRequests": 100})).decision == "wait"
    empty = main(config(tmp_path, (tmp_path / "no-logs-yet").as_uri()))
    assert empty.decision == "wait" and empty.canary_requests == 0


def test_main_rejects_a_bad_config(tmp_path):
    uri = (tmp_path / "logs").as_uri()
    with pytest.raises(StageError, match="RFC 3339") as error:
        main(config(tmp_path, uri, since="last tuesday"))
    assert error.value.permanent
    with pytest.raises(StageError, match="the same"):
        main(config(tmp_path, uri, canaryVersion="v1"))


def test_cli_writes_the_decision_as_the_termination_message(tmp_path, monkeypatch):
    from mentor_trainer import cli

    uri = (tmp_path / "logs").as_uri()
    log_traffic(uri, records("v1", 200, seed=1), records("v2", 100, errors=1, seed=2), {})
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config(tmp_path, uri).model_dump(mode="json", by_alias=True, exclude_none=True)))
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("MENTOR_TERMINATION_LOG", str(termination))

    assert cli.main(["rollout", "--config", str(config_file)]) == 0
    wire = json.loads(termination.read_text())
    result = RolloutResult.from_wire(wire)
    assert result.decision == "promote" and result.canary_requests == 100 and result.stable_requests == 200
    assert wire["canaryErrorRate"] == pytest.approx(0.01) and len(wire["reasons"]) == 4

    bad = json.loads(config_file.read_text())
    bad["since"] = "soon"
    config_file.write_text(json.dumps(bad))
    assert cli.main(["rollout", "--config", str(config_file)]) == 2
    assert "RFC 3339" in termination.read_text()
