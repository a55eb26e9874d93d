"""Resolve a resource's references into the input URIs its stage reads.

Pure: the caller passes `lookup(kind, name) -> body | None` (the API server in the operator,
the files being run in local mode), so the same rules hold in both places.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Lookup = Callable[[str, str], "dict[str, Any] | None"]

# Which status field holds the output a reference to each kind resolves to.
OUTPUT_FIELD = {
    "DomainDataset": "outputUri",
    "FineTuneJob": "modelUri",
    "RLHFJob": "modelUri",
    "Evaluation": "modelUri",
}


@dataclass
class Resolution:
    values: dict[str, Any] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)  # reasons to wait; the resource proceeds later
    blocked: list[str] = field(default_factory=list)  # reasons it cannot proceed as specified

    @property
    def ready(self) -> bool:
        return not self.waiting and not self.blocked


def _output_of(resolution: Resolution, lookup: Lookup, kind: str, name: str, path: str) -> Any:
    """The output of a referenced resource once it has succeeded; records why not otherwise."""
    body = lookup(kind, name)
    if body is None:
        resolution.waiting.append(f"{path}: {kind} {name!r} does not exist yet")
        return None
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase != "Succeeded":
        detail = f" ({status['message']})" if phase == "Failed" and status.get("message") else ""
        resolution.waiting.append(f"{path}: {kind} {name!r} is {phase or 'Pending'}, waiting for Succeeded{detail}")
        return None
    value = status.get(OUTPUT_FIELD[kind])
    if not value:
        resolution.waiting.append(f"{path}: {kind} {name!r} succeeded without status.{OUTPUT_FIELD[kind]}")
    return value


def _model(resolution: Resolution, lookup: Lookup, spec: dict[str, Any], ref_field: str, uri_field: str) -> Any:
    if spec.get(uri_field):
        return spec[uri_field]
    ref = spec.get(ref_field)
    if ref:
        return _output_of(resolution, lookup, ref.get("kind", "FineTuneJob"), ref["name"], f"spec.{ref_field}")
    return None


def _dataset(resolution: Resolution, lookup: Lookup, name: str, path: str) -> Any:
    return _output_of(resolution, lookup, "DomainDataset", name, path)


def resolve_inputs(kind: str, spec: dict[str, Any], lookup: Lookup) -> Resolution:
    """Map a resource's spec (wire form) to the resolved fields of its stage config."""
    r = Resolution()
    v = r.values
    if kind == "FineTuneJob":
        v["base_model"] = spec["baseModel"]
        v["dataset_uri"] = _dataset(r, lookup, spec["datasetRef"]["name"], "spec.datasetRef")
    elif kind == "RLHFJob":
        v["policy_model"] = _model(r, lookup, spec, "policyRef", "policyModel")
        v["dataset_uri"] = _dataset(r, lookup, spec["datasetRef"]["name"], "spec.datasetRef")
    elif kind == "Evaluation":
        v["model_uri"] = _model(r, lookup, spec, "modelRef", "modelUri")
        v["baseline_uri"] = _model(r, lookup, spec, "baselineRef", "baselineUri")
        v["dataset_uri"] = _dataset(r, lookup, spec["datasetRef"]["name"], "spec.datasetRef")
        if spec.get("modelRef"):
            producer = lookup(spec["modelRef"].get("kind", "FineTuneJob"), spec["modelRef"]["name"]) or {}
            v["training_run_id"] = (producer.get("status") or {}).get("mlflowRunId")
    elif kind == "ModelDeployment":
        v["model_uri"] = _model(r, lookup, spec, "modelRef", "modelUri")
        if spec.get("evaluationRef"):
            _check_evaluation(r, lookup, spec["evaluationRef"]["name"], v["model_uri"])
        rag = spec.get("rag") or {}
        if rag.get("enabled"):
            v["index_uri"] = _index_uri(r, lookup, spec, rag)
    return r


def _check_evaluation(r: Resolution, lookup: Lookup, name: str, model_uri: str | None) -> None:
    before = len(r.waiting)
    _output_of(r, lookup, "Evaluation", name, "spec.evaluationRef")
    if len(r.waiting) > before:
        return
    status = lookup("Evaluation", name)["status"]
    if status.get("passed") is not True:
        gates = "; ".join(status.get("failedGates") or []) or "no gate result"
        r.blocked.append(f"spec.evaluationRef: Evaluation {name!r} did not pass ({gates}); refusing to roll out")
    elif model_uri and status.get("modelUri") and status["modelUri"] != model_uri:
        r.blocked.append(
            f"spec.evaluationRef: Evaluation {name!r} evaluated {status['modelUri']}, not the model to deploy {model_uri}"
        )


def _index_uri(r: Resolution, lookup: Lookup, spec: dict[str, Any], rag: dict[str, Any]) -> Any:
    dataset = rag.get("datasetRef")
    if not dataset and (spec.get("modelRef") or {}).get("kind", "FineTuneJob") == "FineTuneJob" and spec.get("modelRef"):
        trainer = lookup("FineTuneJob", spec["modelRef"]["name"]) or {}
        dataset = ((trainer.get("spec") or {}).get("datasetRef") or {}).get("name")
    if not dataset:
        r.blocked.append("spec.rag: no index to serve; set rag.datasetRef or deploy a FineTuneJob's model")
        return None
    root = _dataset(r, lookup, dataset, "spec.rag.datasetRef")
    return f"{root.rstrip('/')}/index/" if root else None


def dependencies(kind: str, spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every resource this one references; the local executor orders by it."""
    deps: list[tuple[str, str]] = []
    if spec.get("datasetRef"):
        deps.append(("DomainDataset", spec["datasetRef"]["name"]))
    for ref_field in ("modelRef", "baselineRef", "policyRef"):
        ref = spec.get(ref_field)
        if ref:
            deps.append((ref.get("kind", "FineTuneJob"), ref["name"]))
    if spec.get("evaluationRef"):
        deps.append(("Evaluation", spec["evaluationRef"]["name"]))
    rag = spec.get("rag") or {}
    if rag.get("enabled") and rag.get("datasetRef"):
        deps.append(("DomainDataset", rag["datasetRef"]))
    return deps
