"""kopf registrations every kind shares: reconcile on create/update/resume, phase tracking,
and the index of which resources wait on which."""

from __future__ import annotations

import json
from typing import Any

import kopf

from ..api import GROUP, VERSION, KindApi
from ..builders.inputs import dependencies
from ..metrics import PHASES
from .reconcile import reconcile


def register(api: KindApi) -> None:
    plural = api.info.plural

    @kopf.on.resume(GROUP, VERSION, plural, id="reconcile-resume")
    @kopf.on.create(GROUP, VERSION, plural, id="reconcile")
    @kopf.on.update(GROUP, VERSION, plural, field="spec", id="reconcile-update")
    def reconcile_handler(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        reconcile(memo.ctx, plain(body))

    @kopf.on.event(GROUP, VERSION, plural, id="track-phase")
    def track_phase(type: str, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        phase = None if type == "DELETED" else (body.get("status") or {}).get("phase", "Pending")
        PHASES.observe(body["kind"], meta["namespace"], meta["name"], phase)

    @kopf.index(GROUP, VERSION, plural, id=f"dependents_{plural}")
    def dependents_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
        # (namespace, referenced kind, referenced name) -> (this kind, this name); one entry per reference.
        meta = body["metadata"]
        spec = dict(body.get("spec") or {})
        return {
            (meta["namespace"], kind, name): (body["kind"], meta["name"])
            for kind, name in dependencies(body["kind"], spec)
        }


def plain(body: Any) -> dict[str, Any]:
    """kopf's Body view as a plain JSON dict (builders and the API client take plain JSON)."""
    return json.loads(json.dumps(body, default=dict))
