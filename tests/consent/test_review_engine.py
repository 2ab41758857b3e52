"""Corners where the general answer (no resource) used to release more than the consents allow,
found by an outside review and by ``test_general_soundness``; each is checked against the answer
for a resource, which is exact."""

from __future__ import annotations

import dataclasses
from typing import Any

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import RedactMode
from fhir_alliance.consent.request_form import load_decision_request
from fhir_alliance.model.common import Coding
from fhir_alliance.model.consent import ConsentKind, ConsentRecord
from fhir_alliance.schemas.consent import load_consent

V3 = "http://terminology.hl7.org/CodeSystem"
OBSERVATION = {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}
WAI_SR = {
    "system": "http://hl7.org/fhir/StructureDefinition",
    "code": "https://clinic.example/StructureDefinition/wai-sr",
}


def label(code: str) -> dict[str, str]:
    return {"system": f"{V3}/v3-ActCode", "code": code}


def consent(n: int, decision: str, provision: dict[str, Any] | None = None) -> ConsentRecord:
    record: dict[str, Any] = {
        "kind": "consent",
        "id": f"https://clinic.example/consent-ids|c{n}",
        "consent_kind": "sharing",
        "patient": {"reference": "Patient/p1"},
        "status": "active",
        "decision": decision,
        "date": f"2025-03-0{n}T10:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example/policy"}],
    }
    if provision is not None:
        record["provision"] = provision
    return load_consent(record)


def ask(engine: ConsentEngine, **extra: Any) -> Any:
    request = {
        "patient": {"reference": "Patient/p1"},
        "actors": [{"reference": "Organization/ehr"}],
        "purposes": ["TREAT"],
        "action": "access",
        "at": "2025-06-01T09:00:00Z",
        **extra,
    }
    return engine.decide(load_decision_request(request))


DENY_EXCEPT_BH = {"provisions": [{"type": "permit", "security_labels": [label("BH")]}]}


def test_a_deny_with_an_exception_limits_what_another_consent_permits() -> None:
    """Permit-all beside "deny everything except BH": only BH content may go (it went whole)."""
    engine = ConsentEngine([consent(1, "permit"), consent(2, "deny", DENY_EXCEPT_BH)])
    general = ask(engine)
    assert general.outcome is DecisionOutcome.PERMIT
    kept = [o for o in general.obligations if o.mode is RedactMode.ALL_EXCEPT]
    assert [[c.code for c in o.labels] for o in kept] == [["BH"]]
    assert ask(engine, resource={"type": "Observation"}).outcome is DecisionOutcome.DENY


def test_two_denies_with_exceptions_keep_only_what_both_permit() -> None:
    """Deny-except-BH and deny-except-ETH: one obligation each (content must pass both), not
    one keeping BH or ETH."""
    eth = {"provisions": [{"type": "permit", "security_labels": [label("ETH")]}]}
    engine = ConsentEngine([consent(1, "deny", DENY_EXCEPT_BH), consent(2, "deny", eth)])
    kept = [o for o in ask(engine).obligations if o.mode is RedactMode.ALL_EXCEPT]
    assert sorted([c.code for c in o.labels] for o in kept) == [["BH"], ["ETH"]]
    only_bh = {"type": "Observation", "labels": ["BH"]}
    assert ask(engine, resource=only_bh).outcome is DecisionOutcome.DENY


def test_psythpn_is_released_only_by_a_permit_scoped_by_labels_alone() -> None:
    """A permit naming PSYTHPN and a code releases PSYTHPN content of that code only: the
    general answer keeps redacting PSYTHPN. A permit naming the label alone releases content
    labelled PSYTHPN as written, not PSYTHPN of another code system, which no redaction can tell
    apart: beside a plain permit the general answer still redacts PSYTHPN, and says why."""
    narrow = {
        "provisions": [
            {
                "type": "permit",
                "security_labels": [label("PSYTHPN")],
                "codes": [{"system": "http://loinc.org", "code": "11488-4"}],
            }
        ]
    }
    engine = ConsentEngine([consent(1, "permit", narrow)])
    redacted = [
        c.code for o in ask(engine).obligations if o.mode is RedactMode.MATCHING for c in o.labels
    ]
    assert "PSYTHPN" in redacted
    other_code = {"type": "Observation", "labels": ["PSYTHPN"], "codes": []}
    assert ask(engine, resource=other_code).outcome is DecisionOutcome.DENY
    whole = {"provisions": [{"type": "permit", "security_labels": [label("PSYTHPN")]}]}
    general = ask(ConsentEngine([consent(1, "permit", whole)]))
    still = [c.code for o in general.obligations for c in o.labels]
    assert still == ["PSYTHPN", "V"]
    assert any("as labelled under HL7's code system" in n for n in general.notes)
    # Asked about it, content labelled PSYTHPN (as written) is released.
    psythpn = {"type": "Observation", "labels": ["PSYTHPN"], "codes": []}
    released = ask(ConsentEngine([consent(1, "permit", whole)]), resource=psythpn)
    assert released.outcome is DecisionOutcome.PERMIT


