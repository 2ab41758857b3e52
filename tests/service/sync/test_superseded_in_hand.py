"""An item whose record gets a newer version while a worker has it in hand: its result is recorded
SUPERSEDED (the newer item carries the record), and the worker's report says so instead of
counting it held, failed or dead; a send of it whose answer was lost but which landed is tracked
(read back and recorded SENT), not left superseded and untracked. Faults from pytest-httpserver
(``fake_fhir.FakeFhir``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.store.tables import outbox
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer
from sqlalchemy import select
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
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(outbox.c.record_version, outbox.c.state).where(
                    outbox.c.record_id == record_id
                )
            )
            return {version: SyncState(state) for version, state in rows}


def sent_consent(rig: RigT) -> Iterator[RigT]:
    """``rig`` once the patient's sharing consent is sent: ratings of Patient/p1 may go."""
    rig.intake(R.sharing_consent(rig.run))
    assert rig.worker().run_once().sent == 1
    yield rig


RigT = TypeVar("RigT", bound=Rig)


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[Rig]:
    """The patient's sharing consent sent already: ratings of Patient/p1 may go."""
    yield from sent_consent(
        Rig(FakeFhir(httpserver).install(), sync_store, sqlite_url, R.run_token())
    )


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


def _applied_answer_lost(rig: Rig) -> Fault:
    """Apply the Bundle, then answer after the client gave up (its read timeout is 0.3 s): the
    server committed, the answer is lost. Short enough that a read right after is served."""

    def fault(bundle: dict[str, Any]) -> Response:
        rig.fake.apply(bundle)
        time.sleep(0.45)
        return Response("{}", status=200, content_type="application/fhir+json")

    return fault


def test_a_lost_answer_of_an_item_superseded_meanwhile_is_tracked(rig: Rig) -> None:
    """Version 1 of a rating is being sent; version 2 is taken in and the patient revokes the
    sharing (version 2 will be held, never sent); version 1 landed but its answer is lost. It is
    read back and recorded SENT with the server's version, with its disclosure AuditEvent and
    Provenance, so that retraction and the next If-Match see it (it used to be left SUPERSEDED,
    the disclosure on the server untracked)."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    newer = (R.rating(rig.run, 1, value=5), R.revocation(rig.run))
    rig.fake.faults = [_meanwhile(rig, _applied_answer_lost(rig), *newer)]
    report = rig.worker().run_once()
    [(key, on_server)] = [(k, r) for k, r in rig.fake.resources.items() if "Observation" in k]
    assert (report.sent, report.failed, report.superseded) == (1, 0, 0)
    assert rig.items(record_id)[1] is SyncState.SENT
    last = rig.store.last_sent(record_id)
    assert last is not None and last.record_version == 1
    assert [f"{s.resource_type}/{s.id}" for s in last.sent] == [key]
    assert [s.version_id for s in last.sent] == [on_server["meta"]["versionId"]]
    actions = [e.action for e in rig.store.list_audit(record_id=record_id)]
    assert (actions.count("disclose"), actions.count("provenance")) == (1, 1)
    rig.worker().run_once()
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}


def test_a_lost_answer_that_did_not_land_fails_as_before(rig: Rig) -> None:
    """The same, but nothing reached the server (a 503 after the intake is no lost answer; a
    reset before it is applied is): read back, not there: superseded, nothing recorded sent."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))

    def lost_unapplied(bundle: dict[str, Any]) -> Response:
        time.sleep(0.45)
        return Response("{}", status=200, content_type="application/fhir+json")

    rig.fake.faults = [_meanwhile(rig, lost_unapplied, R.rating(rig.run, 1, value=5))]
    report = rig.worker().run_once()
    assert (report.sent, report.superseded) == (0, 1)
    assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.QUEUED}
    assert rig.store.last_sent(record_id) is None
