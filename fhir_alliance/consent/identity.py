"""When two consent records are one consent: one business identifier, compared as URIs
(:func:`~fhir_alliance.terminology.canonical_identifier`), as ``decide`` and the service read them.
Pure: no I/O."""

from __future__ import annotations

from dataclasses import replace

from fhir_alliance.model.common import Identifier
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.terminology import canonical_identifier

__all__ = ["consent_identifier", "says_the_same"]


def consent_identifier(identifier: Identifier) -> Identifier:
    """A consent's business identifier in the form identifiers are compared in: two consent
    records whose identifiers give the same are versions (or copies) of one consent."""
    system, value = canonical_identifier(identifier.system, identifier.value)
    return Identifier(system=system, value=value)


def says_the_same(first: ConsentRecord, second: ConsentRecord) -> bool:
    """Whether two records of one consent say the same, their identifiers compared as URIs (the
    same consent given twice, or as R4 and as R5): read once. Two that say otherwise are two
    versions, and which one counts is not for the reader to guess."""
    return replace(first, id=consent_identifier(first.id)) == replace(
        second, id=consent_identifier(second.id)
    )
