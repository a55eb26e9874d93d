"""kopf registrations of the Mentor kinds, the same for each: reconcile on create/update/resume,
phase tracking, and the indexes of succeeded resources and of which resources wait on which.
What differs per kind is declared on its KindApi (api/), not here."""

from __future__ import annotations

import json
from typing import Any

import kopf

from ..api import GROUP, KINDS, VERSION, KindApi
from ..builders.inputs import dependencies
from ..metrics import PHASES
from ..settings import Settings
from ..status import RUNNER_PHASES
from .reconcile import reconcile, resync

ROLLOUT_CHECK_SECONDS = 30
# A missed or lost Job event, pods that never start: read at import, as kopf registers
# timers then (the other settings are read at start-up).
RESYNC_SECONDS = Settings.from_env().resync_seconds


def register(api: KindApi) -> None:
    """Register the handlers of one kind."""
    plural = api.info.plural

    @kopf.on.resume(GROUP, VERSION, plural, id="reconcile-resume")
    @kopf.on.create(GROUP, VERSION, plural, id="reconcile")
    @kopf.on.update(GROUP, VERSION, plural, field="spec", id="reconcile-update")
    def reconcile_handler(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        reconcile(memo.ctx, plain(body), cached_lookup(memo.ctx, body["metadata"]["namespace"], kwargs))

    if api.workload == "stage":
        # Level-triggered resync of what a runner decides; a finished resource has nothing to
        # re-read (kopf stops the timer once `when` no longer holds).
        @kopf.timer(
            GROUP, VERSION, plural, id="resync", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, idle=RESYNC_SECONDS,
            when=lambda status, **_: status.get("phase") in RUNNER_PHASES,
        )
        def resync_timer(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
            resync(memo.ctx, plain(body), cached_lookup(memo.ctx, body["metadata"]["namespace"], kwargs))

    if api.workload == "serving":
        # A rollout advances with time (a canary's analysis falls due) and on the rollout
        # annotation, neither of which is a spec change.
        @kopf.timer(GROUP, VERSION, plural, interval=ROLLOUT_CHECK_SECONDS, id="rollout")
        def rollout_timer(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
            reconcile(memo.ctx, plain(body), cached_lookup(memo.ctx, body["metadata"]["namespace"], kwargs))

    # Cheap, CPU-only handlers are async: they run on the event loop without a thread hop.
    @kopf.on.event(GROUP, VERSION, plural, id="track-phase")
    async def track_phase(type: str, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        phase = None if type == "DELETED" else (body.get("status") or {}).get("phase", "Pending")
        PHASES.observe(body["kind"], meta["namespace"], meta["name"], phase)

    @kopf.index(GROUP, VERSION, plural, id=index_name(api.info.kind))
    async def succeeded_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
        # Succeeded is final for a generation, so a cached copy is safe to resolve from.
        if (body.get("status") or {}).get("phase") != "Succeeded":
            return None
        return {(body["metadata"]["namespace"], body["metadata"]["name"]): plain(body)}

    @kopf.index(GROUP, VERSION, plural, id=f"dependents_{plural}")
    async def dependents_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
        # (namespace, referenced kind, referenced name) -> (this kind, this name); one entry per reference.
        meta = body["metadata"]
        spec = dict(body.get("spec") or {})
        return {
            (meta["namespace"], kind, name): (body["kind"], meta["name"])
            for kind, name in dependencies(body["kind"], spec)
        }


def index_name(kind: str) -> str:
    return f"succeeded_{KINDS[kind].info.plural}"


def cached_lookup(ctx: Any, namespace: str, indexes: dict[str, Any]):
    """Resolve references from the in-memory index of succeeded resources (no API call for
    the common case), reading the API server for anything not known to have succeeded."""

    def lookup(kind: str, name: str) -> dict[str, Any] | None:
        store = indexes.get(index_name(kind))
        for body in (store or {}).get((namespace, name), ()):
            return body
        return ctx.kube.get(kind, namespace, name)

    return lookup


def plain(body: Any) -> dict[str, Any]:
    """kopf's Body view as a plain JSON dict (builders and the API client take plain JSON)."""
    return json.loads(json.dumps(body, default=dict))


for _api in KINDS.values():
    register(_api)
