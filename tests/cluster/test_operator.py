"""The operator against a real control plane: children, status, dependencies, failure,
restarts, deletion, suspend, bad input."""

from __future__ import annotations

import json

import pytest
import yaml

from mentor_operator.api import KINDS
from mentor_operator.builders import plan_export, plan_job_children, plan_rollout_analysis, plan_serving, version_id
from mentor_operator.retraining import Drifted, Templates, plan_retraining
from mentor_operator.settings import Settings
from mentor_trainer.config.deploy import Retrain
from tests.bad_resources import CASES, BadCase
from tests.cluster.conftest import pod_annotations, resource, wait_for

pytestmark = pytest.mark.cluster

DATASET = {"sources": [{"name": "docs", "uri": "s3://bucket/docs/"}]}


def dataset(name: str, **scheduling) -> dict:
    return resource("DomainDataset", name, {**DATASET, "scheduling": scheduling or pod_annotations(run_ms="300")})


def finetune(name: str, dataset_name: str, **extra) -> dict:
    return resource("FineTuneJob", name, {"baseModel": "s3://models/base/", "datasetRef": {"name": dataset_name}, **extra})


def test_every_child_the_builders_make_is_accepted_by_the_api_server(cluster, ns):
    """Server-side dry-run of every builder variant against the real schemas (core, KServe,
    Kubeflow Trainer)."""
    settings = Settings()
    owner = {"apiVersion": "mentor.dev/v1alpha1", "metadata": {"namespace": ns.name, "uid": "0b6e7c1c-0000-4000-8000-000000000000", "generation": 1}}
    variants = [
        ("DomainDataset", DATASET, {}, False),
        ("FineTuneJob", {"baseModel": "s3://m/b/", "datasetRef": {"name": "d"}, "scheduling": {"queue": "q", "priorityClassName": "p"}}, {"base_model": "s3://m/b/", "dataset_uri": "s3://a/d/"}, False),
        ("FineTuneJob", {"baseModel": "s3://m/b/", "datasetRef": {"name": "d"}, "distributed": {"nodes": 2, "gpusPerNode": 4}}, {"base_model": "s3://m/b/", "dataset_uri": "s3://a/d/"}, False),
        ("FineTuneJob", {"baseModel": "s3://m/b/", "datasetRef": {"name": "d"}, "distributed": {"nodes": 2, "gpusPerNode": 4},
                         "scheduling": {"nodeSelector": {"gpu": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}], "podAnnotations": {"a": "b"}}},
         {"base_model": "s3://m/b/", "dataset_uri": "s3://a/d/"}, True),
        ("RLHFJob", {"algorithm": "dpo", "policyModel": "s3://m/p/", "datasetRef": {"name": "d"}}, {"policy_model": "s3://m/p/", "dataset_uri": "s3://a/d/"}, False),
        ("RLHFJob", {"algorithm": "ppo", "policyRef": {"name": "ft"}, "rewardModelRef": {"kind": "RLHFJob", "name": "rm"}, "datasetRef": {"name": "d"},
                     "distributed": {"nodes": 2, "gpusPerNode": 2}},
         {"policy_model": "s3://m/p/", "reward_model": "s3://m/rm/", "dataset_uri": "s3://a/d/"}, False),
        ("Evaluation", {"modelUri": "s3://m/x/", "datasetRef": {"name": "d"}}, {"model_uri": "s3://m/x/", "dataset_uri": "s3://a/d/"}, False),
        ("DomainDataset", {"sources": [{"name": "d", "uri": "pvc://docs/raw/"}], "outputUri": "pvc://work/out/"}, {}, False),  # claims mounted
        ("FineTuneJob", {"baseModel": "pvc://m/b/", "datasetRef": {"name": "d"}, "distributed": {"nodes": 2, "gpusPerNode": 4}},
         {"base_model": "pvc://m/b/", "dataset_uri": "s3://a/d/"}, True),  # claims mounted through the runtime patch
    ]
    objects = []
    for i, (kind, spec, resolved, kubeflow) in enumerate(variants):
        body = {**owner, "kind": kind, "metadata": {**owner["metadata"], "name": f"{kind.lower()}-{i}"}, "spec": spec}
        objects += plan_job_children(body, KINDS[kind].spec.model_validate(spec), resolved, settings, kubeflow).children
    for runtime in ("mentor", "huggingface", "vllm", "triton"):
        spec = {"modelUri": "s3://m/x/", "runtime": runtime, "monitoring": {"drift": {}}, "canary": {"trafficPercent": 10}}
        body = {**owner, "kind": "ModelDeployment", "metadata": {**owner["metadata"], "name": f"md-{runtime}"}, "spec": spec}
        md = KINDS["ModelDeployment"].spec.model_validate(spec)
        objects += plan_export(body, md, "s3://m/x/", {}, settings).children
        objects += plan_serving(body, md, {"model_uri": "s3://m/x/"}, settings, "s3://m/x/", "s3://m/y/")
        objects += plan_rollout_analysis(body, md, settings, "s3://m/x/", "s3://m/y/", "2026-11-30T01:00:00Z", 0).children
    kinds = {o["kind"] for o in objects}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job", "Service", "TrainJob", "InferenceService", "CronJob"}
    result = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}), check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(objects)


