"""References between resources, declared on each kind, and how each resolves to a field of
the kind's stage config.

Pure: resolution takes `lookup(kind, name) -> body | None` (the API server in the operator,
the files being run in local mode), so the same rules hold in both places. Specs are read in
wire form (camelCase), as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from mentor_trainer.data.layout import INDEX_DIR

Lookup = Callable[[str, str], "dict[str, Any] | None"]


@dataclass
class Resolution:
    """What a resource's references resolved to, or why they did not (yet)."""

    lookup: Lookup
    # kind -> the status field a reference to that kind resolves to (KindApi.output_field)
    outputs: Mapping[str, str]
    values: dict[str, Any] = field(default_factory=dict)  # stage-config fields
    status: dict[str, Any] = field(default_factory=dict)  # status fields recorded when applied
    waiting: list[str] = field(default_factory=list)  # reasons to wait; the resource proceeds later
    blocked: list[str] = field(default_factory=list)  # reasons it cannot proceed as specified

    @property
    def ready(self) -> bool:
        return not self.waiting and not self.blocked

    def output_of(self, kind: str, name: str, path: str) -> Any:
        """The output of a referenced resource once it has succeeded; records why not otherwise."""
        body = self.lookup(kind, name)
        if body is None:
            self.waiting.append(f"{path}: {kind} {name!r} does not exist yet")
            return None
        status = body.get("status") or {}
        phase = status.get("phase")
        if phase != "Succeeded":
            detail = f" ({status['message']})" if phase == "Failed" and status.get("message") else ""
            self.waiting.append(f"{path}: {kind} {name!r} is {phase or 'Pending'}, waiting for Succeeded{detail}")
            return None
        output = self.outputs[kind]
        value = status.get(output)
        if not value:
            self.waiting.append(f"{path}: {kind} {name!r} succeeded without status.{output}")
        return value


