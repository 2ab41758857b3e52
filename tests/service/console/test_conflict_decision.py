"""The console's conflict decision on a record page: a conflict flagged for a person shows the
EHR's version it was flagged against, and an admin session (with the CSRF token) decides it,
that conflict only (the form carries the versions shown); a read session sees no buttons and is
refused. The overview counts and lists the conflicts waiting for a person."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from fhir_alliance_service.console import pages as console_pages
from fhir_alliance_service.store.interface import SentResource, SyncState
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from fhir_alliance_service.usecases.conflicts import decide_conflict
from flask import Flask
from flask.testing import FlaskClient

from tests.service.console.test_views import _load_demo, csrf_of, sign_in

BUTTON = "Write ours over the EHR's</button>"
AGAINST = '<input type="hidden" name="against" value="{}">'
RECORD_VERSION = '<input type="hidden" name="record_version" value="{}">'


def _flagged(app: Flask, version: str = "4", record_id: str | None = None) -> str:
    """Claim the next item (of ``record_id``, if given) and hold it for a person against the
    EHR's ``version``, the way the worker's policy flag does; its record id."""
    store = app.extensions["fhir_alliance"].store
    now = datetime.now(UTC)
    items = store.claim("test-worker", limit=100, lease_seconds=60, now=now, per_patient=100)
    [item] = [i for i in items if record_id is None or i.record_id == record_id][:1]
    store.release([i.item_id for i in items if i.item_id != item.item_id], "test-worker", at=now)
    assert store.mark_held(
        item.item_id,
        "test-worker",
        reason=CONFLICT_HELD_REASON,
        audit=[],
        at=now,
        conflict="flagged",
        conflict_versions=[SentResource("Consent", "c-1", version)],
    )
    flagged: str = item.record_id
    return flagged


def test_a_decision_needs_admin_and_a_csrf_token(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Read: no buttons, 403. Admin: the EHR's version shown (and carried by the form); no or a
    forged token is 403; a bad decision, or a form that does not say which conflict, 422;
    keep-remote then records it sent (303 to the record page, which says so), and deciding again
    is 409."""
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
    assert AGAINST.format("Consent/c-1/_history/4") in shown
    token = csrf_of(console_client)
    assert console_client.post(decide, data={"decision": "overwrite"}).status_code == 403
    forged = {"csrf_token": "forged", "decision": "overwrite"}
    assert console_client.post(decide, data=forged).status_code == 403
    version = str(store.sync_status(record_id).record_version)
    assert RECORD_VERSION.format(version) in shown
    bad = {
        "csrf_token": token,
        "decision": "both",
        "against": "Consent/c-1/_history/4",
        "record_version": version,
    }
    assert console_client.post(decide, data=bad).status_code == 422
    for against, record_version in (
        (None, version),
        ("Consent", version),
        ("Consent/c-1/_history/4", None),
        ("Consent/c-1/_history/4", "v1"),
    ):
        unsaid = {"csrf_token": token, "decision": "keep-remote"}
        if against is not None:
            unsaid["against"] = against
        if record_version is not None:
            unsaid["record_version"] = record_version
        assert console_client.post(decide, data=unsaid).status_code == 422
    assert store.sync_status(record_id).state is SyncState.HELD

    form = {
        "csrf_token": token,
        "decision": "keep-remote",
        "against": "Consent/c-1/_history/4",
        "record_version": version,
    }
    answer = console_client.post(decide, data=form)
    assert answer.status_code == 303
    assert "EHR's version is kept" in console_client.get(answer.headers["Location"]).text
    status = store.sync_status(record_id)
    assert (status.state, status.conflict) == (SyncState.SENT, "decided-keep-remote")
    [event] = [a for a in store.list_audit(record_id=record_id) if a.action == "conflict-decision"]
    who = event.resource["agent"][0]["who"]["identifier"]["value"]
    assert console_keys["admin"].startswith(who + "_")
    again = console_client.post(decide, data={**form, "decision": "overwrite"})
    assert again.status_code == 409