def test_a_deny_by_resource_type_concerns_content_asked_for_by_profile() -> None:
    """Content asked for by profile may be of any type (and a type's content may claim any
    profile): a deny scoped by the other kind of class still applies."""
    by_type = ConsentEngine(
        [consent(1, "permit", {"provisions": [{"type": "deny", "classes": [OBSERVATION]}]})]
    )
    answer = ask(by_type, content_classes=[WAI_SR])
    assert answer.outcome is DecisionOutcome.PERMIT
    assert [c.code for o in answer.obligations for c in o.classes] == ["Observation"]
    by_profile = ConsentEngine(
        [consent(1, "permit", {"provisions": [{"type": "deny", "classes": [WAI_SR]}]})]
    )
    answer = ask(by_profile, content_classes=[OBSERVATION])
    assert [c.code for o in answer.obligations for c in o.classes] == [WAI_SR["code"]]
    # A type under a misspelled system counts as a profile: the deny stays.
    typo = {"system": "http://hl7.org/fhir/resource-type", "code": "Observation"}
    assert [
        c.code for o in ask(by_type, content_classes=[typo]).obligations for c in o.classes
    ] == ["Observation"]


def test_a_scoped_deny_beside_a_scoped_permit_still_redacts() -> None:
    """Deny all but codes A and B, and deny content of a data period: content of code B from
    that period is denied (deny overrides among siblings), so the general answer redacts it."""
    provision = {
        "provisions": [
            {
                "type": "permit",
                "codes": [{"system": "http://loinc.org", "code": "89204-2"}],
            },
            {
                "type": "deny",
                "data_period": {
                    "start": "2024-01-01T00:00:00+00:00",
                    "end": "2024-06-01T00:00:00+00:00",
                },
            },
        ]
    }
    engine = ConsentEngine([consent(1, "deny", provision)])
    general = ask(engine)
    assert general.outcome is DecisionOutcome.PERMIT
    assert any(
        o.mode is RedactMode.MATCHING and o.data_period is not None for o in general.obligations
    )
    inside = {
        "type": "Observation",
        "codes": [{"system": "http://loinc.org", "code": "89204-2"}],
        "date": "2024-03-01T00:00:00Z",
    }
    assert ask(engine, resource=inside).outcome is DecisionOutcome.DENY


def test_among_matching_permits_the_one_naming_psythpn_decides() -> None:
    """A resource labelled PSYTHPN matched by two permits, one scoped by its type and one by the
    label: the one naming PSYTHPN permits it explicitly (it used to depend on their order)."""
    provision = {
        "provisions": [
            {"type": "permit", "classes": [OBSERVATION]},
            {"type": "permit", "security_labels": [label("PSYTHPN")]},
        ]
    }
    engine = ConsentEngine([consent(1, "permit", provision)])
    resource = {"type": "Observation", "labels": ["PSYTHPN"]}
    decided = ask(engine, resource=resource)
    assert decided.outcome is DecisionOutcome.PERMIT
    assert [b.path for b in decided.basis] == ["1"]


PATIENT_CONSENT = {"system": "http://loinc.org", "code": "59284-0"}
RELEASE_OF_INFORMATION = {"system": "http://loinc.org", "code": "64292-6"}


def categorised(
    n: int, decision: str, kind: str, category: dict[str, str], provision: Any = None
) -> ConsentRecord:
    return dataclasses.replace(
        consent(n, decision, provision),
        kind=ConsentKind(kind),
        categories=(Coding(system=category["system"], code=category["code"]),),
    )


def test_a_restriction_filed_under_another_category_still_restricts() -> None:
    """A request naming the sharing consent's category (LEAP's consult as shipped) still counts a
    privacy consent of another category where it denies; it never counts where it permits."""
    sharing = categorised(1, "permit", "sharing", PATIENT_CONSENT)
    restriction = categorised(2, "deny", "restriction", RELEASE_OF_INFORMATION)
    engine = ConsentEngine([sharing, restriction])
    asked = {"categories": [PATIENT_CONSENT]}
    assert ask(engine, **asked).outcome is DecisionOutcome.DENY
    assert ask(engine, resource={"type": "Observation"}, **asked).outcome is DecisionOutcome.DENY
    # A partial restriction (deny PSY inside a permit) of another category: redacts PSY only.
    psy = {"provisions": [{"type": "deny", "security_labels": [label("PSY")]}]}
    partial = categorised(2, "permit", "restriction", RELEASE_OF_INFORMATION, provision=psy)
    engine = ConsentEngine([sharing, partial])
    general = ask(engine, **asked)
    assert general.outcome is DecisionOutcome.PERMIT
    assert ["PSY"] in [[c.code for c in o.labels] for o in general.obligations]
    tagged = {"type": "Observation", "labels": ["PSY"]}
    assert ask(engine, resource=tagged, **asked).outcome is DecisionOutcome.DENY
    # Another category's permit alone permits nothing.
    only_other = ConsentEngine([categorised(1, "permit", "sharing", RELEASE_OF_INFORMATION)])
    assert ask(only_other, **asked).outcome is DecisionOutcome.NO_CONSENT


def test_a_treatment_consent_of_another_category_is_not_counted() -> None:
    """A declined intervention is about care, not disclosure: asked about sharing, it is left
    out as before."""
    sharing = categorised(1, "permit", "sharing", PATIENT_CONSENT)
    declined = categorised(2, "deny", "treatment", RELEASE_OF_INFORMATION)
    engine = ConsentEngine([sharing, declined])
    assert ask(engine, categories=[PATIENT_CONSENT]).outcome is DecisionOutcome.PERMIT
