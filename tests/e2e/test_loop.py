"""`mentor loop` on the tiny model: the quickstart served, in-domain then shifted traffic with
corrections, the drift check, the retraining it starts and the served model after it; and
`mentor traffic` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mentor_operator.cli import main

from .test_local_run import ROOT, free_port, quickstart_copy

TRAFFIC = ROOT / "examples/quickstart/traffic"
SHIFTED = 12  # requests of the drifted window: enough for minRequests, few for a CPU
# a loop that retrains runs the quickstart's stages twice: ~5 minutes on 2 idle cores, twice
# that beside another job (the default timeout is 600 s)
RETRAINING_TIMEOUT = 1500


def traffic_dir(target: Path, shifted: bool) -> Path:
    """The first lines of the shipped prompt sets (the shifted one only when asked)."""
    target.mkdir()
    names = ("in-domain.jsonl", "shifted.jsonl") if shifted else ("in-domain.jsonl",)
    for name in names:
        lines = (TRAFFIC / name).read_text().splitlines()[:SHIFTED]
        (target / name).write_text("\n".join(lines) + "\n")
    return target


def tiny_pipeline(tmp_path: Path, gates: list[dict]) -> Path:
    """The quickstart on the tiny model, cut to seconds a stage, with `gates` deciding the
    Evaluations (a random tiny model's quality is not what is tested)."""
    from mentor_trainer.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    return quickstart_copy(tmp_path / "pipeline", tiny, {
        "FineTuneJob": {"method": "lora", "lora": {"r": 8, "alpha": 16},
                        "hyperparameters": {"maxSteps": 4, "learningRate": 0.01, "maxSeqLength": 128},
                        "evaluation": {"everySteps": 4}, "checkpointing": {"everySteps": 4}},
        "Evaluation": {"generation": {"maxNewTokens": 4, "batchSize": 16}, "bootstrapSamples": 100, "gates": gates},
        "ModelDeployment": {
            "maxNewTokens": 4,
            "logging": {"flushSeconds": 1},
            "monitoring": {"drift": {"windowRequests": SHIFTED, "minRequests": SHIFTED - 2},
                           # "no worse than the deployed model" within 1: any F1 passes
                           "retrain": {"regressionTolerance": 1.0}},
        },
    })


def status(root: Path, kind: str, name: str) -> dict:
    return json.loads((root / f"status/{kind.lower()}-{name}.json").read_text())["status"]


def retraining_resources(root: Path) -> list[dict]:
    files = list((root / "retrainings").glob("*.yaml"))
    assert len(files) == 1, files
    return list(yaml.safe_load_all(files[0].read_text()))


def run_loop(pipeline: Path, root: Path, traffic: Path, capsys) -> tuple[int, str]:
    code = main(["loop", "-f", str(pipeline), "--root", str(root), "--port", str(free_port()), "--traffic-dir", str(traffic),
                 "--concurrency", "2", "--ask", "Hello?"])
    return code, capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(RETRAINING_TIMEOUT)
def test_drift_starts_a_retraining_whose_passing_candidate_is_served(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stages are subprocesses on 2 shared cores
    pipeline = tiny_pipeline(tmp_path, [{"metric": "qa.f1", "op": ">=", "value": 0}])
    root = tmp_path / "loop"
    code, out = run_loop(pipeline, root, traffic_dir(tmp_path / "traffic", shifted=True), capsys)
    assert code == 0, out[-4000:]
    assert "<== Traffic/shifted: Succeeded" in out and f"{SHIFTED} request(s) answered, 0 failed" in out
    assert "<== DriftCheck/quickstart-serve: Succeeded" in out and "drifted over" in out, out[-4000:]

    # the four resources plan_retraining makes, run in order; the dataset read the drifted window
    resources = retraining_resources(root)
    assert [r["kind"] for r in resources] == ["DomainDataset", "FineTuneJob", "Evaluation", "Evaluation"]
    name = resources[0]["metadata"]["name"]
    for resource in resources:
        assert status(root, resource["kind"], resource["metadata"]["name"])["phase"] == "Succeeded", resource["metadata"]
    traffic_source = resources[0]["spec"]["sources"][-1]
    assert traffic_source["format"] == "payload-log" and traffic_source["since"] and traffic_source["until"]
    dataset = status(root, "DomainDataset", name)
    assert dataset["stats"]["documentsKept"] > 0
    training = status(root, "FineTuneJob", name)
    original = status(root, "FineTuneJob", "quickstart-expert")
    assert resources[1]["spec"]["baseModel"] == original["modelUri"]  # fine-tunes the deployed model further

    # both gates passed: the candidate is served now, and both models answered a shifted question
    deployment = status(root, "ModelDeployment", "quickstart-serve")
    assert deployment["modelVersion"] == training["modelUri"] != original["modelUri"]
    assert f"the old model ({original['modelUri']})" in out and f"the new model ({training['modelUri']})" in out
    assert f"<== Retraining/{name}: Succeeded" in out
    table = out.split("\nSTEP ")[1]
    for step in ("DomainDataset", "FineTuneJob", "Evaluation", "ModelDeployment", "Traffic", "DriftCheck", "Retraining"):
        assert f"\n{step} " in table, table


@pytest.mark.slow
@pytest.mark.timeout(RETRAINING_TIMEOUT)
def test_failed_gates_keep_the_old_model(tmp_path, capsys, monkeypatch):
    """A gate on qa.fact (does the answer state the item's key fact) passes on the held-out
    questions, which name their facts, and cannot pass on the retraining's dataset, whose
    questions name none (not measured): the loop says which gate failed and keeps serving the
    old model."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pipeline = tiny_pipeline(tmp_path, [{"metric": "qa.fact", "op": ">=", "value": 0}])
    root = tmp_path / "loop"
    code, out = run_loop(pipeline, root, traffic_dir(tmp_path / "traffic", shifted=True), capsys)
    assert code == 0, out[-4000:]  # a refused candidate is an outcome of the loop, not a failure
    name = retraining_resources(root)[0]["metadata"]["name"]
    assert status(root, "Evaluation", "quickstart-eval")["passed"] is True
    assert status(root, "Evaluation", name)["passed"] is False
    assert f"<== Retraining/{name}: Failed in " in out and "the candidate did not pass: qa.fact: metric not measured" in out
    original = status(root, "FineTuneJob", "quickstart-expert")["modelUri"]
    assert status(root, "ModelDeployment", "quickstart-serve")["modelVersion"] == original
    assert f"still serving {original}" in out and "the new model (" not in out


def test_traffic_sends_prompts_and_feedback_that_joins_the_logged_requests(tmp_path, capsys):
    """`mentor traffic` against the real server: every request answered and logged, each
    correction and rating stored under the id the payload log records (what a retraining joins)."""
    from mentor_trainer.serve.payload_log import read_feedback, read_records
    from mentor_trainer.tiny_model import build_tiny_model

    from tests.serving.mentor_server import MentorServer, serve_config

    logs = tmp_path / "logs"
    config = serve_config("tiny", build_tiny_model(tmp_path / "tiny"), tmp_path / "out", maxNewTokens=4,
                          logging={"enabled": True}, payloadLogUri=logs.as_uri(), modelVersion="v1")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(item) for item in [
        {"prompt": "Where is the tea grown?", "rating": 1},
        {"prompt": "Wie öle ich die Kette?", "correction": "Alle 300 Kilometer, sparsam."},
        {"prompt": "Hello?"},
    ]) + "\n")
    with MentorServer(config, tmp_path / "work") as server:
        assert main(["traffic", "--url", server.http_url, "--file", str(prompts), "--count", "5", "--concurrency", "2"]) == 0
    assert "5 request(s) answered, 0 failed (request or feedback), 4 feedback posted" in capsys.readouterr().out
    records = {r.request_id: r for r in read_records(logs.as_uri())}  # flushed at shutdown
    feedback = read_feedback(logs.as_uri())
    assert len(records) == 5 and len(feedback) == 4  # the first two prompts twice
    assert all(f["request_id"] in records for f in feedback)
    corrected = next(f for f in feedback if f["correction"])
    assert records[corrected["request_id"]].prompt == "Wie öle ich die Kette?"
    assert main(["traffic", "--url", server.http_url, "--file", str(prompts)]) == 1  # the server is gone: counted, not raised
    assert "3 failed" in capsys.readouterr().out


def test_no_shift_starts_no_retraining(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pipeline = tiny_pipeline(tmp_path, [{"metric": "qa.f1", "op": ">=", "value": 0}])
    root = tmp_path / "loop"
    code, out = run_loop(pipeline, root, traffic_dir(tmp_path / "traffic", shifted=False), capsys)
    assert code == 0, out[-4000:]
    assert "<== DriftCheck/quickstart-serve: Succeeded" in out
    assert "no retraining" in out and not (root / "retrainings").exists()
