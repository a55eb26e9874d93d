"""Reading resource files (YAML, multi-document, files or directories) and validating them
with the same models and rules as the CRDs — for `mentor validate` and `mentor run`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from .api import API_VERSION, GROUP, KINDS
from .api.common import DNS_SUBDOMAIN
from .builders.inputs import dependencies


@dataclass
class Document:
    path: Path
    index: int  # position in a multi-document file
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.body.get("kind", "")

    @property
    def name(self) -> str:
        return (self.body.get("metadata") or {}).get("name", "")

    @property
    def label(self) -> str:
        return f"{self.kind or '?'}/{self.name or '?'}"


@dataclass
class Problem:
    path: Path
    resource: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.resource}: {self.field}: {self.message}"


def _files(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            found.append(path)
    return found


def load(paths: Iterable[str | Path]) -> tuple[list[Document], list[Problem]]:
    """Every mentor.dev document in the given files; other API groups are left alone."""
    documents: list[Document] = []
    problems: list[Problem] = []
    for path in _files(paths):
        try:
            loaded = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            problems.append(Problem(path, "-", "-", f"cannot read YAML: {error}".replace("\n", " ")))
            continue
        for index, body in enumerate(loaded):
            if not isinstance(body, dict):
                continue
            if str(body.get("apiVersion", "")).split("/")[0] == GROUP:
                documents.append(Document(path, index, body))
    return documents, problems


def _field_path(loc: tuple[Any, ...]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def validate_document(doc: Document) -> list[Problem]:
    """Same checks as the API server: schema, CEL rules, plus naming."""
    body = doc.body
    problems: list[Problem] = []
    if body.get("apiVersion") != API_VERSION:
        problems.append(Problem(doc.path, doc.label, "apiVersion", f"must be {API_VERSION}"))
    if doc.kind not in KINDS:
        problems.append(Problem(doc.path, doc.label, "kind", f"unknown kind; one of {', '.join(KINDS)}"))
        return problems
    name = doc.name
    if not name or not re.match(DNS_SUBDOMAIN, name) or len(name) > 253:
        problems.append(Problem(doc.path, doc.label, "metadata.name", "must be a lowercase DNS subdomain"))
    spec = body.get("spec")
    if not isinstance(spec, dict):
        problems.append(Problem(doc.path, doc.label, "spec", "is required and must be an object"))
        return problems
    try:
        KINDS[doc.kind].spec.model_validate(spec)
    except ValidationError as error:
        for item in error.errors():
            message = item["msg"].removeprefix("Value error, ")
            field = _field_path(tuple(item["loc"]))
            if ": " in message and item["type"] == "value_error":
                # CEL rule messages carry their fieldPath as "path: message".
                sub, message = message.split(": ", 1)
                field = f"{field}.{sub}" if sub and not sub.startswith("spec") else field
            problems.append(Problem(doc.path, doc.label, field, message))
    return problems


def validate_all(documents: list[Document]) -> list[Problem]:
    problems = [p for doc in documents for p in validate_document(doc)]
    seen: dict[tuple[str, str], Document] = {}
    for doc in documents:
        key = (doc.kind, doc.name)
        if key in seen:
            problems.append(Problem(doc.path, doc.label, "metadata.name", f"duplicate of {seen[key].path}"))
        seen[key] = doc
    return problems


def order(documents: list[Document]) -> list[Document]:
    """Dependency order (a referenced resource before the ones that reference it); raises on
    a cycle. References to resources not in the set are left for the caller to report."""
    by_key = {(d.kind, d.name): d for d in documents}
    ordered: list[Document] = []
    state: dict[tuple[str, str], str] = {}

    def visit(key: tuple[str, str], trail: list[tuple[str, str]]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            cycle = " -> ".join(f"{k}/{n}" for k, n in trail + [key])
            raise ValueError(f"reference cycle: {cycle}")
        state[key] = "visiting"
        doc = by_key[key]
        for dep in dependencies(doc.kind, doc.body.get("spec") or {}):
            if dep in by_key:
                visit(dep, trail + [key])
        state[key] = "done"
        ordered.append(doc)

    for doc in documents:
        visit((doc.kind, doc.name), [])
    return ordered
