"""Tests of the CDS Hooks consent consult (LEAP-compatible) answered from stored consents."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.usecases.intake import intake_records
from flask.testing import FlaskClient

CONSULT = "/cds-services/patient-consent-consult"
PATIENT = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "p-001"}
CLINIC = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.20.5"}
RESEARCH = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.99.7"}
IRCP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
TREAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}


def _token(identifier: dict[str, str]) -> str:
    return f"{identifier['system']}|{identifier['value']}"


def _consent(number: int, decision: str, actor: dict[str, str], **provision: Any) -> dict[str, Any]:
    """A sharing consent of PATIENT (named by identifier, as hooks name patients) for ``actor``."""
    return {
        "kind": "consent",
        "id": f"https://clinic.example.org/consents|cds-{number}",
        "consent_kind": "sharing",
        "patient": {"identifier": _token(PATIENT)},
        "status": "active",
        "decision": decision,
        "date": f"2025-03-0{number}T10:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example.org/policies/sharing-v2"}],
        "provision": {
            "actors": [{"role": IRCP, "reference": {"identifier": _token(actor)}}],
            "purposes": [TREAT],
            **provision,
        },
    }


def _store_consents(store: Store, *consents: dict[str, Any]) -> None:
    intake_records(store, list(consents), at=datetime.now(UTC))


def _hook(actor: dict[str, str] = CLINIC, **context: Any) -> dict[str, Any]:
    return {
        "hook": "patient-consent-consult",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"patientId": [PATIENT], "actor": [actor], "purposeOfUse": ["TREAT"], **context},
    }


def _card(client: FlaskClient, headers: dict[str, str], body: Any) -> dict[str, Any]:
    response = client.post(CONSULT, json=body, headers=headers)
    assert response.status_code == 200, response.json
    cards = response.json["cards"]
    assert len(cards) == 1
    card: dict[str, Any] = cards[0]
    return card


def test_discovery_lists_the_consult_service(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """GET /cds-services names the patient-consent-consult hook and its id."""
    response = client.get("/cds-services", headers=auth_headers["consult"])
    assert response.status_code == 200
    (service,) = response.json["services"]
    assert service["hook"] == service["id"] == "patient-consent-consult"
    assert service["description"]


def test_no_consent_when_nothing_is_stored(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A patient without stored consents gets NO_CONSENT (indicator warning)."""
    card = _card(client, auth_headers["consult"], _hook())
    assert card["summary"] == card["extension"]["decision"] == "NO_CONSENT"
    assert card["indicator"] == "warning"


def test_permit_from_a_stored_consent_with_redaction(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A stored permit for the actor gives CONSENT_PERMIT, with LEAP REDACT obligations for a
    nested deny on a label, and basedOn naming the consent."""
    nested_deny = {"provisions": [{"type": "deny", "security_labels": [PSY]}]}
    _store_consents(store, _consent(1, "permit", CLINIC, **nested_deny))
    card = _card(client, auth_headers["consult"], _hook())
    assert card["summary"] == "CONSENT_PERMIT"
    assert card["indicator"] == "info"
    redacted = [
        code
        for obligation in card["extension"]["obligations"]
        for code in obligation["parameters"]["codes"]
    ]
    assert PSY in redacted
    assert (
        card["extension"]["basedOn"]
        == "Consent?identifier=https://clinic.example.org/consents|cds-1"
    )


def test_deny_from_a_stored_consent(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A stored deny for the actor gives CONSENT_DENY (critical) and no obligations."""
    _store_consents(store, _consent(1, "permit", CLINIC), _consent(2, "deny", RESEARCH))
    card = _card(client, auth_headers["consult"], _hook(actor=RESEARCH))
    assert card["summary"] == "CONSENT_DENY"
    assert card["indicator"] == "critical"
    assert card["extension"]["obligations"] == []


def test_other_purpose_is_no_consent(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A permit for treatment does not answer a research consult."""
    _store_consents(store, _consent(1, "permit", CLINIC))
    card = _card(client, auth_headers["consult"], _hook(purposeOfUse=["HRESCH"]))
    assert card["summary"] == "NO_CONSENT"


def test_bare_context_is_accepted(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Just the hook context, as LEAP also accepts, gives the same answer."""
    _store_consents(store, _consent(1, "permit", CLINIC))
    card = _card(client, auth_headers["consult"], _hook()["context"])
    assert card["summary"] == "CONSENT_PERMIT"


def test_new_consent_changes_the_answer(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A consent stored after a first consult is seen by the next one (no stale engine)."""
    assert _card(client, auth_headers["consult"], _hook())["summary"] == "NO_CONSENT"
    _store_consents(store, _consent(1, "permit", CLINIC))
    assert _card(client, auth_headers["consult"], _hook())["summary"] == "CONSENT_PERMIT"
    _store_consents(store, _consent(2, "deny", CLINIC))
    assert _card(client, auth_headers["consult"], _hook())["summary"] == "CONSENT_DENY"


def test_card_source_comes_from_settings(
    sqlite_url: str, store: Store, api_keys: dict[str, str]
) -> None:
    """The card's source label and URL are the configured ones."""
    from fhir_alliance_service.app import create_app

    app = create_app(
        {
            "database_url": sqlite_url,
            "cds_source_label": "Clinic consent service",
            "cds_source_url": "https://consent.clinic.example",
        }
    )
    try:
        client = app.test_client()
        card = _card(client, {"X-API-Key": api_keys["consult"]}, _hook())
    finally:
        app.extensions["fhir_alliance"].store.close()
    assert card["source"] == {
        "label": "Clinic consent service",
        "url": "https://consent.clinic.example",
    }


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].update(actor=[{"system": "", "value": "x"}]), "context.actor.0"),
        (lambda b: b.update(hook="patient-view"), "hook"),
        (lambda b: b["context"].update(purposeOfUse=[""]), "context.purposeOfUse.0"),
    ],
)
def test_bad_hook_request_is_422_naming_the_path(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]], mutate: Any, path: str
) -> None:
    """A hook request that does not fit answers 422 with the field path in the OperationOutcome."""
    body = copy.deepcopy(_hook())
    mutate(body)
    response = client.post(CONSULT, json=body, headers=auth_headers["consult"])
    assert response.status_code == 422
    assert response.mimetype == "application/fhir+json"
    assert response.json["issue"][0]["expression"] == [path]


def test_non_object_body_is_422(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A JSON array is not a hook request."""
    response = client.post(CONSULT, json=[1, 2], headers=auth_headers["consult"])
    assert response.status_code == 422
    assert response.json["resourceType"] == "OperationOutcome"


def test_consult_needs_the_consult_scope(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Read, write and admin keys cannot consult; a consult key can."""
    for scope in ("read", "write", "admin"):
        response = client.post(CONSULT, json=_hook(), headers=auth_headers[scope])
        assert response.status_code == 403, scope


def test_consults_are_counted_by_outcome(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Each consult adds one to fhir_alliance_decisions_total for its outcome (this process)."""

    def count(outcome: str) -> float:
        value = REGISTRY.get_sample_value("fhir_alliance_decisions_total", {"outcome": outcome})
        return value or 0.0

    before = {o: count(o) for o in ("permit", "deny", "no-consent")}
    _card(client, auth_headers["consult"], _hook())
    _store_consents(store, _consent(1, "permit", CLINIC))
    _card(client, auth_headers["consult"], _hook())
    _card(client, auth_headers["consult"], _hook())
    assert count("no-consent") - before["no-consent"] == 1
    assert count("permit") - before["permit"] == 2
    assert count("deny") == before["deny"]
