"""Where a faithful R4 reading differs from LEAP's observed behaviour: each test is one difference
listed in docs/consent-decisions.md, fed as R4 Consent JSON (LEAP's input) through the mapping."""

from __future__ import annotations

import copy
from typing import Any

from fhir_alliance.consent.cds_hooks import card_response, request_from_hook
from fhir_alliance.consent.decision import CombiningRule, DecisionOutcome
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.mapping.consent import from_consent
from fhir_alliance.model.common import Coding, Ref
from tests.consent.builders import CONSENT_IDS, act, loinc, pou, request, resource, t

ACTOR_SYSTEM = "urn:ietf:rfc:3986"
ORG_OID = "urn:oid:2.16.840.1.113883.20.5"
IRCP = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
    ]
}
ORG = Ref(reference="Organization/org-1")
DIRECTORY = ActorDirectory.from_resources(
    [
        {
            "resourceType": "Organization",
            "id": "org-1",
            "identifier": [{"system": ACTOR_SYSTEM, "value": ORG_OID}],
        },
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        },
    ]
)
SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"


def r4_consent(value: str, decision: str = "permit", **provision: Any) -> dict[str, Any]:
    """A LEAP-style R4 privacy consent: scope patient-privacy, LOINC category, one organisation."""
    root: dict[str, Any] = {
        "type": decision,
        "actor": [{"role": IRCP, "reference": {"reference": "Organization/org-1"}}],
        "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
        ],
    }
    root.update(provision)
    return {
        "resourceType": "Consent",
        "id": value,
        "identifier": [{"system": CONSENT_IDS, "value": value}],
        "status": "active",
        "scope": {"coding": [{"system": SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2025-01-01T00:00:00Z",
        "policy": [{"uri": "https://clinic.example/privacy-policy"}],
        "provision": root,
    }


def engine(
    *consents: dict[str, Any], combining: CombiningRule = CombiningRule.DENY_OVERRIDES
) -> ConsentEngine:
    return ConsentEngine(
        [from_consent(c) for c in consents], directory=DIRECTORY, combining=combining
    )


def label(code: str) -> dict[str, str]:
    return {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}


def test_nested_type_is_read() -> None:
    """Deny with a nested deny for PSY stays deny for PSY content (LEAP flips it to permit)."""
    consent = r4_consent(
        "c1", "deny", provision=[{"type": "deny", "securityLabel": [label("PSY")]}]
    )
    decision = engine(consent).decide(request(ORG, res=resource(labels=("PSY",))))
    assert decision.outcome is DecisionOutcome.DENY
    assert [b.path for b in decision.basis] == ["0"]


def test_scope_counts_as_category() -> None:
    """A request category consentscope|patient-privacy matches the consent's R4 scope."""
    consent = r4_consent("c1")
    scoped = request(ORG, res=resource(), categories=(Coding(SCOPE, "patient-privacy"),))
    research = request(ORG, res=resource(), categories=(Coding(SCOPE, "research"),))
    assert engine(consent).decide(scoped).outcome is DecisionOutcome.PERMIT
    assert engine(consent).decide(research).outcome is DecisionOutcome.NO_CONSENT


def test_r4_code_array_is_read() -> None:
    """A nested deny on the R4 ``code`` array (a list of CodeableConcepts) applies."""
    consent = r4_consent(
        "c1",
        provision=[
            {
                "type": "deny",
                "code": [{"coding": [{"system": "http://loinc.org", "code": "44261-6"}]}],
            }
        ],
    )
    phq9 = request(ORG, res=resource(codes=(loinc("44261-6"),)))
    wai = request(ORG, res=resource(codes=(loinc("89204-2"),)))
    assert engine(consent).decide(phq9).outcome is DecisionOutcome.DENY
    assert engine(consent).decide(wai).outcome is DecisionOutcome.PERMIT


def test_nested_period_is_read() -> None:
    """A nested deny limited to a period applies inside it only."""
    consent = r4_consent(
        "c1",
        provision=[
            {
                "type": "deny",
                "period": {"start": "2025-05-01T00:00:00Z", "end": "2025-07-01T00:00:00Z"},
            }
        ],
    )
    assert (
        engine(consent).decide(request(ORG, at="2025-06-01", res=resource())).outcome
        is DecisionOutcome.DENY
    )
    assert (
        engine(consent).decide(request(ORG, at="2025-08-01", res=resource())).outcome
        is DecisionOutcome.PERMIT
    )


def test_nested_action_is_read() -> None:
    """A nested deny of ``disclose`` does not stop ``access``."""
    consent = r4_consent(
        "c1",
        provision=[
            {
                "type": "deny",
                "action": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                "code": "disclose",
                            }
                        ]
                    }
                ],
            }
        ],
    )
    assert (
        engine(consent).decide(request(ORG, action="disclose", res=resource())).outcome
        is DecisionOutcome.DENY
    )
    assert (
        engine(consent).decide(request(ORG, action="access", res=resource())).outcome
        is DecisionOutcome.PERMIT
    )