def test_kubectl_explain_documents_the_api(cluster):
    out = cluster.kubectl("explain", "finetunejob.spec.lora").stdout
    assert "Adapter settings for lora, qlora and dora." in out and "targetModules" in out


def test_completed_job_drives_dataset_to_succeeded(operator, ns):
    ns.apply(dataset("docs"))
    status = ns.wait_phase("DomainDataset", "docs", "Succeeded")
    uid = ns.get("DomainDataset", "docs")["metadata"]["uid"]
    assert status["outputUri"] == f"s3://mentor-artifacts/{ns.name}/domaindataset/docs/{uid}/"
    assert status["children"] == {"configMap": "docs-data-config", "job": "docs-data"}
    assert status["startTime"] and status["completionTime"] and status["observedGeneration"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"]
    job = ns.get("job", "docs-data")
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    header, row = ns.cp.kubectl("get", "dds", "-n", ns.name).stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "KEPT", "TOKENS", "AGE"] and row.split()[:2] == ["docs", "Succeeded"]
    config = json.loads(ns.get("configmap", "docs-data-config")["data"]["config.json"])
    assert config["sources"][0]["uri"] == "s3://bucket/docs/" and config["run"]["uid"] == uid


def test_failing_pod_drives_failed_with_its_message_and_an_event(operator, ns):
    message = "CUDA out of memory: lower hyperparameters.perDeviceBatchSize"
    ns.apply(
        dataset("docs"),
        finetune("ft", "docs", backoffLimit=0, scheduling=pod_annotations(fail=message)),
    )
    status = ns.wait_phase("FineTuneJob", "ft", "Failed", timeout=90)
    assert status["message"] == message
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "False" and succeeded["message"] == message
    wait_for(lambda: any(e["message"] == message and e["type"] == "Warning" for e in ns.events("ft")), 30, what="a Warning event")


