"""Payload logging of the model server: batches on file:// and a real MinIO, sampling,
parquet, flushing by count and time, a sink that is down, feedback, and the reader."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mentor_trainer.config.deploy import PayloadLogging
from mentor_trainer.serve.payload_log import (
    PayloadLogger,
    PayloadRecord,
    read_feedback,
    read_records,
    request_schema,
    sampled,
    scan_records,
)
# the session's real MinIO server (tests/storage/conftest.py), for the s3:// round trip
from tests.storage.conftest import bucket, minio, minio_bin, s3_env  # noqa: F401
from tests.storage.minio import free_port

PART = re.compile(r"^(requests|feedback)/date=\d{4}-\d{2}-\d{2}/part-\d{8}T\d{12}Z-[0-9a-f]{32}\.(jsonl|parquet)$")


def options(**kwargs) -> PayloadLogging:
    return PayloadLogging.model_validate({"flushSeconds": 3600, **kwargs})


def record(i: int, **overrides) -> PayloadRecord:
    fields = dict(
        request_id=f"req-{i:05d}",
        endpoint="/v1/chat/completions",
        prompt=f"How are Copper Crown leaves dried? ({i})",
        completion="On bamboo trays, for twelve hours.",
        retrieved_ids=[f"docs/drying.md#{i % 3}", "docs/grading.md#0"],
        retrieval_scores=[0.75, 0.5],
        latency_ms=123.5 + i,
        ttft_ms=20.25,
        prompt_tokens=17,
        completion_tokens=9,
        model_version="finetune-abc123",
    )
    fields.update(overrides)
    return PayloadRecord(**fields)


def parts(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def wait_for(predicate, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_file_round_trip_keeps_every_field_typed(tmp_path):
    uri = (tmp_path / "logs").as_uri()
    records = [
        record(0),
        record(1, ttft_ms=None, model_version=None, retrieved_ids=[], retrieval_scores=[]),
        record(2, status="error", error="generation failed: CUDA out of memory", completion="", completion_tokens=0,
               prompt="银叶7号的冷萎凋条件是什么？"),
    ]
    logger = PayloadLogger(uri, options(), "quickstart")
    for r in records:
        logger.log(r)
    logger.close()
    assert (logger.written, logger.dropped) == (3, 0)
    files = parts(tmp_path / "logs")
    assert len(files) == 1 and PART.match(files[0]) and files[0].endswith(".jsonl"), files
    line = json.loads((tmp_path / "logs" / files[0]).read_text(encoding="utf-8").splitlines()[0])
    assert list(line) == [
        "request_id", "endpoint", "prompt", "completion", "retrieved_ids", "retrieval_scores", "latency_ms", "ttft_ms",
        "prompt_tokens", "completion_tokens", "model_version", "status", "error", "timestamp",
    ]
    assert isinstance(line["latency_ms"], float) and isinstance(line["prompt_tokens"], int)
    back = read_records(uri)
    assert back == records
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", back[0].timestamp)


def test_sampling_is_deterministic_and_keeps_feedback_with_its_request(tmp_path):
    uri = (tmp_path / "logs").as_uri()
    logger = PayloadLogger(uri, options(sampleRate=0.5, flushEvery=500), "quickstart")
    n = 2000
    for i in range(n):
        logger.log(record(i))
    for i in range(0, n, 4):
        logger.feedback(f"req-{i:05d}", 1.0 if i % 8 else -1.0, None)
    logger.close()
    kept = {r.request_id for r in read_records(uri)}
    assert 0.45 * n <= len(kept) <= 0.55 * n, len(kept)
    # the same ids every time, in every replica: no seed, no state
    assert kept == {f"req-{i:05d}" for i in range(n) if sampled(f"req-{i:05d}", 0.5)}
    assert kept == {f"req-{i:05d}" for i in range(n) if sampled(f"req-{i:05d}", 0.5)}
    feedback = read_feedback(uri)
    expected = {f"req-{i:05d}" for i in range(0, n, 4)} & kept
    assert {f["request_id"] for f in feedback} == expected and len(feedback) == len(expected)
    assert logger.written == len(kept) + len(expected) and logger.dropped == 0
    assert sampled("anything", 1.0) and not sampled("anything", 0.0)


def test_parquet_batches(tmp_path):
    uri = (tmp_path / "logs").as_uri()
    records = [record(i) for i in range(5)] + [record(5, ttft_ms=None, error="x", status="error")]
    logger = PayloadLogger(uri, options(format="parquet", flushEvery=4), "quickstart")
    for r in records:
        logger.log(r)
    logger.feedback("req-00001", None, "Twelve hours on bamboo trays.")
    logger.close()
    files = parts(tmp_path / "logs")
    requests = [f for f in files if f.startswith("requests/")]
    assert len(requests) == 2 and all(PART.match(f) and f.endswith(".parquet") for f in requests), files
    feedback = [f for f in files if f.startswith("feedback/")]
    assert len(feedback) == 1 and feedback[0].endswith(".jsonl")  # feedback is always JSON lines
    table = pq.read_table(tmp_path / "logs" / requests[0])
    assert table.schema.equals(request_schema())
    assert read_records(uri) == records
    assert read_feedback(uri) == [
        {"request_id": "req-00001", "rating": None, "correction": "Twelve hours on bamboo trays.",
         "timestamp": read_feedback(uri)[0]["timestamp"], "model_name": "quickstart"}
    ]


def test_flush_by_count(tmp_path):
    root = tmp_path / "logs"
    logger = PayloadLogger(root.as_uri(), options(flushEvery=5), "quickstart")
    for i in range(12):
        logger.log(record(i))
    assert wait_for(lambda: logger.written == 10), logger.stats()
    time.sleep(0.3)
    assert logger.written == 10 and len(parts(root)) == 2  # the last 2 wait for the count or the clock
    logger.close()
    assert logger.written == 12 and len(parts(root)) == 3


def test_flush_by_time(tmp_path):
    root = tmp_path / "logs"
    logger = PayloadLogger(root.as_uri(), options(flushEvery=1000, flushSeconds=1), "quickstart")
    started = time.monotonic()
    for i in range(3):
        logger.log(record(i))
    assert wait_for(lambda: logger.written == 3, 10.0), logger.stats()
    assert 0.8 <= time.monotonic() - started < 8.0
    assert len(parts(root)) == 1
    logger.log(record(3))
    assert wait_for(lambda: logger.written == 4, 10.0)
    logger.close()
    assert [r.request_id for r in read_records(root.as_uri())] == [f"req-{i:05d}" for i in range(4)]


def test_close_flushes_everything(tmp_path):
    root = tmp_path / "logs"
    logger = PayloadLogger(root.as_uri(), options(flushEvery=1000), "quickstart")
    for i in range(7):
        logger.log(record(i))
    logger.feedback("req-00003", 0.5, "A better answer.")
    time.sleep(0.3)
    assert logger.written == 0 and not root.exists()
    logger.close()
    assert (logger.written, logger.dropped) == (8, 0)
    assert len(read_records(root.as_uri())) == 7 and len(read_feedback(root.as_uri())) == 1
    logger.close()  # idempotent
    logger.log(record(99))  # after close: counted, never raised
    assert logger.dropped == 1


def test_unwritable_file_sink_counts_drops_and_never_raises(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the log directory should be")
    logger = PayloadLogger((blocker / "logs").as_uri(), options(flushEvery=2), "quickstart", warn_every=3600)
    started = time.monotonic()
    for i in range(5):
        logger.log(record(i))
    logger.feedback("req-00001", 1, None)
    assert time.monotonic() - started < 0.5  # nothing on the request path waits for the sink
    logger.close(timeout=30)
    assert logger.written == 0 and logger.dropped == 6
    assert logger.stats()["failed_batches"] >= 3


def test_s3_sink_down_never_blocks_and_counts_drops(tmp_path, monkeypatch):
    """A closed port where MinIO should be: requests go on, the full queue and the failed
    batches are counted as dropped."""
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing-here")
    monkeypatch.setenv("MENTOR_S3_TIMEOUT", "2")
    logger = PayloadLogger("s3://logs/quickstart", options(flushEvery=1), "quickstart", queue_size=10, warn_every=3600)
    started = time.monotonic()
    for i in range(50):
        logger.log(record(i))
    assert time.monotonic() - started < 0.5
    assert logger.dropped >= 35  # the writer is stuck on the first batch; the queue holds 10
    logger.close(timeout=2)
    assert logger.written == 0
    assert logger.dropped >= 48  # all but the one or two the writer still holds; it keeps counting
    assert wait_for(lambda: logger.dropped == 50, 60.0), logger.stats()


def test_minio_round_trip(s3_env, bucket):
    uri = f"s3://{bucket}/deployments/quickstart/logs"
    records = [record(i) for i in range(6)]
    logger = PayloadLogger(uri, options(format="parquet", flushEvery=4), "quickstart")
    for r in records:
        logger.log(r)
    logger.feedback("req-00002", -1, "Bamboo trays, twelve hours.")
    logger.close()
    assert (logger.written, logger.dropped) == (7, 0)
    assert read_records(uri) == records
    assert read_records(uri, limit=2) == records[-2:]
    [feedback] = read_feedback(uri)
    assert (feedback["request_id"], feedback["rating"], feedback["correction"]) == ("req-00002", -1.0, "Bamboo trays, twelve hours.")


def test_reader_limit_since_and_corrupt_files(tmp_path):
    root = tmp_path / "logs"
    uri = root.as_uri()
    early = [record(i, timestamp=f"2026-01-01T00:00:{i:02d}Z") for i in range(5)]
    late = [record(10 + i, timestamp=f"2026-01-02T00:00:{i:02d}Z") for i in range(5)]
    for batch in (early, late):
        logger = PayloadLogger(uri, options(), "quickstart")
        for r in batch:
            logger.log(r)
        logger.close()
    assert read_records(uri) == early + late
    assert read_records(uri, limit=3) == late[-3:]
    assert read_records(uri, since="2026-01-01T00:00:03Z") == early[3:] + late
    assert read_records(uri, since="2026-01-02T00:00:00+00:00", limit=2) == late[-2:]
    assert read_records(uri, limit=0) == []
    with pytest.raises(ValueError, match="RFC 3339"):
        read_records(uri, since="yesterday")
    # a corrupt file and a bad line are skipped and counted
    day = next((root / "requests").iterdir())
    (day / "part-20260101T000000000000Z-" f"{'0' * 32}.parquet").write_bytes(b"not parquet")
    good = next(day.glob("*.jsonl"))
    good.write_text(good.read_text() + "{not json\n" + json.dumps({"request_id": "x"}) + "\n")
    scan = scan_records(uri)
    assert scan.records == early + late
    assert len(scan.skipped_files) == 1 and scan.skipped_rows == 2
    # no logs yet: empty, not an error
    assert read_records((tmp_path / "nothing").as_uri()) == []
    assert read_feedback((tmp_path / "nothing").as_uri()) == []


@pytest.mark.parametrize(
    "request_id, rating, correction, message",
    [
        ("", 1.0, None, "request_id"),
        (None, 1.0, None, "request_id"),
        ("req-1", 1.5, None, r"\[-1, 1\]"),
        ("req-1", -2, None, r"\[-1, 1\]"),
        ("req-1", 5, None, r"\[-1, 1\]"),
        ("req-1", float("nan"), None, r"\[-1, 1\]"),
        ("req-1", True, None, "number"),
        ("req-1", "good", None, "number"),
        ("req-1", None, None, "both are empty"),
        ("req-1", None, "   ", "both are empty"),
        ("req-1", None, 42, "string"),
    ],
)
def test_invalid_feedback_raises(tmp_path, request_id, rating, correction, message):
    for logger in (PayloadLogger((tmp_path / "logs").as_uri(), options(), "m"), PayloadLogger(None, options(), "m")):
        with pytest.raises(ValueError, match=message):
            logger.feedback(request_id, rating, correction)
        logger.close()


def test_disabled_or_no_uri_logs_nothing(tmp_path):
    root = tmp_path / "logs"
    for logger in (PayloadLogger(root.as_uri(), options(enabled=False), "m"), PayloadLogger(None, options(), "m")):
        logger.log(record(0))
        logger.feedback("req-00000", 1, None)
        logger.close()
        assert (logger.written, logger.dropped) == (0, 0)
    assert not root.exists()


def test_a_bad_record_is_dropped_not_raised(tmp_path):
    logger = PayloadLogger((tmp_path / "logs").as_uri(), options(), "m", warn_every=3600)
    logger.log(record(0, latency_ms="fast"))
    logger.log(record(1, retrieved_ids="docs/a.md#0"))
    logger.log(record(2, latency_ms=float("nan")))  # JSON holds no NaN: this record alone is dropped
    logger.log(record(3))
    logger.close()
    assert logger.dropped == 3 and logger.written == 1
