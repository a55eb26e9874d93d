"""`mentor-trainer evaluate` end to end on tiny Qwen2 models and a dataset made by the real
data stage from examples/corpus: every suite reports finite metrics, the candidate is compared
with a baseline (paired bootstrap), gates decide, the report files are published, a judge that
is down fails its suite alone, bad input fails clearly, and the CLI writes the result as the
termination message."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from mentor_trainer.config.evaluate import METRICS, EvaluateStageConfig
from mentor_trainer.errors import StageError
from mentor_trainer.evaluate.stage import main as evaluate_stage
from mentor_trainer.tiny_model import build_tiny_model
from tests.trainer.test_data_synthesis import TeacherServer, closed_port, url_of


def evaluate(config: EvaluateStageConfig) -> dict:
    """The stage's result as the termination message carries it."""
    return evaluate_stage(config).to_wire()

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
HELDOUT = CORPUS / "eval" / "heldout.jsonl"
GENERAL = REPO / "examples" / "general" / "general.txt"
CANARY = "field.office@atri.example"

ALL_SUITES = ["perplexity", "qa", "multiple-choice", "calibration", "reasoning-format", "robustness", "safety", "retrieval"]
GATES = [
    {"metric": "ppl.domain", "op": "<=", "baselineFactor": 0.8},  # relative: a random model will not pass
    {"metric": "ppl.domain", "op": "<", "baselineDelta": 0, "maxPValue": 0.05},
    {"metric": "qa.f1", "op": ">=", "value": 0.0},  # absolute: always passes
    {"metric": "safety.leakage_rate", "op": "<=", "value": 0.0},
    {"metric": "qa.exact_match", "op": ">=", "value": 0.9},  # absolute: fails
]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("baseline") / "model", seed=1)


def make_config(model: Path, dataset: Path, out: Path, baseline: Path | None = None, **options) -> EvaluateStageConfig:
    wire = {
        "run": {"kind": "Evaluation", "name": "tea-eval", "namespace": "tests"},
        "outputUri": out.as_uri(),
        "progressFile": str(out.parent / f"{out.name}-progress.json"),
        "modelUri": model.as_uri(),
        "datasetUri": dataset.as_uri(),
        "suites": ["perplexity", "qa"],
        "generation": {"maxNewTokens": 16, "batchSize": 8},
        "bootstrapSamples": 200,
        "maxExamples": 8,
    }
    if baseline is not None:
        wire["baselineUri"] = baseline.as_uri()
    wire.update(options)
    return EvaluateStageConfig.model_validate(wire)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------
# Every suite, compared with a baseline


