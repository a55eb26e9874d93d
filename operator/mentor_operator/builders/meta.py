"""Names, labels and owner references shared by every child object."""

from __future__ import annotations

import hashlib
from typing import Any

MANAGED_BY = "mentor-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KIND = "mentor.dev/kind"
LABEL_NAME = "mentor.dev/name"
LABEL_STAGE = "mentor.dev/stage"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def child_name(parent: str, suffix: str, limit: int = 63) -> str:
    """`<parent>-<suffix>`, shortened with a stable hash when it would exceed `limit`
    (Job names become pod labels, which are limited to 63 characters)."""
    name = f"{parent}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{parent[: limit - len(suffix) - 10].rstrip('-')}-{digest}-{suffix}"


def labels(kind: str, name: str, stage: str | None = None) -> dict[str, str]:
    result = {
        LABEL_MANAGED_BY: MANAGED_BY,
        "app.kubernetes.io/part-of": "mentor",
        LABEL_KIND: kind,
        LABEL_NAME: name[:63],
    }
    if stage:
        result[LABEL_STAGE] = stage
    return result


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(body: dict[str, Any], name: str, stage: str | None = None) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "name": name,
        "namespace": meta.get("namespace", "default"),
        "labels": labels(body["kind"], meta["name"], stage),
        "ownerReferences": [owner_reference(body)],
    }