def test_a_decision_shown_one_conflict_is_not_applied_to_a_later_one(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """The admin's page shows the conflict against version 4; before the click, another admin
    decides overwrite, the send meets a 412 against version 5 and the same item is flagged again.
    The click (the form as shown) is refused (409, the page showing the conflict against version
    5, with a form for it), the record stays flagged; deciding on that page is taken."""
    _load_demo(console_client, console_keys)
    store = console_app.extensions["fhir_alliance"].store
    record_id = _flagged(console_app, "4")
    page = f"/console/records/{record_id}"

    sign_in(console_client, console_keys["admin"])
    shown = console_client.get(page).text
    assert "Consent/c-1 (version 4)" in shown
    form = {
        "csrf_token": csrf_of(console_client),
        "decision": "overwrite",
        "against": "Consent/c-1/_history/4",
        "record_version": str(store.sync_status(record_id).record_version),
    }

    # Meanwhile: another admin (or the CLI) decides, the worker sends, someone changed it again.
    v4 = (SentResource("Consent", "c-1", "4"),)
    decide_conflict(
        store,
        record_id,
        "overwrite",
        against=v4,
        record_version=int(form["record_version"]),
        decided_by="cli",
        at=datetime.now(UTC),
    )
    _flagged(console_app, "5", record_id)
    assert store.sync_status(record_id).conflict_versions == (SentResource("Consent", "c-1", "5"),)

    answer = console_client.post(f"{page}/conflict", data=form)
    status = store.sync_status(record_id)
    assert answer.status_code == 409, (
        f"the stale form decided the conflict against version 5 ({answer.status_code}): "
        f"{status.state.value}, {status.conflict}"
    )
    assert (status.state, status.conflict) == (SyncState.HELD, "flagged")
    assert 'id="conflict-changed"' in answer.text
    assert "Consent/c-1 (version 5)" in answer.text
    assert AGAINST.format("Consent/c-1/_history/5") in answer.text
    audited = [a for a in store.list_audit(record_id=record_id) if a.action == "conflict-decision"]
    assert len(audited) == 1  # the other admin's decision only

    answer = console_client.post(
        f"{page}/conflict", data={**form, "against": "Consent/c-1/_history/5"}
    )
    assert answer.status_code == 303
    status = store.sync_status(record_id)
    assert (status.state, status.conflict) == (SyncState.QUEUED, "decided-overwrite")


def _conflicts_section(client: FlaskClient) -> str:
    """The overview's section on conflicts waiting for a person."""
    page = client.get("/console/")
    assert page.status_code == 200
    found = re.search(
        r'<section aria-labelledby="conflicts-heading">.*?</section>', page.text, re.S
    )
    assert found is not None, "the overview has no section on flagged conflicts"
    return found.group(0)


def test_the_overview_lists_the_conflicts_waiting_for_a_person(
    console_app: Flask,
    console_client: FlaskClient,
    console_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records held for a person by the conflict policy are counted and listed on the overview,
    oldest first, each linking to the record page where it is decided (to a read session too,
    which is told an admin decides); no patient reference is shown. Beyond the listed number the
    caption says only the oldest are listed. A decided conflict leaves the list."""
    _load_demo(console_client, console_keys)
    store = console_app.extensions["fhir_alliance"].store
    sign_in(console_client, console_keys["read"])
    assert 'id="conflicts-count">None.' in _conflicts_section(console_client)

    first, second = _flagged(console_app, "4"), _flagged(console_app, "5")
    section = _conflicts_section(console_client)
    links = re.findall(r'<a href="/console/records/([^"]+)">([^<]+)</a>', section)
    assert links == [(first, first), (second, second)]
    assert "2 records: someone else changed them" in section
    assert "An admin decides on its page" in section
    assert "Patient/" not in section and "demo-client" not in section
    sign_in(console_client, console_keys["admin"])
    assert "Open a record to decide on its page" in _conflicts_section(console_client)

    monkeypatch.setattr(console_pages, "LISTED_PROBLEMS", 1)
    section = _conflicts_section(console_client)
    assert re.findall(r'href="/console/records/([^"]+)"', section) == [first]
    assert "2 records" in section and "(the oldest 1 only)" in section
    monkeypatch.undo()

    v4 = (SentResource("Consent", "c-1", "4"),)
    decide_conflict(
        store,
        first,
        "keep-remote",
        against=v4,
        record_version=store.sync_status(first).record_version,
        decided_by="cli",
        at=datetime.now(UTC),
    )
    section = _conflicts_section(console_client)
    assert re.findall(r'href="/console/records/([^"]+)"', section) == [second]
    assert "1 record: someone else changed it" in section