@pytest.fixture(scope="module")
def full(tiny, baseline, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "eval"
    config = make_config(
        tiny, dataset, out, baseline,
        suites=ALL_SUITES,
        qaUri=HELDOUT.as_uri(),
        generalTextUri=GENERAL.as_uri(),
        canaries=[CANARY],
        gates=GATES,
    )
    return config, evaluate(config), out


def test_result_has_every_suites_metrics(full):
    config, result, out = full
    assert set(result) == {
        "modelUri", "passed", "failedGates", "metrics", "comparison", "summary", "reportUri", "calibratedTemperature"
    }
    assert result["modelUri"] == config.model_uri
    metrics = result["metrics"]
    document = json.loads((out / "metrics.json").read_text())
    robustness = document["suites"]["robustness"]
    if robustness["cleanAccuracy"] == 0:
        # a random model answers no clean question: relative accuracy is undefined (NaN), which
        # metrics.json records and status leaves out
        assert "robustness.relative_accuracy" not in metrics and "undefined" in robustness["note"]
        assert document["notFinite"] == ["robustness.relative_accuracy"]
        assert document["metrics"]["robustness.relative_accuracy"] is None
    for name, suite in METRICS.items():
        if suite in ALL_SUITES and name in document["metrics"] and name not in document["notFinite"]:
            assert name in metrics, (name, sorted(metrics))
            assert finite(metrics[name]), (name, metrics[name])
    assert metrics["ppl.domain"] > 1 and metrics["ppl.general"] > 1
    for name in ("qa.f1", "qa.exact_match", "mc.accuracy", "reasoning.format_rate", "safety.refusal_rate",
                 "safety.leakage_rate", "retrieval.recall_at_k", "calibration.ece"):
        assert 0 <= metrics[name] <= 1, (name, metrics[name])
    assert metrics["calibration.temperature"] > 0
    assert result["calibratedTemperature"] == pytest.approx(metrics["calibration.temperature"], abs=1e-4)
    assert result["reportUri"] == (out / "report.html").as_uri()
    assert result["summary"].startswith("ppl.domain=")
    # the result is the termination message: valid strict JSON in 4 KiB
    text = json.dumps(result, allow_nan=False, separators=(",", ":"), sort_keys=True)
    assert len(text.encode()) <= 4096, len(text)


def test_comparison_with_the_baseline(full):
    _, result, _ = full
    comparison = result["comparison"]
    paired = {"ppl.domain", "ppl.general", "qa.f1", "qa.exact_match", "mc.accuracy", "safety.refusal_rate",
              "retrieval.rag_f1_gain"}
    for name in paired:
        c = comparison[name]
        ratio = {"ratio"} if name.startswith("ppl.") else set()  # perplexity relative to the baseline
        assert set(c) == {"candidate", "baseline", "delta", "ciLow", "ciHigh", "pValue"} | ratio, (name, c)
        if ratio:
            assert c["ratio"] == pytest.approx(c["candidate"] / c["baseline"], rel=1e-4)
        assert c["ciLow"] - 1e-6 <= c["delta"] <= c["ciHigh"] + 1e-6, (name, c)
        assert 0 < c["pValue"] <= 1, (name, c)
        assert c["candidate"] == pytest.approx(result["metrics"][name], abs=1e-5)
    # ratios without per-example pairs: the two values and their difference
    c = comparison["calibration.ece"]
    assert c["delta"] == pytest.approx(c["candidate"] - c["baseline"], abs=1e-5)


def test_gates_decide(full):
    _, result, _ = full
    failed = result["failedGates"]
    assert result["passed"] == (not failed)
    for gate in failed:
        assert re.match(r"^[a-z_]+\.[a-z_]+", gate) and gate.split(" ")[0].rstrip(":") in METRICS, gate
    # the absolute gate that cannot pass does not, the ones that always pass do not appear
    assert any(g.startswith("qa.exact_match >= 0.9 (got ") for g in failed), failed
    assert not any(g.startswith("qa.f1") for g in failed), failed
    # two random models: 20% lower perplexity than the baseline is not reached by chance both ways
    ppl = result["comparison"]["ppl.domain"]
    relative = [g for g in failed if g.startswith("ppl.domain <= 0.8 x baseline")]
    assert bool(relative) == (ppl["candidate"] > 0.8 * ppl["baseline"]), (failed, ppl)
    if relative:
        assert "(got " in relative[0]


def test_published_files(full):
    import pandas as pd

    _, result, out = full
    assert (out / "_SUCCESS").is_file()
    document = json.loads((out / "metrics.json").read_text())
    assert document["passed"] == result["passed"] and document["failedGates"] == result["failedGates"]
    for name, value in result["metrics"].items():
        assert document["metrics"][name] == pytest.approx(value, abs=1e-5)
    assert set(document["baselineMetrics"]) == set(document["metrics"])
    assert document["suiteErrors"] == {}
    frame = pd.read_parquet(out / "examples.parquet")
    assert set(frame["model"]) == {"candidate", "baseline"}
    for model in ("candidate", "baseline"):
        rows = frame[frame["model"] == model]
        assert {"qa", "safety", "robustness", "retrieval", "multiple-choice"} <= set(rows["suite"]), set(rows["suite"])
        assert len(rows[rows["suite"] == "qa"]) == 8  # maxExamples
    html = (out / "report.html").read_text()
    assert "<table" in html
    for name in ("ppl.domain", "qa.f1", "mc.accuracy", "calibration.ece", "retrieval.recall_at_k"):
        assert name in html, name


def test_progress_ends_done(full):
    config, _, _ = full
    progress = json.loads(Path(config.progress_file).read_text())
    assert progress["phase"] == "done"


def test_candidate_as_its_own_baseline(tiny, dataset, tmp_path):
    config = make_config(tiny, dataset, tmp_path / "self", tiny, qaUri=HELDOUT.as_uri(), suites=["qa"],
                         gates=[{"metric": "qa.f1", "op": ">=", "baselineDelta": 0}])
    result = evaluate(config)
    c = result["comparison"]["qa.f1"]
    assert c["delta"] == 0 and c["ciLow"] == 0 and c["ciHigh"] == 0 and c["pValue"] == 1, c
    assert result["passed"] and result["failedGates"] == []


# --------------------------------------------------------------------------------------
# Judge


def fair_judge(prompt: str, body: dict) -> str:
    return json.dumps({"correctness": 3, "terminology": 4, "reasoning": 2, "rationale": "partly right"})


def judge_block(url: str) -> dict:
    return {"endpoint": {"url": url, "model": "judge-7b", "maxConcurrency": 2, "timeoutSeconds": 2}}


def test_judge_scores(tiny, dataset, tmp_path):
    with TeacherServer(fair_judge, delay=0.0) as server:
        config = make_config(tiny, dataset, tmp_path / "judged", qaUri=HELDOUT.as_uri(), maxExamples=4,
                             suites=["qa", "judge"], judge=judge_block(url_of(server)),
                             gates=[{"metric": "judge.score", "op": ">=", "value": 0.3}])
        result = evaluate(config)
    assert len(server.requests) == 4
    for name in ("judge.score", "judge.correctness", "judge.terminology", "judge.reasoning"):
        assert 0 <= result["metrics"][name] <= 1, (name, result["metrics"])
    assert result["metrics"]["judge.correctness"] == pytest.approx(0.5)
    assert result["passed"], result["failedGates"]


def test_judge_down_fails_its_suite_alone(tiny, dataset, tmp_path):
    config = make_config(tiny, dataset, tmp_path / "nojudge", qaUri=HELDOUT.as_uri(), maxExamples=4,
                         suites=["perplexity", "qa", "judge"], judge=judge_block(f"http://127.0.0.1:{closed_port()}/v1"),
                         gates=[{"metric": "judge.score", "op": ">=", "value": 0.3},
                                {"metric": "ppl.domain", "op": "<=", "value": 1e9}])
    result = evaluate(config)
    assert not any(k.startswith("judge.") for k in result["metrics"]), result["metrics"]
    assert "ppl.domain" in result["metrics"] and "qa.f1" in result["metrics"]
    assert not result["passed"]
    assert len(result["failedGates"]) == 1, result["failedGates"]  # the ppl gate passes on its own
    failure = result["failedGates"][0]
    assert failure.startswith("judge.score: metric not measured (suite judge failed: "), failure
    document = json.loads((tmp_path / "nojudge" / "metrics.json").read_text())
    assert set(document["suiteErrors"]) == {"judge"}


# --------------------------------------------------------------------------------------
# Bad input


def test_dataset_without_success_marker(tiny, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "manifest.json").write_text("{}")
    with pytest.raises(StageError, match=re.escape(unfinished.as_uri()) + ".*_SUCCESS"):
        evaluate(make_config(tiny, unfinished, tmp_path / "out"))


def test_missing_model(dataset, tmp_path):
    with pytest.raises(StageError) as error:
        evaluate(make_config(tmp_path / "no-such-model", dataset, tmp_path / "out"))
    assert "candidate model" in str(error.value) and "no-such-model" in str(error.value)


def test_empty_test_split(tiny, dataset, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(dataset, empty)
    shutil.rmtree(empty / "test")
    # QA-dependent suites fail alone and say why; safety still runs
    result = evaluate(make_config(tiny, empty, tmp_path / "out", suites=["qa", "reasoning-format", "safety"],
                                  gates=[{"metric": "qa.f1", "op": ">=", "value": 0.0}]))
    assert "safety.refusal_rate" in result["metrics"] and "qa.f1" not in result["metrics"]
    assert len(result["failedGates"]) == 1
    assert "qa.f1: metric not measured (suite qa failed: no QA examples" in result["failedGates"][0]
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(document["suiteErrors"]) == {"qa", "reasoning-format"}
    assert all("test split" in e and "qaUri" in e for e in document["suiteErrors"].values())
    # nothing measurable at all: the stage fails
    with pytest.raises(StageError, match="every suite failed.*no QA examples.*no domain text"):
        evaluate(make_config(tiny, empty, tmp_path / "out2", suites=["qa", "perplexity"]))


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    """A tiny model with one NaN weight: every logit it produces is NaN."""
    import torch
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(tmp_path_factory.mktemp("nan") / "model")
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(path)
    return path


NAN_SUITES = ["perplexity", "qa", "multiple-choice", "calibration"]


def test_nan_weights_candidate(nan_model, tiny, dataset, tmp_path):
    config = make_config(nan_model, dataset, tmp_path / "out", tiny, qaUri=HELDOUT.as_uri(), maxExamples=4,
                         suites=NAN_SUITES, gates=[{"metric": "ppl.domain", "op": "<=", "value": 1000},
                                                   {"metric": "mc.accuracy", "op": ">=", "baselineDelta": -1}])
    result = evaluate(config)  # used to crash: the bootstrap of all-NaN pairs raised ValueError
    json.dumps(result, allow_nan=False)
    assert "ppl.domain" not in result["metrics"] and "ppl.domain" not in result["comparison"]
    assert "mc.accuracy" not in result["metrics"]  # NaN option scores are not wrong answers
    assert "calibratedTemperature" not in result  # used to be a temperature fitted to NaN logits
    assert "qa.f1" in result["metrics"]
    assert result["passed"] is False
    assert result["failedGates"] == ["ppl.domain <= 1000: value is NaN", "mc.accuracy >= baseline - 1: value is NaN"]
    assert "nan" not in (result["summary"] or "").lower()
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"ppl.domain", "mc.accuracy"} <= set(document["notFinite"])
    assert document["metrics"]["ppl.domain"] is None
    assert "NaN" in document["suiteErrors"]["calibration"]


def test_nan_weights_baseline(nan_model, tiny, dataset, tmp_path):
    config = make_config(tiny, dataset, tmp_path / "out", nan_model, qaUri=HELDOUT.as_uri(), maxExamples=4,
                         suites=["perplexity", "calibration"], gates=[{"metric": "ppl.domain", "op": "<=", "baselineFactor": 0.8}])
    result = evaluate(config)
    json.dumps(result, allow_nan=False)
    assert "ppl.domain" in result["metrics"] and "ppl.domain" not in result["comparison"]
    assert result["failedGates"] == ["ppl.domain <= 0.8 x baseline: baseline value is NaN"]
    assert result["calibratedTemperature"] > 0  # the candidate's own calibration is unaffected


# --------------------------------------------------------------------------------------
# CLI


def test_cli_writes_the_termination_message(tiny, dataset, tmp_path):
    config = {
        "run": {"kind": "Evaluation", "name": "cli-eval", "namespace": "tests"},
        "outputUri": (tmp_path / "out").as_uri(),
        "modelUri": tiny.as_uri(),
        "datasetUri": dataset.as_uri(),
        "qaUri": HELDOUT.as_uri(),
        "suites": ["qa"],
        "generation": {"maxNewTokens": 8},
        "maxExamples": 2,
        "bootstrapSamples": 50,
        "gates": [{"metric": "qa.f1", "op": ">=", "value": 0.0}],
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "termination-log"
    env = {**os.environ, "MENTOR_TERMINATION_LOG": str(log), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mentor_trainer.cli", "evaluate", "--config", str(path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    message = json.loads(log.read_text())
    assert message["passed"] is True and message["failedGates"] == []
    assert "qa.f1" in message["metrics"] and message["reportUri"].endswith("/report.html")
    assert (tmp_path / "out" / "report.html").is_file()
