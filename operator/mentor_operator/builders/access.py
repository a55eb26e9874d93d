"""What stage pods may do in the API: patch their resource's status.progress, nothing else.

One ServiceAccount, Role and RoleBinding per namespace (shared by every stage there, so no
owner reference: deleting one FineTuneJob must not take them away from the others). A
resource that names its own ServiceAccount gets that account bound to the same Role.
"""

from __future__ import annotations

from typing import Any

from ..api import KINDS
from ..api.common import API_VERSION, GROUP, JobSpecBase
from ..settings import Settings
from .meta import MANAGED_BY, LABEL_MANAGED_BY

PROGRESS_ROLE = "mentor-stage-progress"


def status_path(body: dict[str, Any]) -> str:
    """API path of the resource's status subresource (where a stage reports progress)."""
    meta = body["metadata"]
    plural = KINDS[body["kind"]].info.plural
    return f"/apis/{API_VERSION}/namespaces/{meta.get('namespace', 'default')}/{plural}/{meta['name']}/status"


def stage_account(spec: JobSpecBase, settings: Settings) -> str:
    return spec.scheduling.service_account_name or settings.trainer_service_account


def build_stage_access(namespace: str, account: str, settings: Settings) -> list[dict[str, Any]]:
    """The objects that let `account` report progress in `namespace`, in apply order."""
    meta = {"namespace": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY, "app.kubernetes.io/part-of": "mentor"}}
    objects: list[dict[str, Any]] = []
    if account == settings.trainer_service_account:  # ours to create; a user's account stays theirs
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": account, **meta},
            }
        )
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": PROGRESS_ROLE, **meta},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": sorted(f"{api.info.plural}/status" for api in KINDS.values()),
                    "verbs": ["patch"],
                }
            ],
        }
    )
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{PROGRESS_ROLE}-{account}"[:253], **meta},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PROGRESS_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
    )
    return objects
