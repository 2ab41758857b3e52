"""FHIR-server faults with pytest-httpserver as the target: 503 storms, 429 with Retry-After,
timeouts (lost answers), resets, malformed bodies and permanent rejections. Nothing is lost,
nothing is written twice as a second resource, permanent errors are dead-lettered with the
server's OperationOutcome, and one bad record does not take its neighbours down."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from fhir_alliance_service.config import Settings
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import (
    FakeFhir,
    hostile_location,
    hostile_status,
    late_answer,
    malformed,
    resetting_server,
    status,
)

PATIENTS = [f"Patient/f{n}" for n in range(4)]
DONE = {SyncState.SENT, SyncState.HELD, SyncState.DEAD_LETTERED}


class Clock:
    """The worker's clock: real time plus an offset the test moves forward (past backoffs)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return now() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass
class FaultRig:
    fake: FakeFhir
    store: SqlStore
    settings: Settings
    clock: Clock
    record_ids: list[str]
    run: str = ""

    def worker(self, client: FhirClient | None = None, **overrides: object) -> Worker:
        settings = replace(self.settings, **overrides) if overrides else self.settings
        client = client or FhirClient(self.fake.base_url, retry=QUICK_RETRY, timeout=(1.0, 0.3))
        return Worker(settings, self.store, client, clock=self.clock)

    def states(self) -> dict[str, SyncState]:
        out = {}
        for record_id in self.record_ids:
            status_ = self.store.sync_status(record_id)
            assert status_ is not None
            out[record_id] = status_.state
        return out

    def settle(self, worker: Worker, rounds: int = 40) -> None:
        """Run batches, moving the clock past every backoff, until every item is done."""
        for _ in range(rounds):
            worker.run_once()
            if set(self.states().values()) <= DONE:
                return
            self.clock.advance(5)
        raise AssertionError(f"not settled: {self.states()}")

    def expected_keys(self) -> set[str]:
        keys = set()
        for record_id in self.record_ids:
            status_ = self.store.sync_status(record_id)
            assert status_ is not None
            keys |= {f"{s.resource_type}/{s.id}" for s in status_.sent}
        return keys


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[FaultRig]:
    fake = FakeFhir(httpserver).install()
    run = R.run_token()
    payloads = [R.sharing_consent(run, p) for p in PATIENTS] + [
        R.rating(run, n, p) for n, p in enumerate(PATIENTS)
    ]
    results = intake_records(sync_store, payloads, at=now())
    settings = sync_settings(fake.base_url, sqlite_url, fhir_version="4.0.1", max_attempts=4)
    yield FaultRig(fake, sync_store, settings, Clock(), [r.record_id for r in results], run)


def _all_sent_once(rig: FaultRig) -> None:
    assert set(rig.states().values()) == {SyncState.SENT}
    assert set(rig.fake.resources) == rig.expected_keys()
    assert len(rig.fake.resources) == len(rig.record_ids)  # one resource per record, no extras


def test_a_503_storm_is_retried_until_everything_is_sent_once(rig: FaultRig) -> None:
    """Three 503s in a row: items fail and are retried with backoff; each lands exactly once."""
    rig.fake.faults = [status(503)] * 3
    worker = rig.worker()
    first = worker.run_once()
    assert first.failed == first.claimed > 0
    failed = rig.store.list_by_state(SyncState.FAILED)
    assert failed and all(s.attempts == 1 and s.next_attempt_at for s in failed)
    assert failed[0].last_outcome is not None
    rig.settle(worker)
    _all_sent_once(rig)
    assert max(rig.fake.writes.values()) == 1  # a refused Bundle applied nothing


def test_429_retry_after_is_honoured(rig: FaultRig) -> None:
    """A 429 with Retry-After: 120 schedules the retry no sooner than 120 s later."""
    rig.fake.faults = [status(429, retry_after="120")]
    worker = rig.worker()
    started = rig.clock()
    worker.run_once()
    [waiting, *_] = rig.store.list_by_state(SyncState.FAILED)
    assert waiting.next_attempt_at is not None
    assert waiting.next_attempt_at >= started + timedelta(seconds=120)
    rig.clock.advance(60)
    assert worker.run_once().claimed == 0  # still waiting
    rig.clock.advance(61)
    rig.settle(worker)
    _all_sent_once(rig)


def test_a_lost_answer_is_resent_to_the_same_resource(rig: FaultRig) -> None:
    """The server applies a Bundle but answers after the client's timeout: the retry rewrites the
    same resources (a new version), never a second resource."""
    rig.fake.faults = [late_answer(0.8)]
    worker = rig.worker()
    first = worker.run_once()
    assert first.failed == first.claimed > 0
    rig.settle(worker)
    _all_sent_once(rig)
    assert max(rig.fake.writes.values()) >= 2  # the first Bundle did land, and was written again


def test_a_connection_reset_is_retried(rig: FaultRig) -> None:
    """A reset after the request was sent: transient, retried, then sent once."""
    with resetting_server() as base, FhirClient(base, retry=QUICK_RETRY) as resetting:
        report = rig.worker(client=resetting).run_once()
    assert report.failed == report.claimed > 0
    rig.settle(rig.worker())
    _all_sent_once(rig)


def test_a_malformed_answer_is_retried(rig: FaultRig) -> None:
    """An HTML 200 instead of a transaction-response: retried (PUT is safe to repeat)."""
    rig.fake.faults = [malformed, malformed]
    rig.settle(rig.worker())
    _all_sent_once(rig)


