"""Reference resolution and status folding (pure)."""

from __future__ import annotations

import json

from mentor_operator.api import KINDS
from mentor_operator.builders.inputs import resolve_inputs
from mentor_operator.status import pod_termination, result_status, runner_state, set_condition


def lookup_from(objects: dict):
    return lambda kind, name: objects.get((kind, name))


EVAL = {"modelRef": {"name": "ft"}, "baselineUri": "s3://m/base/", "datasetRef": {"name": "docs"}}


def test_missing_reference_waits_with_a_message():
    r = resolve_inputs("Evaluation", EVAL, lookup_from({}))
    assert not r.ready and not r.blocked
    assert "spec.modelRef: FineTuneJob 'ft' does not exist yet" in r.waiting
    assert "spec.datasetRef: DomainDataset 'docs' does not exist yet" in r.waiting


def test_references_resolve_to_outputs_once_succeeded():
    objects = {
        ("FineTuneJob", "ft"): {"status": {"phase": "Running"}},
        ("DomainDataset", "docs"): {"status": {"phase": "Succeeded", "outputUri": "s3://a/docs/"}},
    }
    r = resolve_inputs("Evaluation", EVAL, lookup_from(objects))
    assert r.waiting == ["spec.modelRef: FineTuneJob 'ft' is Running, waiting for Succeeded"]
    objects[("FineTuneJob", "ft")] = {"status": {"phase": "Succeeded", "modelUri": "s3://a/ft/model/", "mlflowRunId": "r1"}}
    r = resolve_inputs("Evaluation", EVAL, lookup_from(objects))
    assert r.ready
    assert r.values == {"model_uri": "s3://a/ft/model/", "baseline_uri": "s3://m/base/", "dataset_uri": "s3://a/docs/", "training_run_id": "r1"}


def test_deployment_refuses_a_model_whose_evaluation_failed():
    spec = {"modelRef": {"name": "ft"}, "evaluationRef": {"name": "ev"}}
    objects = {
        ("FineTuneJob", "ft"): {"status": {"phase": "Succeeded", "modelUri": "s3://a/m/"}},
        ("Evaluation", "ev"): {"status": {"phase": "Succeeded", "modelUri": "s3://a/m/", "passed": False, "failedGates": ["qa.f1 >= 0.6 (got 0.41)"]}},
    }
    r = resolve_inputs("ModelDeployment", spec, lookup_from(objects))
    assert r.blocked == ["spec.evaluationRef: Evaluation 'ev' did not pass (qa.f1 >= 0.6 (got 0.41)); refusing to roll out"]
    objects[("Evaluation", "ev")]["status"]["passed"] = True
    assert resolve_inputs("ModelDeployment", spec, lookup_from(objects)).ready


def test_deployment_inputs_calibrated_temperature_and_training_dataset():
    spec = {"modelRef": {"name": "ft"}, "evaluationRef": {"name": "ev"}}
    objects = {
        ("FineTuneJob", "ft"): {"spec": {"datasetRef": {"name": "docs"}}, "status": {"phase": "Succeeded", "modelUri": "s3://a/m/"}},
        ("Evaluation", "ev"): {"status": {"phase": "Succeeded", "modelUri": "s3://a/m/", "passed": True, "calibratedTemperature": 0.8}},
    }
    r = resolve_inputs("ModelDeployment", spec, lookup_from(objects))
    # the training dataset is optional (a quick perplexity check): absent, nothing waits
    assert r.ready and r.values == {"model_uri": "s3://a/m/", "temperature": 0.8}
    assert r.status == {}  # the rollout, not the reference, decides which version is served
    objects[("DomainDataset", "docs")] = {"status": {"phase": "Succeeded", "outputUri": "s3://a/docs/"}}
    assert resolve_inputs("ModelDeployment", spec, lookup_from(objects)).values["dataset_uri"] == "s3://a/docs/"
    # a temperature the user set wins over the calibrated one
    assert "temperature" not in resolve_inputs("ModelDeployment", {**spec, "temperature": 0.3}, lookup_from(objects)).values


def test_conditions_keep_transition_time_until_status_flips():
    first = set_condition([], "Ready", False, "Waiting", "a")
    again = set_condition(first, "Ready", False, "Waiting", "b")
    assert again[0]["lastTransitionTime"] == first[0]["lastTransitionTime"] and again[0]["message"] == "b"
    flipped = set_condition(again, "Ready", True, "Done", "c", generation=2)
    assert flipped[0]["status"] == "True" and flipped[0]["observedGeneration"] == 2


