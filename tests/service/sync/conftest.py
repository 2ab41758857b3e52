"""Fixtures for the sync tests: a store on a migrated SQLite file, settings pointing at the test
FHIR server, a client, and helpers to intake records and look at what reached the server.

Every resource the worker pushes carries the test's run tag (``Worker(tags=…)``), so that searches
are filtered by it and a remote server is cleaned by it (``tests/fhir_server/plugin.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.config import Settings
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import Store, SyncState
from fhir_alliance_service.sync import BatchReport, Worker
from fhir_alliance_service.sync.pull import Puller
from fhir_alliance_service.usecases.conflicts import decide_conflict
from fhir_alliance_service.usecases.intake import RecordIntake, intake_records

from fhir_alliance.client import FhirClient, RetryPolicy
from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records

#: The client's own retries stay tiny in tests: the outbox's retries are what is under test.
QUICK_RETRY = RetryPolicy(max_attempts=1)


def now() -> datetime:
    return datetime.now(UTC)


def sync_settings(base_url: str, database_url: str, **overrides: Any) -> Settings:
    """Settings for a sync against ``base_url``: small batches, quick polls and backoff."""
    base = Settings(
        database_url=database_url,
        fhir_base_url=base_url,
        recipients=(records.EHR,),
        worker_batch_size=50,
        poll_interval_seconds=0.05,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
        lease_seconds=30.0,
    )
    return replace(base, **overrides)


@pytest.fixture
def sync_store(sqlite_url: str) -> Iterator[SqlStore]:
    opened = open_store(sqlite_url)
    try:
        yield opened
    finally:
        opened.close()


@dataclass
class SyncHarness:
    """One test's sync: store, settings, client and the server it pushes to."""

    store: SqlStore
    settings: Settings
    client: FhirClient
    server: FhirTestServer
    run: str

    def intake(self, payloads: Sequence[dict[str, Any]]) -> list[RecordIntake]:
        return intake_records(self.store, list(payloads), at=now())

    def worker(self, **overrides: Any) -> Worker:
        settings = replace(self.settings, **overrides) if overrides else self.settings
        return Worker(settings, self.store, self.client, tags=[self.server.run_tag])

    def drain(self, **overrides: Any) -> BatchReport:
        """Run batches until nothing is claimable."""
        worker = self.worker(**overrides)
        total = BatchReport()
        for _ in range(200):
            report = worker.run_once()
            assert report.error is None, report.error
            total.add(report)
            if report.claimed == 0:
                return total
        raise AssertionError("the outbox did not drain")

    def state(self, record_id: str) -> SyncState:
        status = self.store.sync_status(record_id)
        assert status is not None
        return status.state

    def on_server(self, resource_type: str, identifier: str) -> list[dict[str, Any]]:
        """Resources of this test carrying business identifier ``system|value``."""
        response = self.server.http.get(
            self.server.url(resource_type),
            params={"identifier": identifier, "_tag": self.server.run_tag_param},
        )
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry", [])]

    def tagged(self, resource_type: str) -> list[dict[str, Any]]:
        """Every resource of ``resource_type`` this test pushed."""
        response = self.server.http.get(
            self.server.url(resource_type),
            params={"_tag": self.server.run_tag_param, "_count": "1000"},
        )
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry", [])]


def puller(harness: SyncHarness, **overrides: Any) -> Puller:
    """A consent puller on the harness's store and server (settings overridden as given)."""
    settings = replace(harness.settings, **overrides) if overrides else harness.settings
    return Puller(settings, harness.store, harness.client)


def known_patient(harness: SyncHarness, name: str = "a") -> str:
    """A patient of this test, known to the store (the pull covers the patients it knows)."""
    patient = f"Patient/pull-{name}-{harness.run}"
    harness.intake([records.rating(harness.run, 0, patient)])
    return patient


def rating_state(harness: SyncHarness, n: int, patient: str) -> SyncState:
    """Take in rating ``n`` of ``patient``, drain the worker, and say what became of it."""
    [rating] = harness.intake([records.rating(harness.run, n, patient)])
    harness.drain()
    return harness.state(rating.record_id)


@pytest.fixture
def harness(
    sync_store: SqlStore, sqlite_url: str, fhir_server: FhirTestServer
) -> Iterator[SyncHarness]:
    settings = sync_settings(fhir_server.base_url, sqlite_url)
    with FhirClient(fhir_server.base_url, retry=QUICK_RETRY) as client:
        yield SyncHarness(sync_store, settings, client, fhir_server, records.run_token())


def decide_flagged(store: Store, record_id: str, decision: str) -> None:
    """A person's decision on ``record_id``'s flagged conflict, made on its status as read (as
    ``resolve-conflict`` makes it)."""
    status = store.sync_status(record_id)
    assert status is not None and status.conflict == "flagged"
    decide_conflict(
        store,
        record_id,
        decision,
        against=status.conflict_versions,
        record_version=status.record_version,
        decided_by="cli",
        at=now(),
    )
