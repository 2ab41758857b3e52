"""The console's conflict decision on a record page: a conflict flagged for a person shows the
EHR's version it was flagged against, and an admin session (with the CSRF token) decides it;
a read session sees no buttons and is refused."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_alliance_service.store.interface import SentResource, SyncState
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from flask import Flask
from flask.testing import FlaskClient

from tests.service.console.test_views import _load_demo, csrf_of, sign_in

BUTTON = "Write ours over the EHR's</button>"


def _flagged(app: Flask) -> str:
    """Hold one claimed item for a person the way the worker's policy flag does; its record id."""
    store = app.extensions["fhir_alliance"].store
    now = datetime.now(UTC)
    item = store.claim("test-worker", limit=1, lease_seconds=60, now=now)[0]
    assert store.mark_held(
        item.item_id, "test-worker", reason=CONFLICT_HELD_REASON, audit=[], at=now
    )
    store.mark_conflict(item.item_id, "flagged", at=now)
    assert store.note_conflict_versions(item.item_id, [SentResource("Consent", "c-1", "4")], at=now)
    record_id: str = item.record_id
    return record_id


def test_a_decision_needs_admin_and_a_csrf_token(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Read: no buttons, 403. Admin: the EHR's version shown; no or a forged token is 403; a bad
    decision 422; keep-remote then records it sent (303 to the record page, which says so), and
    deciding again is 409."""
    _load_demo(console_client, console_keys)
    store = console_app.extensions["fhir_alliance"].store
    record_id = _flagged(console_app)
    page = f"/console/records/{record_id}"
    decide = f"{page}/conflict"

    sign_in(console_client, console_keys["read"])
    shown = console_client.get(page).text
    assert BUTTON not in shown and "An admin can decide this conflict." in shown
    token = csrf_of(console_client)
    assert (
        console_client.post(decide, data={"csrf_token": token, "decision": "overwrite"}).status_code
        == 403
    )

    sign_in(console_client, console_keys["admin"])
    shown = console_client.get(page).text
    assert BUTTON in shown and "Consent/c-1 (version 4)" in shown
    token = csrf_of(console_client)
    assert console_client.post(decide, data={"decision": "overwrite"}).status_code == 403
    forged = {"csrf_token": "forged", "decision": "overwrite"}
    assert console_client.post(decide, data=forged).status_code == 403
    bad = {"csrf_token": token, "decision": "both"}
    assert console_client.post(decide, data=bad).status_code == 422
    assert store.sync_status(record_id).state is SyncState.HELD

    answer = console_client.post(decide, data={"csrf_token": token, "decision": "keep-remote"})
    assert answer.status_code == 303
    assert "EHR's version is kept" in console_client.get(answer.headers["Location"]).text
    status = store.sync_status(record_id)
    assert (status.state, status.conflict) == (SyncState.SENT, "decided-keep-remote")
    [event] = [a for a in store.list_audit(record_id=record_id) if a.action == "conflict-decision"]
    who = event.resource["agent"][0]["who"]["identifier"]["value"]
    assert console_keys["admin"].startswith(who + "_")
    again = console_client.post(decide, data={"csrf_token": token, "decision": "overwrite"})
    assert again.status_code == 409
