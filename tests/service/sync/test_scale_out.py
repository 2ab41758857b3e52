"""Scale-out: four worker processes (``python -m fhir_alliance worker``) share one PostgreSQL
store (claims with ``FOR UPDATE SKIP LOCKED``) and drain 5,000 records; each record is sent exactly
once (one disclosure each, every resource at ``versionId`` 1) and every worker took a share."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from fhir_alliance_service.store import open_store
from fhir_alliance_service.store.interface import SyncState

from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records as R
from tests.service.sync.workers import (
    audit_actions,
    intake_in_chunks,
    pending,
    read_versions,
    server_count,
    start_worker,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKERS = 4
PATIENTS = 1000
RATINGS_PER_PATIENT = 4  # with one consent each: 5,000 records


def _claimed_by(log_path: Path) -> int:
    claimed = 0
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            message = json.loads(line).get("message", "")
        except ValueError:
            continue
        if message.startswith("batch done: claimed="):
            claimed += int(message.split("claimed=", 1)[1].split(" ", 1)[0])
    return claimed


def test_four_workers_on_postgres_send_each_record_once(
    fhir_server: FhirTestServer, postgres_url: str, tmp_path: Path
) -> None:
    """5,000 records, four workers: all sent, none twice, every worker did part of the work."""
    run = R.run_token()
    store = open_store(postgres_url)
    payloads: list[dict[str, object]] = []
    for p in range(PATIENTS):
        patient = f"Patient/scale-{run}-{p}"
        payloads.append(R.sharing_consent(run, patient))
        for n in range(RATINGS_PER_PATIENT):
            payloads.append(R.rating(run, p * 10 + n, patient))
    assert len(payloads) == 5000
    t0 = time.monotonic()
    results = intake_in_chunks(store, payloads, chunk=1000)
    intake_seconds = time.monotonic() - t0
    env = worker_env(
        postgres_url,
        fhir_server.base_url,
        recipients=R.EHR,
        worker_batch_size=100,
        lease_seconds=120,
        poll_interval_seconds=0.1,
    )
    logs = [tmp_path / f"worker-{n}.log" for n in range(WORKERS)]
    processes = []
    try:
        started = time.monotonic()
        processes = [start_worker(env, log, f"scale-{n}") for n, log in enumerate(logs)]
        wait_until(lambda: pending(store) == 0, timeout=150, interval=0.5, what="the drain")
        elapsed = time.monotonic() - started
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in processes] == [0] * WORKERS

        counts = store.counts_by_state()
        assert counts[SyncState.SENT] == 5000
        disclosed = audit_actions(store, "disclose")
        assert len(disclosed) == len(set(disclosed)) == 5000

        shares = [_claimed_by(log) for log in logs]
        assert sum(shares) == 5000  # no item claimed twice
        assert all(share > 0 for share in shares)

        t1 = time.monotonic()
        sent = [
            f"{r.resource_type}/{r.id}"
            for result in results
            for r in (store.sync_status(result.record_id).sent)  # type: ignore[union-attr]
        ]
        assert len(sent) == len(set(sent)) == 5000
        versions = read_versions(fhir_server.http, fhir_server.base_url, sent)
        assert set(versions.values()) == {"1"}  # every resource written exactly once
        if fhir_server.is_local:  # emptied before the test: nothing else may be there
            assert server_count(fhir_server.http, fhir_server.base_url, "Observation") == 4000
            assert server_count(fhir_server.http, fhir_server.base_url, "Consent") == 1000
        print(
            f"\nscale-out: intake {intake_seconds:.1f}s; 5,000 records sent by {WORKERS} workers "
            f"in {elapsed:.1f}s (shares {shares}); server check {time.monotonic() - t1:.1f}s"
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if not fhir_server.is_local:  # pushed without the run tag: delete by id
            for result in results:
                status = store.sync_status(result.record_id)
                for sent in status.sent if status else ():
                    fhir_server.http.delete(fhir_server.url(f"{sent.resource_type}/{sent.id}"))
        store.close()
