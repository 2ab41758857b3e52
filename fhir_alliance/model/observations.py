"""Alliance observation records: instrument administrations, dimension ratings, ruptures and repairs.

Records hold what was answered or observed; scores are computed by :mod:`fhir_alliance.instruments`.
Each record has a stable ``id`` given at intake; the mapping derives resource ids from it.
Free-text client feedback lives only in the QuestionnaireResponse, never in these records.
A record keeps the security labels it carries beyond the ones its mapping derives
(``security_labels``), so that a label another system added is written again and seen by the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from fhir_alliance.instruments.catalog import InstrumentCode
from fhir_alliance.instruments.dimensions import Dimension, RatingScale
from fhir_alliance.instruments.ruptures import RepairStrategy, RuptureMarker, RuptureType
from fhir_alliance.model.common import Coding, Identifier, Ref

__all__ = [
    "AllianceRecord",
    "AutomatedRater",
    "DimensionRating",
    "InstrumentAdministration",
    "ItemResponse",
    "ObservationStatus",
    "Rater",
    "RaterRole",
    "RepairEvent",
    "RuptureEvent",
]


class RaterRole(StrEnum):
    """Whose perspective a measure records (our ``alliance-rater-roles`` CodeSystem)."""

    CLIENT = "client"
    THERAPIST = "therapist"
    OBSERVER = "observer"
    AUTOMATED = "automated"


class ObservationStatus(StrEnum):
    """The FHIR Observation statuses a record may have (``amended`` after an edit)."""

    FINAL = "final"
    AMENDED = "amended"
    ENTERED_IN_ERROR = "entered-in-error"


@dataclass(frozen=True, slots=True)
class AutomatedRater:
    """A tool that rated a session (e.g. from its recording): name, version, confidence, review."""

    tool: str
    version: str
    clinician_reviewed: bool
    #: Model confidence in 0..1, when the tool reports one.
    confidence: Decimal | None = None
    #: What the tool analysed (recording, transcript): the Provenance ``source`` entity.
    source: Ref | None = None


@dataclass(frozen=True, slots=True)
class Rater:
    """Who rated. Client: ``who`` is empty (the client is the record's patient). Therapist and
    observer: ``who`` is required. Automated: ``who`` is empty and ``automated`` is required."""

    role: RaterRole
    who: Ref | None = None
    automated: AutomatedRater | None = None

    def __post_init__(self) -> None:
        if (self.role is RaterRole.AUTOMATED) != (self.automated is not None):
            raise ValueError("automated details are given exactly when the role is automated")
        if (self.role in (RaterRole.THERAPIST, RaterRole.OBSERVER)) != (self.who is not None):
            raise ValueError("who is given exactly when the rater is a therapist or observer")


@dataclass(frozen=True, slots=True)
class ItemResponse:
    """The answer to one item (by its number on the form)."""

    number: int
    value: Decimal


@dataclass(frozen=True, slots=True)
class InstrumentAdministration:
    """One completed (possibly partial) instrument: WAI-SR, WAI-SR-T, SRS or ORS.

    ``responses`` are sorted by item number; unanswered items are absent.
    ``counterpart`` is the therapist being rated (for ORS, the treating therapist, if known).
    """

    id: Identifier
    instrument: InstrumentCode
    patient: Ref
    rater: Rater
    effective: datetime
    responses: tuple[ItemResponse, ...]
    counterpart: Ref | None = None
    encounter: Ref | None = None
    questionnaire_response: Ref | None = None
    status: ObservationStatus = ObservationStatus.FINAL
    #: Security labels beyond those the mapping derives (R, BH; PSYTHPN for a narrative; AIAST
    #: for an automated rater), e.g. ``SUD`` another system added: written on every resource.
    security_labels: tuple[Coding, ...] = ()

    def answers(self) -> dict[int, Decimal]:
        return {r.number: r.value for r in self.responses}


@dataclass(frozen=True, slots=True)
class DimensionRating:
    """A single-dimension rating (trust, respect, …) on a declared scale by a declared rater."""

    id: Identifier
    dimension: Dimension
    scale: RatingScale
    value: Decimal
    patient: Ref
    rater: Rater
    effective: datetime
    counterpart: Ref | None = None
    encounter: Ref | None = None
    questionnaire_response: Ref | None = None
    status: ObservationStatus = ObservationStatus.FINAL
    #: Security labels beyond those the mapping derives (R, BH; PSYTHPN for a narrative; AIAST
    #: for an automated rater), e.g. ``SUD`` another system added: written on every resource.
    security_labels: tuple[Coding, ...] = ()


@dataclass(frozen=True, slots=True)
class RuptureEvent:
    """A rupture in the alliance: its type, the markers observed, tension (1-5), and whether and
    how it was repaired, with a resolution rating (1-5). ``narrative`` is session narrative: it makes
    the resource a psychotherapy-note item (label PSYTHPN)."""

    id: Identifier
    rupture_type: RuptureType
    tension: int
    patient: Ref
    rater: Rater
    effective: datetime
    markers: tuple[RuptureMarker, ...] = ()
    repaired: bool | None = None
    repair_strategies: tuple[RepairStrategy, ...] = ()
    resolution: int | None = None
    counterpart: Ref | None = None
    encounter: Ref | None = None
    questionnaire_response: Ref | None = None
    narrative: str | None = None
    status: ObservationStatus = ObservationStatus.FINAL
    #: Security labels beyond those the mapping derives (R, BH; PSYTHPN for a narrative; AIAST
    #: for an automated rater), e.g. ``SUD`` another system added: written on every resource.
    security_labels: tuple[Coding, ...] = ()


@dataclass(frozen=True, slots=True)
class RepairEvent:
    """An attempt to repair the rupture ``rupture`` (its record id): strategies and resolution."""

    id: Identifier
    rupture: Identifier
    strategies: tuple[RepairStrategy, ...]
    patient: Ref
    rater: Rater
    effective: datetime
    resolution: int | None = None
    counterpart: Ref | None = None
    encounter: Ref | None = None
    questionnaire_response: Ref | None = None
    narrative: str | None = None
    status: ObservationStatus = ObservationStatus.FINAL
    #: Security labels beyond those the mapping derives (R, BH; PSYTHPN for a narrative; AIAST
    #: for an automated rater), e.g. ``SUD`` another system added: written on every resource.
    security_labels: tuple[Coding, ...] = ()


AllianceRecord = InstrumentAdministration | DimensionRating | RuptureEvent | RepairEvent
