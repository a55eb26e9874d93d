"""Every third-party package the code imports is declared in pyproject.toml, not merely present
because something else pulls it in (a transitive dependency can disappear with any upgrade).

Imports are read from the source (``ast``, every ``import`` wherever it stands, lazy ones
included) and mapped to distributions through the installed metadata
(``importlib.metadata.packages_distributions()``): no network.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# What each tree may import: the operator image installs [operator], the trainer image
# [trainer]; benchmarks and tests run in the full environment (every extra).
EVERY_EXTRA = tuple(PYPROJECT["project"]["optional-dependencies"])
ALLOWED_EXTRAS = {
    "operator": ("operator",),
    "trainer_image": ("trainer",),
    # the mentor runtime (`mentor-trainer serve`) runs in the trainer image with [serve] added
    "trainer_image/mentor_trainer/serve": ("trainer", "serve"),
    "bench": EVERY_EXTRA,
    "tests": EVERY_EXTRA,
}


def allowed_extras(path: Path) -> tuple[str, ...]:
    """The extras a file may import from: those of the most specific tree holding it."""
    relative = path.relative_to(REPO).as_posix()
    tree = max((t for t in ALLOWED_EXTRAS if relative == t or relative.startswith(t + "/")), key=len)
    return ALLOWED_EXTRAS[tree]
# Top-level names that resolve to this repository: the packages on the pytest pythonpath,
# the repo-root packages, and bench scripts importing each other (bench/ is their sys.path[0]).
FIRST_PARTY = (
    {path.name.removesuffix(".py") for tree in ("operator", "trainer_image") for path in (REPO / tree).iterdir()}
    | {"tests", "bench"}
    | {path.stem for path in (REPO / "bench").glob("*.py")}
)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group())


def declared(extras: tuple[str, ...]) -> set[str]:
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {requirement_name(r) for r in requirements}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def test_every_third_party_import_is_declared() -> None:
    providers = importlib.metadata.packages_distributions()
    problems = []
    top_trees = [tree for tree in ALLOWED_EXTRAS if "/" not in tree]
    for path in sorted(p for tree in top_trees for p in (REPO / tree).rglob("*.py")):
        extras = allowed_extras(path)
        allowed = declared(extras)
        for module in sorted(imported_modules(path)):
            where = path.relative_to(REPO)
            distributions = {normalized(d) for d in providers.get(module, ())}
            if not distributions:
                problems.append(f"{where}: imports {module}, which no installed distribution provides")
            elif not distributions & allowed:
                extra = "any extra" if extras == EVERY_EXTRA else f"the {' or '.join(extras)} extra"
                problems.append(
                    f"{where}: imports {module} ({', '.join(sorted(distributions))}), "
                    f"declared in neither the core dependencies nor {extra}"
                )
    assert not problems, "undeclared imports (add them to pyproject.toml, then `uv lock`):\n" + "\n".join(problems)
