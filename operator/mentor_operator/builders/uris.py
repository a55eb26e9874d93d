"""Where a resource's stages may read and write, checked before any child is made, and the
PersistentVolumeClaims its pods mount. Pure functions of the spec, its resolved inputs and the
settings.

Publishing replaces everything under the output prefix, so an output must not contain an
input (it would be deleted) nor lie inside one (it would pollute it). In a cluster an output
lies under the namespace's own artifact root (one namespace cannot overwrite another's
artifacts), and `file://` names a path inside the stage's container.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mentor_trainer import storage
from pydantic import BaseModel

from ..settings import Settings

STORAGE_SCHEMES = tuple(f"{scheme}://" for scheme in storage.SCHEMES)
OUTPUT_FIELD = "outputUri"
WRITTEN_FIELDS = (f".{OUTPUT_FIELD}", ".payloadLogUri")  # stage config fields a stage writes under


def _storage_uris(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, URI) of every storage URI in a wire-form value."""
    if isinstance(value, str) and value.startswith(STORAGE_SCHEMES):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _storage_uris(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _storage_uris(item, f"{path}[{index}]")


def _inputs(spec: BaseModel, resolved: dict[str, Any]) -> list[tuple[str, str]]:
    """Every storage URI the stage reads: named in the spec, or resolved from a reference."""
    named = [(f, u) for f, u in _storage_uris(spec.model_dump(mode="json", by_alias=True), "spec") if f != f"spec.{OUTPUT_FIELD}"]
    referenced = [(f"the resolved {key}", u) for key, value in resolved.items() for _, u in _storage_uris(value, key)]
    return named + referenced


def _prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def _within(inner: str, outer: str) -> bool:
    return _prefix(inner).startswith(_prefix(outer))


def output_roots(settings: Settings, namespace: str) -> list[str]:
    """The prefixes a resource of `namespace` may write under (`{namespace}` is substituted)."""
    roots = settings.output_roots or [f"{settings.artifact_root.rstrip('/')}/{{namespace}}/"]
    return [_prefix(root.replace("{namespace}", namespace)) for root in roots]


def uri_problems(spec: BaseModel, body: dict[str, Any], resolved: dict[str, Any], out: str, settings: Settings, cluster: bool) -> list[str]:
    """What is wrong with where the resource reads and writes `out`, each naming the field."""
    inputs = _inputs(spec, resolved)
    problems = [
        f"spec.{OUTPUT_FIELD} {out} overlaps {field} {uri}: publishing replaces everything under the output prefix"
        for field, uri in inputs
        if _within(uri, out) or _within(out, uri)
    ]
    if not cluster:
        return problems
    namespace = body["metadata"].get("namespace", "default")
    roots = output_roots(settings, namespace)
    if not any(_within(out, root) for root in roots):
        problems.append(f"spec.{OUTPUT_FIELD} {out} lies outside this namespace's artifact roots ({', '.join(roots)})")
    if out.startswith("file://"):
        problems.append(f"spec.{OUTPUT_FIELD}: file:// is a path inside the stage's container, lost when it exits; use s3:// or pvc://")
    if not getattr(spec, "image", None):  # a custom image may carry files of its own
        problems += [
            f"{field}: file:// is a path inside the stage's container, which holds no such data; use s3:// or pvc:// "
            "(or a custom spec.image that carries it)"
            for field, uri in inputs
            if uri.startswith("file://")
        ]
    return problems


def claims(config: dict[str, Any]) -> dict[str, bool]:
    """Claim name -> whether the stage writes to it, for every pvc:// URI of a stage config
    (wire form): the pod mounts each at <pvc root>/<claim>, where the stage looks for it."""
    found: dict[str, bool] = {}
    for field, uri in _storage_uris(config, ""):
        if uri.startswith("pvc://"):
            claim = storage.parse(uri).bucket
            found[claim] = found.get(claim, False) or field in WRITTEN_FIELDS
    return found
