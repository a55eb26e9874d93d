"""The termination message a stage leaves: Kubernetes keeps 4096 bytes of it."""

from __future__ import annotations

import json

from mentor_trainer import cli
from mentor_trainer.config.sft import TrainingResult


def test_a_large_result_stays_valid_json_within_the_limit(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("MENTOR_TERMINATION_LOG", str(log))
    metrics = {f"rewards/term-{i:03d}/mean": 0.123456 for i in range(300)}  # ~10 KB of metrics
    result = TrainingResult(model_uri="s3://bucket/runs/a/model/", mlflow_run_id="r1", metrics=metrics)
    cli.write_termination(cli.result_message(result.to_wire()))
    text = log.read_bytes()
    assert len(text) <= cli.MAX_MESSAGE
    wire = json.loads(text)  # cut by fields, never mid-JSON
    assert wire["truncated"] == ["metrics"]
    parsed = TrainingResult.from_wire(wire)
    assert parsed.model_uri == result.model_uri and parsed.mlflow_run_id == "r1"
    assert 0 < len(parsed.metrics) < 300 and set(parsed.metrics) <= set(metrics)
    # a result that fits is written whole, with no "truncated"
    small = TrainingResult(model_uri="s3://b/m/", metrics={"loss": 1.0}).to_wire()
    assert json.loads(cli.result_message(small)) == small


def test_a_long_error_is_cut_by_bytes_keeping_its_start(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("MENTOR_TERMINATION_LOG", str(log))
    message = "dataset s3://b/d/ has no usable rows: " + "数据" * 3000  # 3 bytes a character in UTF-8
    cli.write_termination(message)
    text = log.read_bytes()
    assert len(text) <= cli.MAX_MESSAGE
    assert text.decode().startswith("dataset s3://b/d/ has no usable rows")  # whole characters only
