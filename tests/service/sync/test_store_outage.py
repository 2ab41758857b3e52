"""A database outage is not held against the records (issue 8): a worker that cannot record its
results gives the batch up and, once the database answers again, hands the leases back instead of
letting them expire into lost leases, so not even ``max_attempts=1`` dead-letters anything. An
error that is not an outage still lets the leases expire: a record that fails the worker every
time is still dead-lettered as a poison record. The FHIR server is pytest-httpserver
(``fake_fhir.py``); the outage is injected in front of the real store, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.engine import WriterTurnTimeout
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer
from sqlalchemy.exc import OperationalError

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir

DONE = {SyncState.SENT, SyncState.DEAD_LETTERED}


class FailingRecords:
    """The real store, except that recording sends fails ``times`` times with ``error``."""

    def __init__(self, store: SqlStore, error: BaseException, times: int) -> None:
        self._store = store
        self.error = error
        self.left = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def mark_sent_many(self, *args: Any, **kwargs: Any) -> Any:
        if self.left > 0:
            self.left -= 1
            raise self.error
        return self._store.mark_sent_many(*args, **kwargs)


@dataclass
class Rig:
    store: SqlStore
    fake: FakeFhir
    base_url: str
    record_ids: list[str]

    def run_worker(self, error: BaseException, **overrides: Any) -> dict[str, SyncState]:
        """A worker (1 s leases, ``max_attempts`` 1) runs until every record is sent or
        dead-lettered and no send's landing is unknown, while recording its first send fails
        with ``error``."""
        settings = sync_settings(
            self.base_url,
            "unused",
            fhir_version="4.0.1",
            max_attempts=1,
            lease_seconds=1.0,
            poll_interval_seconds=0.05,
            **overrides,
        )
        failing = FailingRecords(self.store, error, times=1)
        stop = threading.Event()
        with FhirClient(self.base_url, retry=QUICK_RETRY, timeout=(1.0, 2.0)) as client:
            worker = Worker(settings, failing, client)  # type: ignore[arg-type]
            runner = threading.Thread(target=worker.run_forever, args=(stop,))
            runner.start()
            try:
                for _ in range(600):
                    if (
                        set(self.states().values()) <= DONE
                        and self.store.landing_unknown_count() == 0
                    ):
                        break
                    stop.wait(0.05)
            finally:
                stop.set()
                runner.join(timeout=30)
        assert failing.left == 0, "the injected failure never happened"
        return self.states()

    def states(self) -> dict[str, SyncState]:
        out = {}
        for record_id in self.record_ids:
            status = self.store.sync_status(record_id)
            assert status is not None
            out[record_id] = status.state
        return out


@pytest.fixture
def rig(httpserver: HTTPServer, database_url: str) -> Iterator[Rig]:
    fake = FakeFhir(httpserver).install()
    store = open_store(database_url)
    run = R.run_token()
    patients = [f"Patient/o{n}" for n in range(3)]
    results = intake_records(store, [R.sharing_consent(run, p) for p in patients], at=now())
    try:
        yield Rig(store, fake, fake.base_url, [r.record_id for r in results])
    finally:
        store.close()


@pytest.mark.parametrize(
    "outage",
    [
        OperationalError("UPDATE outbox", {}, Exception("server closed the connection")),
        WriterTurnTimeout("timed out waiting for the write turn"),
    ],
    ids=["database-unreachable", "write-turn-timeout"],
)
def test_an_outage_while_recording_is_not_held_against_the_records(
    rig: Rig, outage: BaseException
) -> None:
    """The first record of the sends fails for want of the database; after it the worker hands
    its leases back and sends again: everything ends sent, with no attempt and no lost lease,
    although one lost lease would dead-letter at ``max_attempts=1``."""
    states = rig.run_worker(outage)
    assert set(states.values()) == {SyncState.SENT}
    for record_id in rig.record_ids:
        status = rig.store.sync_status(record_id)
        assert status is not None and (status.attempts, status.lost_leases) == (0, 0)
    assert rig.fake.requests == 2  # sent, not recorded, handed back, sent again (same ids)
    assert max(rig.fake.writes.values()) == 2 and len(rig.fake.resources) == len(rig.record_ids)


def test_an_error_that_is_no_outage_still_lets_the_leases_expire(rig: Rig) -> None:
    """A batch that fails for another reason (here at recording) keeps the poison-record
    protection: its leases expire, and at ``max_attempts=1`` the takeover dead-letters the one
    suspect it keeps without sending it again; the others, handed back (one suspect per batch),
    get a try of their own and are sent. The dead-lettered one's first send had landed: taken
    from an expired lease, it was noted *landing unknown*, so it is read back and recorded sent
    (its disclosure audited once), not left on the server untracked."""
    states = rig.run_worker(RuntimeError("a bug, or a record that breaks the worker"))
    assert set(states.values()) == {SyncState.SENT}
    [dead] = [
        r
        for r in rig.record_ids
        if "dead-letter" in [e.action for e in rig.store.list_audit(record_id=r)]
    ]
    status = rig.store.sync_status(dead)
    assert status is not None and status.last_outcome is not None
    assert "stopped without a result 1 times in a row" in str(status.last_outcome)
    actions = [e.action for e in rig.store.list_audit(record_id=dead)]
    assert actions.count("disclose") == 1
    assert actions.index("dead-letter") < actions.index("disclose")  # found by the read-back
    assert sorted(rig.fake.writes.values()) == [1, 2, 2]  # the dead-lettered one: not re-sent
