"""What a FHIR server says it can do (its CapabilityStatement), and the write strategy that follows.

Pure: parses a CapabilityStatement dict; the client fetches it from ``[base]/metadata``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_alliance.errors import MappingError

__all__ = ["ResourceCapabilities", "ServerCapabilities", "WriteStrategy", "release_of"]


class WriteStrategy(enum.Enum):
    """How to write a resource so that sending it twice does not make two (see docs/client.md)."""

    #: ``PUT [type]/[deterministic id]``: needs ``updateCreate``. Idempotent and fast.
    PUT_DETERMINISTIC_ID = "put-deterministic-id"
    #: ``POST`` with ``If-None-Exist: identifier=…``: needs ``conditionalCreate``; one writer per key.
    CONDITIONAL_CREATE = "conditional-create"
    #: Search by identifier, then a plain ``POST`` if nothing was found; one writer per key.
    SEARCH_THEN_CREATE = "search-then-create"


def release_of(fhir_version: str) -> str | None:
    """``4.0.1`` → ``R4``, ``4.3.0`` → ``R4B``, ``5.0.0`` → ``R5``; None for anything else."""
    major_minor = ".".join(fhir_version.split(".")[:2])
    return {"4.0": "R4", "4.3": "R4B", "5.0": "R5"}.get(major_minor)


@dataclass(frozen=True, slots=True)
class ResourceCapabilities:
    """One ``rest.resource`` entry: interactions, conditional support, versioning, search params."""

    type: str
    interactions: frozenset[str] = frozenset()
    versioning: str | None = None
    read_history: bool = False
    update_create: bool = False
    conditional_create: bool = False
    conditional_update: bool = False
    conditional_delete: str | None = None
    search_params: frozenset[str] = frozenset()
    #: ``rest.resource.operation`` names, without the ``$`` (e.g. ``import``).
    operations: frozenset[str] = frozenset()

    def supports(self, interaction: str) -> bool:
        return interaction in self.interactions

    @property
    def write_strategy(self) -> WriteStrategy | None:
        """The idempotent write this server allows for this type, best first; None if it cannot."""
        if self.update_create and self.supports("update"):
            return WriteStrategy.PUT_DETERMINISTIC_ID
        if self.conditional_create and self.supports("create"):
            return WriteStrategy.CONDITIONAL_CREATE
        if (
            self.supports("create")
            and self.supports("search-type")
            and "identifier" in self.search_params
        ):
            return WriteStrategy.SEARCH_THEN_CREATE
        return None


#: Search parameters every resource type has, whether or not the statement lists them.
_COMMON_SEARCH_PARAMS = frozenset({"_id", "_lastUpdated", "_tag", "_security", "_profile"})


@dataclass(frozen=True, slots=True)
class ServerCapabilities:
    """The parts of a CapabilityStatement this library acts on."""

    fhir_version: str
    resources: Mapping[str, ResourceCapabilities] = field(default_factory=dict)
    system_interactions: frozenset[str] = frozenset()
    software: str = ""
    #: System-level ``rest.operation`` names, without the ``$`` (e.g. ``import``).
    operations: frozenset[str] = frozenset()

    @property
    def release(self) -> str | None:
        """``R4``, ``R4B`` or ``R5``; None when the version is not one we know."""
        return release_of(self.fhir_version)

    @property
    def wire_version(self) -> str:
        """The FHIR version our mappers should emit for this server (R4 unless the server is R5)."""
        return "5.0.0" if self.release == "R5" else "4.0.1"

    @property
    def supports_transaction(self) -> bool:
        return "transaction" in self.system_interactions

    @property
    def supports_batch(self) -> bool:
        return "batch" in self.system_interactions

    def supports_operation(self, name: str) -> bool:
        """Whether ``$name`` is declared at system level or on any resource type."""
        name = name.removeprefix("$")
        return name in self.operations or any(name in r.operations for r in self.resources.values())

    def resource(self, resource_type: str) -> ResourceCapabilities:
        """The entry for ``resource_type``; an empty one (nothing supported) if not listed."""
        return self.resources.get(resource_type) or ResourceCapabilities(type=resource_type)

    def write_strategy(self, resource_type: str) -> WriteStrategy | None:
        return self.resource(resource_type).write_strategy

    def gaps(
        self,
        resource_types: Iterable[str] = ("Observation", "Consent"),
        *,
        interactions: Iterable[str] = ("read", "create", "update", "delete", "search-type"),
        search_params: Iterable[str] = ("identifier", "_lastUpdated"),
    ) -> list[str]:
        """Plain-word list of what this library needs and the server does not declare."""
        found: list[str] = []
        if self.release not in ("R4", "R5"):
            found.append(
                f"fhirVersion {self.fhir_version or '(missing)'} is neither R4 (4.0.x) nor R5 (5.0.x)"
            )
        for rtype in resource_types:
            res = self.resources.get(rtype)
            if res is None:
                found.append(f"{rtype}: not listed in the CapabilityStatement")
                continue
            missing = [i for i in interactions if not res.supports(i)]
            if missing:
                found.append(f"{rtype}: interactions not declared: {', '.join(missing)}")
            if not res.conditional_create:
                found.append(f"{rtype}: conditionalCreate not declared (If-None-Exist unsafe)")
            if not res.update_create:
                found.append(
                    f"{rtype}: updateCreate not declared (no PUT to deterministic ids; slower writes)"
                )
            if res.versioning not in ("versioned", "versioned-update"):
                found.append(
                    f"{rtype}: versioning is {res.versioning or 'not declared'} (If-Match needs versions)"
                )
            params = res.search_params | _COMMON_SEARCH_PARAMS
            missing_params = [p for p in search_params if p not in params]
            if missing_params:
                found.append(
                    f"{rtype}: search parameters not declared: {', '.join(missing_params)}"
                )
            if res.write_strategy is None:
                found.append(f"{rtype}: no idempotent write strategy is possible")
        if not self.supports_transaction:
            found.append("transaction Bundles not declared")
        if not self.supports_batch:
            found.append("batch Bundles not declared")
        return found

    @classmethod
    def from_capability_statement(cls, statement: Mapping[str, Any]) -> ServerCapabilities:
        """Read a CapabilityStatement (R4 or R5). Raises MappingError naming the bad element."""
        if not isinstance(statement, Mapping) or statement.get("resourceType") != (
            "CapabilityStatement"
        ):
            raise MappingError("not a CapabilityStatement", element="resourceType")
        version = statement.get("fhirVersion", "")
        if not isinstance(version, str):
            raise MappingError("fhirVersion is not a string", element="fhirVersion")
        software = statement.get("software")
        software_name = (
            str(software.get("name", "")) if isinstance(software, Mapping) else ""
        )  # product name, never patient data
        resources: dict[str, ResourceCapabilities] = {}
        system: set[str] = set()
        operations: set[str] = set()
        rests = statement.get("rest")
        rests = [] if rests is None else rests
        if not isinstance(rests, list):
            raise MappingError("rest is not a list", element="rest")
        for ri, rest in enumerate(rests):
            if not isinstance(rest, Mapping) or rest.get("mode", "server") != "server":
                continue
            system |= _codes(rest.get("interaction"), f"rest[{ri}].interaction")
            operations |= _operation_names(rest.get("operation"), f"rest[{ri}]")
            entries = rest.get("resource") or []
            if not isinstance(entries, list):
                raise MappingError("resource is not a list", element=f"rest[{ri}].resource")
            for i, entry in enumerate(entries):
                where = f"rest[{ri}].resource[{i}]"
                if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
                    raise MappingError("resource entry without a type", element=f"{where}.type")
                params = entry.get("searchParam") or []
                if not isinstance(params, list):
                    raise MappingError("searchParam is not a list", element=f"{where}.searchParam")
                resources[entry["type"]] = ResourceCapabilities(
                    type=entry["type"],
                    interactions=frozenset(_codes(entry.get("interaction"), where)),
                    versioning=_str_or_none(entry.get("versioning")),
                    read_history=entry.get("readHistory") is True,
                    update_create=entry.get("updateCreate") is True,
                    conditional_create=entry.get("conditionalCreate") is True,
                    conditional_update=entry.get("conditionalUpdate") is True,
                    conditional_delete=_str_or_none(entry.get("conditionalDelete")),
                    search_params=frozenset(
                        p["name"]
                        for p in params
                        if isinstance(p, Mapping) and isinstance(p.get("name"), str)
                    ),
                    operations=frozenset(_operation_names(entry.get("operation"), where)),
                )
        return cls(
            fhir_version=version,
            resources=resources,
            system_interactions=frozenset(system),
            software=software_name,
            operations=frozenset(operations),
        )

    def to_summary(self) -> dict[str, Any]:
        """A JSON-ready summary (for ``fhir-alliance check --json``)."""
        return {
            "fhirVersion": self.fhir_version,
            "release": self.release,
            "software": self.software,
            "transaction": self.supports_transaction,
            "batch": self.supports_batch,
            "resources": {
                name: {
                    "interactions": sorted(r.interactions),
                    "conditionalCreate": r.conditional_create,
                    "updateCreate": r.update_create,
                    "versioning": r.versioning,
                    "writeStrategy": r.write_strategy.value if r.write_strategy else None,
                }
                for name, r in sorted(self.resources.items())
                if name in ("Observation", "Consent", "QuestionnaireResponse", "Provenance")
            },
        }


def _codes(interactions: object, where: str) -> set[str]:
    if interactions is None:
        return set()
    if not isinstance(interactions, list):
        raise MappingError("interaction is not a list", element=f"{where}.interaction")
    return {
        i["code"] for i in interactions if isinstance(i, Mapping) and isinstance(i.get("code"), str)
    }


def _operation_names(operations: object, where: str) -> set[str]:
    if operations is None:
        return set()
    if not isinstance(operations, list):
        raise MappingError("operation is not a list", element=f"{where}.operation")
    return {
        o["name"].removeprefix("$")
        for o in operations
        if isinstance(o, Mapping) and isinstance(o.get("name"), str)
    }


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