@pytest.mark.parametrize(
    "location",
    [
        "{key}/../../Patient/p1/_history/1",
        "https://evil.example/fhir/{key}-other/_history/1",
        "Patient/p1/_history/1",
        "{key}-other/_history/1",
        "{key}/_history/1%0d%0aX-Injected:%201",
    ],
)
def test_a_hostile_location_is_retried_and_never_recorded(rig: FaultRig, location: str) -> None:
    """The server applies the Bundle but its answer names a resource outside the base, of
    another type or id, or a junk version: the Bundle's items fail (a malformed answer: retried
    with backoff), none is recorded as sent with what the answer named, and the retry records
    the resources that were PUT."""
    rig.fake.faults = [hostile_location(rig.fake, location)]
    worker = rig.worker()
    first = worker.run_once()
    assert first.failed > 0
    failed = rig.store.list_by_state(SyncState.FAILED)
    assert failed and all(f.next_attempt_at for f in failed)
    assert failed[0].last_outcome is not None
    assert "location" in failed[0].last_outcome["issue"][0]["details"]["text"]
    rig.settle(worker)
    _all_sent_once(rig)
    for record_id in rig.record_ids:
        status_ = rig.store.sync_status(record_id)
        assert status_ is not None
        for sent in status_.sent:
            assert sent.version_id is not None and sent.version_id.isdigit(), sent


@pytest.mark.parametrize("answer_status", ["\u00b200 OK", "\u0662\u0660\u0660"])
def test_an_entry_status_that_cannot_be_read_is_retried(rig: FaultRig, answer_status: str) -> None:
    """The server applies the Bundle and answers its first entry with a status of another
    script's digits (a superscript 2, which ``int`` refuses; Arabic-Indic 200, which it reads):
    an answer that cannot be read, so the Bundle's items fail and are retried (a PUT is safe to
    repeat), and each is sent once. It used to fail the worker's batch with ValueError, or take
    the entry for a success."""
    rig.fake.faults = [hostile_status(rig.fake, answer_status)]
    worker = rig.worker()
    first = worker.run_once()
    assert first.error is None and first.failed == first.claimed > 0
    [failed, *_] = rig.store.list_by_state(SyncState.FAILED)
    assert failed.next_attempt_at is not None and failed.last_outcome is not None
    rig.settle(worker)
    _all_sent_once(rig)


def test_transient_failures_beyond_max_attempts_are_dead_lettered(rig: FaultRig) -> None:
    """A server that answers 503 forever: after max_attempts each item is dead, with the outcome;
    nothing is dropped and replay sends them once the server is back."""
    rig.fake.faults = [status(503)] * 100
    rig.settle(rig.worker())
    dead = rig.store.list_by_state(SyncState.DEAD_LETTERED)
    assert {d.record_id for d in dead} == {
        r for r, s in rig.states().items() if s is SyncState.DEAD_LETTERED
    }
    assert dead and all(d.attempts == rig.settings.max_attempts for d in dead)
    assert dead[0].last_outcome is not None
    assert dead[0].last_outcome["issue"][0]["code"] == "transient"
    assert rig.fake.resources == {}

    rig.fake.faults = []
    assert rig.store.replay(at=rig.clock()).requeued == len(dead)
    rig.settle(rig.worker())
    _all_sent_once(rig)


def test_a_permanently_rejected_record_is_isolated_and_dead_lettered(rig: FaultRig) -> None:
    """A 422 on a Bundle: its items are sent one by one; only the bad record is dead-lettered,
    with the server's OperationOutcome, and its neighbours are sent."""
    bad = rig.record_ids[-1]  # a rating: its Observation id is its record id
    rig.fake.rejected_ids = {bad}
    rig.settle(rig.worker())
    states = rig.states()
    assert states.pop(bad) is SyncState.DEAD_LETTERED
    assert set(states.values()) == {SyncState.SENT}
    status_ = rig.store.sync_status(bad)
    assert status_ is not None and status_.last_outcome is not None
    assert status_.last_outcome["issue"][0]["code"] == "processing"
    assert status_.attempts == 1  # permanent: no retries
    assert f"Observation/{bad}" not in rig.fake.resources
    assert max(rig.fake.writes.values()) == 1
    actions = [e.action for e in rig.store.list_audit(record_id=bad)]
    assert "dead-letter" in actions and "disclose" not in actions


def test_an_unreachable_server_claims_nothing(httpserver: HTTPServer, rig: FaultRig) -> None:
    """Without a known FHIR version and with /metadata failing, nothing is leased or changed."""
    httpserver.expect_request("/fhir/metadata").respond_with_data("down", status=503)
    report = rig.worker(fhir_version=None).run_once()
    assert report.claimed == 0 and report.error
    assert set(rig.states().values()) == {SyncState.QUEUED}


def test_a_404_to_an_update_of_a_resource_still_there_is_the_sends_failure(
    rig: FaultRig,
) -> None:
    """A 404 answering an update If-Match (some servers answer so for a resource deleted since)
    is read back; when every resource is still there it is no deletion but the server's answer
    about something else, and the send fails as for any 404 (dead-lettered: permanent, with its
    OperationOutcome). Taken for a conflict, the record was held for a person as "changed on the
    FHIR server by someone else", though nothing had changed there."""
    rig.settle(rig.worker())
    [rating] = intake_records(rig.store, [R.rating(rig.run, 0, PATIENTS[0], value=2)], at=now())
    rig.fake.faults = [status(404)] * 20
    before = rig.fake.requests
    report = rig.worker().run_once()
    assert rig.fake.requests - before == 1
    assert report.dead == 1
    status_ = rig.store.sync_status(rating.record_id)
    assert status_ is not None and status_.state is SyncState.DEAD_LETTERED
