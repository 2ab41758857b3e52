"""Crash safety: a 2,000-record sync in a worker process (``python -m fhir_alliance worker``) that
is SIGKILLed at random points and restarted. Afterwards every permitted record is on the FHIR server
exactly once (one resource per business identifier; ``versionId`` counts the writes, so re-sends
after a kill are visible and bounded), every record was disclosed once in the audit, and nothing
held was sent."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from fhir_alliance_service.store import open_store
from fhir_alliance_service.store.interface import SyncState
from sqlalchemy import func, select

from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records as R
from tests.service.sync.workers import (
    audit_actions,
    intake_in_chunks,
    pending,
    read_versions,
    search_identifiers,
    server_count,
    start_worker,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.slow

KILLS = 12
BATCH = 20
LEASE_SECONDS = 2.0
CONSENTING_PATIENTS = 190  # a consent and nine ratings each: 1,900 records
HELD_PATIENTS = 100  # one rating each, no consent: 100 records that must never leave


def _payloads(run: str) -> tuple[list[dict[str, object]], list[str], list[str]]:
    payloads: list[dict[str, object]] = []
    permitted: list[str] = []
    held: list[str] = []
    for p in range(CONSENTING_PATIENTS):
        patient = f"Patient/crash-{run}-{p}"
        payloads.append(R.sharing_consent(run, patient))
        for n in range(9):
            rating = R.rating(run, p * 100 + n, patient)
            payloads.append(rating)
            permitted.append(str(rating["id"]))
    for p in range(HELD_PATIENTS):
        rating = R.rating(run, 900_000 + p, f"Patient/crash-held-{run}-{p}")
        payloads.append(rating)
        held.append(str(rating["id"]))
    return payloads, permitted, held


def _leased_by_dead_worker(store: object, name: str) -> int:
    from fhir_alliance_service.store.tables import outbox

    engine = store.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).where(outbox.c.lease_owner == name)
            ).scalar_one()
        )


def test_sigkilled_workers_lose_nothing_and_duplicate_nothing(
    fhir_server: FhirTestServer, sqlite_url: str, tmp_path: Path
) -> None:
    """12 SIGKILLs at random points of a 2,000-record sync, then a clean finish: every permitted
    record is on the server once, every held one is absent, each disclosed once in the audit."""
    run = R.run_token()
    rng = random.Random(run)
    store = open_store(sqlite_url)
    payloads, permitted, held = _payloads(run)
    assert len(payloads) == 2000
    results = intake_in_chunks(store, payloads)
    env = worker_env(
        sqlite_url,
        fhir_server.base_url,
        recipients=R.EHR,
        worker_batch_size=BATCH,
        lease_seconds=LEASE_SECONDS,
        poll_interval_seconds=0.1,
        backoff_base_seconds=0.1,
        backoff_max_seconds=0.5,
    )
    log_path = tmp_path / "worker.log"
    kills_mid_batch = 0
    try:
        for kill in range(KILLS):
            name = f"crash-{kill}"
            sent_before = store.counts_by_state()[SyncState.SENT]
            process = start_worker(env, log_path, name)
            # Start-up takes seconds on a busy machine: wait until this worker has recorded a
            # send, then kill it at a random point of the batches that follow.
            wait_until(
                lambda: store.counts_by_state()[SyncState.SENT] > sent_before,  # noqa: B023
                timeout=60,
                interval=0.05,
                what="the worker to send",
            )
            time.sleep(rng.uniform(0.0, 0.5))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            kills_mid_batch += _leased_by_dead_worker(store, name) > 0
            if pending(store) == 0:
                break
        assert kill >= 9, "the sync finished before ten kills: make the kills earlier"

        final = start_worker(env, log_path, "finisher")
        wait_until(lambda: pending(store) == 0, timeout=120, what="the outbox to drain")
        final.send_signal(signal.SIGTERM)
        assert final.wait(timeout=30) == 0

        counts = store.counts_by_state()
        assert counts[SyncState.SENT] == len(permitted) + CONSENTING_PATIENTS
        assert counts[SyncState.HELD] == HELD_PATIENTS
        assert counts[SyncState.DEAD_LETTERED] == 0

        statuses = [store.sync_status(r.record_id) for r in results]
        sent_refs = [
            f"{r.resource_type}/{r.id}" for st in statuses if st is not None for r in st.sent
        ]
        held_refs = [
            f"Observation/{st.record_id}"  # a rating's Observation id is its record id
            for st in statuses
            if st is not None and st.state is SyncState.HELD
        ]
        assert len(sent_refs) == len(set(sent_refs)) == len(permitted) + CONSENTING_PATIENTS
        versions = read_versions(fhir_server.http, fhir_server.base_url, sent_refs)
        assert None not in versions.values()  # every permitted record is on the server
        # versionId counts the writes: only items in flight at a kill are written again.
        rewrites = sum(int(v) - 1 for v in versions.values() if v is not None)
        assert rewrites <= KILLS * BATCH
        held_versions = read_versions(fhir_server.http, fhir_server.base_url, held_refs)
        assert set(held_versions.values()) == {None}  # nothing held was sent
        if fhir_server.is_local:  # emptied before the test: no second resource anywhere
            assert server_count(fhir_server.http, fhir_server.base_url, "Observation") == len(
                permitted
            )
        # And by business identifier (a sample: identifier searches are slow on the test server).
        sample = rng.sample(permitted, 100) + held[:20]
        found = search_identifiers(fhir_server.http, fhir_server.base_url, "Observation", sample)
        assert {i: len(r) for i, r in found.items()} == {i: (0 if i in held else 1) for i in sample}

        disclosed = audit_actions(store, "disclose")
        assert len(disclosed) == len(set(disclosed)) == len(permitted) + CONSENTING_PATIENTS
        print(
            f"\ncrash safety: {kill + 1} kills ({kills_mid_batch} mid-batch), "
            f"{rewrites} resource rewrites after kills"
        )
        assert kills_mid_batch >= 3, "too few kills landed while a batch was in hand"
    finally:
        if not fhir_server.is_local:  # resources pushed without the run tag: delete by id
            for result in results:
                status = store.sync_status(result.record_id)
                for sent in status.sent if status else ():
                    fhir_server.http.delete(fhir_server.url(f"{sent.resource_type}/{sent.id}"))
        store.close()
