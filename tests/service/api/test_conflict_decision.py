"""POST /v1/records/<id>/conflict: a person's decision on a conflict flagged for them (admin
only; 409 when the record has none, 404 unknown, 422 bad body)."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_alliance_service.store.interface import SentResource, Store
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from flask.testing import FlaskClient

from tests.service.usecases.payloads import observation

Headers = dict[str, dict[str, str]]
NOW = datetime.now(UTC)
THEIRS = SentResource("Observation", "o-1", "7")


def _flagged(client: FlaskClient, headers: Headers, store: Store) -> str:
    """A record held for a person by the conflict policy, the server at version 7 then."""
    [entry] = client.post(
        "/v1/records", json=observation("rupture"), headers=headers["write"]
    ).json["records"]
    [item] = store.claim("w1", limit=1, lease_seconds=60, now=NOW)
    store.mark_held(item.item_id, "w1", reason=CONFLICT_HELD_REASON, audit=[], at=NOW)
    store.mark_conflict(item.item_id, "flagged", at=NOW)
    assert store.note_conflict_versions(item.item_id, [THEIRS], at=NOW)
    return str(entry["id"])


def test_the_status_shows_the_version_a_conflict_was_flagged_against(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A flagged conflict's status names the server's version it is decided against."""
    record_id = _flagged(client, auth_headers, store)
    body = client.get(f"/v1/records/{record_id}/status", headers=auth_headers["read"]).json
    assert (body["state"], body["conflict"]) == ("held", "flagged")
    assert body["conflict_versions"] == [
        {"resource_type": "Observation", "id": "o-1", "version_id": "7"}
    ]


def test_overwrite_by_admin_queues_it_again_audited_by_key_id(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """write is 403; admin's overwrite queues the record (conflict decided-overwrite) and the
    decision's AuditEvent names the key by its id."""
    record_id = _flagged(client, auth_headers, store)
    url = f"/v1/records/{record_id}/conflict"
    refused = client.post(url, json={"decision": "overwrite"}, headers=auth_headers["write"])
    assert refused.status_code == 403
    decided = client.post(url, json={"decision": "overwrite"}, headers=auth_headers["admin"])
    assert decided.status_code == 200, decided.json
    assert (decided.json["state"], decided.json["conflict"]) == ("queued", "decided-overwrite")
    [event] = [a for a in store.list_audit(record_id=record_id) if a.action == "conflict-decision"]
    who = event.resource["agent"][0]["who"]["identifier"]["value"]
    assert who.startswith("fa_") and who in auth_headers["admin"]["Authorization"]


def test_keep_remote_records_the_server_version_as_sent(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """keep-remote: sent, listing the server's version; nothing is queued."""
    record_id = _flagged(client, auth_headers, store)
    decided = client.post(
        f"/v1/records/{record_id}/conflict",
        json={"decision": "keep-remote"},
        headers=auth_headers["admin"],
    )
    assert decided.status_code == 200, decided.json
    assert (decided.json["state"], decided.json["conflict"]) == ("sent", "decided-keep-remote")
    assert decided.json["sent"] == [
        {"resource_type": "Observation", "id": "o-1", "version_id": "7"}
    ]


def test_not_flagged_is_409_unknown_is_404_bad_body_is_422(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A queued record has nothing to decide (409, OperationOutcome); an unknown id is 404; a
    decision that is not overwrite or keep-remote, or an unknown field, is 422; decided once,
    the same decision again is 409."""
    [entry] = client.post(
        "/v1/records", json=observation("rupture"), headers=auth_headers["write"]
    ).json["records"]
    admin = auth_headers["admin"]
    queued = client.post(
        f"/v1/records/{entry['id']}/conflict", json={"decision": "overwrite"}, headers=admin
    )
    assert queued.status_code == 409
    assert queued.json["resourceType"] == "OperationOutcome"
    unknown = client.post(
        "/v1/records/00000000-0000-5000-8000-000000000000/conflict",
        json={"decision": "overwrite"},
        headers=admin,
    )
    assert unknown.status_code == 404
    record_id = _flagged(client, auth_headers, store)
    url = f"/v1/records/{record_id}/conflict"
    for body in ({"decision": "replay"}, {}, {"decision": "overwrite", "force": True}):
        bad = client.post(url, json=body, headers=admin)
        assert bad.status_code == 422, body
        assert bad.json["resourceType"] == "OperationOutcome"
    assert client.post(url, json={"decision": "overwrite"}, headers=admin).status_code == 200
    again = client.post(url, json={"decision": "overwrite"}, headers=admin)
    assert again.status_code == 409
