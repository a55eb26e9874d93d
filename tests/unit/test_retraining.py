"""A ModelDeployment's retraining decisions (pure): when drift starts one, what it is made of,
how it advances, and which model the deployment serves."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from mentor_operator.resources import Document, validate_document
from mentor_operator.retraining import (
    LABEL_RETRAINING,
    Drifted,
    Observed,
    Templates,
    advance,
    approval_for,
    no_worse_gates,
    plan_retraining,
    retraining_name,
    served_dataset,
    start_refusal,
    target_model,
)
from mentor_trainer.config.deploy import Retrain

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
DEPLOYED = "s3://mentor/FineTuneJob/default/quickstart-expert/model/"


def _example(name: str) -> dict:
    body = yaml.safe_load((QUICKSTART / name).read_text())
    body["metadata"].update(namespace="default", uid=f"uid-{body['metadata']['name']}")
    return body


def _templates() -> Templates:
    training = _example("finetune.yaml")
    return Templates(training, _example("dataset.yaml"), _example("evaluation.yaml"), training["spec"]["datasetRef"]["name"])


def _plan(policy: Retrain | None = None, check: str = "quickstart-serve-drift-29390000", templates: Templates | None = None):
    drifted = Drifted(check, "2026-11-30T01:00:00Z", "2026-11-30T02:00:00Z", "s3://mentor/logs/quickstart-serve/")
    deployment = _example("deployment.yaml")
    policy = policy or Retrain(enabled=True)
    return plan_retraining(deployment, policy, drifted, templates or _templates(), DEPLOYED, DEPLOYED, "2026-11-30T02:05:00Z")


def test_the_plan_is_four_valid_resources_tied_to_the_deployment_and_the_drift_check():
    plan = _plan()
    name = plan.record["name"]
    assert [(r["kind"], r["metadata"]["name"]) for r in plan.resources] == [
        ("DomainDataset", name), ("FineTuneJob", name), ("Evaluation", name), ("Evaluation", f"{name}-regression")
    ]
    for resource in plan.resources:  # the CRDs' own schema and CEL rules accept each
        assert validate_document(Document(Path("plan.yaml"), 0, resource)) == []
        assert resource["metadata"]["labels"][LABEL_RETRAINING] == name
        assert resource["metadata"]["labels"]["mentor.dev/drift-check"] == "quickstart-serve-drift-29390000"
        owner = resource["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelDeployment", "quickstart-serve", False)
    dataset, training, evaluation, regression = (r["spec"] for r in plan.resources)
    traffic = dataset["sources"][-1]
    assert traffic == {"name": traffic["name"], "uri": "s3://mentor/logs/quickstart-serve/", "format": "payload-log",
                       "maxRecords": 2000, "since": "2026-11-30T01:00:00Z", "until": "2026-11-30T02:00:00Z"}
    assert dataset["sources"][:-1] == _example("dataset.yaml")["spec"]["sources"]
    assert training["baseModel"] == DEPLOYED and training["datasetRef"] == {"name": name} and "suspend" not in training
    assert evaluation["modelRef"] == {"kind": "FineTuneJob", "name": name} and evaluation["baselineUri"] == DEPLOYED
    assert evaluation["datasetRef"] == {"name": name} and "baselineRef" not in evaluation
    assert regression["datasetRef"] == {"name": "quickstart-corpus"}  # the original held-out set ...
    assert regression["qaUri"] == _example("evaluation.yaml")["spec"]["qaUri"] and "qaUri" not in evaluation  # ... and QA
    assert regression["gates"] == no_worse_gates(evaluation["gates"], 0.0) and regression["gates"]
    assert plan.record["phase"] == "Building" and plan.record["specModel"] == DEPLOYED


def test_the_same_drift_check_always_names_the_same_retraining():
    assert _plan().record["name"] == _plan().record["name"] == retraining_name("quickstart-serve", "quickstart-serve-drift-29390000")
    assert _plan(check="quickstart-serve-drift-29390060").record["name"] != _plan().record["name"]
    assert len(retraining_name("d" * 63, "x" * 80) + "-regression") <= 63


def test_policy_options_change_the_plan():
    base = _plan(Retrain(enabled=True, start_from="base", approval="manual", approve_before="training", max_traffic_records=50))
    training = base.resources[1]["spec"]
    assert training["baseModel"] == _example("finetune.yaml")["spec"]["baseModel"] and training["suspend"] is True
    assert base.resources[0]["spec"]["sources"][-1]["maxRecords"] == 50
    assert no_worse_gates([{"metric": "qa.f1", "op": ">=", "value": 0.5}, {"metric": "ppl.domain", "op": "<=", "baselineFactor": 0.9},
                           {"metric": "qa.f1", "op": ">", "value": 0.1}], 0.02) == [
        {"metric": "qa.f1", "op": ">=", "baselineDelta": -0.02}, {"metric": "ppl.domain", "op": "<=", "baselineDelta": 0.02}]


def test_traffic_windows_bound_dataset_growth():
    templates = _templates()
    dataset = templates.dataset
    for window in range(4):  # each retraining extends the served model's dataset
        policy = Retrain(enabled=True, traffic_windows=2)
        plan = _plan(policy, check=f"drift-{window}", templates=Templates(templates.training, dataset, templates.evaluation, "quickstart-corpus"))
        dataset = plan.resources[0]
    traffic = [s for s in dataset["spec"]["sources"] if s.get("format") == "payload-log"]
    assert len(traffic) == 2 and len(dataset["spec"]["sources"]) == len(templates.dataset["spec"]["sources"]) + 2


def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 30, hour, minute, tzinfo=timezone.utc)


def test_cooldown_and_concurrency_refuse_a_start_and_say_why():
    policy = Retrain(enabled=True, cooldown_minutes=60, max_concurrent=1)
    assert start_refusal([], policy, _at(3), {}) is None
    assert "retrain.enabled" in start_refusal([], Retrain(), _at(3), {})
    running = [{"name": "a", "phase": "Training", "startTime": "2026-11-30T01:00:00Z"}]
    assert "maxConcurrent 1" in start_refusal(running, policy, _at(3), {})
    done = [{"name": "a", "phase": "Succeeded", "startTime": "2026-11-30T02:30:00Z"}]
    assert "cooling down until 2026-11-30T03:30:00Z" in start_refusal(done, policy, _at(3), {})
    assert start_refusal(done, policy, _at(3, 30), {}) is None
    assert "no corrections or positive ratings" in start_refusal([], policy, _at(3), {"labelledRequests": 0})
    assert start_refusal([], policy, _at(3), {"labelledRequests": 4}) is None


def _body(kind: str, name: str, phase: str | None, **status) -> dict:
    return {"kind": kind, "metadata": {"name": name}, "spec": {}, "status": {"phase": phase, **status} if phase else {}}


def _observed(dataset="Succeeded", training="Succeeded", evaluations=("Succeeded", "Succeeded"), passed=(True, True), suspend=False):
    training_body = _body("FineTuneJob", "rt", training, modelUri="s3://new/model/")
    training_body["spec"]["suspend"] = suspend
    return Observed(
        _body("DomainDataset", "rt", dataset),
        training_body,
        [_body("Evaluation", n, p, passed=ok, failedGates=[] if ok else ["qa.f1 >= baseline + 0"])
         for n, p, ok in zip(("rt", "rt-regression"), evaluations, passed)],
    )


RECORD = {"name": "rt", "driftCheck": "c", "phase": "Building", "specModel": DEPLOYED, "baseModel": DEPLOYED, "dataset": "rt"}


@pytest.mark.parametrize(
    ("observed", "phase", "words"),
    [
        (_observed(dataset="Running", training=None), "Building", "building"),
        (_observed(training="Running"), "Training", "training"),
        (_observed(evaluations=("Running", None)), "Evaluating", "evaluating"),
        (_observed(dataset="Failed"), "Failed", "DomainDataset rt failed"),
        (_observed(passed=(True, False)), "Failed", "did not pass: qa.f1 >= baseline + 0"),
        (_observed(suspend=True, dataset="Running"), "AwaitingApproval", "approve to train"),
        (_observed(), "RollingOut", "rolling out s3://new/model/"),
    ],
)
def test_a_retraining_advances_with_its_resources(observed, phase, words):
    moved = advance(RECORD, observed, {}, Retrain(enabled=True, approval="auto"), DEPLOYED, approved=False)
    assert moved["phase"] == phase and words in moved["message"]


def test_manual_approval_holds_the_rollout_and_the_rollout_ends_the_retraining():
    policy = Retrain(enabled=True, approval="manual")
    waiting = advance(RECORD, _observed(), {}, policy, DEPLOYED, approved=False)
    assert waiting["phase"] == "AwaitingApproval" and waiting["approvalStage"] == "rollout" and "mentor approve" in waiting["message"]
    assert approval_for({"mentor.dev/approve": "rt"}, [waiting]) == "rt" == approval_for({"mentor.dev/approve": "latest"}, [waiting])
    assert approval_for({"mentor.dev/approve": "other"}, [waiting]) is None
    approved_to_train = Retrain(enabled=True, approval="manual", approve_before="training")
    assert advance(RECORD, _observed(), {}, approved_to_train, DEPLOYED, approved=False)["phase"] == "RollingOut"  # asked once
    rolling = advance(waiting, _observed(), {}, policy, DEPLOYED, approved=True)
    assert rolling["phase"] == "RollingOut" and target_model([rolling], DEPLOYED) == "s3://new/model/"
    promoted = {"rollouts": [{"modelVersion": "s3://new/model/", "outcome": "promoted", "reason": "better", "time": "t"}]}
    done = advance(rolling, _observed(), promoted, policy, DEPLOYED, approved=False)
    assert done["phase"] == "Succeeded" and done["completionTime"] == "t"
    assert target_model([done], DEPLOYED) == "s3://new/model/" and served_dataset([done], "s3://new/model/", "orig") == "rt"
    back = advance(rolling, _observed(), {"rollouts": [{**promoted["rollouts"][0], "outcome": "rolledBack"}]}, policy, DEPLOYED, False)
    assert back["phase"] == "Failed" and back["message"].startswith("rolled back")
    assert target_model([back], DEPLOYED) == DEPLOYED
    assert advance(done, _observed(dataset="Failed"), {}, policy, DEPLOYED, False) == done  # terminal stays


def test_a_new_spec_model_supersedes_and_a_deleted_resource_cancels():
    superseded = advance(RECORD, _observed(), {}, Retrain(enabled=True), "s3://other/", approved=False)
    assert superseded["phase"] == "Failed" and "superseded" in superseded["message"]
    gone = Observed(None, None, [None, None])
    assert "deleted" in advance(RECORD, gone, {}, Retrain(enabled=True), DEPLOYED, False)["message"]
    assert target_model([{**RECORD, "phase": "RollingOut", "modelVersion": "x"}], "s3://other/") == "s3://other/"
