"""Review fixes (api2): the decision refuses a repeated parameter instead of answering for its
first value; revoking is idempotent for the same revocation and 409 for another one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.usecases.consents import AlreadyRevoked, revoke_stored_consent
from flask.testing import FlaskClient

from tests.service.usecases.payloads import EHR, plain_sharing

Headers = dict[str, dict[str, str]]
AT = "2025-06-01T00:00:00+00:00"
OTHER = "Organization/not-named-by-the-consent"
REVOCATION = {
    "at": "2025-05-01T00:00:00+00:00",
    "by": {"reference": "Patient/p1"},
    "reason": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "PATRQT"},
}


def _issues(response: Any) -> list[tuple[str, str]]:
    return [
        (expression, issue["details"]["text"])
        for issue in response.json["issue"]
        for expression in issue.get("expression", [""])
    ]


def _decide(client: FlaskClient, headers: Headers, query: list[tuple[str, str]]) -> Any:
    return client.get("/v1/patients/Patient/p1/decision", query_string=query, headers=headers)


# -- the decision: one question per request ---------------------------------------------------


def test_two_recipients_are_refused_not_decided_for_the_first(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """``recipient=EHR&recipient=OTHER`` was answered ``permit`` for the EHR alone; now 422 at
    ``recipient``, in either order."""
    client.post("/v1/consents", json=plain_sharing(), headers=auth_headers["write"])
    single = _decide(
        client, auth_headers["read"], [("recipient", EHR), ("purpose", "TREAT"), ("at", AT)]
    )
    assert single.status_code == 200 and single.json["decision"] == "permit"
    for first, second in ((EHR, OTHER), (OTHER, EHR)):
        response = _decide(
            client,
            auth_headers["read"],
            [("recipient", first), ("recipient", second), ("purpose", "TREAT"), ("at", AT)],
        )
        assert response.status_code == 422, response.json
        assert response.mimetype == "application/fhir+json"
        assert response.json["resourceType"] == "OperationOutcome"
        assert _issues(response) == [("recipient", "give one recipient per question")]


@pytest.mark.parametrize("name", ["purpose", "action", "at"])
def test_other_parameters_given_twice_are_refused(
    client: FlaskClient, auth_headers: Headers, name: str
) -> None:
    """``purpose`` (documented as one code), ``action`` and ``at`` may not repeat either: 422 at
    the parameter, even when both values are the same."""
    client.post("/v1/consents", json=plain_sharing(), headers=auth_headers["write"])
    values = {"recipient": EHR, "purpose": "TREAT", "action": "disclose", "at": AT}
    query = [*values.items(), (name, values[name])]
    response = _decide(client, auth_headers["read"], query)
    assert response.status_code == 422, response.json
    [(path, message)] = _issues(response)
    assert path == name and message.endswith("per question")


def test_every_repeated_parameter_is_named(client: FlaskClient, auth_headers: Headers) -> None:
    """Several repeated parameters: one issue for each."""
    query = [
        ("recipient", EHR),
        ("recipient", OTHER),
        ("purpose", "TREAT"),
        ("purpose", "HPAYMT"),
        ("at", AT),
    ]
    response = _decide(client, auth_headers["read"], query)
    assert response.status_code == 422
    assert {path for path, _ in _issues(response)} == {"recipient", "purpose"}


# -- revoke: idempotent for the same revocation, 409 for another ------------------------------


def _revoked(client: FlaskClient, headers: Headers) -> str:
    [c] = client.post("/v1/consents", json=plain_sharing(), headers=headers["write"]).json[
        "records"
    ]
    first = client.post(f"/v1/consents/{c['id']}/revoke", json=REVOCATION, headers=headers["write"])
    assert first.status_code == 200, first.json
    assert first.json["version"] == 2
    record_id: str = c["id"]
    return record_id


def _footprint(store: Store, record_id: str) -> tuple[Any, ...]:
    row = store.get_record(record_id)
    assert row is not None
    return (
        row.version,
        row.content_hash,
        len(store.list_audit(record_id=record_id, limit=1000)),
        sorted(store.counts_by_state().items()),
    )


def test_the_same_revocation_again_is_200_and_stores_nothing(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A retry after a lost answer: 200 with the consent's current (revoked) version; no new
    version, audit event or outbox item. The same instant written with another offset is the same
    ``at``."""
    record_id = _revoked(client, auth_headers)
    before = _footprint(store, record_id)
    url = f"/v1/consents/{record_id}/revoke"
    for body in (REVOCATION, {**REVOCATION, "at": "2025-05-01T02:00:00+02:00"}):
        again = client.post(url, json=body, headers=auth_headers["write"])
        assert again.status_code == 200, again.json
        assert (again.json["version"], again.json["record"]["status"]) == (2, "revoked")
        history = again.json["record"]["history"]
        assert [h["status"] for h in history].count("revoked") == 1
    assert _footprint(store, record_id) == before


