"""What stage pods may do in the API: patch their own resource's status.progress, nothing else.

Each resource gets its own stage ServiceAccount, a Role that may patch only that resource's
status (resourceNames), and the RoleBinding between them, all owned by the resource (deleted
with it). A per-resource account is what makes "its own" enforceable: pods of two resources
never share a token. Which status fields the account may change (progress only) is enforced by
the ValidatingAdmissionPolicy that api/crdgen.py generates from the status models.

A resource that names its own ServiceAccount runs under it and gets nothing from the operator:
the operator never grants rights to an account a user chose (its pods then report no live
progress unless an admin binds that account to the resource's Role).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..api import KINDS
from ..api.common import API_VERSION, GROUP
from ..settings import Settings
from .meta import object_meta

STAGE_ACCOUNT_PREFIX = "mentor-stage-"  # the admission policy recognises stage accounts by it
NAME_LIMIT = 253


def status_path(body: dict[str, Any]) -> str:
    """API path of the resource's status subresource (where a stage reports progress)."""
    meta = body["metadata"]
    plural = KINDS[body["kind"]].info.plural
    return f"/apis/{API_VERSION}/namespaces/{meta.get('namespace', 'default')}/{plural}/{meta['name']}/status"


def stage_identity(body: dict[str, Any]) -> str:
    """`mentor-stage-<kind>-<name>`: the name of the resource's stage account, Role and
    RoleBinding (the kind is in it because two kinds may share a name)."""
    name = f"{STAGE_ACCOUNT_PREFIX}{body['kind'].lower()}-{body['metadata']['name']}"
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: NAME_LIMIT - len(digest) - 1]}-{digest}"


def stage_account(body: dict[str, Any], spec: Any) -> str:
    """The account a resource's stage pods run as: the one its spec names, else its own."""
    return spec.scheduling.service_account_name or stage_identity(body)


def reports_progress(spec: Any, settings: Settings) -> bool:
    """Whether the stage pods get an API token: only to report progress, only as our account."""
    return settings.report_progress and not spec.scheduling.service_account_name


def build_stage_access(body: dict[str, Any], spec: Any, settings: Settings) -> list[dict[str, Any]]:
    """The objects that let the resource's stage pods report its progress, in apply order
    (none when the stage runs as a user's account or progress reports are off)."""
    if not reports_progress(spec, settings):
        return []
    identity = stage_identity(body)
    meta = object_meta(body, identity)
    plural = KINDS[body["kind"]].info.plural
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{plural}/status"],
                    "resourceNames": [body["metadata"]["name"]],
                    "verbs": ["patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": identity},
            "subjects": [{"kind": "ServiceAccount", "name": identity, "namespace": meta["namespace"]}],
        },
    ]
