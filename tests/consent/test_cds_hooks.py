"""CDS Hooks adapter: hook context → request, decision → LEAP's card."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_alliance.consent.cds_hooks import card_response, is_hook_request, request_from_hook
from fhir_alliance.consent.decision import (
    CombiningRule,
    ConsentDecision,
    DecisionBasis,
    DecisionOutcome,
    RedactMode,
    RedactObligation,
)
from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Coding, Identifier
from fhir_alliance.model.consent import Decision
from fhir_alliance.terminology import CONSENT_ACTION
from tests.consent.builders import label, t

CONTEXT: dict[str, Any] = {
    "patientId": [{"system": "urn:mrn", "value": "1"}, {"system": "urn:ssn", "value": "2"}],
    "actor": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"}],
    "purposeOfUse": "TREAT",
}
BASIS = DecisionBasis(Identifier("urn:c", "c1"), "root", Decision.PERMIT, t("2025-01-01"))


def test_body_and_bare_context_give_the_same_request() -> None:
    """The whole hook body and just its context read the same."""
    body = {"hook": "patient-consent-consult", "hookInstance": "x", "context": CONTEXT}
    assert is_hook_request(body) and is_hook_request(CONTEXT)
    assert request_from_hook(body, at=t("2025-06-01")) == request_from_hook(
        CONTEXT, at=t("2025-06-01")
    )


def test_every_patient_identifier_is_kept() -> None:
    """All patientId entries become ways of naming the one patient."""
    request = request_from_hook(CONTEXT, at=t("2025-06-01"))
    assert [r.identifier.value for r in request.patient if r.identifier] == ["1", "2"]


@pytest.mark.parametrize(
    ("context", "path"),
    [
        ({**CONTEXT, "patientId": []}, "patientId"),
        ({**CONTEXT, "actor": [{"system": "s"}]}, "actor.0"),
        ({**CONTEXT, "purposeOfUse": [3]}, "purposeOfUse.0"),
        ({**CONTEXT, "category": [{"code": "x"}]}, "category.0"),
        ({**CONTEXT, "class": "Observation"}, "class"),
    ],
)
def test_bad_context_names_path(context: dict[str, Any], path: str) -> None:
    """Bad context fields are refused with their path."""
    with pytest.raises(InputError) as info:
        request_from_hook(context, at=t("2025-06-01"))
    assert [i.path for i in info.value.issues] == [path]


def test_other_hook_refused() -> None:
    """A body for another hook is refused at ``hook``."""
    with pytest.raises(InputError) as info:
        request_from_hook({"hook": "patient-view", "context": CONTEXT}, at=t("2025-06-01"))
    assert info.value.issues[0].path == "hook"


def test_card_shape() -> None:
    """A permit with two redactions becomes one info card with codes and exceptAnyOfCodes."""
    decision = ConsentDecision(
        DecisionOutcome.PERMIT,
        CombiningRule.DENY_OVERRIDES,
        (BASIS,),
        (
            RedactObligation(RedactMode.ALL_EXCEPT, labels=(label("BH"),)),
            RedactObligation(RedactMode.MATCHING, codes=(Coding("http://loinc.org", "44261-6"),)),
        ),
    )
    card = card_response(decision, locations={BASIS.consent: "https://ehr/Consent/1"})["cards"]
    assert len(card) == 1
    ext = card[0]["extension"]
    assert (card[0]["summary"], card[0]["indicator"]) == ("CONSENT_PERMIT", "info")
    assert ext["basedOn"] == "https://ehr/Consent/1"
    assert [list(o["parameters"]) for o in ext["obligations"]] == [["exceptAnyOfCodes"], ["codes"]]


@pytest.mark.parametrize(
    ("outcome", "code", "indicator"),
    [
        (DecisionOutcome.DENY, "CONSENT_DENY", "critical"),
        (DecisionOutcome.NO_CONSENT, "NO_CONSENT", "warning"),
    ],
)
def test_no_obligations_without_permit(outcome: DecisionOutcome, code: str, indicator: str) -> None:
    """Deny and no-consent cards carry no obligations; basedOn falls back to an identifier search."""
    decision = ConsentDecision(outcome, CombiningRule.DENY_OVERRIDES, (BASIS,))
    card = card_response(decision)["cards"][0]
    assert (card["summary"], card["indicator"], card["extension"]["obligations"]) == (
        code,
        indicator,
        [],
    )
    assert card["extension"]["basedOn"] == "Consent?identifier=urn:c|c1"


@pytest.mark.parametrize(
    ("value", "path"), [("TRAET", "purposeOfUse.0"), (["TREAT", "X"], "purposeOfUse.1")]
)
def test_unknown_purpose_of_use_is_refused(value: object, path: str) -> None:
    """A purposeOfUse outside v3 PurposeOfUse is refused with its path."""
    with pytest.raises(InputError) as info:
        request_from_hook({**CONTEXT, "purposeOfUse": value}, at=t("2025-06-01"))
    assert [i.path for i in info.value.issues] == [path]


@pytest.mark.parametrize("code", ["acess", "ACCESS", ""])
def test_unknown_action_is_refused(code: str) -> None:
    """The caller's action must be a consentaction code."""
    with pytest.raises(InputError) as info:
        request_from_hook(CONTEXT, at=t("2025-06-01"), action=Coding(CONSENT_ACTION, code))
    assert [i.path for i in info.value.issues] == ["action"]


def test_card_says_why() -> None:
    """The card names the deciding consent, its provision path and the engine's notes, beside
    LEAP's keys, and repeats them in the detail a LEAP client shows."""
    deny = DecisionBasis(Identifier("urn:c", "c1"), "0.1", Decision.DENY, t("2025-01-01"))
    note = "consent urn:c|c1, provision 0.1: actor Practitioner/x could not be resolved"
    decision = ConsentDecision(
        DecisionOutcome.DENY, CombiningRule.DENY_OVERRIDES, (deny,), (), (note,)
    )
    card = card_response(decision, locations={deny.consent: "https://ehr/fhir/Consent/1"})["cards"][
        0
    ]
    ext = card["extension"]
    assert {"decision", "obligations", "basedOn"} <= set(ext)
    assert ext["org.fhir-alliance.basis"] == [
        {
            "consent": "urn:c|c1",
            "location": "https://ehr/fhir/Consent/1",
            "provision": "0.1",
            "decision": "deny",
        }
    ]
    assert ext["org.fhir-alliance.notes"] == [note]
    assert "provision 0.1" in card["detail"] and note in card["detail"]


def test_card_source_is_the_callers() -> None:
    """The source label and URL are the caller's (the service passes its settings)."""
    decision = ConsentDecision(DecisionOutcome.NO_CONSENT, CombiningRule.DENY_OVERRIDES)
    card = card_response(decision, source_label="Clinic X", source_url="https://x.example/cds")
    assert card["cards"][0]["source"] == {"label": "Clinic X", "url": "https://x.example/cds"}


def test_no_consent_card_gives_the_reasons() -> None:
    """A no-consent card lists why no consent applied, under its own key and in the detail."""
    reasons = ("consent urn:c|c1: revoked on 2025-05-01T10:00:00+00:00",)
    decision = ConsentDecision(
        DecisionOutcome.NO_CONSENT, CombiningRule.DENY_OVERRIDES, why_no_consent=lambda: reasons
    )
    card = card_response(decision)["cards"][0]
    assert card["extension"]["org.fhir-alliance.reasons"] == list(reasons)
    assert reasons[0] in card["detail"]
