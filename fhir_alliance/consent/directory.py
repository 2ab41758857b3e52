"""Who is who: resolves a literal reference (``Organization/7``) to the business identifiers of the
resource it names, so that a consent naming an actor one way matches a request naming it the other.

Built from the actor resources supplied with the consents (Organization, Practitioner, Device, …,
loose or inside Bundles). It never guesses: a reference it was not given resolves to nothing, and an
identifier carried by two different resources resolves to neither. An absolute reference on the
server's base (configured, or learned from Bundle ``fullUrl``s when they all share one base) is the
same party as the relative one (``https://ehr.example/fhir/Practitioner/7`` = ``Practitioner/7``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_alliance.errors import MappingError
from fhir_alliance.model.common import Identifier, Ref
from fhir_alliance.terminology import canonical_identifier

__all__ = [
    "ACTOR_RESOURCE_TYPES",
    "ActorDirectory",
    "RefKey",
    "misspelt_resource_type",
    "normalize_reference",
]

#: Resource types whose identifiers the directory records (parties to a consent, and the patient).
ACTOR_RESOURCE_TYPES = frozenset(
    {
        "CareTeam",
        "Device",
        "Group",
        "Organization",
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "RelatedPerson",
    }
)

#: What the directory reads: the actors, and the Bundles that hold them.
_DIRECTORY_TYPES = ACTOR_RESOURCE_TYPES | {"Bundle"}
#: Resource types known without asking :func:`is_known_resource_type` (which imports a model):
#: those read, and the Consents and Permissions passed over beside them.
_PASSED_OVER_FAST = _DIRECTORY_TYPES | {"Consent", "Permission"}


def misspelt_resource_type(resource_type: str, types: Iterable[str]) -> str | None:
    """The one of ``types`` that ``resource_type`` nearly is but is not (another case, or blanks
    around it: ``practitioner``, ``"Consent "``, ``CONSENT``), else None. FHIR resource types are
    case-sensitive: a reader that passed such a resource over would silently lose it."""
    folded = resource_type.strip().casefold()
    return next((t for t in types if t.casefold() == folded and t != resource_type), None)


#: A match key: ``("ref", "Organization/7")`` or ``("id", system, value)``.
RefKey = tuple[str, ...]


def _canonical(identifier: Identifier) -> Identifier:
    """``identifier`` in the form identifiers are compared in (:func:`canonical_identifier`: a
    bare OID or ``URN:OID:`` as ``urn:oid:``, an http(s) host in lower case, the OID of the NPI
    as ``http://hl7.org/fhir/sid/us-npi``): a deny naming a party one way must meet a request
    naming it another way."""
    system, value = canonical_identifier(identifier.system, identifier.value)
    if system == identifier.system and value == identifier.value:
        return identifier
    return Identifier(system=system, value=value)


def _id_key(identifier: Identifier) -> RefKey:
    return ("id", *canonical_identifier(identifier.system, identifier.value))


def normalize_reference(reference: str) -> str:
    """Drop a trailing ``/_history/<version>``: a consent about a party is about every version."""
    head, sep, _version = reference.partition("/_history/")
    return head if sep else reference


class ActorDirectory:
    """Literal references ⇄ business identifiers of the parties a consent may name.

    ``base`` is the FHIR server base that relative references are relative to; absolute
    references on it are read as relative ones. Without it, absolute and relative references
    are different parties.
    """

    __slots__ = ("_ambiguous", "_by_reference", "_entries", "_keys_by_reference", "base")

    def __init__(
        self, entries: Iterable[tuple[str, Iterable[Identifier]]] = (), *, base: str | None = None
    ) -> None:
        self.base = base.rstrip("/") if base else None
        self._entries = [
            (reference, tuple(_canonical(i) for i in identifiers))
            for reference, identifiers in entries
        ]
        by_reference: dict[str, set[Identifier]] = {}
        for reference, given in self._entries:
            by_reference.setdefault(self.normalize(reference), set()).update(given)
        owners: dict[Identifier, set[frozenset[Identifier]]] = {}
        for identifiers in by_reference.values():
            for identifier in identifiers:
                owners.setdefault(identifier, set()).add(frozenset(identifiers))
        # One identifier on two different resources: which one is meant is unknown, so neither.
        self._ambiguous = frozenset(i for i, sets in owners.items() if len(sets) > 1)
        self._by_reference = {
            ref: frozenset(ids - self._ambiguous) for ref, ids in by_reference.items()
        }
        # Match keys of every known reference, worked out once.
        self._keys_by_reference: dict[str, frozenset[RefKey]] = {
            ref: frozenset({("ref", ref), *(("id", i.system, i.value) for i in ids)})
            for ref, ids in self._by_reference.items()
        }

    @classmethod
    def from_resources(
        cls, resources: Iterable[Mapping[str, Any]], *, base: str | None = None
    ) -> ActorDirectory:
        """Collect actor resources (and those inside Bundles, at any depth). A resource is known by
        ``Type/id`` and by its Bundle entry's ``fullUrl``. Resources of other FHIR R4 or R5 types
        are passed over; a ``resourceType`` that misspells a type read here, is no FHIR resource
        type (``Practitoner``) or is no string (a number, null, none) is a :class:`MappingError`
        at its path; so is a Bundle's ``entry`` that is no array, an entry that is no object and
        an entry's ``resource`` that is no object (an entry without one, a request or a
        response, is passed over). Without ``base``, the base is learned from ``fullUrl``s
        ending in ``Type/id``, when they all name the same one."""
        entries: list[tuple[str, list[Identifier]]] = []
        bases: set[str] = set()
        for index, resource in enumerate(resources):
            _collect(resource, None, f"[{index}]", entries, bases)
        if base is None and len(bases) == 1:
            base = next(iter(bases))
        return cls(entries, base=base)

    def with_base(self, base: str | None) -> ActorDirectory:
        """The same parties, with ``base`` as the server base."""
        return ActorDirectory(self._entries, base=base)

    def normalize(self, reference: str) -> str:
        """The form references are compared in: no ``/_history/…``, relative when on the base."""
        reference = normalize_reference(reference)
        base = self.base
        if (
            base is not None
            and reference.startswith(base)
            and reference[len(base) : len(base) + 1] == "/"
        ):
            return reference[len(base) + 1 :]
        return reference

    def __len__(self) -> int:
        return len(self._by_reference)

    def knows(self, reference: str) -> bool:
        return self.normalize(reference) in self._by_reference

    def identifiers_of(self, reference: str) -> frozenset[Identifier]:
        """The unambiguous identifiers of the resource ``reference`` names (empty if unknown)."""
        return self._by_reference.get(self.normalize(reference), frozenset())

    def is_ambiguous(self, identifier: Identifier) -> bool:
        return _canonical(identifier) in self._ambiguous

    def keys(self, ref: Ref) -> frozenset[RefKey]:
        """Every key under which ``ref`` may match another reference."""
        literal = ref.reference
        identifier = ref.identifier
        if literal is not None:
            keys = self._keys_by_reference.get(literal)
            if keys is None:
                normal = self.normalize(literal)
                keys = frozenset({("ref", normal)}) | frozenset(
                    ("id", i.system, i.value) for i in self._by_reference.get(normal, ())
                )
            if identifier is None:
                return keys
            return keys | {_id_key(identifier)}
        if identifier is None:
            return frozenset()
        return frozenset({_id_key(identifier)})

    def resolvable(self, ref: Ref) -> bool:
        """Whether ``ref`` can be compared with a reference given in the other form."""
        if ref.reference is not None and ref.identifier is not None:
            return True
        if ref.reference is not None:
            return bool(self.identifiers_of(ref.reference))
        return True  # identifier-only: resolvable against any reference the directory knows


def _collect(
    resource: Mapping[str, Any],
    full_url: str | None,
    path: str,
    out: list[tuple[str, list[Identifier]]],
    bases: set[str],
) -> None:
    if not isinstance(resource, Mapping):
        raise MappingError("expected a FHIR resource (JSON object)", element=path)
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):  # a number, null, an array, none: passed over, lost
        raise MappingError("expected a resource type (a string)", element=f"{path}.resourceType")
    meant = misspelt_resource_type(resource_type, _DIRECTORY_TYPES)
    if meant is not None:  # left out, an actor could make another's identifier unambiguous
        message = f"expected {meant}: a resource type is spelt exactly (case and spaces count)"
        raise MappingError(message, element=f"{path}.resourceType")
    if resource_type not in _PASSED_OVER_FAST:
        # Only for a type not read here: the check imports that one model (fhir.resources).
        from fhir_alliance.mapping.validation import is_known_resource_type

        if not is_known_resource_type(resource_type):  # ``Practitoner``: passed over, lost
            raise MappingError(
                "not a FHIR resource type of R4 or R5", element=f"{path}.resourceType"
            )
    if resource_type == "Bundle":
        entries = resource.get("entry")
        if entries is None:
            return
        if not isinstance(entries, list):  # an object's keys, a string's letters: no entries
            raise MappingError("expected an array", element=f"{path}.entry")
        for n, entry in enumerate(entries):
            # Passed over, an entry or resource that is no object could have been an actor.
            if not isinstance(entry, Mapping):
                raise MappingError(
                    "expected a Bundle entry (JSON object)", element=f"{path}.entry[{n}]"
                )
            if entry.get("resource") is None:  # a request or response entry without a resource
                continue
            url = entry.get("fullUrl")
            _collect(
                entry["resource"],
                url if isinstance(url, str) else None,
                f"{path}.entry[{n}].resource",
                out,
                bases,
            )
        return
    if resource_type not in ACTOR_RESOURCE_TYPES:
        return
    identifiers: list[Identifier] = []
    for n, item in enumerate(resource.get("identifier") or ()):
        if not isinstance(item, Mapping):
            raise MappingError("identifier must be an object", element=f"{path}.identifier[{n}]")
        system, value = item.get("system"), item.get("value")
        if isinstance(system, str) and system and isinstance(value, str) and value:
            identifiers.append(Identifier(system=system, value=value))
    resource_id = resource.get("id")
    if isinstance(resource_id, str) and resource_id:
        out.append((f"{resource_type}/{resource_id}", identifiers))
        tail = f"/{resource_type}/{resource_id}"
        if full_url and full_url.startswith(("http://", "https://")) and full_url.endswith(tail):
            bases.add(full_url[: -len(tail)])
    if full_url:
        out.append((full_url, identifiers))
