"""POST /v1/records/<id>/conflict: a person's decision on a conflict flagged for them, against the
server versions it was shown (admin only; 409 when the record has none, or one against other
versions; 404 unknown, 422 bad body)."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_alliance_service.store.interface import SentResource, Store
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from flask.testing import FlaskClient

from tests.service.usecases.payloads import observation

Headers = dict[str, dict[str, str]]
NOW = datetime.now(UTC)
THEIRS = SentResource("Observation", "o-1", "7")
#: The status's ``conflict_versions`` of a record :func:`_flagged` holds.
AGAINST = [{"resource_type": "Observation", "id": "o-1", "version_id": "7"}]
OVERWRITE = {"decision": "overwrite", "against": AGAINST, "record_version": 1}


def _flagged(
    client: FlaskClient, headers: Headers, store: Store, theirs: SentResource = THEIRS
) -> str:
    """A record held for a person by the conflict policy, the server at ``theirs`` then."""
    answer = client.post("/v1/records", json=observation("rupture"), headers=headers["write"])
    assert answer.status_code in (200, 201), answer.json  # stored, or already
    return _flag_again(store, theirs)


def _flag_again(store: Store, theirs: SentResource) -> str:
    """Claim the queued item and hold it for a person, the server at ``theirs``; its record."""
    [item] = store.claim("w1", limit=1, lease_seconds=60, now=NOW)
    store.mark_held(
        item.item_id,
        "w1",
        reason=CONFLICT_HELD_REASON,
        audit=[],
        at=NOW,
        conflict="flagged",
        conflict_versions=[theirs],
    )
    return item.record_id


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
    refused = client.post(url, json=OVERWRITE, headers=auth_headers["write"])
    assert refused.status_code == 403
    decided = client.post(url, json=OVERWRITE, headers=auth_headers["admin"])
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
        json={"decision": "keep-remote", "against": AGAINST, "record_version": 1},
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
    queued = client.post(f"/v1/records/{entry['id']}/conflict", json=OVERWRITE, headers=admin)
    assert queued.status_code == 409
    assert queued.json["resourceType"] == "OperationOutcome"
    unknown = client.post(
        "/v1/records/00000000-0000-5000-8000-000000000000/conflict",
        json=OVERWRITE,
        headers=admin,
    )
    assert unknown.status_code == 404
    record_id = _flagged(client, auth_headers, store)
    url = f"/v1/records/{record_id}/conflict"
    for body in (
        {**OVERWRITE, "decision": "replay"},
        {},
        {**OVERWRITE, "force": True},
        {"decision": "overwrite", "record_version": 1},  # which conflict?
        {"decision": "overwrite", "against": AGAINST},  # on which version of ours?
        {**OVERWRITE, "record_version": "1"},
        {**OVERWRITE, "record_version": 0},
        {**OVERWRITE, "against": None},
        {**OVERWRITE, "against": [{"resource_type": "Observation", "id": "o-1"}]},
        {**OVERWRITE, "against": [{**AGAINST[0], "etag": 'W/"7"'}]},
    ):
        bad = client.post(url, json=body, headers=admin)
        assert bad.status_code == 422, body
        assert bad.json["resourceType"] == "OperationOutcome"
    assert client.post(url, json=OVERWRITE, headers=admin).status_code == 200
    again = client.post(url, json=OVERWRITE, headers=admin)
    assert again.status_code == 409


def test_a_decision_against_other_versions_than_flagged_is_409(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """Decided against version 7, the same item is flagged again against version 8 (the send
    met a newer change): a decision sent against version 7 is 409 (an OperationOutcome at
    ``against`` naming version 8) and changes nothing; against version 8, in the status's
    words, it is taken."""
    record_id = _flagged(client, auth_headers, store)
    url = f"/v1/records/{record_id}/conflict"
    admin = auth_headers["admin"]
    assert client.post(url, json=OVERWRITE, headers=admin).status_code == 200
    _flag_again(store, SentResource("Observation", "o-1", "8"))
    status_url = f"/v1/records/{record_id}/status"
    before = client.get(status_url, headers=auth_headers["read"]).json

    stale = client.post(url, json={**OVERWRITE, "decision": "keep-remote"}, headers=admin)
    assert stale.status_code == 409, stale.json
    [issue] = stale.json["issue"]
    assert (issue["code"], issue["expression"]) == ("conflict", ["against"])
    assert "Observation/o-1/_history/8" in issue["details"]["text"]
    assert client.get(status_url, headers=auth_headers["read"]).json == before

    now = {**OVERWRITE, "decision": "keep-remote", "against": before["conflict_versions"]}
    decided = client.post(url, json=now, headers=admin)
    assert decided.status_code == 200, decided.json
    assert (decided.json["state"], decided.json["sent"]) == ("sent", before["conflict_versions"])


def test_a_decision_on_an_older_record_version_is_409(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """Version 1 of the record is flagged against the server's version 7; version 2 is taken in
    and flagged against version 7 too. A decision on version 1 (``record_version`` as read
    before) is 409, an OperationOutcome at ``record_version`` naming version 2, nothing changed;
    on version 2 it is taken."""
    record_id = _flagged(client, auth_headers, store)
    changed = observation("rupture")
    changed["tension"] = 4  # a new version of the same record
    answer = client.post("/v1/records", json=changed, headers=auth_headers["write"])
    assert answer.status_code in (200, 201), answer.json
    assert _flag_again(store, THEIRS) == record_id
    status_url = f"/v1/records/{record_id}/status"
    before = client.get(status_url, headers=auth_headers["read"]).json
    assert (before["version"], before["conflict_versions"]) == (2, AGAINST)

    url = f"/v1/records/{record_id}/conflict"
    admin = auth_headers["admin"]
    stale = client.post(url, json=OVERWRITE, headers=admin)  # made on version 1
    assert stale.status_code == 409, stale.json
    [issue] = stale.json["issue"]
    assert (issue["code"], issue["expression"]) == ("conflict", ["record_version"])
    assert "record version 2" in issue["details"]["text"]
    assert client.get(status_url, headers=auth_headers["read"]).json == before
    decided = client.post(url, json={**OVERWRITE, "record_version": 2}, headers=admin)
    assert decided.status_code == 200, decided.json
    assert (decided.json["version"], decided.json["state"]) == (2, "queued")
