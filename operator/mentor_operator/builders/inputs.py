"""Resolve a resource's references into the input URIs its stage reads, by the references its
kind declares (api/references.py). Pure: the caller passes `lookup(kind, name) -> body | None`."""

from __future__ import annotations

from typing import Any

from ..api import KINDS
from ..api.references import Lookup, Resolution

OUTPUT_FIELDS = {kind: api.output_field for kind, api in KINDS.items() if api.output_field}


def resolve_inputs(kind: str, spec: dict[str, Any], lookup: Lookup) -> Resolution:
    """Map a resource's spec (wire form) to the resolved fields of its stage config."""
    resolution = Resolution(lookup, OUTPUT_FIELDS)
    for reference in KINDS[kind].references:
        reference.resolve(spec, resolution)
    return resolution


def dependencies(kind: str, spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every resource this one references; the local executor orders by it."""
    return [target for reference in KINDS[kind].references for target in reference.targets(spec)]


__all__ = ["Lookup", "Resolution", "dependencies", "resolve_inputs"]
