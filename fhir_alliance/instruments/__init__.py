"""Alliance instruments (WAI-SR, SRS, ORS, seed dimensions, rupture/repair): structure and scoring (pure)."""

from fhir_alliance.instruments.catalog import INSTRUMENTS, Instrument, InstrumentCode, instrument
from fhir_alliance.instruments.dimensions import Dimension, RatingScale
from fhir_alliance.instruments.ruptures import RepairStrategy, RuptureMarker, RuptureType
from fhir_alliance.instruments.scoring import (
    DEFAULT_RULES,
    Flag,
    ReliableChange,
    Score,
    ScoringRules,
    ors_reliable_change,
    score,
)

__all__ = [
    "DEFAULT_RULES",
    "INSTRUMENTS",
    "Dimension",
    "Flag",
    "Instrument",
    "InstrumentCode",
    "RatingScale",
    "ReliableChange",
    "RepairStrategy",
    "RuptureMarker",
    "RuptureType",
    "Score",
    "ScoringRules",
    "instrument",
    "ors_reliable_change",
    "score",
]
