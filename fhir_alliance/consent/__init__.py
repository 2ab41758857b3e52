"""Consent decision engine over consent records (pure: no I/O); see docs/consent-decisions.md."""

from fhir_alliance.consent.decision import (
    CombiningRule,
    ConsentDecision,
    DecisionBasis,
    DecisionOutcome,
    DecisionRequest,
    RedactMode,
    RedactObligation,
    RequestActor,
    RequestedResource,
)
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.consent.engine import ConsentEngine, decide

__all__ = [
    "ActorDirectory",
    "CombiningRule",
    "ConsentDecision",
    "ConsentEngine",
    "DecisionBasis",
    "DecisionOutcome",
    "DecisionRequest",
    "RedactMode",
    "RedactObligation",
    "RequestActor",
    "RequestedResource",
    "decide",
]
