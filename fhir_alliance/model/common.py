"""Value types shared by every domain record: identifiers, references, codings."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_alliance.errors import InputError, Issue


@dataclass(frozen=True, slots=True)
class Identifier:
    """A business identifier ``system|value``: the stable identity of a record or an actor."""

    system: str
    value: str

    @classmethod
    def parse(cls, token: str, *, path: str = "") -> Identifier:
        """Parse ``system|value``; both halves are required."""
        system, sep, value = token.partition("|")
        if not sep or not system or not value:
            raise InputError(
                "expected an identifier as system|value",
                issues=[Issue(path=path, message="expected an identifier as system|value")],
            )
        return cls(system=system, value=value)

    def __str__(self) -> str:
        return f"{self.system}|{self.value}"

    def to_fhir(self) -> dict[str, str]:
        return {"system": self.system, "value": self.value}


@dataclass(frozen=True, slots=True)
class Ref:
    """Who or what a record points at: a literal reference (``Practitioner/123``), an identifier, or both.

    ``type`` is the FHIR resource type when known (``Patient``, ``Practitioner``, ``Device``, …).
    """

    reference: str | None = None
    identifier: Identifier | None = None
    type: str | None = None
    display: str | None = None

    def __post_init__(self) -> None:
        if self.reference is None and self.identifier is None:
            raise ValueError("a Ref needs a reference or an identifier")


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str | None = None

    def to_fhir(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display is not None:
            out["display"] = self.display
        return out
