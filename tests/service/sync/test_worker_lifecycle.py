"""The worker's own life: run_forever stops after the batch in hand, a lease taken over by another
worker is never recorded twice, consent pushing can be turned off, and R5 targets get R5.

Behaviour runs against the real test FHIR server (``harness``); pytest-httpserver stands in only
where a fault is injected (a lease taken over mid-send) or where no real server exists here (R5)."""

from __future__ import annotations

import threading
from datetime import timedelta

from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import NewRecord, SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, SyncHarness, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir, status


def _fake(httpserver: HTTPServer) -> FakeFhir:
    return FakeFhir(httpserver).install()


def test_run_forever_drains_and_stops_when_asked(harness: SyncHarness) -> None:
    """run_forever keeps claiming until the outbox is empty and returns once stop is set."""
    harness.intake([R.sharing_consent(harness.run)] + [R.rating(harness.run, n) for n in range(5)])
    stop = threading.Event()
    thread = threading.Thread(target=harness.worker().run_forever, args=(stop,))
    thread.start()
    try:
        for _ in range(400):
            if harness.store.counts_by_state()[SyncState.SENT] == 6:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert harness.store.counts_by_state()[SyncState.SENT] == 6
    assert len(harness.tagged("Observation")) == 5
    assert len(harness.tagged("Consent")) == 1