class Reference(Protocol):
    """One kind of reference a spec can hold."""

    def targets(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        """(kind, name) of each resource referenced; the dependency order and the operator's
        wake-up index are built from these."""
        ...

    def resolve(self, spec: dict[str, Any], resolution: Resolution) -> None:
        """Record the resolved value (or the reason to wait or stop) in `resolution`."""
        ...


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _ref_kind(ref: dict[str, Any]) -> str:
    return ref.get("kind", "FineTuneJob")  # ModelRef's default kind


@dataclass(frozen=True)
class DatasetReference:
    """`datasetRef` -> the DomainDataset's output, as the stage config field `into`."""

    field: str = "datasetRef"
    into: str = "dataset_uri"

    def targets(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        return [("DomainDataset", spec[self.field]["name"])] if spec.get(self.field) else []

    def resolve(self, spec: dict[str, Any], resolution: Resolution) -> None:
        resolution.values[self.into] = resolution.output_of("DomainDataset", spec[self.field]["name"], f"spec.{self.field}")


@dataclass(frozen=True)
class ModelReference:
    """A model given either as a reference to the resource that produces it (`ref_field`) or
    as a URI (`uri_field`); resolves to the stage config field `into`."""

    ref_field: str
    uri_field: str
    into: str
    # stage config field that gets the producing run's MLflow run id (links the two runs)
    run_id_into: str | None = None
    # status field that records the resolved model when the stage starts
    record_as: str | None = None

    def targets(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        ref = spec.get(self.ref_field)
        return [(_ref_kind(ref), ref["name"])] if ref else []

    def resolve(self, spec: dict[str, Any], resolution: Resolution) -> None:
        ref = spec.get(self.ref_field)
        value = spec.get(self.uri_field)
        if not value and ref:
            value = resolution.output_of(_ref_kind(ref), ref["name"], f"spec.{self.ref_field}")
        resolution.values[self.into] = value
        if self.run_id_into and ref:
            producer = resolution.lookup(_ref_kind(ref), ref["name"]) or {}
            resolution.values[self.run_id_into] = (producer.get("status") or {}).get("mlflowRunId")
        if self.record_as:
            resolution.status[self.record_as] = value


@dataclass(frozen=True)
class PassedEvaluation:
    """`evaluationRef`: an Evaluation that must have passed, on the very model (the value
    resolved into `model_from`), before anything rolls out. Its calibrated temperature
    becomes the config field `temperature_into` unless the spec sets that field itself."""

    field: str = "evaluationRef"
    model_from: str = "model_uri"
    temperature_into: str | None = None

    def targets(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        return [("Evaluation", spec[self.field]["name"])] if spec.get(self.field) else []

    def resolve(self, spec: dict[str, Any], resolution: Resolution) -> None:
        if not spec.get(self.field):
            return
        name = spec[self.field]["name"]
        path = f"spec.{self.field}"
        before = len(resolution.waiting)
        resolution.output_of("Evaluation", name, path)
        if len(resolution.waiting) > before:
            return
        status = resolution.lookup("Evaluation", name)["status"]
        model_uri = resolution.values.get(self.model_from)
        if status.get("passed") is not True:
            gates = "; ".join(status.get("failedGates") or []) or "no gate result"
            resolution.blocked.append(f"{path}: Evaluation {name!r} did not pass ({gates}); refusing to roll out")
        elif model_uri and status.get("modelUri") and status["modelUri"] != model_uri:
            resolution.blocked.append(
                f"{path}: Evaluation {name!r} evaluated {status['modelUri']}, not the model to deploy {model_uri}"
            )
        elif self.temperature_into and spec.get(_camel(self.temperature_into)) is None:
            resolution.values[self.temperature_into] = status.get("calibratedTemperature")


@dataclass(frozen=True)
class ServedIndex:
    """`rag.datasetRef` -> the retrieval index of that DomainDataset (by default the dataset
    the served FineTuneJob trained on), as the stage config field `into`."""

    into: str = "index_uri"
    model_ref_field: str = "modelRef"

    def targets(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        rag = spec.get("rag") or {}
        return [("DomainDataset", rag["datasetRef"])] if rag.get("enabled") and rag.get("datasetRef") else []

    def resolve(self, spec: dict[str, Any], resolution: Resolution) -> None:
        rag = spec.get("rag") or {}
        if not rag.get("enabled"):
            return
        dataset = rag.get("datasetRef")
        model_ref = spec.get(self.model_ref_field)
        if not dataset and model_ref and _ref_kind(model_ref) == "FineTuneJob":
            trainer = resolution.lookup("FineTuneJob", model_ref["name"]) or {}
            dataset = ((trainer.get("spec") or {}).get("datasetRef") or {}).get("name")
        if not dataset:
            resolution.blocked.append("spec.rag: no index to serve; set rag.datasetRef or deploy a FineTuneJob's model")
            return
        root = resolution.output_of("DomainDataset", dataset, "spec.rag.datasetRef")
        resolution.values[self.into] = f"{root.rstrip('/')}/{INDEX_DIR}/" if root else None


@dataclass(frozen=True)
class TrainingDataset:
    """The dataset the referenced FineTuneJob trained on, as the config field `into`, when it
    is still there: an optional input (e.g. texts for a quick check), never a reason to wait."""

    into: str = "dataset_uri"
    model_ref_field: str = "modelRef"

    def targets(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        return []

    def resolve(self, spec: dict[str, Any], resolution: Resolution) -> None:
        model_ref = spec.get(self.model_ref_field)
        if not model_ref or _ref_kind(model_ref) != "FineTuneJob":
            return
        trainer = resolution.lookup("FineTuneJob", model_ref["name"]) or {}
        dataset = ((trainer.get("spec") or {}).get("datasetRef") or {}).get("name")
        body = resolution.lookup("DomainDataset", dataset) if dataset else None
        status = (body or {}).get("status") or {}
        if status.get("phase") == "Succeeded":
            resolution.values[self.into] = status.get(resolution.outputs["DomainDataset"])
