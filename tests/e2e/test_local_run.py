"""`mentor run`: the same files as on a cluster, run as local processes in dependency order."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from mentor_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_dataset_finetune_and_evaluation_for_real(tmp_path, capsys):
    from mentor_trainer.models import build_tiny_model

    build_tiny_model(ROOT / ".mentor/tiny-model")  # what `make demo` does first
    root = tmp_path / "run"
    assert main(["run", "-f", str(ROOT / "examples/quickstart"), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "<== DomainDataset/quickstart-corpus: Succeeded" in out
    assert "<== FineTuneJob/quickstart-expert: Succeeded" in out
    ftj = json.loads((root / "status/finetunejob-quickstart-expert.json").read_text())["status"]
    metrics = ftj["metrics"]
    assert metrics["eval_loss"] < metrics["base_eval_loss"], metrics
    assert Path(ftj["modelUri"].removeprefix("file://"), "config.json").is_file()
    assert ftj["progress"]["phase"] == "done" and ftj["progress"]["step"] == ftj["progress"]["totalSteps"] > 0
    assert f"[quickstart-expert] progress: step {ftj['progress']['totalSteps']}/" in out
    status = json.loads((root / "status/domaindataset-quickstart-corpus.json").read_text())["status"]
    output = Path(status["outputUri"].removeprefix("file://"))
    assert output.is_relative_to(root / "artifacts")
    manifest = json.loads((output / "manifest.json").read_text())
    assert status["stats"]["documentsKept"] == manifest["stats"]["documentsKept"] > 0
    assert status["contentHash"] == manifest["contentHash"]
    config = json.loads((root / "configs/domaindataset-quickstart-corpus-data.json").read_text())
    # relative file:// sources are resolved against the resource file's directory
    assert config["sources"][0]["uri"] == (ROOT / "examples/corpus/docs").as_uri() + "/"
    assert config["tracking"]["uri"] == f"sqlite:///{root.resolve() / 'mlflow.db'}"

    # the evaluation: fine-tuned vs base model on held-out questions, same examples, paired
    assert "<== Evaluation/quickstart-eval: Succeeded" in out
    evaluation = json.loads((root / "status/evaluation-quickstart-eval.json").read_text())["status"]
    assert evaluation["passed"] is True and evaluation["failedGates"] == []
    assert [c["status"] for c in evaluation["conditions"] if c["type"] == "Passed"] == ["True"]
    domain = evaluation["comparison"]["ppl.domain"]
    assert domain["candidate"] <= 0.8 * domain["baseline"], domain  # the domain is learnt ...
    assert domain["ciHigh"] < 0 and domain["pValue"] < 0.05, domain  # ... significantly
    assert domain["ratio"] == pytest.approx(domain["candidate"] / domain["baseline"], rel=1e-3)
    assert "ratio" in evaluation["comparison"]["ppl.general"]  # general language, reported beside it
    from mlflow.tracking import MlflowClient

    training_run = MlflowClient(f"sqlite:///{root.resolve() / 'mlflow.db'}").get_run(ftj["mlflowRunId"])
    assert training_run.data.metrics["eval.ppl.domain"] == pytest.approx(evaluation["metrics"]["ppl.domain"], rel=1e-4)
    assert evaluation["modelUri"] == ftj["modelUri"]
    assert Path(evaluation["reportUri"].removeprefix("file://")).is_file()
    assert "Evaluation quickstart-eval: passed" in out and "ppl.domain" in out.split("Evaluation quickstart-eval: passed")[1]


def test_dependency_order_and_a_failed_stage_stops_its_dependents(tmp_path, capsys):
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    rng = random.Random(0)
    words = "tea terrace harvest oolong leaf cultivar altitude rainfall oxidation roast picker wither".split()
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(words) + str(rng.randint(0, 9)) for _ in range(80))} for i in range(12)]
    resources = [
        # dependents first: the executor must reorder
        {"kind": "FineTuneJob", "metadata": {"name": "ft"}, "spec": {"baseModel": "file:///models/base", "datasetRef": {"name": "empty"}}},
        {"kind": "DomainDataset", "metadata": {"name": "empty"}, "spec": {"sources": [{"name": "s", "inline": [{"id": "x", "text": "tiny"}]}]}},
        {"kind": "DomainDataset", "metadata": {"name": "good"}, "spec": {"sources": [{"name": "s", "inline": docs}], "filters": {"minChars": 10}}},
    ]
    (pipeline / "all.yaml").write_text(yaml.safe_dump_all([{"apiVersion": "mentor.dev/v1alpha1", **r} for r in resources]))
    root = tmp_path / "run"
    assert main(["run", "-f", str(pipeline), "--root", str(root)]) == 1
    out = capsys.readouterr().out
    order = out.splitlines()[0]
    assert order.index("DomainDataset/empty") < order.index("FineTuneJob/ft")
    assert "<== DomainDataset/good: Succeeded" in out
    empty = json.loads((root / "status/domaindataset-empty.json").read_text())["status"]
    assert empty["phase"] == "Failed" and "too-short" in empty["message"]
    ft = json.loads((root / "status/finetunejob-ft.json").read_text())["status"]
    assert ft["phase"] == "Failed"
    assert ft["message"].startswith("spec.datasetRef: DomainDataset 'empty' is Failed, waiting for Succeeded")
    assert not (root / "configs/finetunejob-ft-sft.json").exists(), "a stage whose input failed must not run"


def test_invalid_files_run_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "mentor.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ft"},
                                   "spec": {"baseModel": "ftp://x", "datasetRef": {"name": "d"}}}))
    assert main(["run", "-f", str(bad), "--root", str(tmp_path / "run")]) == 1
    assert f"{bad}: FineTuneJob/ft: spec.baseModel" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