def test_nested_data_period_is_read() -> None:
    """A nested deny on data from 2020-2022 covers a 2021 result and not a 2024 one."""
    consent = r4_consent(
        "c1",
        provision=[{"type": "deny", "dataPeriod": {"start": "2020-01-01", "end": "2022-12-31"}}],
    )
    old = request(ORG, res=resource(date="2021-06-01"))
    new = request(ORG, res=resource(date="2024-06-01"))
    assert engine(consent).decide(old).outcome is DecisionOutcome.DENY
    assert engine(consent).decide(new).outcome is DecisionOutcome.PERMIT


def test_nested_data_is_read() -> None:
    """A nested deny on one resource instance covers that instance only."""
    consent = r4_consent(
        "c1",
        provision=[
            {
                "type": "deny",
                "data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}],
            }
        ],
    )
    assert (
        engine(consent).decide(request(ORG, res=resource(reference="Observation/o1"))).outcome
        is DecisionOutcome.DENY
    )
    assert (
        engine(consent).decide(request(ORG, res=resource(reference="Observation/o2"))).outcome
        is DecisionOutcome.PERMIT
    )


def test_nested_actor_role_is_read() -> None:
    """A nested deny for the organisation as primary recipient (PRCP) leaves it as IRCP alone."""
    prcp = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}
        ]
    }
    consent = r4_consent(
        "c1",
        provision=[
            {
                "type": "deny",
                "actor": [{"role": prcp, "reference": {"reference": "Organization/org-1"}}],
            }
        ],
    )
    assert engine(consent).decide(request(ORG, res=resource())).outcome is DecisionOutcome.PERMIT


def test_date_only_period_end_is_inclusive() -> None:
    """``period.end: 2025-06-01`` still counts at noon on 1 June (LEAP: already over)."""
    consent = r4_consent("c1", period={"start": "2025-01-01", "end": "2025-06-01"})
    noon = request(ORG, at="2025-06-01T12:00", res=resource())
    next_day = request(ORG, at="2025-06-02", res=resource())
    assert engine(consent).decide(noon).outcome is DecisionOutcome.PERMIT
    assert engine(consent).decide(next_day).outcome is DecisionOutcome.NO_CONSENT


def test_ties_do_not_depend_on_order() -> None:
    """Two consents with the same dateTime decide the same in either order (deny first)."""
    permit, deny = r4_consent("c-permit"), r4_consent("c-deny", "deny")
    for consents in ((permit, deny), (deny, permit)):
        decision = engine(*consents, combining=CombiningRule.MOST_RECENT_WINS).decide(
            request(ORG, res=resource())
        )
        assert decision.outcome is DecisionOutcome.DENY
        assert [b.consent.value for b in decision.basis] == ["c-deny"]


def test_unresolvable_actor_is_reported() -> None:
    """An actor reference missing from the directory does not match, and the answer says so."""
    consent = r4_consent(
        "c1", actor=[{"role": IRCP, "reference": {"reference": "Organization/unknown"}}]
    )
    hook = {
        "patientId": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        "actor": [{"system": ACTOR_SYSTEM, "value": ORG_OID}],
        "purposeOfUse": "TREAT",
    }
    decision = engine(consent).decide(
        request_from_hook(hook, at=t("2025-06-01"), action=act("access"))
    )
    assert decision.outcome is DecisionOutcome.NO_CONSENT
    assert any("not in the actor directory" in n for n in decision.notes)


