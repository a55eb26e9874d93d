"""`mentor run`: the same files as on a cluster, run as local processes in dependency order."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest
import yaml

from mentor_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]


QUICKSTART = ROOT / "examples/quickstart"
RLHF = ROOT / "examples/rlhf"
HELDOUT = [json.loads(line) for line in (ROOT / "examples/corpus/eval/heldout.jsonl").read_text().splitlines()]


def quickstart_copy(target: Path, base_model: Path, overrides: dict[str, dict], source: Path = QUICKSTART) -> Path:
    """The quickstart's files (or another example directory's) with ``base_model`` in place of
    the converted SmolLM2, relative file:// URIs made absolute, and ``overrides`` (kind -> spec
    fields) merged into the specs."""

    def rewrite(value):
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, str) and value.startswith("file://") and not value.startswith("file:///"):
            # normpath, not resolve: .mentor/smollm2 is a link into the model cache after `make demo`
            path = Path(os.path.normpath(source / value.removeprefix("file://")))
            return base_model.as_uri() + "/" if path == ROOT / ".mentor/smollm2" else path.as_uri() + "/" * value.endswith("/")
        return value

    def merge(spec: dict, changes: dict) -> dict:
        for key, value in changes.items():
            spec[key] = merge(spec.get(key) or {}, value) if isinstance(value, dict) else value
        return spec

    target.mkdir(parents=True)
    for path in source.glob("*.yaml"):
        document = rewrite(yaml.safe_load(path.read_text()))
        merge(document["spec"], overrides.get(document["kind"], {}))
        (target / path.name).write_text(yaml.safe_dump(document))
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def normalized(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def dataset_texts(output: Path) -> tuple[list[str], list[str]]:
    """Every split of a dataset: (document texts, chat turns)."""
    import pyarrow.parquet as pq

    documents, turns = [], []
    for path in output.glob("*/*.parquet"):
        if path.parent.name == "index":
            continue
        for row in pq.read_table(path).to_pylist():
            documents += [row["text"]] if row.get("text") else []
            turns += [m["content"] for m in row.get("messages") or []]
    return documents, turns


@pytest.mark.parametrize("threads", ["1", "2"])
def test_quickstart_runs_dataset_finetune_and_evaluation_for_real(tmp_path, capsys, monkeypatch, threads):
    """The quickstart pipeline on the tiny model (seconds, any thread count): every stage runs
    for real; the effects asserted hold by a wide margin on any CPU."""
    from mentor_trainer.tiny_model import build_tiny_model

    monkeypatch.setenv("OMP_NUM_THREADS", threads)  # the stages are subprocesses
    tiny = build_tiny_model(tmp_path / "tiny")
    pipeline = quickstart_copy(tmp_path / "pipeline", tiny, {
        # a random 0.3M-parameter model: adapters and a high learning rate, a few dozen steps
        "FineTuneJob": {"method": "lora", "lora": {"r": 16, "alpha": 32},
                        "hyperparameters": {"maxSteps": 30, "learningRate": 0.01, "maxSeqLength": 256}},
        "Evaluation": {"generation": {"maxNewTokens": 16, "batchSize": 16}},
        # the verdict on a random tiny model is not asserted, so the deployment does not wait on it
        # (and retraining, which needs its gates, is off)
        "ModelDeployment": {"evaluationRef": None, "maxNewTokens": 8, "monitoring": {"retrain": {"enabled": False}}},
    })
    root = tmp_path / "run"
    port = free_port()
    assert main(["run", "-f", str(pipeline), "--root", str(root), "--serve-seconds", "0", "--port", str(port), "--ask", "Hello?"]) == 0
    out = capsys.readouterr().out
    assert "<== DomainDataset/quickstart-corpus: Succeeded" in out
    assert "<== FineTuneJob/quickstart-expert: Succeeded" in out
    ftj = json.loads((root / "status/finetunejob-quickstart-expert.json").read_text())["status"]
    metrics = ftj["metrics"]
    # answers learnt: 8.29 -> 7.61 nats here under 1 and 2 threads; float noise is ~1e-3
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 0.3, metrics
    assert Path(ftj["modelUri"].removeprefix("file://"), "config.json").is_file()
    assert ftj["progress"]["phase"] == "done" and ftj["progress"]["step"] == ftj["progress"]["totalSteps"] == 30
    assert f"[quickstart-expert] progress: step {ftj['progress']['totalSteps']}/" in out
    status = json.loads((root / "status/domaindataset-quickstart-corpus.json").read_text())["status"]
    output = Path(status["outputUri"].removeprefix("file://"))
    assert output.is_relative_to(root / "artifacts")
    manifest = json.loads((output / "manifest.json").read_text())
    assert status["stats"]["documentsKept"] == manifest["stats"]["documentsKept"] > 0
    assert status["contentHash"] == manifest["contentHash"]
    config = json.loads((root / "configs/domaindataset-quickstart-corpus-data.json").read_text())
    assert config["sources"][0]["uri"] == (ROOT / "examples/corpus/docs").as_uri() + "/"
    assert config["tracking"]["uri"] == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    # documentsInTrain: every document trains, only the QA pairs are split
    splits = manifest["splits"]
    assert splits["validation"]["pretrain"]["examples"] == splits["test"]["pretrain"]["examples"] == 0, splits
    assert splits["train"]["pretrain"]["examples"] > 0 and splits["validation"]["sft"]["examples"] > 0, splits

    # the evaluation: fine-tuned vs base model on the held-out questions, closed book and with RAG
    assert "<== Evaluation/quickstart-eval: Succeeded" in out
    evaluation = json.loads((root / "status/evaluation-quickstart-eval.json").read_text())["status"]
    for metric in ("qa.f1", "qa.exact_match", "qa.fact", "retrieval.rag_f1", "retrieval.rag_exact_match",
                   "retrieval.rag_fact", "retrieval.recall_at_k"):
        c = evaluation["comparison"][metric]
        assert c["ciLow"] - 1e-6 <= c["delta"] <= c["ciHigh"] + 1e-6 and 0 < c["pValue"] <= 1, (metric, c)
    assert evaluation["metrics"]["retrieval.recall_at_k"] >= 0.8  # BM25 finds the evidence (model-independent)
    assert isinstance(evaluation["passed"], bool)  # the verdict on a random tiny model is not asserted
    assert evaluation["modelUri"] == ftj["modelUri"]
    document = json.loads(Path(evaluation["outputUri"].removeprefix("file://"), "metrics.json").read_text())
    assert [a["id"] for a in document["answers"]] == [h["id"] for h in HELDOUT]
    assert all({"candidate", "baseline", "candidateRag", "baselineRag"} <= set(a) for a in document["answers"])
    from mlflow.tracking import MlflowClient

    training_run = MlflowClient(f"sqlite:///{root.resolve() / 'mlflow.db'}").get_run(ftj["mlflowRunId"])
    assert training_run.data.metrics["eval.qa.fact"] == pytest.approx(evaluation["metrics"]["qa.fact"], rel=1e-4)
    # the summary: the evaluation's own output is its report; the table; answers side by side
    summary_line = next(line for line in out.splitlines() if line.startswith("Evaluation ") and "quickstart-eval" in line and ".html" in line)
    assert summary_line.endswith(evaluation["reportUri"])
    tail = out.split("Evaluation quickstart-eval: ")[1]
    assert "qa.fact" in tail and "retrieval.rag_f1" in tail
    assert f"Q: {HELDOUT[0]['question']}" in tail and "model + RAG:" in tail and "baseline:" in tail

    # the deployment: exported, served on localhost, asked, stopped; the request was logged
    assert "<== ModelDeployment/quickstart-serve: Succeeded" in out
    assert f"serving at http://127.0.0.1:{port}" in out and "Q: Hello?" in out and "A: " in out
    deployment = json.loads((root / "status/modeldeployment-quickstart-serve.json").read_text())["status"]
    assert deployment["modelVersion"] == ftj["modelUri"] and deployment["quantization"] == "none"
    assert Path(deployment["modelUri"].removeprefix("file://"), "generation_config.json").is_file()
    logged = list(Path(deployment["outputUri"].removeprefix("file://"), "payloads", "requests").rglob("part-*"))
    assert logged, "the example request was not logged"


@pytest.mark.slow
def test_quickstart_on_the_real_model_scores_heldout_answers(tmp_path, capsys):
    """The quickstart as `make demo` runs it, on SmolLM2-135M-Instruct, cut to a few training
    steps and eight held-out questions: the real model converts, trains and answers, and
    every answer of both models is scored closed book and with retrieval."""
    from mentor_trainer.gguf import smollm2_dir

    questions = tmp_path / "heldout.jsonl"
    questions.write_text("".join(json.dumps(item) + "\n" for item in HELDOUT[:8]))
    pipeline = quickstart_copy(tmp_path / "pipeline", smollm2_dir(), {
        "FineTuneJob": {"hyperparameters": {"epochs": 1, "maxSteps": 2, "perDeviceBatchSize": 2, "maxSeqLength": 256},
                        "evaluation": {"everySteps": 2}, "checkpointing": {"everySteps": 2}},
        "Evaluation": {"qaUri": questions.as_uri(), "generation": {"maxNewTokens": 12}, "bootstrapSamples": 200},
        # the verdict after 2 steps is not asserted (and without it, no retraining)
        "ModelDeployment": {"evaluationRef": None, "maxNewTokens": 24, "monitoring": {"retrain": {"enabled": False}}},
    })
    root = tmp_path / "run"
    question = HELDOUT[0]["question"]
    main(["run", "-f", str(pipeline), "--root", str(root), "--serve-seconds", "0", "--port", str(free_port()), "--ask", question])
    out = capsys.readouterr().out
    for step in ("DomainDataset/quickstart-corpus", "FineTuneJob/quickstart-expert", "Evaluation/quickstart-eval", "ModelDeployment/quickstart-serve"):
        assert f"<== {step}: Succeeded" in out, out[-3000:]
    # the served model answers the question with passages retrieved from the dataset's index
    answer = out.split(f"Q: {question}")[1]
    assert "A: " in answer and "retrieved: " in answer, answer[:2000]
    ftj = json.loads((root / "status/finetunejob-quickstart-expert.json").read_text())["status"]
    assert ftj["progress"]["step"] == 2 and ftj["metrics"]["base_eval_loss"] < 10  # a model that knows language
    evaluation = json.loads((root / "status/evaluation-quickstart-eval.json").read_text())["status"]
    document = json.loads(Path(evaluation["outputUri"].removeprefix("file://"), "metrics.json").read_text())
    assert [a["id"] for a in document["answers"]] == [h["id"] for h in HELDOUT[:8]]
    for answer in document["answers"]:
        assert all(answer[k].strip() for k in ("candidate", "baseline", "candidateRag", "baselineRag")), answer
    assert document["pairedExamples"]["qa.fact"] == document["pairedExamples"]["retrieval.rag_f1"] == 8
    for metric in ("qa.fact", "qa.f1", "retrieval.rag_fact", "retrieval.rag_f1"):
        assert 0 <= evaluation["metrics"][metric] <= 1 and 0 < evaluation["comparison"][metric]["pValue"] <= 1


@pytest.mark.slow
@pytest.mark.timeout(1500)  # seven stages as subprocesses (about 5 minutes on 2 shared cores)
def test_rlhf_examples_run_after_the_quickstart(tmp_path, capsys):
    """examples/rlhf/ on the quickstart's output with the tiny model, each job cut to a few
    steps: preference data, DPO, GRPO, a reward model, PPO on it (a reference across RLHFJobs)
    and distillation from the FineTuneJob all run through `mentor run` and publish a model."""
    from mentor_trainer.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    short = {"hyperparameters": {"maxSteps": 2, "maxSeqLength": 256, "perDeviceBatchSize": 4},
             "generation": {"numGenerations": 4, "maxNewTokens": 8}}
    quickstart = quickstart_copy(tmp_path / "quickstart", tiny, {
        "FineTuneJob": {"method": "lora", "lora": {"r": 8, "alpha": 16}, "hyperparameters": {"maxSteps": 2, "maxSeqLength": 256}},
    })
    for name in ("evaluation.yaml", "deployment.yaml"):  # not needed here
        (quickstart / name).unlink()
    rlhf = quickstart_copy(tmp_path / "rlhf", tiny, {"RLHFJob": short}, source=RLHF)
    root = tmp_path / "run"
    assert main(["run", "-f", str(quickstart), "-f", str(rlhf), "--root", str(root)]) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    for name in ("quickstart-dpo", "quickstart-grpo", "quickstart-reward-model", "quickstart-ppo", "quickstart-distill"):
        assert f"<== RLHFJob/{name}: Succeeded" in out
        status = json.loads((root / f"status/rlhfjob-{name}.json").read_text())["status"]
        assert Path(status["modelUri"].removeprefix("file://"), "config.json").is_file(), status
        assert status["metrics"]["steps"] == 2
    ppo = json.loads((root / "configs/rlhfjob-quickstart-ppo-rlhf.json").read_text())
    reward_model = json.loads((root / "status/rlhfjob-quickstart-reward-model.json").read_text())["status"]
    assert ppo["rewardModel"] == reward_model["modelUri"]


def test_heldout_questions_never_reach_training(tmp_path):
    """No held-out question or answer is in any split of the quickstart's dataset: the
    evaluation measures recall of facts read in documents, not of questions seen in training."""
    from mentor_operator.resources import load

    from mentor_trainer.config import DataStageConfig
    from mentor_trainer.data import main as data_main
    from mentor_trainer.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    pipeline = quickstart_copy(tmp_path / "pipeline", tiny, {})
    documents, problems = load([str(pipeline / "dataset.yaml")])
    assert not problems
    out = tmp_path / "dataset"
    spec = documents[0].body["spec"]
    data_main(DataStageConfig.model_validate(
        {**spec, "run": {"kind": "DomainDataset", "name": "quickstart-corpus", "namespace": "tests"}, "outputUri": out.as_uri()}
    ))
    documents, turns = ([normalized(t) for t in texts] for texts in dataset_texts(out))
    assert len(documents) > 20 and len(turns) > 40
    for item in HELDOUT:
        question, answer = normalized(item["question"]), normalized(item["answer"])
        assert not any(question in text for text in documents + turns), item["id"]
        assert not any(answer in turn for turn in turns), item["id"]  # (the documents state it: by design)


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


def test_an_output_inside_an_input_fails_before_anything_runs(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("tea " * 50)
    resource = {"apiVersion": "mentor.dev/v1alpha1", "kind": "DomainDataset", "metadata": {"name": "d"},
                "spec": {"sources": [{"name": "s", "uri": f"file://{docs}/"}], "outputUri": f"file://{docs}/out/"}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(resource))
    root = tmp_path / "run"
    assert main(["run", "-f", str(tmp_path / "d.yaml"), "--root", str(root)]) == 1
    status = json.loads((root / "status/domaindataset-d.json").read_text())["status"]
    assert status["phase"] == "Failed" and "overlaps spec.sources[0].uri" in status["message"]
    assert not (docs / "out").exists() and (docs / "a.txt").exists()
