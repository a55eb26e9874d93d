"""Render a resource's stage config: its spec's options + resolved inputs + runtime fields."""

from __future__ import annotations

from typing import Any

from mentor_trainer.config import STAGE_CONFIGS, StageRuntime
from mentor_trainer.config.common import ADMITTED, RunIdentity, Spec, Tracking

from ..api import KINDS
from ..settings import Settings


def default_output_uri(settings: Settings, kind: str, namespace: str, name: str, uid: str) -> str:
    return f"{settings.artifact_root.rstrip('/')}/{namespace}/{kind.lower()}/{name}/{uid}/"


def output_uri(spec: Spec, body: dict[str, Any], settings: Settings) -> str:
    meta = body["metadata"]
    return getattr(spec, "output_uri", None) or default_output_uri(
        settings, body["kind"], meta.get("namespace", "default"), meta["name"], meta.get("uid", "local")
    )


def render_stage_config(
    spec: Spec,
    body: dict[str, Any],
    resolved: dict[str, Any],
    settings: Settings,
    stage: str | None = None,
) -> StageRuntime:
    """The config the stage reads. Every option the spec shares with the stage config is
    copied, so a field is honoured as soon as the stage reads it."""
    kind = body["kind"]
    stage = stage or KINDS[kind].info.stage
    config_model = STAGE_CONFIGS[stage]
    meta = body["metadata"]
    shared = {name: getattr(spec, name) for name in config_model.model_fields if name in type(spec).model_fields}
    tracking: Tracking = shared.get("tracking") or Tracking()
    shared["tracking"] = tracking.model_copy(
        update={
            "uri": tracking.uri or settings.mlflow_tracking_uri,
            "experiment": tracking.experiment or f"{meta.get('namespace', 'default')}/{kind}",
        }
    )
    shared.update(
        run=RunIdentity(
            kind=kind,
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", "local"),
            generation=meta.get("generation", 1),
        ),
        output_uri=output_uri(spec, body, settings),
    )
    shared.update({k: v for k, v in resolved.items() if k in config_model.model_fields and v is not None})
    # The options were validated (rules included) as part of the spec already.
    return config_model.model_validate(shared, context=ADMITTED)
