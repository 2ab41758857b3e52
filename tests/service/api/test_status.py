"""/v1/records/<id>/status in every sync state, and /v1/records/<id>/replay (admin only)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from fhir_alliance_service.store.interface import SentResource, Store
from flask.testing import FlaskClient

from tests.service.usecases.payloads import observation

Headers = dict[str, dict[str, str]]
NOW = datetime.now(UTC)
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "expression": ["Observation.code"]}],
}


def _claimed(client: FlaskClient, headers: Headers, store: Store) -> tuple[str, int]:
    [entry] = client.post(
        "/v1/records", json=observation("rupture"), headers=headers["write"]
    ).json["records"]
    [item] = store.claim("w1", limit=1, lease_seconds=60, now=NOW)
    return entry["id"], item.item_id


def _status(client: FlaskClient, headers: Headers, record_id: str) -> dict:
    response = client.get(f"/v1/records/{record_id}/status", headers=headers["read"])
    assert response.status_code == 200, response.json
    body: dict = response.json
    return body


def test_queued(client: FlaskClient, auth_headers: Headers, store: Store) -> None:
    """A new record is queued, version 1, nothing sent, no reason, no outcome."""
    record_id, _ = _claimed(client, auth_headers, store)
    body = _status(client, auth_headers, record_id)
    assert (body["state"], body["version"], body["sent"], body["held_reason"], body["outcome"]) == (
        "queued",
        1,
        [],
        None,
        None,
    )


def test_held_with_the_reason(client: FlaskClient, auth_headers: Headers, store: Store) -> None:
    """A held record shows the gate's reason."""
    record_id, item_id = _claimed(client, auth_headers, store)
    store.mark_held(item_id, "w1", reason="no consent permits TREAT", audit=[], at=NOW)
    body = _status(client, auth_headers, record_id)
    assert (body["state"], body["held_reason"]) == ("held", "no consent permits TREAT")


def test_sent_with_server_ids_and_versions(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A sent record lists each resource's type, server id and version."""
    record_id, item_id = _claimed(client, auth_headers, store)
    sent = [SentResource("Observation", "o-1", "2"), SentResource("Provenance", "p-1", None)]
    store.mark_sent(item_id, "w1", sent=sent, audit=[], at=NOW)
    body = _status(client, auth_headers, record_id)
    assert body["state"] == "sent"
    assert body["sent"] == [
        {"resource_type": "Observation", "id": "o-1", "version_id": "2"},
        {"resource_type": "Provenance", "id": "p-1", "version_id": None},
    ]


def test_lost_leases_of_workers_that_stopped_on_the_item(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A queued item whose workers stopped without a result says how many did (a poison record
    shows before it is dead-lettered); its next result sets the count back to 0."""
    record_id, _ = _claimed(client, auth_headers, store)  # leased by w1 for 60 s
    assert _status(client, auth_headers, record_id)["lost_leases"] == 0
    for n, minutes in enumerate((2, 4), start=2):  # w1's lease, then w2's, expire unanswered
        [item] = store.claim(
            f"w{n}", limit=1, lease_seconds=60, now=NOW + timedelta(minutes=minutes)
        )
    body = _status(client, auth_headers, record_id)
    assert (body["state"], body["attempts"], body["lost_leases"]) == ("queued", 0, 2)
    store.mark_held(item.item_id, "w3", reason="no consent permits TREAT", audit=[], at=NOW)
    assert _status(client, auth_headers, record_id)["lost_leases"] == 0


def test_failed_with_the_next_attempt(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A transient failure shows when the next attempt is due."""
    record_id, item_id = _claimed(client, auth_headers, store)
    later = NOW + timedelta(minutes=2)
    store.mark_failed(item_id, "w1", outcome=OUTCOME, next_attempt_at=later, at=NOW)
    body = _status(client, auth_headers, record_id)
    assert body["state"] == "failed"
    assert datetime.fromisoformat(body["next_attempt_at"]) == later


def test_dead_lettered_with_the_outcome_and_replayed_by_admin(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A dead letter shows its OperationOutcome; replay needs admin (write is 403) and re-queues it."""
    record_id, item_id = _claimed(client, auth_headers, store)
    store.mark_dead(item_id, "w1", outcome=OUTCOME, audit=[], at=NOW)
    body = _status(client, auth_headers, record_id)
    assert (body["state"], body["outcome"]) == ("dead-lettered", OUTCOME)
    url = f"/v1/records/{record_id}/replay"
    assert client.post(url, headers=auth_headers["write"]).status_code == 403
    assert _status(client, auth_headers, record_id)["state"] == "dead-lettered"
    replayed = client.post(url, headers=auth_headers["admin"])
    assert replayed.status_code == 200, replayed.json
    assert (replayed.json["state"], replayed.json["attempts"]) == ("queued", 0)


def test_replay_of_a_queued_record_is_409(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """Only a dead-lettered record can be replayed; unknown ids are 404."""
    record_id, _ = _claimed(client, auth_headers, store)
    response = client.post(f"/v1/records/{record_id}/replay", headers=auth_headers["admin"])
    assert response.status_code == 409
    [issue] = response.json["issue"]
    assert "this one is queued" in json.dumps(issue), issue  # says what it is instead
    missing = client.post(
        "/v1/records/00000000-0000-5000-8000-000000000000/replay", headers=auth_headers["admin"]
    )
    assert missing.status_code == 404
