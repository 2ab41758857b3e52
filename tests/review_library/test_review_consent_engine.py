"""Review (library, area c): the consent engine over consents from other systems.

A restriction written by another EHR must restrict whatever way it codes the restricted actor's
role; conflicting consents combine deny-overrides, so one such restriction beside our sharing
consent must deny.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_alliance.consent import DecisionOutcome
from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import from_consent
from fhir_alliance.schemas.consent import load_consent
from tests.review_library.foreign import (
    RECIPIENT,
    TWO_CODING_IRCP,
    V3,
    decide,
    r4_consent,
    r5_consent,
)

#: Our sharing consent: permit to Organization/ehr (as IRCP) for TREAT, in force on AT.
SHARING = load_consent(
    {
        "kind": "consent",
        "id": "https://clinic.example.org/consents|review-library-sharing",
        "consent_kind": "sharing",
        "patient": {"reference": "Patient/p1"},
        "status": "active",
        "decision": "permit",
        "date": "2025-03-01T10:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example.org/policies/sharing"}],
        "provision": {
            "actors": [
                {
                    "role": {"system": f"{V3}/v3-ParticipationType", "code": "IRCP"},
                    "reference": {"reference": RECIPIENT},
                }
            ],
            "purposes": [{"system": f"{V3}/v3-ActReason", "code": "TREAT"}],
        },
    }
)

_RESTRICTED_ACTOR = {"role": TWO_CODING_IRCP, "reference": {"reference": RECIPIENT}}


@pytest.mark.parametrize(
    "restriction",
    [
        # R4 (IHE PCF): base deny for the named recipient.
        r4_consent({"type": "deny", "actor": [_RESTRICTED_ACTOR]}),
        # R5: base permit, its exception a deny for the named recipient.
        r5_consent("permit", [{"actor": [_RESTRICTED_ACTOR]}]),
    ],
    ids=["r4-restriction", "r5-exception"],
)
def test_later_restriction_of_the_recipient_overrides_our_sharing_permit(
    restriction: dict[str, Any],
) -> None:
    """Sharing permits Organization/ehr; a later consent from another EHR denies exactly that
    organisation (its role coded with the EHR's own coding first, the v3 IRCP one beside it).
    Deny-overrides: the answer is deny, or the restriction is refused as unreadable. Today the
    restriction's actor is read with the local role only, never matches, and the answer is permit."""
    try:
        restriction_record = from_consent(restriction)
    except MappingError as error:
        assert "actor[0].role" in error.element, error.element
        return
    assert decide([SHARING]).outcome is DecisionOutcome.PERMIT  # alone, sharing permits
    decision = decide([SHARING, restriction_record])
    assert decision.outcome is DecisionOutcome.DENY, decision.explain()