def test_runner_state_from_job():
    assert runner_state(None).phase == "Pending"
    assert runner_state({"spec": {"suspend": True}, "status": {}}).phase == "Suspended"
    assert runner_state({"spec": {}, "status": {"active": 1, "ready": 1, "startTime": "t"}}).phase == "Running"
    assert runner_state({"spec": {}, "status": {"active": 1, "ready": 0}}).phase == "Pending"
    done = {"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "t2"}}
    assert runner_state(done).phase == "Succeeded"
    failed = {"spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    assert runner_state(failed).reason == "BackoffLimitExceeded"


def test_termination_message_and_result():
    pods = [
        {"status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "old", "finishedAt": "2026-01-01T00:00:00Z"}}}]}},
        {"status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "dataset has 0 examples", "finishedAt": "2026-01-01T00:01:00Z"}}}]}},
    ]
    assert pod_termination(pods, "Failed") == ("Error", "dataset has 0 examples")
    ok = [{"status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": json.dumps({"modelUri": "s3://x/"})}}}]}}]
    assert pod_termination(ok, "Succeeded")[1] == '{"modelUri": "s3://x/"}'
    # a sidecar's later message neither hides the trainer's error nor forges a result
    sidecar = {"name": "istio-proxy", "state": {"terminated": {"exitCode": 0, "message": '{"modelUri": "s3://evil/"}', "finishedAt": "2026-01-01T00:05:00Z"}}}
    pods[1]["status"]["containerStatuses"].append(sidecar)
    assert pod_termination(pods, "Failed") == ("Error", "dataset has 0 examples")
    ok[0]["status"]["containerStatuses"].insert(0, sidecar)
    assert pod_termination(ok, "Succeeded")[1] == '{"modelUri": "s3://x/"}'
    assert result_status(KINDS["FineTuneJob"], {"modelUri": "s3://x/", "junk": 1}, "s3://o/") == {"modelUri": "s3://x/"}
    assert result_status(KINDS["FineTuneJob"], {}, "s3://o/") == {"modelUri": "s3://o/model/"}


def test_evaluation_verdict_becomes_the_passed_condition_and_message():
    from mentor_operator.status import result_status

    failed = result_status(KINDS["Evaluation"], {"passed": False, "failedGates": ["qa.f1 >= 0.6 (got 0.41)"]}, None, [], 3)
    (condition,) = failed["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Passed", "False", "GatesFailed")
    assert condition["observedGeneration"] == 3 and "qa.f1 >= 0.6 (got 0.41)" in condition["message"]
    assert failed["message"] == "gates failed: qa.f1 >= 0.6 (got 0.41)" and failed["failedGates"]
    passed = result_status(KINDS["Evaluation"], {"passed": True, "failedGates": []}, None, failed["conditions"], 4)
    assert passed["conditions"][0]["status"] == "True" and "message" not in passed
    assert "conditions" not in result_status(KINDS["FineTuneJob"], {"passed": True}, "s3://b/o", [], 1)


def test_rlhf_job_resolves_policy_reward_model_and_teacher_from_other_jobs():
    spec = {
        "algorithm": "grpo",
        "policyRef": {"name": "ft"},
        "rewardModelRef": {"kind": "RLHFJob", "name": "rm"},
        "rewardFunctions": [{"name": "reward-model"}],
        "datasetRef": {"name": "docs"},
    }
    objects = {
        ("FineTuneJob", "ft"): {"status": {"phase": "Succeeded", "modelUri": "s3://a/ft/model/"}},
        ("RLHFJob", "rm"): {"status": {"phase": "Running"}},
        ("DomainDataset", "docs"): {"status": {"phase": "Succeeded", "outputUri": "s3://a/docs/"}},
    }
    r = resolve_inputs("RLHFJob", spec, lookup_from(objects))
    assert r.waiting == ["spec.rewardModelRef: RLHFJob 'rm' is Running, waiting for Succeeded"]
    objects[("RLHFJob", "rm")] = {"status": {"phase": "Succeeded", "modelUri": "s3://a/rm/model/"}}
    r = resolve_inputs("RLHFJob", spec, lookup_from(objects))
    assert r.ready and r.values["policy_model"] == "s3://a/ft/model/" and r.values["reward_model"] == "s3://a/rm/model/"

    distill = {"algorithm": "distill", "policyModel": "s3://m/small/", "teacherRef": {"name": "ft"}, "datasetRef": {"name": "docs"}}
    assert resolve_inputs("RLHFJob", distill, lookup_from(objects)).values["teacher_model"] == "s3://a/ft/model/"
