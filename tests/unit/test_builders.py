"""Builders are pure: resource in, child objects out."""

from __future__ import annotations

import json

import pytest

from mentor_operator.api import KINDS
from mentor_operator.builders import plan_export, plan_job_children, plan_rollout_analysis, plan_serving, version_id
from mentor_operator.builders.meta import child_name
from mentor_operator.settings import Settings
from mentor_trainer.config import SftStageConfig

SETTINGS = Settings(artifact_root="s3://art", mlflow_tracking_uri="http://mlflow:5000", s3_endpoint="minio:9000")


def body(kind: str, spec: dict, name: str = "demo") -> dict:
    return {
        "apiVersion": "mentor.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "team-a", "uid": "uid-1", "generation": 3},
        "spec": spec,
    }


FTJ_SPEC = {
    "baseModel": "s3://models/base/",
    "datasetRef": {"name": "docs"},
    "method": "dora",
    "lora": {"r": 8, "alpha": 16, "targetModules": ["q_proj", "v_proj"]},
    "hyperparameters": {"epochs": 2, "learningRate": 0.0001, "maxSeqLength": 1024},
    "curriculum": {"stages": [0.5, 1.0]},
    "resources": {"gpus": 2, "cpu": "8", "memory": "64Gi"},
    "scheduling": {
        "queue": "gpu-queue",
        "priorityClassName": "training",
        "nodeSelector": {"gpu": "h100"},
        "podAnnotations": {"team": "a"},
    },
}


def child(plan, kind: str) -> dict:
    (found,) = [c for c in plan.children if c["kind"] == kind]
    return found


def ftj_plan(spec=FTJ_SPEC, kubeflow=False):
    b = body("FineTuneJob", spec)
    model = KINDS["FineTuneJob"].spec.model_validate(spec)
    return b, plan_job_children(b, model, {"base_model": spec["baseModel"], "dataset_uri": "s3://art/docs/"}, SETTINGS, kubeflow)


