"""An item whose record gets a newer version while a worker has it in hand: its result is recorded
SUPERSEDED (the newer item carries the record), and the worker's report says so instead of
counting it held, failed or dead. Faults from pytest-httpserver (``fake_fhir.FakeFhir``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer
from werkzeug import Response

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir, Fault, status


@dataclass
class Rig:
    fake: FakeFhir
    store: SqlStore
    sqlite_url: str
    run: str

    def worker(self, **overrides: Any) -> Worker:
        settings = sync_settings(self.fake.base_url, self.sqlite_url, fhir_version="4.0.1")
        client = FhirClient(self.fake.base_url, retry=QUICK_RETRY, timeout=(1.0, 0.3))
        return Worker(settings, self.store, client, **overrides)

    def intake(self, *payloads: dict[str, Any]) -> list[str]:
        return [r.record_id for r in intake_records(self.store, list(payloads), at=now())]

    def items(self, record_id: str) -> dict[int, SyncState]:
        """Every outbox item of ``record_id``: record version → state."""
        from fhir_alliance_service.store.tables import outbox
        from sqlalchemy import select

        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(outbox.c.record_version, outbox.c.state).where(
                    outbox.c.record_id == record_id
                )
            )
            return {version: SyncState(state) for version, state in rows}


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[Rig]:
    """The patient's sharing consent sent already: ratings of Patient/p1 may go."""
    rig = Rig(FakeFhir(httpserver).install(), sync_store, sqlite_url, R.run_token())
    rig.intake(R.sharing_consent(rig.run))
    assert rig.worker().run_once().sent == 1
    yield rig


def _meanwhile(rig: Rig, fault: Fault, *payloads: dict[str, Any]) -> Fault:
    """``fault``, after taking in ``payloads`` while the Bundle is on its way."""

    def then(bundle: dict[str, Any]) -> Response | str | None:
        rig.intake(*payloads)
        return fault(bundle)

    return then


def test_an_item_superseded_in_hand_is_reported_superseded_not_failed(rig: Rig) -> None:
    """Version 1 of a rating is being sent when version 2 is taken in; the send fails (503).
    Version 1 is left SUPERSEDED, not FAILED: the report counts it superseded (failed 0)."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    rig.fake.faults = [_meanwhile(rig, status(503), R.rating(rig.run, 1, value=5))]
    report = rig.worker().run_once()
    assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.QUEUED}
    assert (report.claimed, report.superseded, report.failed) == (1, 1, 0)
    assert (report.held, report.dead, report.sent, report.lease_lost) == (0, 0, 0, 0)
    later = rig.worker().run_once()
    assert (later.claimed, later.sent, later.superseded) == (1, 1, 0)
