"""The retraining loop's data path on a real MinIO: the model server's payload logger writes
traffic and feedback to a bucket, the drift check reads it there and reports the drifted
window, and the data stage turns exactly that window's corrections into training examples."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq

from mentor_trainer import storage
from mentor_trainer.config import DataStageConfig
from mentor_trainer.config.deploy import DriftStageConfig, PayloadLogging
from mentor_trainer.data import main as build_dataset
from mentor_trainer.drift import main as check_drift
from mentor_trainer.serve.payload_log import PayloadLogger, PayloadRecord
from tests.trainer.test_drift import TOPIC, in_domain


def _record(request_id: str, prompt: str, hour: int, minute: int) -> PayloadRecord:
    return PayloadRecord(
        request_id=request_id, endpoint="/v1/chat/completions", prompt=prompt, completion="I am not sure.",
        retrieved_ids=[], retrieval_scores=[], latency_ms=80.0, ttft_ms=None, prompt_tokens=12, completion_tokens=5,
        model_version="v1", timestamp=f"2026-11-30T{hour:02d}:{minute:02d}:00Z",
    )


def _log(uri: str, prompts: list[str], hour: int, corrections: dict[int, str] | None = None) -> None:
    logger = PayloadLogger(uri, PayloadLogging(flush_every=25, flush_seconds=3600), "mentor")
    for i, prompt in enumerate(prompts):
        logger.log(_record(f"r{hour}-{i}", prompt, hour, i % 60))
    for i, correction in (corrections or {}).items():
        logger.feedback(f"r{hour}-{i}", -1.0, correction)
    logger.close()
    assert logger.dropped == 0 and logger.written == len(prompts) + len(corrections or {})  # requests and feedback


def test_drifted_window_in_the_bucket_becomes_the_retraining_data(s3_env, bucket):
    prompts = in_domain()
    order = np.random.default_rng(3).permutation(len(prompts))
    reference, logs = f"s3://{bucket}/reference/", f"s3://{bucket}/serve/payload-logs/"
    _log(reference, [prompts[i] for i in order[:60]], hour=1)
    _log(logs, [prompts[i] for i in order[60:80]], hour=2)  # an earlier, in-domain hour
    corrections = {i: f"A careful answer about {TOPIC[i].split()[-1].strip('?')}." for i in range(0, len(TOPIC), 4)}
    _log(logs, TOPIC, hour=3, corrections=corrections)  # then another topic, users correcting some answers

    result = check_drift(DriftStageConfig.model_validate({
        "run": {"kind": "ModelDeployment", "name": "md", "namespace": "tests"},
        "outputUri": f"s3://{bucket}/serve/", "payloadLogUri": logs, "referenceUri": reference,
        "drift": {"windowRequests": len(TOPIC), "minRequests": 20},
    }))
    assert result.drifted is True and result.requests == len(TOPIC) and result.labelled_requests == len(corrections)
    assert (result.window_start, result.window_end) == ("2026-11-30T03:00:00Z", f"2026-11-30T03:{len(TOPIC) - 1:02d}:00Z")
    assert result.report_uri.startswith(f"s3://{bucket}/serve/") and storage.exists(result.report_uri)

    out = f"s3://{bucket}/datasets/retrain/"
    dataset = build_dataset(DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "retrain", "namespace": "tests"}, "outputUri": out,
        "formats": ["sft"], "split": {"train": 0.5, "validation": 0.25, "test": 0.25},
        "sources": [{"name": "traffic", "uri": logs, "format": "payload-log",
                     "since": result.window_start, "until": result.window_end}],
    }))
    # only the drifted hour is read: its corrections are examples, its other requests unlabelled
    assert dataset.stats.dropped_by_reason.get("traffic-unlabelled") == len(TOPIC) - len(corrections)
    answers = {
        row["messages"][1]["content"]
        for info in storage.list_objects(out) if "/sft-" in f"/{info.name}" and info.name.endswith(".parquet")
        for row in pq.read_table(io.BytesIO(storage.read_bytes(info.uri))).to_pylist()
    }
    assert answers == set(corrections.values())
