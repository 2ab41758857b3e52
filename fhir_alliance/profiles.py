"""Read-only access to the FHIR package built from ``profiles/`` (profiles, extensions, code systems,
value sets, questionnaires), so that Python never restates what the FSH defines.

Where the JSON comes from, in order:

1. ``fhir_alliance/_profiles/`` inside an installed wheel (hatchling maps
   ``profiles/fsh-generated/resources`` there), read with :mod:`importlib.resources`;
2. in a source checkout or an editable install, ``<repo>/profiles/fsh-generated/resources``.

Everything is read once and cached. Every function returns a *fresh* ``dict`` per call, so callers
may change what they get without touching the cache or each other.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import orjson

from fhir_alliance.errors import ArtefactNotFoundError, ProfilesPackageError

__all__ = [
    "Binding",
    "PackageInfo",
    "all_resources",
    "bindings",
    "code_system",
    "package_info",
    "package_location",
    "questionnaire",
    "required_bindings",
    "resource",
    "structure_definitions",
    "value_set",
    "value_set_codes",
]

#: Sub-package of ``fhir_alliance`` that holds the JSON in a wheel.
PACKAGE_DATA_DIR = "_profiles"
#: Where SUSHI's output lives in a source checkout, relative to the repository root.
SOURCE_DIR = ("profiles", "fsh-generated", "resources")
#: The ImplementationGuide SUSHI writes: the package manifest (id, version, dependencies).
_MANIFEST_TYPE = "ImplementationGuide"


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """What the built package says about itself (from its ImplementationGuide resource)."""

    package_id: str
    version: str
    canonical: str
    fhir_versions: tuple[str, ...]
    #: ``{package id: version}`` of the FHIR packages it was built against.
    depends_on: Mapping[str, str] = field(default_factory=dict)
    #: ``"installed"`` (wheel, ``fhir_alliance/_profiles``) or ``"source"`` (repository checkout).
    origin: Literal["installed", "source"] = "installed"


@dataclass(frozen=True, slots=True)
class _Entry:
    resource_type: str
    id: str
    url: str | None
    name: str | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class _Package:
    location: str
    origin: Literal["installed", "source"]
    entries: tuple[_Entry, ...]
    # (resource type, key) -> entry, where key is the id, the name or the canonical URL.
    index: Mapping[tuple[str, str], _Entry]


def _locate() -> tuple[Traversable, Literal["installed", "source"]]:
    installed = resources.files("fhir_alliance").joinpath(PACKAGE_DATA_DIR)
    if installed.is_dir():
        return installed, "installed"
    checkout = Path(__file__).resolve().parent.parent.joinpath(*SOURCE_DIR)
    if checkout.is_dir():
        return checkout, "source"
    raise ProfilesPackageError(
        "the built profiles package was not found: neither fhir_alliance/_profiles (wheel) nor "
        "profiles/fsh-generated/resources (source checkout) exists; reinstall fhir-alliance or "
        "run `make profiles` in the repository"
    )


def _entry_from(name: str, raw: bytes) -> _Entry:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProfilesPackageError(f"profiles package file {name} is not valid JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise ProfilesPackageError(f"profiles package file {name} is not a FHIR resource")
    if not isinstance(data.get("id"), str):
        raise ProfilesPackageError(f"profiles package file {name} has no id")
    url = data.get("url")
    name_value = data.get("name")
    return _Entry(
        resource_type=data["resourceType"],
        id=data["id"],
        url=url if isinstance(url, str) else None,
        name=name_value if isinstance(name_value, str) else None,
        raw=raw,
    )


@functools.cache
def _package() -> _Package:
    root, origin = _locate()
    files = sorted(
        (item for item in root.iterdir() if item.is_file() and item.name.endswith(".json")),
        key=lambda item: item.name,
    )
    entries = tuple(_entry_from(item.name, item.read_bytes()) for item in files)
    index: dict[tuple[str, str], _Entry] = {}
    # Names first, then ids, then URLs; later writes win, so an id or URL beats a clashing name.
    for attribute in ("name", "id", "url"):
        for entry in entries:
            key = getattr(entry, attribute)
            if key:
                index[(entry.resource_type, key)] = entry
    return _Package(location=str(root), origin=origin, entries=entries, index=index)


def _fresh(entry: _Entry) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(entry.raw)
    return value


def package_location() -> str:
    """The directory the package is read from (for diagnostics and packaging tests)."""
    return _package().location


def all_resources() -> list[dict[str, Any]]:
    """Every resource in the package, ordered by file name (``<Type>-<id>.json``)."""
    return [_fresh(entry) for entry in _package().entries]


def _iter_type(resource_type: str) -> Iterator[_Entry]:
    return (entry for entry in _package().entries if entry.resource_type == resource_type)


def resource(resource_type: str, name_or_url: str) -> dict[str, Any]:
    """One resource of ``resource_type`` by canonical URL, id or name. A ``url|version`` reference
    must name the version the package holds. Raises
    :class:`~fhir_alliance.errors.ArtefactNotFoundError` when there is none."""
    key, version = name_or_url, None
    if "://" in name_or_url and "|" in name_or_url:
        key, version = name_or_url.split("|", 1)
    entry = _package().index.get((resource_type, key))
    if entry is None:
        raise ArtefactNotFoundError(
            f"no {resource_type} with id, name or URL {key!r} in the profiles package"
        )
    found = _fresh(entry)
    if version is not None and found.get("version") != version:
        raise ArtefactNotFoundError(
            f"{resource_type} {key!r} is at version {found.get('version')!r} in the profiles "
            f"package, not {version!r}"
        )
    return found


def structure_definitions() -> list[dict[str, Any]]:
    """Every StructureDefinition (profiles and extensions, with snapshots), ordered by file name."""
    return [_fresh(entry) for entry in _iter_type("StructureDefinition")]


def code_system(name: str) -> dict[str, Any]:
    """One CodeSystem of ours by id, name or canonical URL."""
    return resource("CodeSystem", name)


def value_set(name: str) -> dict[str, Any]:
    """One ValueSet of ours by id, name or canonical URL."""
    return resource("ValueSet", name)


def questionnaire(name: str) -> dict[str, Any]:
    """One Questionnaire (structure only for licensed instruments) by id, name or canonical URL."""
    return resource("Questionnaire", name)


@functools.cache
def package_info() -> PackageInfo:
    """Package id, version, canonical base and dependencies, from the package's
    ImplementationGuide resource."""
    package = _package()
    manifests = [entry for entry in package.entries if entry.resource_type == _MANIFEST_TYPE]
    if len(manifests) != 1:
        raise ProfilesPackageError(
            f"the profiles package must hold exactly one {_MANIFEST_TYPE}, found {len(manifests)}"
        )
    guide = _fresh(manifests[0])
    url = str(guide.get("url", ""))
    marker = f"/{_MANIFEST_TYPE}/"
    if marker not in url:
        raise ProfilesPackageError(f"the profiles package's {_MANIFEST_TYPE} has no canonical url")
    return PackageInfo(
        package_id=str(guide.get("packageId", "")),
        version=str(guide.get("version", "")),
        canonical=url.split(marker, 1)[0],
        fhir_versions=tuple(str(v) for v in guide.get("fhirVersion", ())),
        depends_on=MappingProxyType(
            {
                str(dep.get("packageId")): str(dep.get("version"))
                for dep in guide.get("dependsOn", ())
                if isinstance(dep, dict)
            }
        ),
        origin=package.origin,
    )


@dataclass(frozen=True, slots=True)
class Binding:
    """A terminology binding in a profile's snapshot: ``element`` is the element id
    (``Observation.component:tension.code``), ``value_set`` the canonical URL (maybe ``|version``)."""

    element: str
    path: str
    strength: str
    value_set: str


def bindings(profile: str) -> list[Binding]:
    """Every binding with a value set in the snapshot of one of our profiles (by id, name or URL),
    in snapshot order."""
    definition = resource("StructureDefinition", profile)
    elements = definition.get("snapshot", {}).get("element", [])
    if not elements:
        raise ProfilesPackageError(f"StructureDefinition {definition.get('id')!r} has no snapshot")
    found: list[Binding] = []
    for element in elements:
        binding = element.get("binding")
        if isinstance(binding, dict) and isinstance(binding.get("valueSet"), str):
            found.append(
                Binding(
                    element=str(element.get("id", element.get("path", ""))),
                    path=str(element.get("path", "")),
                    strength=str(binding.get("strength", "")),
                    value_set=binding["valueSet"],
                )
            )
    return found


def required_bindings(profile: str) -> list[Binding]:
    """The ``required`` bindings of one of our profiles: the codes a conformant resource must take
    from a value set. (Medplum's validator does not check these; see docs/profiles.md.)"""
    return [b for b in bindings(profile) if b.strength == "required"]


def value_set_codes(name: str) -> frozenset[tuple[str, str]]:
    """The ``(system, code)`` pairs of one of our ValueSets, expanded locally: enumerated
    concepts of any system, whole code systems only when they are ours (in this package), other
    ValueSets of ours included, excludes applied. Filters and foreign whole systems cannot be
    expanded offline and raise :class:`~fhir_alliance.errors.ProfilesPackageError`."""
    return _expand(name, ())


@functools.cache
def _expand(name: str, seen: tuple[str, ...]) -> frozenset[tuple[str, str]]:
    vs = value_set(name)
    url = str(vs.get("url", name))
    if url in seen:
        raise ProfilesPackageError(f"ValueSet {vs.get('id')!r} includes itself")
    compose = vs.get("compose")
    if not isinstance(compose, dict):
        raise ProfilesPackageError(f"ValueSet {vs.get('id')!r} has no compose to expand")
    included = _expand_part(vs, compose.get("include", []), (*seen, url))
    excluded = _expand_part(vs, compose.get("exclude", []), (*seen, url))
    return frozenset(included - excluded)


def _expand_part(vs: dict[str, Any], parts: Any, seen: tuple[str, ...]) -> set[tuple[str, str]]:
    codes: set[tuple[str, str]] = set()
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        if part.get("filter"):
            raise ProfilesPackageError(
                f"ValueSet {vs.get('id')!r} uses a filter; it cannot be expanded offline"
            )
        from_system: set[tuple[str, str]] | None = None
        system = part.get("system")
        if isinstance(system, str):
            if isinstance(part.get("concept"), list):
                from_system = {
                    (system, str(c["code"]))
                    for c in part["concept"]
                    if isinstance(c, dict) and isinstance(c.get("code"), str)
                }
            else:
                try:
                    whole = code_system(system)
                except ArtefactNotFoundError:
                    raise ProfilesPackageError(
                        f"ValueSet {vs.get('id')!r} includes all of {system}, which is not in "
                        "this package; it cannot be expanded offline"
                    ) from None
                from_system = {(system, code) for code in _concept_codes(whole.get("concept"))}
        imported: list[set[tuple[str, str]]] = [
            set(_expand(str(ref), seen)) for ref in part.get("valueSet", []) if isinstance(ref, str)
        ]
        # Within one include, system/concepts and imported ValueSets intersect (FHIR R4 rules).
        selected = from_system
        for other in imported:
            selected = other if selected is None else selected & other
        codes |= selected or set()
    return codes


def _concept_codes(concepts: Any) -> Iterator[str]:
    for concept in concepts if isinstance(concepts, list) else ():
        if isinstance(concept, dict) and isinstance(concept.get("code"), str):
            yield concept["code"]
            yield from _concept_codes(concept.get("concept"))