def test_stop_set_before_start_runs_no_batch(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """A worker asked to stop before its first batch claims nothing."""
    fake = _fake(httpserver)
    run = R.run_token()
    intake_records(sync_store, [R.sharing_consent(run)], at=now())
    stop = threading.Event()
    stop.set()
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        Worker(sync_settings(fake.base_url, sqlite_url), sync_store, client).run_forever(stop)
    assert sync_store.counts_by_state()[SyncState.QUEUED] == 1
    assert fake.requests == 0


def test_a_lease_taken_over_mid_send_is_still_recorded_by_the_first_worker(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """While worker A sends, its lease expires and B claims the item: A's send landed, so it is
    recorded all the same (SENT, one disclosure: what is on the server is tracked, whoever holds
    the lease), counted as a lost lease; B then finds nothing to send."""
    fake = _fake(httpserver)
    run = R.run_token()
    [consent] = intake_records(sync_store, [R.sharing_consent(run)], at=now())
    later = now() + timedelta(minutes=10)

    def take_over(bundle: dict[str, object]) -> None:
        taken = sync_store.claim("worker-b", limit=10, lease_seconds=1, now=later)
        assert [i.record_id for i in taken] == [consent.record_id]

    fake.faults = [take_over]
    settings = sync_settings(fake.base_url, sqlite_url, fhir_version="4.0.1")
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        report = Worker(settings, sync_store, client, worker_id="worker-a").run_once()
        assert report.lease_lost == 1 and report.sent == 0
        assert sync_store.counts_by_state()[SyncState.SENT] == 1
        assert len([e for e in sync_store.list_audit() if e.action == "disclose"]) == 1

        after = later + timedelta(seconds=5)
        worker_b = Worker(settings, sync_store, client, worker_id="worker-b", clock=lambda: after)
        assert worker_b.run_once().claimed == 0
    assert len([e for e in sync_store.list_audit() if e.action == "disclose"]) == 1
    assert len(fake.resources) == 1 and max(fake.writes.values()) == 1


def test_consents_are_held_when_consent_pushing_is_off(harness: SyncHarness) -> None:
    """push_consents=False: consent records stay home (held, saying why); permitted data goes."""
    [consent, rating] = harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1)])
    harness.drain(push_consents=False)
    status = harness.store.sync_status(consent.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == "pushing consent records is turned off"
    assert harness.state(rating.record_id) is SyncState.SENT
    assert harness.tagged("Consent") == []
    assert len(harness.tagged("Observation")) == 1


def test_an_r5_target_gets_r5_resources(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """With fhir_version 5.0.0 the records are mapped, validated and sent as R5."""
    fake = _fake(httpserver)
    run = R.run_token()
    intake_records(sync_store, [R.sharing_consent(run), R.rating(run, 1)], at=now())
    settings = sync_settings(fake.base_url, sqlite_url, fhir_version="5.0.0")
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        worker = Worker(settings, sync_store, client)
        while worker.run_once().claimed:
            pass
    assert sync_store.counts_by_state()[SyncState.SENT] == 2
    [consent] = [r for k, r in fake.resources.items() if k.startswith("Consent/")]
    assert "decision" in consent  # R5 Consent.decision; R4 has no such element


def test_a_record_that_cannot_be_mapped_is_dead_lettered_with_its_field_path(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """A stored body the mapper refuses is a permanent failure: dead letter, outcome names the
    field, nothing sent, and the patient's next record is not blocked."""
    fake = _fake(httpserver)
    run = R.run_token()
    intake_records(sync_store, [R.sharing_consent(run)], at=now())
    broken = R.rating(run, 1)
    broken["value"] = "very high"
    sync_store.put_records(
        [
            NewRecord(
                record_id=f"broken-{run}",
                identifier=str(broken["id"]),
                kind="dimension-rating",
                family="observation",
                patient="Patient/p1",
                body=broken,
                content_hash=f"broken-{run}",
            )
        ],
        audit=[],
        at=now(),
    )
    [good] = intake_records(sync_store, [R.rating(run, 2)], at=now())
    settings = sync_settings(fake.base_url, sqlite_url, fhir_version="4.0.1")
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        worker = Worker(settings, sync_store, client)
        while worker.run_once().claimed:
            pass
    status = sync_store.sync_status(f"broken-{run}")
    assert status is not None and status.state is SyncState.DEAD_LETTERED
    assert status.last_outcome is not None
    assert status.last_outcome["issue"][0]["expression"] == ["value"]
    assert sync_store.sync_status(good.record_id).state is SyncState.SENT  # type: ignore[union-attr]
    assert not any(key.endswith(f"broken-{run}") for key in fake.resources)


def test_the_metrics_count_sends_failures_decisions_and_holds(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """Sends by resource type, transient failures, decisions by outcome and holds are counted."""
    fake = _fake(httpserver)
    run = R.run_token()
    intake_records(
        sync_store,
        [R.sharing_consent(run), R.rating(run, 1), R.rating(run, 2, "Patient/nobody")],
        at=now(),
    )
    before = {name: _sample(name, labels) for name, labels in METRICS}
    fake.faults = [status(503)]
    settings = sync_settings(fake.base_url, sqlite_url, fhir_version="4.0.1")
    clock_offset = [timedelta()]
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        worker = Worker(settings, sync_store, client, clock=lambda: now() + clock_offset[0])
        for _ in range(10):
            worker.run_once()
            clock_offset[0] += timedelta(seconds=5)
    delta = {name: _sample(name, labels) - before[name] for name, labels in METRICS}
    assert delta == {
        "fhir_alliance_sends_total": 1.0,  # the one permitted rating's Observation
        # The 503 on the first Bundle: the consent and the rating of the same patient, claimed
        # together (its consecutive items), each a transient failure; the rating is permitted at
        # each of its two tries.
        "fhir_alliance_send_failures_total": 2.0,
        "fhir_alliance_decisions_total": 2.0,
        "fhir_alliance_held_total": 1.0,  # the patient without consent
    }


METRICS = [
    ("fhir_alliance_sends_total", {"resource_type": "Observation"}),
    ("fhir_alliance_send_failures_total", {"kind": "transient"}),
    ("fhir_alliance_decisions_total", {"outcome": "permit"}),
    ("fhir_alliance_held_total", {}),
]


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_items_are_not_sent_when_their_lease_is_running_out(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """A slow first Bundle eats the lease: the rest of the batch is not sent (another worker could
    own it by the time the answer came); it is handed back untried, claimable at once, and that
    counts no attempt."""
    fake = _fake(httpserver)
    run = R.run_token()
    intaken = intake_records(
        sync_store, [R.sharing_consent(run, p) for p in ("Patient/a", "Patient/b")], at=now()
    )
    offset = [timedelta()]

    def slow(bundle: dict[str, object]) -> None:
        offset[0] += timedelta(seconds=45)  # the server took 45 s of the 60 s lease

    fake.faults = [slow]
    settings = sync_settings(
        fake.base_url, sqlite_url, fhir_version="4.0.1", lease_seconds=60, fhir_timeout_seconds=30
    )
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        worker = Worker(
            settings, sync_store, client, clock=lambda: now() + offset[0], bundle_entries=1
        )
        first = worker.run_once()
        assert (first.sent, first.deferred) == (1, 1)
        second = worker.run_once()  # handed back: no wait for the lease to end
        assert (second.claimed, second.sent) == (1, 1)
    assert sync_store.counts_by_state()[SyncState.SENT] == 2
    assert fake.requests == 2
    statuses = [sync_store.sync_status(result.record_id) for result in intaken]
    assert [s.attempts for s in statuses if s is not None] == [0, 0]
