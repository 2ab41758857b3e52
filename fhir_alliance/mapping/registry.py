"""Which mapper handles which record kind: lets ``fhir-alliance map`` and the service treat every
record the same way without knowing observations from consents.

A mapper is any object with the attributes of :class:`RecordMapper`. Each record kind's module
exposes one as ``MAPPER``; :data:`MAPPER_MODULES` lists them.

A mapper may also offer ``check_batch(labelled: Sequence[tuple[str, record]]) -> list[Issue]`` for
rules across the records of one batch (e.g. a repair must name a rupture in the batch); ``fhir-alliance
map`` calls it when present, with each record's label (``file:index``) as the issue path prefix.
It may also offer ``apply_batch(labelled) -> list[tuple[str, record]]`` to fold records into others
before mapping (a consent revocation is applied to its consent); records it leaves out are not mapped.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, Protocol

from fhir_alliance.errors import InputError, Issue, MappingError

__all__ = [
    "FHIR_VERSIONS",
    "RecordMapper",
    "mapper_for_kind",
    "mapper_for_resource_type",
    "mappers",
]

#: FHIR versions we emit and read: R4 is the default wire format.
FHIR_VERSIONS = ("4.0.1", "5.0.0")

MAPPER_MODULES = (
    "fhir_alliance.mapping.observation",
    "fhir_alliance.mapping.consent",
    "fhir_alliance.mapping.note",
)


class RecordMapper(Protocol):
    #: Values of the ``kind`` field in our JSON form that this mapper loads.
    kinds: frozenset[str]
    #: FHIR resource types this mapper reads back.
    resource_types: frozenset[str]

    def load(self, data: Mapping[str, Any]) -> Any:
        """Our JSON form → domain record; raises :class:`InputError` keyed by field path."""

    def dump(self, record: Any) -> dict[str, Any]:
        """Domain record → our JSON form (``load(dump(r)) == r``)."""

    def to_fhir(self, record: Any, *, version: str = "4.0.1") -> list[dict[str, Any]]:
        """Domain record → the FHIR resources that carry it (pure)."""

    def from_fhir(self, resources: Sequence[Mapping[str, Any]]) -> list[Any]:
        """FHIR resources of ``resource_types`` → domain records; raises :class:`MappingError`."""


@cache
def mappers() -> tuple[RecordMapper, ...]:
    found: list[RecordMapper] = []
    for name in MAPPER_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a record kind not written yet
            if exc.name == name:
                continue
            raise
        found.append(module.MAPPER)
    return tuple(found)


def mapper_for_kind(kind: object, *, path: str = "kind") -> RecordMapper:
    # A kind that is not a string (an array, an object: unhashable) is unknown, never a TypeError.
    for mapper in mappers() if isinstance(kind, str) else ():
        if kind in mapper.kinds:
            return mapper
    known = sorted(k for m in mappers() for k in m.kinds)
    raise InputError(
        f"unknown record kind; expected one of {', '.join(known)}",
        issues=[
            Issue(path=path, message=f"unknown record kind; expected one of {', '.join(known)}")
        ],
    )


def mapper_for_resource_type(resource_type: object) -> RecordMapper:
    for mapper in mappers() if isinstance(resource_type, str) else ():
        if resource_type in mapper.resource_types:
            return mapper
    raise MappingError("no mapping for this resource type", element="resourceType")
