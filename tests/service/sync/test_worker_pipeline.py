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
from tests.service.sync.fake_fhir import FakeFhir


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
