"""Audit pushes (``push_audit``) get the outbox's guarantees: an AuditEvent or Provenance the FHIR
server refuses for now is pushed again after a backoff, one it refuses for good (or too often) is
dead-lettered with the server's OperationOutcome, visible in the counts and the metrics, and
replayable; the record's own send is never failed by its audit. Fault injection with
pytest-httpserver (``fake_fhir.py``) as the FHIR server; the happy path on the real test server is
in ``test_worker.py``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fhir_alliance_service.metrics import render_metrics
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import AuditPushState, SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FHIR_JSON, FakeFhir, outcome
from tests.service.sync.test_faults import Clock

PENDING, PUSHED, DEAD = (
    AuditPushState.PENDING,
    AuditPushState.PUSHED,
    AuditPushState.DEAD_LETTERED,
)
#: How the fake answers a batch (audit) Bundle: None applies it; else the response to give.
BatchFault = Callable[[dict[str, Any]], Response | None]


def refuse(code: int, *, retry_after: str | None = None) -> BatchFault:
    """The whole batch answered with ``code`` and an OperationOutcome (nothing applied)."""

    def fault(bundle: dict[str, Any]) -> Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        body = json.dumps(outcome("processing", "AuditEvent for Jane Roe not allowed"))
        return Response(body, status=code, headers=headers, content_type=FHIR_JSON)

    return fault


@dataclass
class AuditRig:
    fake: FakeFhir
    store: SqlStore
    clock: Clock
    worker: Worker
    #: Faults for the next batch (audit) Bundles, in order; transactions (records) go through.
    batch_faults: list[BatchFault]
    batches: int = 0

    def handle(self, request: Request) -> Response:
        bundle = json.loads(request.get_data())
        if bundle.get("type") == "batch":
            self.batches += 1
            fault = self.batch_faults.pop(0) if self.batch_faults else None
            answer = fault(bundle) if fault is not None else None
            if answer is not None:
                return answer
        return self.fake.handle(request)

    def audit(self) -> list[Any]:
        return [e for e in self.store.list_audit(limit=1000) if e.push_state is not None]

    def states(self) -> set[AuditPushState | None]:
        return {e.push_state for e in self.audit()}

    def on_server(self, resource_type: str) -> int:
        return sum(1 for key in self.fake.resources if key.startswith(f"{resource_type}/"))


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[AuditRig]:
    fake = FakeFhir(httpserver)
    run = R.run_token()
    # One record (a consent, sent as a Consent): one disclosure AuditEvent and one Provenance.
    intake_records(sync_store, [R.sharing_consent(run)], at=now())
    settings = sync_settings(
        fake.base_url, sqlite_url, fhir_version="4.0.1", max_attempts=3, push_audit=True
    )
    clock = Clock()
    with FhirClient(fake.base_url, retry=QUICK_RETRY, timeout=(1.0, 2.0)) as client:
        worker = Worker(settings, sync_store, client, clock=clock)
        audit_rig = AuditRig(fake, sync_store, clock, worker, [])
        httpserver.expect_request("/fhir", method="POST").respond_with_handler(audit_rig.handle)
        yield audit_rig


def _settle(rig: AuditRig, rounds: int = 10) -> None:
    for _ in range(rounds):
        rig.worker.run_once()
        if PENDING not in rig.states():
            return
        rig.clock.advance(60)
    raise AssertionError(f"audit pushes not settled: {rig.states()}")


def test_a_refused_push_is_retried_after_a_backoff_until_the_server_takes_it(
    rig: AuditRig,
) -> None:
    """A 503 on the audit batch leaves the rows pending with one attempt and the server's
    OperationOutcome, not due before the backoff; the next pass after it pushes them all."""
    rig.batch_faults = [refuse(503, retry_after="30")]
    report = rig.worker.run_once()  # sends the records, queues their audit rows
    assert report.sent == 1 and rig.states() == {PENDING}
    rig.worker.run_once()  # first push: refused
    entries = rig.audit()
    assert entries and all(e.push_attempts == 1 and e.push_state is PENDING for e in entries)
    assert entries[0].push_outcome is not None
    assert entries[0].push_outcome["issue"][0]["code"] == "processing"
    assert rig.batches == 1
    rig.clock.advance(10)
    rig.worker.run_once()  # Retry-After not over: nothing tried
    assert rig.batches == 1
    rig.clock.advance(25)
    rig.worker.run_once()
    assert rig.states() == {PUSHED} and all(e.pushed for e in rig.audit())
    assert rig.on_server("AuditEvent") == 1 and rig.on_server("Provenance") == 1
    assert {rig.store.sync_status(e.record_id).state for e in rig.audit() if e.record_id} == {
        SyncState.SENT
    }


def test_a_push_refused_for_good_is_dead_lettered_counted_and_replayable(rig: AuditRig) -> None:
    """A 422 dead-letters the rows at once with the OperationOutcome; the counts and the metrics
    show them; replay queues them again and they are pushed."""
    rig.batch_faults = [refuse(422)]
    rig.worker.run_once()
    rig.worker.run_once()
    entries = rig.audit()
    assert rig.states() == {DEAD}
    assert all(e.push_attempts == 1 and not e.pushed for e in entries)
    assert entries[0].push_outcome is not None
    assert rig.store.audit_push_counts() == {DEAD: len(entries)}
    metrics = render_metrics(rig.store).decode()
    assert f'fhir_alliance_audit_push_depth{{state="dead-lettered"}} {len(entries)}.0' in metrics
    assert 'fhir_alliance_audit_push_depth{state="pending"} 0.0' in metrics
    assert rig.on_server("AuditEvent") == 0
    assert rig.store.replay_audit_pushes() == len(entries)
    _settle(rig)
    assert rig.states() == {PUSHED}
    assert rig.on_server("AuditEvent") == 1 and rig.on_server("Provenance") == 1


def test_transient_refusals_dead_letter_after_max_attempts(rig: AuditRig) -> None:
    """Pushes refused for now every time are dead-lettered after ``max_attempts`` (3) tries."""
    rig.batch_faults = [refuse(503)] * 3
    rig.worker.run_once()
    for _ in range(3):
        rig.worker.run_once()
        rig.clock.advance(60)
    assert rig.states() == {DEAD}
    assert {e.push_attempts for e in rig.audit()} == {3}
    assert rig.batches == 3


def test_a_failed_push_never_fails_the_record(rig: AuditRig) -> None:
    """With every audit push refused, the records are sent and stay sent."""
    rig.batch_faults = [refuse(500)] * 10
    rig.worker.run_once()
    rig.worker.run_once()
    record_ids = {e.record_id for e in rig.audit() if e.record_id}
    assert record_ids
    assert all(rig.store.sync_status(r).state is SyncState.SENT for r in record_ids)