def test_pipeline_applied_at_once_resolves_in_order(operator, ns):
    """DomainDataset -> FineTuneJob -> Evaluation -> ModelDeployment, applied together."""
    result = json.dumps({"passed": True, "metrics": {"qa.f1": 0.71}, "summary": "qa.f1=0.71"})
    ns.apply(
        resource("ModelDeployment", "serve", {"modelRef": {"name": "ft"}, "evaluationRef": {"name": "ev"}, "runtime": "huggingface", "scheduling": pod_annotations(run_ms="200")}),
        resource("Evaluation", "ev", {"modelRef": {"name": "ft"}, "datasetRef": {"name": "docs"}, "scheduling": pod_annotations(run_ms="200", result=result)}),
        finetune("ft", "docs", scheduling=pod_annotations(run_ms="200")),
        dataset("docs"),
    )
    waiting = ns.wait_phase("FineTuneJob", "ft", "Waiting", timeout=30) if ns.status("DomainDataset", "docs").get("phase") != "Succeeded" else None
    if waiting:
        ready = next(c for c in waiting["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "WaitingForDependency" and "DomainDataset 'docs'" in ready["message"]
    ns.wait_phase("DomainDataset", "docs", "Succeeded")
    ft = ns.wait_phase("FineTuneJob", "ft", "Succeeded")
    ev = ns.wait_phase("Evaluation", "ev", "Succeeded")
    assert ev["passed"] is True and ev["metrics"] == {"qa.f1": 0.71} and ev["modelUri"] == ft["modelUri"]
    isvc = wait_for(lambda: ns.get("inferenceservice", "serve"), 60, what="the InferenceService")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "kserve-huggingfaceserver"
    jobs = {j["metadata"]["name"]: j["metadata"]["creationTimestamp"] for j in ns.items("jobs")}
    assert jobs["docs-data"] <= jobs["ft-sft"] <= jobs["ev-evaluate"] <= jobs[f"serve-export-{version_id(ft['modelUri'])}"]
    # KServe's controller is not running here: play its part and mark the service ready.
    cp = ns.cp
    cp.kubectl(
        "patch", "inferenceservice", "serve", "-n", ns.name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"url": "http://serve.example", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
    )
    md = ns.wait_phase("ModelDeployment", "serve", "Ready")
    assert md["url"] == "http://serve.example" and md["modelVersion"] == ft["modelUri"]


def isvc_ready(ns, name: str) -> None:
    """KServe's controller is not running here: play its part and mark the service ready."""
    ns.cp.kubectl(
        "patch", "inferenceservice", name, "-n", ns.name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"url": f"http://{name}.example", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
    )


def test_canary_rollout_rolled_back_by_annotation_then_promoted_by_analysis(operator, ns):
    # Every pod of the deployment (exports and analyses) ends with this result: an export
    # reads its fields, an analysis its decision.
    result = json.dumps({"modelUri": "s3://out/model/", "quantization": "none", "sizeBytes": 1000, "decision": "promote", "reasons": ["healthy"]})
    spec = {"modelUri": "s3://m/a/", "runtime": "huggingface", "canary": {"trafficPercent": 20, "promoteAfterMinutes": 1},
            "scheduling": pod_annotations(run_ms="200", result=result)}
    ns.apply(resource("ModelDeployment", "md", spec))
    wait_for(lambda: ns.get("inferenceservice", "md"), 60, what="the InferenceService")
    isvc_ready(ns, "md")
    md = ns.wait_phase("ModelDeployment", "md", "Ready")
    assert md["modelVersion"] == "s3://m/a/" and md["quantization"] == "none" and md["sizeBytes"] == 1000

    # a new model: exported by its own Job, then served next to the stable one
    ns.apply(resource("ModelDeployment", "md", {**spec, "modelUri": "s3://m/b/"}))
    isvc = wait_for(lambda: (i := ns.get("inferenceservice", "md")) and i["spec"].get("canary") and i, 60, what="the canary")
    (canary,) = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == 20 and canary["predictor"]["model"]["storageUri"].endswith(f"/export/{version_id('s3://m/b/')}/model/")
    assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith(f"/export/{version_id('s3://m/a/')}/model/")
    assert ns.status("ModelDeployment", "md")["canary"]["modelVersion"] == "s3://m/b/"

    # a person rolls it back: the canary goes, the stable version stays, and b is held back
    ns.cp.kubectl("annotate", "modeldeployment", "md", "-n", ns.name, "mentor.dev/rollout=rollback")
    md = wait_for(lambda: (s := ns.status("ModelDeployment", "md")).get("rollouts") and s, 90, what="the roll-back")
    assert md["rollouts"][-1]["modelVersion"] == "s3://m/b/" and md["rollouts"][-1]["outcome"] == "rolledBack"
    assert md["modelVersion"] == "s3://m/a/" and not md.get("canary")
    wait_for(lambda: not ns.get("inferenceservice", "md")["spec"].get("canary"), 30, what="the canary removed")
    assert "mentor.dev/rollout" not in (ns.get("modeldeployment", "md")["metadata"].get("annotations") or {})
    assert any(e["reason"] == "CanaryRolledBack" for e in ns.events("md"))

    # another model: this time the analysis (after promoteAfterMinutes) promotes it
    ns.apply(resource("ModelDeployment", "md", {**spec, "modelUri": "s3://m/c/"}))
    md = wait_for(lambda: (s := ns.status("ModelDeployment", "md")).get("modelVersion") == "s3://m/c/" and s, 180, what="the promotion")
    assert md["rollouts"][-1]["outcome"] == "promoted" and md["rollouts"][-1]["reason"] == "healthy"
    isvc = ns.get("inferenceservice", "md")
    assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith(f"/export/{version_id('s3://m/c/')}/model/")
    assert not isvc["spec"].get("canary")
    assert ns.get("job", f"md-rollout-{version_id('s3://m/c/')}-0") is not None


def test_drift_check_result_reaches_status_with_an_event(operator, ns):
    signals = [{"name": "embedding.mmd", "score": 0.31, "threshold": 0.1, "drifted": True},
               {"name": "prompt.length", "score": 0.02, "threshold": 0.25, "drifted": False}]
    # every pod of the deployment ends with this result: the export reads its fields, the check its own
    result = json.dumps({"quantization": "none", "lastCheckTime": "2026-11-30T02:00:00Z", "drifted": True, "score": 0.5,
                         "requests": 812, "signals": signals, "reportUri": "s3://out/drift/report.html"})
    spec = {"modelUri": "s3://m/a/", "runtime": "huggingface", "monitoring": {"drift": {"schedule": "0 * * * *"}},
            "scheduling": pod_annotations(run_ms="200", result=result)}
    ns.apply(resource("ModelDeployment", "md", spec))
    wait_for(lambda: ns.get("cronjob", "md-drift"), 60, what="the drift CronJob")
    ns.cp.kubectl("create", "job", "check-1", "--from=cronjob/md-drift", "-n", ns.name)  # what the schedule would do
    md = wait_for(lambda: (s := ns.status("ModelDeployment", "md")).get("drift", {}).get("drifted") is not None and s, 90,
                  what="the drift result in status")
    drift = md["drift"]
    assert drift["drifted"] is True and drift["score"] == 0.5 and drift["requests"] == 812
    assert [s["name"] for s in drift["signals"] if s["drifted"]] == ["embedding.mmd"] and drift["retrainCount"] == 0
    event = wait_for(lambda: next((e for e in ns.events("md") if e["reason"] == "DriftDetected"), None), 30, what="the DriftDetected event")
    assert "embedding.mmd" in event["message"]


def test_drift_retrains_once_even_when_the_operator_died_mid_creation_then_rolls_the_candidate_out(operator, ns):
    window = {"windowStart": "2026-11-30T01:00:00Z", "windowEnd": "2026-11-30T02:00:00Z"}
    # every deployment pod (exports, drift checks) ends with this result
    result = json.dumps({"quantization": "none", "drifted": True, "score": 0.5, "requests": 500, **window})
    passed = json.dumps({"passed": True, "metrics": {"qa.f1": 0.7}})
    md_spec = {"modelRef": {"name": "ft"}, "evaluationRef": {"name": "ev"}, "runtime": "huggingface",
               "monitoring": {"drift": {"schedule": "0 * * * *"}, "retrain": {"enabled": True, "approval": "auto"}},
               "scheduling": pod_annotations(run_ms="100", result=result)}
    ns.apply(
        dataset("docs"),
        finetune("ft", "docs", scheduling=pod_annotations(run_ms="100")),
        resource("Evaluation", "ev", {"modelRef": {"name": "ft"}, "datasetRef": {"name": "docs"},
                                      "gates": [{"metric": "qa.f1", "op": ">=", "value": 0.5}],
                                      "scheduling": pod_annotations(run_ms="100", result=passed)}),
        resource("ModelDeployment", "md", md_spec),
    )
    wait_for(lambda: ns.get("inferenceservice", "md"), 90, what="the InferenceService")
    isvc_ready(ns, "md")
    deployed = ns.wait_phase("ModelDeployment", "md", "Ready")["modelVersion"]

    # An operator that died while starting a retraining left the drift verdict undecided and
    # only the first two of the pipeline's resources behind.
    operator.kill()
    ns.cp.kubectl("patch", "modeldeployment", "md", "-n", ns.name, "--subresource=status", "--type=merge",
                  "-p", json.dumps({"status": {"drift": {"drifted": True, "checkName": "md-drift-29390000", **window}}}))
    templates = Templates(ns.get("finetunejob", "ft"), ns.get("domaindataset", "docs"), ns.get("evaluation", "ev"), "docs")
    drifted = Drifted("md-drift-29390000", window["windowStart"], window["windowEnd"], "s3://logs/md/")
    plan = plan_retraining(ns.get("modeldeployment", "md"), Retrain(enabled=True), drifted, templates, deployed, deployed, "2026-11-30T02:00:00Z")
    ns.apply(*plan.resources[:2])
    operator.start()

    name = plan.record["name"]
    md = wait_for(lambda: (s := ns.status("ModelDeployment", "md")).get("retrainings") and s["retrainings"][-1]["phase"] in ("Succeeded", "Failed") and s,
                  240, what="the retraining to end")
    (record,) = md["retrainings"]
    assert record["phase"] == "Succeeded", record
    assert (record["name"], record["driftCheck"], md["drift"]["retrainCount"]) == (name, "md-drift-29390000", 1)
    chain = ns.items("mentor", f"mentor.dev/retraining={name}")  # the whole lineage, one of each
    assert sorted((o["kind"], o["metadata"]["name"]) for o in chain) == sorted(
        [("DomainDataset", name), ("FineTuneJob", name), ("Evaluation", name), ("Evaluation", f"{name}-regression")])
    candidate = ns.status("FineTuneJob", name)["modelUri"]
    assert candidate != deployed and record["modelVersion"] == candidate and md["modelVersion"] == candidate
    assert md["rollouts"][-1]["modelVersion"] == candidate and md["rollouts"][-1]["outcome"] == "replaced"
    assert ns.get("finetunejob", name)["spec"]["baseModel"] == deployed
    assert md["drift"]["decision"] == f"started {name}"

    # the next drift verdict falls in the cooldown: decided once, said why, nothing started
    ns.cp.kubectl("patch", "modeldeployment", "md", "-n", ns.name, "--subresource=status", "--type=merge",
                  "-p", json.dumps({"status": {"drift": {"checkName": "md-drift-29390060"}}}))
    drift = wait_for(lambda: (d := ns.status("ModelDeployment", "md")["drift"]).get("decidedCheck") == "md-drift-29390060" and d, 90,
                     what="the second decision")
    assert "cooling down" in drift["decision"] and drift["retrainCount"] == 1
    assert len(ns.items("finetunejobs", "mentor.dev/deployment=md")) == 1


def test_a_manual_retraining_waits_for_approval_before_training(operator, ns):
    result = json.dumps({"quantization": "none", "drifted": True, "score": 0.4, "requests": 300,
                         "signals": [{"name": "prompt.language", "score": 0.4, "threshold": 0.1, "drifted": True}]})
    retrain = {"enabled": True, "approval": "manual", "approveBefore": "training", "maxTrafficRecords": 100}
    ns.apply(
        dataset("docs"),
        finetune("ft", "docs", scheduling=pod_annotations(run_ms="100")),
        resource("Evaluation", "ev", {"modelRef": {"name": "ft"}, "datasetRef": {"name": "docs"},
                                      "scheduling": pod_annotations(run_ms="100", result=json.dumps({"passed": True}))}),
        resource("ModelDeployment", "md", {"modelRef": {"name": "ft"}, "evaluationRef": {"name": "ev"}, "runtime": "huggingface",
                                           "monitoring": {"drift": {"schedule": "0 * * * *"}, "retrain": retrain},
                                           "scheduling": pod_annotations(run_ms="100", result=result)}),
    )
    wait_for(lambda: ns.get("inferenceservice", "md"), 90, what="the InferenceService")
    isvc_ready(ns, "md")
    ns.wait_phase("ModelDeployment", "md", "Ready")
    ns.cp.kubectl("create", "job", "check-1", "--from=cronjob/md-drift", "-n", ns.name)  # what the schedule would do
    md = wait_for(lambda: (s := ns.status("ModelDeployment", "md")).get("retrainings") and s["retrainings"][-1]["phase"] == "AwaitingApproval" and s,
                  90, what="the retraining to wait for approval")
    name = md["retrainings"][-1]["name"]
    assert md["drift"]["checkName"] == "check-1" and md["retrainings"][-1]["approvalStage"] == "training"
    assert ns.get("finetunejob", name)["spec"]["suspend"] is True and ns.items("jobs", f"mentor.dev/name={name},mentor.dev/stage=sft") == []
    assert ns.get("domaindataset", name)["spec"]["sources"][-1]["maxRecords"] == 100

    ns.cp.kubectl("annotate", "modeldeployment", "md", "-n", ns.name, "mentor.dev/approve=latest")
    md = wait_for(lambda: (s := ns.status("ModelDeployment", "md"))["retrainings"][-1]["phase"] in ("Succeeded", "Failed") and s,
                  180, what="the approved retraining to end")
    assert md["retrainings"][-1]["phase"] == "Succeeded", md["retrainings"]
    assert ns.get("finetunejob", name)["spec"]["suspend"] is False
    assert "mentor.dev/approve" not in (ns.get("modeldeployment", "md")["metadata"].get("annotations") or {})


def test_missing_reference_waits_then_proceeds_when_it_appears(operator, ns):
    ns.apply(finetune("ft", "later", scheduling=pod_annotations(run_ms="200")))
    status = ns.wait_phase("FineTuneJob", "ft", "Waiting")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "WaitingForDependency"
    assert ready["message"] == "spec.datasetRef: DomainDataset 'later' does not exist yet"
    assert ns.items("jobs") == []
    ns.apply(dataset("later"))
    ns.wait_phase("FineTuneJob", "ft", "Succeeded", timeout=90)


def test_an_output_that_would_overwrite_an_input_or_another_namespace_fails_naming_it(operator, ns):
    ns.apply(
        resource("DomainDataset", "over", {"sources": [{"name": "d", "uri": "s3://mentor-artifacts/" + ns.name + "/raw/"}],
                                           "outputUri": "s3://mentor-artifacts/" + ns.name + "/"}),
        resource("DomainDataset", "away", {"sources": [{"name": "d", "uri": "s3://b/d/"}], "outputUri": "s3://mentor-artifacts/other-team/x/"}),
    )
    over = ns.wait_phase("DomainDataset", "over", "Failed")
    assert "spec.outputUri" in over["message"] and "overlaps spec.sources[0].uri" in over["message"]
    away = ns.wait_phase("DomainDataset", "away", "Failed")
    assert "lies outside this namespace's artifact roots" in away["message"]
    assert ns.items("jobs") == []
    assert any(e["reason"] == "InvalidStorage" for e in ns.events("away"))


def test_failed_evaluation_blocks_the_deployment(operator, ns):
    result = json.dumps({"passed": False, "failedGates": ["qa.f1 >= 0.6 (got 0.42)"]})
    ns.apply(
        resource("Evaluation", "ev", {"modelUri": "s3://m/x/", "datasetRef": {"name": "docs"}, "scheduling": pod_annotations(run_ms="100", result=result)}),
        resource("ModelDeployment", "serve", {"modelUri": "s3://m/x/", "evaluationRef": {"name": "ev"}}),
        dataset("docs"),
    )
    status = ns.wait_phase("ModelDeployment", "serve", "Failed", timeout=90)
    assert "did not pass (qa.f1 >= 0.6 (got 0.42)); refusing to roll out" in status["message"]
    assert ns.items("inferenceservices") == [] and ns.items("jobs", "mentor.dev/kind=ModelDeployment") == []
    evaluation = ns.status("Evaluation", "ev")
    (passed,) = [c for c in evaluation["conditions"] if c["type"] == "Passed"]
    assert (passed["status"], passed["reason"]) == ("False", "GatesFailed") and "qa.f1 >= 0.6" in passed["message"]
    assert evaluation["phase"] == "Succeeded" and evaluation["message"] == "gates failed: qa.f1 >= 0.6 (got 0.42)"
    assert any(e["reason"] == "GatesFailed" and e["type"] == "Warning" for e in ns.events("ev"))


def test_operator_killed_mid_flight_makes_no_duplicates(cluster, operator, ns):
    names = [f"ft-{i}" for i in range(12)]
    small = {"gpus": 0, "cpu": "100m", "memory": "128Mi"}  # all fit on the fake nodes at once
    ns.apply(dataset("docs"), *[finetune(n, "docs", resources=small, scheduling=pod_annotations(hold="true")) for n in names])
    wait_for(lambda: len(ns.items("jobs")) >= 4, 60, interval=0.1, what="some Jobs")
    operator.kill()
    operator.start()
    wait_for(lambda: all(ns.status("FineTuneJob", n).get("phase") == "Running" for n in names), 90, what="all FineTuneJobs Running")
    jobs = [j["metadata"]["name"] for j in ns.items("jobs")]
    assert sorted(jobs) == sorted(["docs-data", *[f"{n}-sft" for n in names]])
    assert len(ns.items("configmaps", "app.kubernetes.io/managed-by=mentor-operator")) == len(names) + 1
    # and a second restart with everything in place changes nothing
    before = {n: ns.status("FineTuneJob", n)["conditions"] for n in names}
    operator.kill()
    operator.start()
    wait_for(lambda: "mentor_reconciles_total" in operator.metrics(), 30, what="metrics")
    assert {n: ns.status("FineTuneJob", n)["conditions"] for n in names} == before


def test_deleting_a_resource_deletes_its_children(operator, ns):
    ns.apply(dataset("docs"), finetune("ft", "docs", scheduling=pod_annotations(hold="true")))
    ns.wait_phase("FineTuneJob", "ft", "Running", timeout=90)
    assert ns.get("job", "ft-sft") and ns.get("configmap", "ft-sft-config")
    ns.cp.kubectl("delete", "finetunejob", "ft", "-n", ns.name, "--wait=true", "--timeout=60s")
    wait_for(lambda: ns.get("job", "ft-sft") is None and ns.get("configmap", "ft-sft-config") is None, 60, what="garbage collection")
    wait_for(lambda: not ns.items("pods", "batch.kubernetes.io/job-name=ft-sft"), 60, what="the pods to go")


def test_suspend_and_resume(operator, ns):
    ns.apply(dataset("docs"), finetune("ft", "docs", scheduling=pod_annotations(hold="true")))
    ns.wait_phase("FineTuneJob", "ft", "Running", timeout=90)
    ns.cp.kubectl("patch", "finetunejob", "ft", "-n", ns.name, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    ns.wait_phase("FineTuneJob", "ft", "Suspended")
    assert ns.get("job", "ft-sft")["spec"]["suspend"] is True
    wait_for(lambda: not ns.items("pods", "batch.kubernetes.io/job-name=ft-sft"), 60, what="pods removed")
    ns.cp.kubectl("patch", "finetunejob", "ft", "-n", ns.name, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    ns.wait_phase("FineTuneJob", "ft", "Running", timeout=60)
    assert len(ns.items("jobs", "mentor.dev/kind=FineTuneJob")) == 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_resource_is_rejected_naming_the_field(cluster, case: BadCase):
    body = case.body(f"bad-{case.id}")
    body["metadata"]["namespace"] = "default"
    result = cluster.kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert case.field in result.stderr, result.stderr


def test_immutable_fields_cannot_change(operator, ns):
    ns.apply(finetune("ft", "nowhere"))
    ns.wait_phase("FineTuneJob", "ft", "Waiting")
    result = ns.cp.kubectl("patch", "finetunejob", "ft", "-n", ns.name, "--type=merge", "-p", '{"spec":{"baseModel":"s3://other/"}}', check=False)
    assert result.returncode != 0 and "baseModel is immutable" in result.stderr


def test_metrics_count_reconciles_and_phases(operator, ns):
    ns.apply(dataset("docs"))
    ns.wait_phase("DomainDataset", "docs", "Succeeded")
    text = operator.metrics()
    assert 'mentor_reconciles_total{kind="DomainDataset",outcome="applied"}' in text
    assert 'mentor_resources{kind="DomainDataset",phase="Succeeded"}' in text
    assert "mentor_reconcile_duration_seconds_bucket" in text


def test_monitoring_objects_are_accepted_by_the_api_server(cluster, ns):
    """The chart's and the kustomize base's PrometheusRule, PodMonitor, ServiceMonitor and
    dashboard ConfigMap, server-side dry-run against the vendored Prometheus Operator CRDs."""
    from tests.unit.test_deploy_manifests import helm_template, kustomize_build

    rendered = [*helm_template("monitoring"), *kustomize_build("base")]
    objects = []
    for o in rendered:
        if o["apiVersion"].startswith("monitoring.coreos.com/") or o["metadata"]["name"].endswith("grafana-dashboard"):
            source = "chart" if "helm.sh/chart" in o["metadata"].get("labels", {}) else "kustomize"
            objects.append({**o, "metadata": {**o["metadata"], "namespace": ns.name, "name": f"{source}-{o['metadata']['name']}"}})
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "ConfigMap", "PodMonitor", "PodMonitor", "PrometheusRule", "PrometheusRule", "ServiceMonitor"]
    result = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}), check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(objects)
