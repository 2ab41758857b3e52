"""Bounds on ``POST /v1/fhir/notifications``: what a leaked ``notify`` key can make the service do.

Against the real test FHIR server and a real SQLite store: notifications beyond
``max_notifications_per_minute`` per key are a 429 with ``Retry-After`` (and the change they named
is still read, by the gap they leave and by the scheduled pull); a notification arriving while a
re-read for the same key runs is coalesced into it (202, read right after); a notification of more
events than one may hold is a 413 naming the path of the first event beyond the bound."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fhir_alliance_service.app import current_service
from fhir_alliance_service.auth import create_api_key, parse_api_key
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.pull import Puller
from fhir_alliance_service.sync.subscriptions import (
    MAX_EVENTS,
    META_EVENTS,
    NotificationWork,
    run_work,
    subscription_resource,
)
from flask import Flask

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, puller
from tests.service.sync.test_pull_notifications import (
    ENDPOINT,
    SUBSCRIPTION,
    _held_then_consent,
    backport,
    r5,
)


@pytest.fixture
def make(harness: SyncHarness, make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    def app(**settings: Any) -> Flask:
        return make_app(
            fhir_base_url=harness.server.base_url,
            recipients=list(harness.settings.recipients),
            **settings,
        )

    return app


def _key(harness: SyncHarness, name: str = "notifications") -> tuple[str, dict[str, str]]:
    raw = create_api_key(harness.store, name, ["notify"])
    parsed = parse_api_key(raw)
    assert parsed is not None
    return parsed[0], {"Authorization": f"Bearer {raw}"}


def test_notifications_beyond_the_bound_per_key_are_429_with_retry_after(
    harness: SyncHarness, make: Callable[..., Flask]
) -> None:
    """Two a minute: the third notification of a key is a 429 OperationOutcome (throttled) with
    ``Retry-After``; another key still gets through."""
    client = make(max_notifications_per_minute=2).test_client()
    _, headers = _key(harness)
    _, other = _key(harness, "other subscription")
    for since in (1, 2):
        heartbeat = backport("heartbeat", [], since=since, first=since)
        assert client.post(ENDPOINT, json=heartbeat, headers=headers).status_code == 200
    refused = client.post(
        ENDPOINT, json=backport("heartbeat", [], since=3, first=3), headers=headers
    )
    assert refused.status_code == 429
    assert refused.mimetype == "application/fhir+json"
    assert refused.json["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in refused.json["issue"]] == ["throttled"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    heartbeat = backport("heartbeat", [], since=1, first=1)
    assert client.post(ENDPOINT, json=heartbeat, headers=other).status_code == 200


def test_a_throttled_notification_loses_no_consent_change(
    harness: SyncHarness, make: Callable[..., Flask]
) -> None:
    """The consent a refused (429) notification named is read all the same: its event number is
    not taken, so the next notification admitted sees the gap and pulls; and without any further
    notification the scheduled pull reads it."""
    app = make(max_notifications_per_minute=1)
    client = app.test_client()
    _, headers = _key(harness)
    _, record_id, consent = _held_then_consent(harness)
    first = client.post(ENDPOINT, json=backport("heartbeat", [], since=1, first=1), headers=headers)
    assert first.status_code == 200
    named = backport("event-notification", [f"Consent/{consent['id']}"], since=2, first=2)
    assert client.post(ENDPOINT, json=named, headers=headers).status_code == 429
    assert harness.store.get_meta(META_EVENTS + SUBSCRIPTION) == "1"  # event 2 not taken
    harness.drain()
    assert harness.state(record_id) is SyncState.HELD
    # the scheduled pull (the worker's, every pull_interval_seconds) reads it
    report = puller(harness).pull()
    assert report.error is None and report.released == 1
    harness.drain()
    assert harness.state(record_id) is SyncState.SENT


def test_the_next_admitted_notification_sees_the_gap_a_throttled_one_left(
    harness: SyncHarness, make: Callable[..., Flask]
) -> None:
    """After the window, the next notification (event 3) finds event 2 missing and pulls, which
    reads the consent the refused one named."""
    app = make(max_notifications_per_minute=1)
    client = app.test_client()
    _, headers = _key(harness)
    _, record_id, consent = _held_then_consent(harness)
    gate = app.extensions["fhir_alliance"].notifications
    now = [1000.0]
    gate.clock = lambda: now[0]
    assert client.post(ENDPOINT, json=r5([], since=1), headers=headers).status_code == 200
    named = r5([f"Consent/{consent['id']}"], since=2)
    refused = client.post(ENDPOINT, json=named, headers=headers)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
    now[0] += 60.0
    later = client.post(ENDPOINT, json=r5([], since=3), headers=headers)
    assert later.status_code == 200, later.json
    assert later.json["gap"] is True and later.json["released"] == 1
    harness.drain()
    assert harness.state(record_id) is SyncState.SENT


def test_a_notification_during_a_running_reread_is_coalesced_and_still_read(
    harness: SyncHarness, make: Callable[..., Flask]
) -> None:
    """While a re-read for the key runs, a notification is answered 202 (coalesced) at once; the
    running re-read reads its focus right after its own, so the held record is released."""
    app = make()
    client = app.test_client()
    key_id, headers = _key(harness)
    _, record_id, consent = _held_then_consent(harness)
    with app.app_context():
        service = current_service()
        gate = service.notifications
        real = Puller(service.settings, service.store, service.fhir.client())
    # the running re-read's own focus: a consent of a patient the store does not know
    other = remote.create(
        harness.server, remote.foreign_consent(harness.server, f"Patient/other-{harness.run}")
    )
    own = NotificationWork(focus={("Consent", other["id"]): None})
    started, go_on = threading.Event(), threading.Event()
    results: list[Any] = []

    def slow_first(work: NotificationWork) -> Any:
        if not started.is_set():
            started.set()
            assert go_on.wait(10)
        return run_work(real, work)

    running = threading.Thread(target=lambda: results.append(gate.run(key_id, own, slow_first)))
    running.start()
    try:
        assert started.wait(10)
        body = backport("event-notification", [f"Consent/{consent['id']}"], since=1, first=1)
        coalesced = client.post(ENDPOINT, json=body, headers=headers)
        assert coalesced.status_code == 202, coalesced.json
        assert coalesced.json["coalesced"] is True
        assert harness.state(record_id) is SyncState.HELD  # not read yet: the run is busy
    finally:
        go_on.set()
        running.join(10)
    [result] = results
    assert result is not None and (result.read, result.released) == (2, 1)
    harness.drain()
    assert harness.state(record_id) is SyncState.SENT


def test_a_notification_of_more_events_than_the_bound_is_413_naming_the_first_beyond(
    harness: SyncHarness, make: Callable[..., Flask]
) -> None:
    """One event more than MAX_EVENTS: 413 (too-costly) whose issue names the path of the first
    event beyond the bound; nothing is read or stored (the event count is not taken)."""
    client = make().test_client()
    _, headers = _key(harness)
    focus = [f"Consent/c{n}" for n in range(MAX_EVENTS + 1)]
    body = backport("event-notification", focus, since=MAX_EVENTS + 1, first=1)
    response = client.post(ENDPOINT, json=body, headers=headers)
    assert response.status_code == 413, response.json
    [issue] = response.json["issue"]
    assert issue["code"] == "too-costly"
    # parameters 0..4 are subscription, topic, status, type, count; the events follow
    assert issue["expression"] == [f"entry[0].resource.parameter[{5 + MAX_EVENTS}]"]
    assert harness.store.get_meta(META_EVENTS + SUBSCRIPTION) is None
    r5_body = r5(focus, since=MAX_EVENTS + 1)
    response = client.post(ENDPOINT, json=r5_body, headers=headers)
    assert response.status_code == 413
    assert response.json["issue"][0]["expression"] == [
        f"entry[0].resource.notificationEvent[{MAX_EVENTS}]"
    ]


def test_a_notification_of_many_focus_resources_merges_them_all(
    harness: SyncHarness, make: Callable[..., Flask]
) -> None:
    """Focus resources are read and merged a page at a time (memory holds one page): a
    notification naming more than one page still merges every one of them."""
    client = make().test_client()
    _, headers = _key(harness)
    patients = [f"Patient/many-{n}-{harness.run}" for n in range(3)]
    held = harness.intake([R.rating(harness.run, n, p) for n, p in enumerate(patients)])
    harness.drain()
    assert {harness.state(r.record_id) for r in held} == {SyncState.HELD}
    consents = [
        remote.create(harness.server, remote.foreign_consent(harness.server, patient))
        for patient in patients
        for _ in range(9)
    ]
    focus = [f"Consent/{c['id']}" for c in consents]
    body = backport("event-notification", focus, since=len(focus), first=1)
    response = client.post(ENDPOINT, json=body, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["read"] == len(focus) == 27
    assert response.json["merged"] == 27 and response.json["released"] == 3
    harness.drain()
    assert {harness.state(r.record_id) for r in held} == {SyncState.SENT}


def test_the_registered_subscription_asks_for_no_more_events_than_the_bound() -> None:
    """The Subscription ``subscribe`` registers carries the backport ``max-count`` extension on
    its channel: a server that honours it never sends a notification the endpoint refuses (413)."""
    resource = subscription_resource("https://sync.clinic.example/v1/fhir/notifications")
    assert resource["channel"]["extension"] == [
        {
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
            "backport-max-count",
            "valuePositiveInt": MAX_EVENTS,
        }
    ]