def test_unresolvable_actor_in_a_nested_deny_denies() -> None:
    """A nested deny naming an actor the directory cannot resolve applies to a consult by
    identifier: whether it is that actor is unknown, so the deny counts (never fail open)."""
    consent = r4_consent(
        "c1",
        provision=[
            {
                "type": "deny",
                "actor": [
                    {"role": IRCP, "reference": {"reference": "Practitioner/not-in-directory"}}
                ],
            }
        ],
    )
    hook = {
        "patientId": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        "actor": [
            {"system": ACTOR_SYSTEM, "value": ORG_OID},
            {"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999999"},
        ],
        "purposeOfUse": "TREAT",
    }
    decision = engine(consent).decide(
        request_from_hook(hook, at=t("2025-06-01"), action=act("access"))
    )
    assert decision.outcome is DecisionOutcome.DENY
    assert [b.path for b in decision.basis] == ["0"]
    assert any("Practitioner/not-in-directory could not be resolved" in n for n in decision.notes)


def test_deep_nesting_is_read() -> None:
    """A third-level exception decides (LEAP reads the first level only)."""
    consent = r4_consent(
        "c1",
        provision=[
            {
                "type": "deny",
                "securityLabel": [label("PSY")],
                "provision": [
                    {
                        "type": "permit",
                        "purpose": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                "code": "TREAT",
                            }
                        ],
                        "provision": [{"type": "deny", "dataPeriod": {"end": "2024-01-01"}}],
                    }
                ],
            }
        ],
    )
    recent = request(ORG, res=resource(labels=("PSY",), date="2024-06-01"))
    old = request(ORG, res=resource(labels=("PSY",), date="2023-06-01"))
    assert [b.path for b in engine(consent).decide(recent).basis] == ["0.0"]
    assert [b.path for b in engine(consent).decide(old).basis] == ["0.0.0"]
    assert engine(consent).decide(old).outcome is DecisionOutcome.DENY


def test_labelled_resource_is_denied_not_redacted() -> None:
    """Asked about one PSY-labelled resource, the answer is DENY; asked in general, PERMIT with
    REDACT PSY (LEAP answers PERMIT + REDACT in both cases)."""
    consent = r4_consent("c1", provision=[{"type": "deny", "securityLabel": [label("PSY")]}])
    one = engine(consent).decide(request(ORG, res=resource(labels=("PSY",))))
    assert (one.outcome, one.obligations) == (DecisionOutcome.DENY, ())
    hook = {
        "patientId": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        "actor": [{"system": ACTOR_SYSTEM, "value": ORG_OID}],
        "purposeOfUse": ["TREAT"],
    }
    general = engine(consent).decide(request_from_hook(hook, at=t("2025-06-01")))
    card = card_response(general)["cards"][0]
    assert card["extension"]["decision"] == "CONSENT_PERMIT"
    redacted = [
        c["code"] for o in card["extension"]["obligations"] for c in o["parameters"]["codes"]
    ]
    assert redacted == ["PSY", "PSYTHPN", "V"]


def test_data_period_redaction_is_not_sent_as_an_empty_codes_list() -> None:
    """A redaction by date that LEAP's card cannot carry turns the card into CONSENT_DENY."""
    consent = r4_consent("c1", provision=[{"type": "deny", "dataPeriod": {"end": "2024-01-01"}}])
    hook = {
        "patientId": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        "actor": [{"system": ACTOR_SYSTEM, "value": ORG_OID}],
        "purposeOfUse": "TREAT",
    }
    decision = engine(consent).decide(request_from_hook(hook, at=t("2025-06-01")))
    assert decision.outcome is DecisionOutcome.PERMIT
    assert decision.obligations[0].data_period is not None
    card = card_response(decision)["cards"][0]
    assert card["extension"]["decision"] == "CONSENT_DENY"
    assert card["extension"]["obligations"] == []


def test_purpose_list_matches_any() -> None:
    """A hook with several purposes matches a consent for any of them (as LEAP documents)."""
    consent = copy.deepcopy(r4_consent("c1"))
    hook = {
        "patientId": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}],
        "actor": [{"system": ACTOR_SYSTEM, "value": ORG_OID}],
        "purposeOfUse": ["HPAYMT", "TREAT"],
    }
    decision = engine(consent).decide(request_from_hook(hook, at=t("2025-06-01")))
    assert decision.outcome is DecisionOutcome.PERMIT
    assert pou("TREAT") in request_from_hook(hook, at=t("2025-06-01")).purposes
