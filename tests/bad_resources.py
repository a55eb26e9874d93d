"""Malformed resources, each with the field its rejection must name. Used twice: the real
API server must reject them at `kubectl apply` (tests/cluster) and `mentor validate` must
report the same field offline (tests/unit), so the two sets of rules cannot drift apart."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

GOOD = {
    "DomainDataset": {"sources": [{"name": "docs", "uri": "s3://bucket/docs/"}]},
    "FineTuneJob": {"baseModel": "s3://models/base/", "datasetRef": {"name": "docs"}},
    "RLHFJob": {"algorithm": "dpo", "policyRef": {"name": "ft"}, "datasetRef": {"name": "docs"}},
    "Evaluation": {"modelRef": {"name": "ft"}, "datasetRef": {"name": "docs"}},
    "ModelDeployment": {"modelRef": {"name": "ft"}},
}


@dataclass(frozen=True)
class BadCase:
    id: str
    kind: str
    spec: dict[str, Any]
    field: str  # path the error must name

    def body(self, name: str) -> dict[str, Any]:
        return {"apiVersion": "mentor.dev/v1alpha1", "kind": self.kind, "metadata": {"name": name}, "spec": self.spec}


def _with(kind: str, **changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD[kind])
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


CASES = [
    BadCase("negative-epochs", "FineTuneJob", _with("FineTuneJob", hyperparameters={"epochs": -1}), "spec.hyperparameters.epochs"),
    BadCase("unknown-method", "FineTuneJob", _with("FineTuneJob", method="superlora"), "spec.method"),
    BadCase("missing-base-model", "FineTuneJob", _with("FineTuneJob", baseModel=None), "spec.baseModel"),
    BadCase("qlora-without-lora", "FineTuneJob", _with("FineTuneJob", method="qlora"), "spec.lora"),
    BadCase("bad-uri-scheme", "FineTuneJob", _with("FineTuneJob", baseModel="ftp://models/base"), "spec.baseModel"),
    BadCase("wrong-type-learning-rate", "FineTuneJob", _with("FineTuneJob", hyperparameters={"learningRate": "fast"}), "spec.hyperparameters.learningRate"),
    BadCase("zero-nodes", "FineTuneJob", _with("FineTuneJob", distributed={"nodes": 0}), "spec.distributed.nodes"),
    BadCase("unknown-field", "FineTuneJob", _with("FineTuneJob", epochs=3), "spec.epochs"),
    BadCase("freeze-without-block", "FineTuneJob", _with("FineTuneJob", method="freeze"), "spec.freeze"),
    BadCase("curriculum-not-ending-at-1", "FineTuneJob", _with("FineTuneJob", curriculum={"stages": [0.5, 0.3]}), "spec.curriculum.stages"),
    BadCase("bad-memory-quantity", "FineTuneJob", _with("FineTuneJob", resources={"memory": "lots"}), "spec.resources.memory"),
    BadCase("bad-reference-name", "FineTuneJob", _with("FineTuneJob", datasetRef={"name": "Bad_Name"}), "spec.datasetRef.name"),
    BadCase("retrieved-context-for-pretraining", "FineTuneJob", _with("FineTuneJob", data={"task": "pretrain", "retrievedContext": {"topK": 3}}), "spec.data.retrievedContext"),
    BadCase("offload-params-needs-zero3", "FineTuneJob", _with("FineTuneJob", distributed={"deepspeed": {"stage": 2, "offloadParams": True}}), "spec.distributed.deepspeed.offloadParams"),
    BadCase("no-sources", "DomainDataset", _with("DomainDataset", sources=[]), "spec.sources"),
    BadCase("uri-and-inline", "DomainDataset", _with("DomainDataset", sources=[{"name": "a", "uri": "s3://b/k", "inline": [{"id": "x", "text": "t"}]}]), "spec.sources[0]"),
    BadCase("split-not-summing-to-1", "DomainDataset", _with("DomainDataset", split={"train": 0.9, "validation": 0.2, "test": 0.1}), "spec.split"),
    BadCase("threshold-above-1", "DomainDataset", _with("DomainDataset", dedup={"near": {"threshold": 1.5}}), "spec.dedup.near.threshold"),
    BadCase("overlap-not-below-max", "DomainDataset", _with("DomainDataset", chunking={"maxTokens": 64, "overlapTokens": 64}), "spec.chunking.overlapTokens"),
    BadCase("gate-unknown-metric", "Evaluation", _with("Evaluation", gates=[{"metric": "qa.f2", "op": ">=", "value": 0.5}]), "spec.gates[0].metric"),
    BadCase("judge-suite-without-judge", "Evaluation", _with("Evaluation", suites=["qa", "judge"]), "spec.judge"),
    BadCase("relative-gate-without-baseline", "Evaluation", _with("Evaluation", gates=[{"metric": "qa.f1", "op": ">=", "baselineDelta": 0.05}]), "spec.gates"),
    BadCase("model-ref-and-uri", "Evaluation", _with("Evaluation", modelUri="s3://m/x"), "spec.modelRef"),
    BadCase("unknown-runtime", "ModelDeployment", _with("ModelDeployment", runtime="tgi"), "spec.runtime"),
    BadCase("max-below-min-replicas", "ModelDeployment", _with("ModelDeployment", scaling={"minReplicas": 3, "maxReplicas": 1}), "spec.scaling.maxReplicas"),
    BadCase("unknown-drift-signal", "ModelDeployment",
            _with("ModelDeployment", monitoring={"drift": {"thresholds": {"embeddings.mmd": 0.3}}}), "spec.monitoring.drift.thresholds"),
    BadCase("retrain-without-evaluation", "ModelDeployment",
            _with("ModelDeployment", monitoring={"drift": {}, "retrain": {"enabled": True}}), "spec.monitoring.retrain.enabled"),
    BadCase("payload-log-window-on-a-file-source", "DomainDataset",
            _with("DomainDataset", sources=[{"name": "docs", "uri": "s3://b/docs/", "since": "2026-11-30T00:00:00Z"}]), "spec.sources[0].format"),
    BadCase("grpo-without-reward", "RLHFJob", _with("RLHFJob", algorithm="grpo"), "spec.rewardFunctions"),
    BadCase("policy-ref-and-model", "RLHFJob", _with("RLHFJob", policyModel="s3://m/p"), "spec.policyRef"),
    BadCase(
        "grpo-group-does-not-divide-batch",
        "RLHFJob",
        _with("RLHFJob", algorithm="grpo", rewardFunctions=[{"name": "format"}], hyperparameters={"perDeviceBatchSize": 6}),
        "spec.generation.numGenerations",
    ),
    BadCase(
        "grpo-one-generation",
        "RLHFJob",
        _with("RLHFJob", algorithm="grpo", rewardFunctions=[{"name": "format"}], generation={"numGenerations": 1}),
        "spec.generation.numGenerations",
    ),
    BadCase("judge-without-endpoint", "RLHFJob", _with("RLHFJob", algorithm="grpo", rewardFunctions=[{"name": "judge"}]), "spec.rewardFunctions[0].judge"),
    BadCase("unknown-reward-function", "RLHFJob", _with("RLHFJob", algorithm="grpo", rewardFunctions=[{"name": "vibes"}]), "spec.rewardFunctions[0].name"),
    BadCase(
        "reward-model-term-without-model",
        "RLHFJob",
        _with("RLHFJob", algorithm="grpo", rewardFunctions=[{"name": "reward-model"}]),
        "spec.rewardFunctions",
    ),
    BadCase("orpo-with-reference", "RLHFJob", _with("RLHFJob", algorithm="orpo", referenceModel="s3://m/ref/"), "spec.referenceModel"),
    BadCase("distill-without-teacher", "RLHFJob", _with("RLHFJob", algorithm="distill"), "spec.algorithm"),
    BadCase(
        "teacher-ref-and-model",
        "RLHFJob",
        _with("RLHFJob", algorithm="distill", teacherRef={"name": "ft"}, teacherModel="s3://m/t/"),
        "spec.teacherRef",
    ),
    # credentials never go in a URI: specs and rendered configs are stored in the clear
    BadCase("credentials-in-model-uri", "FineTuneJob", _with("FineTuneJob", baseModel="s3://AKIA:secret@models/base/"), "spec.baseModel"),
    BadCase("credentials-in-tracking-uri", "FineTuneJob", _with("FineTuneJob", tracking={"uri": "https://user:pass@mlflow.example/"}), "spec.tracking.uri"),
    BadCase(
        "credentials-in-judge-url",
        "RLHFJob",
        _with("RLHFJob", algorithm="grpo", rewardFunctions=[{"name": "judge", "judge": {"url": "http://u:p@judge:8000/v1", "model": "j"}}]),
        "spec.rewardFunctions[0].judge.url",
    ),
    BadCase("reward-heads-all-zero", "RLHFJob", _with("RLHFJob", algorithm="reward-model", rewardHeads={"qualityWeight": 0, "safetyWeight": 0}), "spec.rewardHeads"),
]
