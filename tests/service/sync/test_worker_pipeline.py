"""The worker's pipeline: the next batch is claimed and prepared while a Bundle is on the server,
and a run that drains the outbox does not stop while the batches in hand still hold their
patients' next items back.

The overlap is observed, never timed: pytest-httpserver stands in for the server only to hold a
Bundle's answer back while the test looks at the store."""

from __future__ import annotations

import time
from typing import Any

from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker, sync_once
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, SyncHarness, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir, status


def test_the_next_batch_is_prepared_while_a_bundle_is_on_the_server(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """Batches of one item: while the first batch's Bundle is on the server, the second batch
    (a record without consent) is already claimed, gated and recorded held."""
    fake = FakeFhir(httpserver).install()
    run = R.run_token()
    [_, held] = intake_records(
        sync_store,
        [R.sharing_consent(run, "Patient/a"), R.rating(run, 1, "Patient/b")],
        at=now(),
    )
    seen_while_sending: list[SyncState] = []

    def hold_the_answer(bundle: dict[str, Any]) -> None:
        deadline = time.monotonic() + 20  # generous: only a missing overlap waits this long
        state = _state(sync_store, held.record_id)
        while state is not SyncState.HELD and time.monotonic() < deadline:
            time.sleep(0.02)
            state = _state(sync_store, held.record_id)
        seen_while_sending.append(state)

    fake.faults = [hold_the_answer]
    settings = sync_settings(fake.base_url, sqlite_url, fhir_version="4.0.1", worker_batch_size=1)
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        report = sync_once(settings, sync_store, client)
    assert seen_while_sending == [SyncState.HELD]
    assert (report.claimed, report.sent, report.held) == (2, 1, 1)


def test_draining_waits_for_the_batches_in_hand_before_calling_the_outbox_empty(
    harness: SyncHarness,
) -> None:
    """One patient's consent and four ratings, batches of one: each claim made while the item
    before is on its way finds nothing; the run waits for it and claims again, so one
    ``sync_once`` sends all five, in intake order."""
    patient = f"Patient/order-{harness.run}"
    payloads = [R.sharing_consent(harness.run, patient)] + [
        R.rating(harness.run, n, patient) for n in range(4)
    ]
    intaken = harness.intake(payloads)
    settings = sync_settings(
        harness.settings.fhir_base_url or "", harness.settings.database_url, worker_batch_size=1
    )
    report = Worker(
        settings, harness.store, harness.client, tags=[harness.server.run_tag]
    ).run_batches()
    assert sum(r.sent for r in report) == 5
    assert harness.store.counts_by_state()[SyncState.SENT] == 5
    # in order: each item's send is recorded no earlier than the one before it
    sent_at = [harness.store.sync_status(result.record_id) for result in intaken]
    times = [s.updated_at for s in sent_at if s is not None]
    assert times == sorted(times) and len(times) == 5


def _state(store: SqlStore, record_id: str) -> SyncState | None:
    status = store.sync_status(record_id)
    return status.state if status is not None else None


def test_a_patients_later_items_wait_behind_one_that_failed_in_the_same_batch(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """One client's consent and three ratings come in one batch (its consecutive items claimed
    together), one Bundle each. The first rating's Bundle meets a 503: the two ratings after it
    are handed back unsent (no attempt counted), and go, in order, once it has gone."""
    fake = FakeFhir(httpserver).install()
    run = R.run_token()
    patient = "Patient/backfill"
    intaken = intake_records(
        sync_store,
        [R.sharing_consent(run, patient)] + [R.rating(run, n, patient) for n in range(3)],
        at=now(),
    )
    fake.faults = [lambda bundle: None, status(503)]  # the consent goes, the first rating not
    settings = sync_settings(fake.base_url, sqlite_url, fhir_version="4.0.1")
    with FhirClient(fake.base_url, retry=QUICK_RETRY) as client:
        worker = Worker(settings, sync_store, client, bundle_entries=1)
        first = worker.run_once()
        assert (first.claimed, first.sent, first.failed, first.deferred) == (4, 1, 1, 2)
        assert fake.requests == 2
        statuses = [sync_store.sync_status(result.record_id) for result in intaken]
        assert [s.state for s in statuses if s is not None] == [
            SyncState.SENT,
            SyncState.FAILED,
            SyncState.QUEUED,
            SyncState.QUEUED,
        ]
        assert [s.attempts for s in statuses if s is not None] == [0, 1, 0, 0]
        time.sleep(0.1)  # the retry is due (backoff of at most 0.05 s in these settings)
        second = worker.run_once()
    assert (second.claimed, second.sent) == (3, 3)
    ratings = [result.record_id for result in intaken[1:]]
    order = [key for key in fake.writes if key.startswith("Observation/")]
    assert len(order) == 3 and fake.requests == 5
    sent = [sync_store.sync_status(record_id) for record_id in ratings]
    assert all(s is not None and s.state is SyncState.SENT for s in sent)
    assert [f"Observation/{s.sent[0].id}" for s in sent if s is not None] == order