@pytest.mark.parametrize(
    "change",
    [
        {"at": "2025-05-01T00:00:01+00:00"},
        {"by": {"reference": "Practitioner/t1"}},
        {"by": None},
        {"reason": None},
        {"reason": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "X"}},
    ],
)
def test_another_revocation_of_a_revoked_consent_is_409(
    client: FlaskClient, auth_headers: Headers, store: Store, change: dict[str, Any]
) -> None:
    """Another ``at``, ``by`` or ``reason`` (or one left out) is not a retry: 409 with an
    OperationOutcome saying when the consent was revoked; nothing stored."""
    record_id = _revoked(client, auth_headers)
    before = _footprint(store, record_id)
    body = {k: v for k, v in {**REVOCATION, **change}.items() if v is not None}
    response = client.post(
        f"/v1/consents/{record_id}/revoke", json=body, headers=auth_headers["write"]
    )
    assert response.status_code == 409, response.json
    assert response.mimetype == "application/fhir+json"
    [issue] = response.json["issue"]
    assert issue["code"] == "conflict"
    assert "already revoked" in issue["details"]["text"]
    assert "2025-05-01T00:00:00+00:00" in issue["details"]["text"]
    assert "Patient/p1" not in issue["details"]["text"]
    assert _footprint(store, record_id) == before


def test_a_bad_body_is_still_422_on_a_revoked_consent(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """The body is checked first: a missing ``at`` is 422 at ``at``, not 409 or 200."""
    record_id = _revoked(client, auth_headers)
    response = client.post(
        f"/v1/consents/{record_id}/revoke", json={}, headers=auth_headers["write"]
    )
    assert response.status_code == 422
    assert [path for path, _ in _issues(response)] == ["at"]


def test_a_retry_racing_the_first_revoke_is_recognised(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """The use case read the consent while still active, and another request revoked it before
    this one's intake: the same revocation is recognised (``False``, nothing stored), another one
    is :class:`AlreadyRevoked`."""
    [c] = client.post("/v1/consents", json=plain_sharing(), headers=auth_headers["write"]).json[
        "records"
    ]
    stale = store.get_record(c["id"])
    assert stale is not None and stale.version == 1
    now = datetime.now(UTC)
    assert revoke_stored_consent(store, stale, REVOCATION, at=now) is True
    before = _footprint(store, c["id"])
    assert revoke_stored_consent(store, stale, REVOCATION, at=now) is False
    with pytest.raises(AlreadyRevoked, match="already revoked"):
        revoke_stored_consent(store, stale, {**REVOCATION, "at": AT}, at=now)
    assert _footprint(store, c["id"]) == before


def test_openapi_declares_the_revoke_conflict(client: FlaskClient, auth_headers: Headers) -> None:
    """The OpenAPI document lists 409 for the revoke route, as for signing a note."""
    document = client.get("/openapi.json", headers=auth_headers["read"]).json
    responses = document["paths"]["/v1/consents/{record_id}/revoke"]["post"]["responses"]
    assert "409" in responses
    assert "already revoked" in responses["409"]["description"]
