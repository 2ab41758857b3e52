"""/v1/consents: post (consents and revocations), read, revoke; held records re-queued on change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_alliance_service.store.interface import Store, SyncState
from flask.testing import FlaskClient

from tests.service.usecases.payloads import consent, for_patient, observation, plain_sharing

Headers = dict[str, dict[str, str]]
NOW = datetime.now(UTC)


def _post_consents(client: FlaskClient, headers: Headers, body: Any) -> Any:
    return client.post("/v1/consents", json=body, headers=headers["write"])


def _expressions(response: Any) -> set[str]:
    return {e for issue in response.json["issue"] for e in issue["expression"]}


def test_consent_post_and_get(client: FlaskClient, auth_headers: Headers) -> None:
    """POST a consent: 201; GET /v1/consents/<id> gives it back in our JSON form."""
    sharing = consent("sharing")
    response = _post_consents(client, auth_headers, sharing)
    assert response.status_code == 201, response.json
    [entry] = response.json["records"]
    assert (entry["kind"], entry["version"], entry["outcome"]) == ("consent", 1, "created")
    got = client.get(f"/v1/consents/{entry['id']}", headers=auth_headers["read"])
    assert got.status_code == 200
    assert got.json["record"]["id"] == sharing["id"]
    assert got.json["record"]["status"] == "active"
    assert got.json["family"] == "consent"


def test_an_observation_is_not_a_consent(client: FlaskClient, auth_headers: Headers) -> None:
    """POST /v1/consents refuses other kinds at ``kind``; GET of an observation id there is 404."""
    response = _post_consents(client, auth_headers, observation("rupture"))
    assert response.status_code == 422
    assert _expressions(response) == {"kind"}
    [entry] = client.post(
        "/v1/records", json=observation("rupture"), headers=auth_headers["write"]
    ).json["records"]
    assert (
        client.get(f"/v1/consents/{entry['id']}", headers=auth_headers["read"]).status_code == 404
    )


def test_a_consent_and_its_revocation_in_one_list(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A list with a consent and its revocation stores the consent once, revoked."""
    body = [consent("sharing"), consent("revocation/withdraw-sharing")]
    response = _post_consents(client, auth_headers, body)
    assert response.status_code == 201, response.json
    [entry] = response.json["records"]
    stored = store.get_record(entry["id"])
    assert stored is not None
    assert (stored.version, stored.body["status"]) == (1, "revoked")


def test_revoke_makes_a_new_version_and_requeues_held_records(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """POST /v1/consents/<id>/revoke: version 2, revoked, and the patient's held items are queued again."""
    [c] = _post_consents(client, auth_headers, plain_sharing()).json["records"]
    [held] = client.post(
        "/v1/records",
        json=for_patient(observation("rupture"), "Patient/p1"),
        headers=auth_headers["write"],
    ).json["records"]
    # Items of one patient are claimed in intake order: send the consent, hold the observation.
    [first] = store.claim("w1", limit=10, lease_seconds=60, now=NOW)
    assert store.mark_sent(first.item_id, "w1", sent=[], audit=[], at=NOW)
    [second] = store.claim("w1", limit=10, lease_seconds=60, now=NOW)
    assert second.record_id == held["id"]
    assert store.mark_held(second.item_id, "w1", reason="held for the test", audit=[], at=NOW)
    status = store.sync_status(held["id"])
    assert status is not None and status.state is SyncState.HELD

    response = client.post(
        f"/v1/consents/{c['id']}/revoke",
        json={"at": "2025-05-01T00:00:00+00:00", "by": {"reference": "Patient/p1"}},
        headers=auth_headers["write"],
    )
    assert response.status_code == 200, response.json
    assert (response.json["version"], response.json["record"]["status"]) == (2, "revoked")
    assert response.json["record"]["history"][-1]["by"] == {"reference": "Patient/p1"}
    status = store.sync_status(held["id"])
    assert status is not None and status.state is SyncState.QUEUED


def test_revoking_twice(client: FlaskClient, auth_headers: Headers) -> None:
    """The same revocation again (a retry) is 200 with the consent as it is; another revocation
    of the revoked consent is 409 (``test_review_api2_decision_and_revoke.py`` has the details)."""
    [c] = _post_consents(client, auth_headers, plain_sharing()).json["records"]
    url = f"/v1/consents/{c['id']}/revoke"
    body = {"at": "2025-05-01T00:00:00+00:00"}
    assert client.post(url, json=body, headers=auth_headers["write"]).status_code == 200
    again = client.post(url, json=body, headers=auth_headers["write"])
    assert again.status_code == 200
    assert again.json["version"] == 2
    other = client.post(
        url, json={"at": "2025-05-02T00:00:00+00:00"}, headers=auth_headers["write"]
    )
    assert other.status_code == 409


def test_revoke_body_is_checked_by_field(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """The revoke body: ``at`` required with an offset, no other fields (not even ``status``)."""
    [c] = _post_consents(client, auth_headers, plain_sharing()).json["records"]
    url = f"/v1/consents/{c['id']}/revoke"
    cases = [
        ({}, {"at"}),
        ({"at": "2025-05-01T00:00:00"}, {"at"}),
        ({"at": "2025-05-01T00:00:00+00:00", "status": "active"}, {"status"}),
        ({"at": "2025-05-01T00:00:00+00:00", "consent": "x|y"}, {"consent"}),
    ]
    for body, paths in cases:
        response = client.post(url, json=body, headers=auth_headers["write"])
        assert response.status_code == 422, body
        assert _expressions(response) == paths, body
    stored = store.get_record(c["id"])
    assert stored is not None and stored.version == 1


def test_revoking_an_unknown_consent_is_404(client: FlaskClient, auth_headers: Headers) -> None:
    """Revoke of an id that names no consent is 404."""
    response = client.post(
        "/v1/consents/00000000-0000-5000-8000-000000000000/revoke",
        json={"at": "2025-05-01T00:00:00+00:00"},
        headers=auth_headers["write"],
    )
    assert response.status_code == 404


def test_consent_routes_need_their_scopes(client: FlaskClient, auth_headers: Headers) -> None:
    """Posting and revoking need write; a read key gets 403."""
    assert (
        _post_consents(client, {"write": auth_headers["read"]}, plain_sharing()).status_code == 403
    )
    [c] = _post_consents(client, auth_headers, plain_sharing()).json["records"]
    response = client.post(
        f"/v1/consents/{c['id']}/revoke",
        json={"at": "2025-05-01T00:00:00+00:00"},
        headers=auth_headers["read"],
    )
    assert response.status_code == 403