def test_single_node_job_carries_scheduling_resources_and_security():
    b, plan = ftj_plan()
    access, (config_map, job) = plan.children[:3], plan.children[3:]
    assert [c["kind"] for c in access] == ["ServiceAccount", "Role", "RoleBinding"]  # before the pod that runs as it
    assert plan.runner is job and job["kind"] == "Job" and config_map["kind"] == "ConfigMap"
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == access[0]["metadata"]["name"] == "mentor-stage-finetunejob-demo"
    for obj in plan.children:
        assert obj["metadata"]["ownerReferences"][0] == {
            "apiVersion": "mentor.dev/v1alpha1", "kind": "FineTuneJob", "name": "demo", "uid": "uid-1",
            "controller": True, "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    pod = job["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["mentor-trainer", "sft", "--config", "/etc/mentor/config.json"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["memory"] == "64Gi"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert pod["spec"]["priorityClassName"] == "training"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert pod["metadata"]["annotations"] == {"team": "a"}
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mentor-s3-credentials"


def test_rendered_config_is_the_stage_config_with_every_option():
    _, plan = ftj_plan()
    config = SftStageConfig.model_validate_json(child(plan, "ConfigMap")["data"]["config.json"])
    assert config.method == "dora" and config.lora.r == 8 and config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.curriculum.stages == [0.5, 1.0]
    assert config.hyperparameters.max_seq_length == 1024
    assert config.dataset_uri == "s3://art/docs/" and config.base_model == "s3://models/base/"
    assert config.output_uri == "s3://art/team-a/finetunejob/demo/uid-1/"
    assert config.run.generation == 3 and config.tracking.experiment == "team-a/FineTuneJob"
    # every option the spec shares with the stage config reaches it, read yet or not
    spec_model = KINDS["FineTuneJob"].spec.model_validate(FTJ_SPEC)
    shared = set(SftStageConfig.model_fields) & set(type(spec_model).model_fields) - {"tracking", "output_uri"}
    assert {"auto_layers", "checkpointing", "evaluation", "distributed", "trust_remote_code"} <= shared
    for name in shared:
        assert getattr(config, name) == getattr(spec_model, name), name


def test_multi_node_without_kubeflow_is_an_indexed_job_and_headless_service():
    spec = {**FTJ_SPEC, "distributed": {"nodes": 3, "gpusPerNode": 8, "deepspeed": {"stage": 3}}}
    _, plan = ftj_plan(spec)
    kinds = [c["kind"] for c in plan.children]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Job"]
    service, job = child(plan, "Service"), child(plan, "Job")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    assert service["spec"]["clusterIP"] == "None"
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--nnodes=3" in script and "--nproc-per-node=8" in script
    assert f"--master-addr={job['metadata']['name']}-0.{service['metadata']['name']}.team-a.svc" in script


def test_multi_node_with_kubeflow_is_a_trainjob():
    spec = {**FTJ_SPEC, "distributed": {"nodes": 2, "gpusPerNode": 4}}
    _, plan = ftj_plan(spec, kubeflow=True)
    train_job = plan.runner
    assert train_job["kind"] == "TrainJob" and train_job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert train_job["spec"]["trainer"]["numNodes"] == 2 and train_job["spec"]["trainer"]["numProcPerNode"] == 4
    assert train_job["spec"]["runtimeRef"]["name"] == "torch-distributed"


def test_trainjob_pods_get_placement_account_and_security_through_a_runtime_patch():
    scheduling = {"nodeSelector": {"gpu": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  "podAnnotations": {"team": "a"}}
    spec = {**FTJ_SPEC, "distributed": {"nodes": 2, "gpusPerNode": 4}, "scheduling": scheduling}
    _, plan = ftj_plan(spec, kubeflow=True)
    (patch,) = plan.runner["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["spec"]["serviceAccountName"] == "mentor-stage-finetunejob-demo"  # progress reports from rank 0
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["annotations"] == {"team": "a"} and pod["metadata"]["labels"]["mentor.dev/kind"] == "FineTuneJob"


def test_data_job_has_no_gpu_and_suspend_is_passed_through():
    spec = {"sources": [{"name": "s", "uri": "s3://b/k"}], "suspend": True}
    b = body("DomainDataset", spec)
    plan = plan_job_children(b, KINDS["DomainDataset"].spec.model_validate(spec), {}, SETTINGS, False)
    job = plan.runner
    assert job["spec"]["suspend"] is True
    assert "nvidia.com/gpu" not in json.dumps(job["spec"]["template"]["spec"]["containers"][0]["resources"])


OUT = "s3://art/team-a/modeldeployment/demo/uid-1/"


@pytest.mark.parametrize("runtime,expected", [("huggingface", "kserve-huggingfaceserver"), ("vllm", "kserve-vllmserver"), ("triton", "kserve-tritonserver")])
def test_inference_service_per_runtime(runtime, expected):
    spec = {"modelUri": "s3://m/x/", "runtime": runtime, "scaling": {"minReplicas": 1, "maxReplicas": 3}}
    b = body("ModelDeployment", spec)
    model = KINDS["ModelDeployment"].spec.model_validate(spec)
    assert [c["kind"] for c in plan_export(b, model, "s3://m/x/", {}, SETTINGS).children] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    isvc = next(c for c in plan_serving(b, model, {}, SETTINGS, "s3://m/x/") if c["kind"] == "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["runtime"] == expected
    served = "triton/" if runtime == "triton" else "model/"
    assert predictor["model"]["storageUri"] == f"{OUT}export/{version_id('s3://m/x/')}/{served}"
    assert predictor["model"]["securityContext"]["runAsNonRoot"] is True  # every runtime is restricted
    assert predictor["maxReplicas"] == 3 and "canary" not in isvc["spec"]


def test_canary_serves_next_to_the_stable_version_with_its_own_config():
    spec = {"modelUri": "s3://m/new/", "canary": {"trafficPercent": 20}}
    b = body("ModelDeployment", spec)
    model = KINDS["ModelDeployment"].spec.model_validate(spec)
    children = plan_serving(b, model, {}, SETTINGS, "s3://m/old/", "s3://m/new/")
    configs = {c["metadata"]["name"]: json.loads(c["data"]["config.json"]) for c in children if c["kind"] == "ConfigMap"}
    old, new = version_id("s3://m/old/"), version_id("s3://m/new/")
    assert configs[f"demo-serve-{old}-config"]["modelVersion"] == "s3://m/old/"
    assert configs[f"demo-serve-{new}-config"]["modelUri"] == f"{OUT}export/{new}/model/"
    isvc = next(c for c in children if c["kind"] == "InferenceService")
    (canary,) = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == 20
    assert canary["predictor"]["volumes"][0]["configMap"]["name"] == f"demo-serve-{new}-config"
    assert isvc["spec"]["predictor"]["volumes"][0]["configMap"]["name"] == f"demo-serve-{old}-config"


def test_rollout_analysis_job_compares_the_versions_since_the_canary_started():
    spec = {"modelUri": "s3://m/new/", "canary": {"trafficPercent": 20, "maxErrorRate": 0.02}}
    b = body("ModelDeployment", spec)
    model = KINDS["ModelDeployment"].spec.model_validate(spec)
    plan = plan_rollout_analysis(b, model, SETTINGS, "s3://m/old/", "s3://m/new/", "2026-11-30T01:00:00Z", 2)
    config = json.loads(child(plan, "ConfigMap")["data"]["config.json"])
    assert plan.runner["metadata"]["name"] == f"demo-rollout-{version_id('s3://m/new/')}-2"
    assert config["stableVersion"] == "s3://m/old/" and config["canaryVersion"] == "s3://m/new/"
    assert config["since"] == "2026-11-30T01:00:00Z" and config["canary"]["maxErrorRate"] == 0.02
    assert config["payloadLogUri"] == f"{OUT}payloads/"
    container = plan.runner["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["mentor-trainer", "rollout"] and "nvidia.com/gpu" not in json.dumps(container["resources"])


def test_export_writes_under_its_own_prefix_on_cpu_with_the_serving_defaults():
    spec = {"modelUri": "s3://m/x/", "runtime": "triton", "resources": {"gpus": 2}, "temperature": 0.7,
            "batching": {"maxBatchSize": 16, "maxWaitMs": 5}}
    b = body("ModelDeployment", spec)
    model = KINDS["ModelDeployment"].spec.model_validate(spec)
    plan = plan_export(b, model, "s3://m/x/", {"dataset_uri": "s3://art/docs/"}, SETTINGS)
    config = json.loads(child(plan, "ConfigMap")["data"]["config.json"])
    assert config["outputUri"] == f"{OUT}export/{version_id('s3://m/x/')}/"
    assert config["modelUri"] == "s3://m/x/" and config["datasetUri"] == "s3://art/docs/"
    assert config["temperature"] == 0.7 and config["servingGpus"] == 2 and config["batching"]["maxBatchSize"] == 16
    resources = plan.runner["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in json.dumps(resources)  # export runs on CPU
    int4 = KINDS["ModelDeployment"].spec.model_validate({**spec, "runtime": "mentor", "quantization": {"method": "int4"}})
    gpu_plan = plan_export(b, int4, "s3://m/x/", {}, SETTINGS)
    assert "nvidia.com/gpu" in json.dumps(gpu_plan.runner["spec"]["template"]["spec"]["containers"][0]["resources"])


def test_mentor_runtime_and_drift_cron_job():
    spec = {"modelUri": "s3://m/x/", "rag": {"enabled": True, "datasetRef": "docs"}, "monitoring": {"drift": {"schedule": "*/5 * * * *"}}}
    b = body("ModelDeployment", spec)
    model = KINDS["ModelDeployment"].spec.model_validate(spec)
    children = plan_serving(b, model, {"model_uri": "s3://m/x/", "index_uri": "s3://art/docs/index/"}, SETTINGS, "s3://m/x/")
    isvc = next(c for c in children if c["kind"] == "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["command"][:2] == ["mentor-trainer", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    env = {e["name"]: e for e in container["env"]}
    assert env["HOME"]["value"] == "/tmp" and "MENTOR_PROGRESS_PATH" not in env  # writable home, no status patches
    serve_cm = next(c for c in children if c["metadata"]["name"] == f"demo-serve-{version_id('s3://m/x/')}-config")
    serve_config = json.loads(serve_cm["data"]["config.json"])
    assert serve_config["indexUri"] == "s3://art/docs/index/"
    assert serve_config["modelUri"] == f"{OUT}export/{version_id('s3://m/x/')}/model/" and serve_config["modelVersion"] == "s3://m/x/"
    assert serve_config["payloadLogUri"] == f"{OUT}payloads/"
    cron = next(c for c in children if c["kind"] == "CronJob")
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["jobTemplate"]["metadata"]["labels"]["mentor.dev/stage"] == "drift"  # its Jobs are watched
    drift_container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert drift_container["command"][:2] == ["mentor-trainer", "drift"]
    assert "nvidia.com/gpu" not in drift_container["resources"]["requests"]


def test_child_names_fit_label_limits():
    long = "x" * 60
    assert len(child_name(long, "sft")) <= 63
    assert child_name(long, "sft") != child_name(long[:-1] + "y", "sft")
    assert child_name("short", "sft") == "short-sft"


def test_api_key_secrets_reach_the_pod_as_secret_refs_only():
    spec = {
        "sources": [{"name": "s", "uri": "s3://b/k"}],
        "synthesis": {"teacher": {"url": "http://teacher:8000/v1", "model": "t", "apiKeySecret": {"name": "teacher-key", "key": "api-key"}}},
    }
    b = body("DomainDataset", spec)
    plan = plan_job_children(b, KINDS["DomainDataset"].spec.model_validate(spec), {}, SETTINGS, False)
    env = {e["name"]: e for e in plan.runner["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MENTOR_SECRET_TEACHER_KEY_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "teacher-key", "key": "api-key"}
    config = json.loads(child(plan, "ConfigMap")["data"]["config.json"])
    assert config["synthesis"]["teacher"]["apiKeySecret"] == {"name": "teacher-key", "key": "api-key"}
