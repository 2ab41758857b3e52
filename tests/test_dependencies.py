"""The declared dependencies (pyproject.toml) are what a clean install needs: the library imports
with its base requirements alone, the service with its ``service`` extra, every distribution our
code imports by name is declared by name, and no lower bound is older than the API the code uses."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
LIBRARY = ROOT / "fhir_alliance"
SERVICE = ROOT / "service" / "fhir_alliance_service"
OWN_MODULES = {"fhir_alliance", "fhir_alliance_service"}

#: The oldest release of a distribution the code works with, and why (found by installing the
#: declared lower bounds in a fresh virtual environment and running the tests).
FLOORS: dict[str, tuple[str, str]] = {
    "marshmallow": ("4.3", "schemas/compiled.py reads Field.pre_load/post_load, new in 4.3"),
    "fhir.resources": ("8.3", "older models accept an Extension without its required url"),
    "urllib3": (
        "2.6.3",
        "client.py catches NameResolutionError (2.0+); before 2.6 a compressed answer was "
        "decompressed whole, past max_response_bytes (CVE-2025-66471, CVE-2025-66418; "
        "tests/client/test_faults.py), and before 2.6.3 a redirect's (CVE-2026-21441)",
    ),
    "psycopg": ("3.2.1", "3.2.0 [binary] pins psycopg-binary 3.2.0.dev1, which was never released"),
}

# Run in a fresh interpreter: modules of installed distributions outside the allowed ones (argv[1])
# cannot be imported, as in a clean environment that has only those.
NOT_INSTALLED = """
import importlib, importlib.abc, importlib.metadata, json, sys
allowed = set(json.loads(sys.argv.pop(1)))
owners = importlib.metadata.packages_distributions()

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        dists = owners.get(top, [])
        if dists and not allowed.intersection(d.lower().replace("_", "-").replace(".", "-")
                                              for d in dists):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""
# ... then every module named in argv[1] is imported; prints {module: the module that failed}.
IMPORT_ALL = """
failed = {}
for module in json.loads(sys.argv[1]):
    try:
        importlib.import_module(module)
    except ImportError as exc:
        failed[module] = exc.name or str(exc)
print(json.dumps(failed))
"""
# ... then the command line in argv[1:] runs.
RUN_COMMAND = """
from fhir_alliance.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _requirements(extras: Iterable[str] = ()) -> list[Requirement]:
    """What pyproject declares for an install with ``extras``."""
    declared = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        declared += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return declared


@cache
def _requires_of(name: str, extras: frozenset[str]) -> tuple[Requirement, ...]:
    """The requirements an installed distribution declares, with ``extras``, on this platform."""
    found: list[Requirement] = []
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
            found.append(requirement)
    return tuple(found)


def _closure(requirements: Iterable[Requirement]) -> set[str]:
    """Canonical names of the distributions a clean install of ``requirements`` brings."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in requirements]
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        todo += [(canonicalize_name(r.name), frozenset(r.extras)) for r in _requires_of(*item)]
    return {name for name, _ in seen}


def _imported_modules(package: Path) -> set[str]:
    """Absolute imports of third-party modules anywhere in ``package`` (lazy ones included)."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {m for m in found if m.partition(".")[0] not in sys.stdlib_module_names | OWN_MODULES}


def _own_modules(package: Path, name: str) -> list[str]:
    """Every module of our package, but ``__main__`` and the Alembic scripts (run by Alembic)."""
    modules = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__main__" or "migrations" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join((name, *parts)))
    return modules


def _run_with(
    allowed: set[str], script: str, *args: str, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter (after NOT_INSTALLED) that finds this checkout's packages
    and, of the installed distributions, only ``allowed`` (and our own)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "service")])
    allowed_names = json.dumps(sorted(allowed | {"fhir-alliance"}))
    return subprocess.run(
        [sys.executable, "-c", NOT_INSTALLED + script, allowed_names, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _import_failures(allowed: set[str], modules: list[str]) -> dict[str, str]:
    result = _run_with(allowed, IMPORT_ALL, json.dumps(modules))
    assert result.returncode == 0, result.stderr
    failed: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return failed


def _distributions_of(modules: Iterable[str]) -> set[str]:
    owners = metadata.packages_distributions()
    return {canonicalize_name(d) for m in modules for d in owners.get(m.partition(".")[0], [])}


def test_the_library_imports_with_its_base_requirements_alone() -> None:
    """Every library module, and every third-party module it imports, imports when only the
    distributions of a plain ``pip install fhir-alliance`` are there."""
    modules = _own_modules(LIBRARY, "fhir_alliance") + sorted(_imported_modules(LIBRARY))
    assert _import_failures(_closure(_requirements()), modules) == {}


def test_the_service_imports_with_its_extra() -> None:
    """Every service module, and every third-party module it imports (lazily too), imports when
    only the distributions of ``pip install 'fhir-alliance[service]'`` are there."""
    modules = _own_modules(SERVICE, "fhir_alliance_service") + sorted(_imported_modules(SERVICE))
    assert _import_failures(_closure(_requirements(["service"])), modules) == {}


def test_distributions_the_code_imports_are_declared_by_name() -> None:
    """A distribution our code imports is a requirement of its own, not only one of another's, so
    that its lower bound is ours to set (urllib3's API changed under requests' wide range)."""
    library = {canonicalize_name(r.name) for r in _requirements()}
    service = library | {canonicalize_name(r.name) for r in _requirements(["service"])}
    assert _distributions_of(_imported_modules(LIBRARY)) - library == set()
    assert _distributions_of(_imported_modules(SERVICE)) - service == set()


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_lower_bounds_are_not_older_than_the_code_needs(name: str) -> None:
    """The declared lower bound is at least the release whose API or behaviour the code needs."""
    floor, why = FLOORS[name]
    every_extra = _requirements(PROJECT["optional-dependencies"])
    declared = [r for r in every_extra if canonicalize_name(r.name) == canonicalize_name(name)]
    assert declared, f"{name} is not declared ({why})"
    (requirement,) = declared
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in {">=", "=="}]
    assert bounds, f"{name} has no lower bound ({why})"
    assert max(bounds) >= Version(floor), f"{name}: {requirement.specifier} ({why})"


def test_a_service_command_without_the_service_extra_says_what_to_install(tmp_path: Path) -> None:
    """With the library alone installed, ``fhir-alliance db upgrade`` (listed by ``--help``, since
    the entry point ships in the same wheel) stops with one line naming the extra: no traceback."""
    result = _run_with(_closure(_requirements()), RUN_COMMAND, "db", "upgrade", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: fhir-alliance db needs the 'service' extra, which is not installed (no module "
        "sqlalchemy): pip install 'fhir-alliance[service]'"
    ]
