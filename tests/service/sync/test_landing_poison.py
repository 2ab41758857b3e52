"""A read-back of sends whose landing is unknown that fails for one item (its record no longer
maps, the mapping crashes, the server answers its read with something that cannot be read, or
only 503) never stops the others from being settled, never crashes the worker, and is not tried
in a tight loop nor every lease forever: it waits as long as the item has waited (a lease at
least, an hour at most), with one log line naming the item and the error type, no content. The
item stays noted *landing unknown* (it may have landed) and counted. Faults from
pytest-httpserver (``fake_fhir.FakeFhir``); the crashing mapping through the store's answer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import OutboxItem, SyncState
from fhir_alliance_service.store.tables import outbox, records
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.leases import LeaseLedger
from fhir_alliance_service.sync.worker import LANDING_RECHECK_MAX
from pytest_httpserver import HTTPServer
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from werkzeug import Response

from tests.service.sync import records as R
from tests.service.sync.conftest import now
from tests.service.sync.fake_fhir import FakeFhir, status
from tests.service.sync.test_landing_unknown import ANSWER_CAP, Rig, _answer_lost
from tests.service.sync.test_superseded_in_hand import sent_consent

LEASE = 30.0  # the rig's settings


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[Rig]:
    """The patient's sharing consent sent already: ratings of Patient/p1 may go."""
    yield from sent_consent(
        Rig(FakeFhir(httpserver).install(), sync_store, sqlite_url, R.run_token())
    )


def _two_lost_and_held(rig: Rig) -> tuple[str, str]:
    """Ratings 1 and 2 go out in one Bundle, which lands; its answer is lost and the patient
    revokes meanwhile. Both are retried at 10 s and held: noted *landing unknown*, read back
    from 30 s on. Their record ids (1 has the lower item id: read back first)."""
    first, second = rig.intake(R.rating(rig.run, 1, value=2), R.rating(rig.run, 2, value=3))
    rig.fake.faults = [_answer_lost(rig, R.revocation(rig.run), applied=True, reads_down=False)]
    assert rig.worker().run_once().failed == 2
    assert rig.worker(later=10).run_once().held == 2
    assert rig.items(first) == {1: SyncState.HELD} and rig.items(second) == {1: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 2
    return first, second


def _key(rig: Rig, n: int) -> str:
    """The ``Type/id`` on the server of rating ``n``."""
    [key] = [
        key
        for key, resource in rig.fake.resources.items()
        if resource.get("identifier", [{}])[0].get("value", "").endswith(f"-{rig.run}-{n}")
    ]
    return key


def _item_id(rig: Rig, record_id: str) -> int:
    with rig.store.engine.connect() as connection:
        return int(
            connection.execute(
                select(outbox.c.item_id).where(outbox.c.record_id == record_id)
            ).scalar_one()
        )


def _wait(rig: Rig, record_id: str, later: float) -> float:
    """Seconds from a worker running ``later`` s ahead (now) until the item's next read-back."""
    with rig.store.engine.connect() as connection:
        due = connection.execute(
            select(outbox.c.landing_check_at).where(outbox.c.record_id == record_id)
        ).scalar_one()
    assert due is not None, "the note was dropped"
    return (due - (now() + timedelta(seconds=later))).total_seconds()


def _not_fhir(held: dict[str, Any] | None) -> Response:
    return Response("<html><body>sign in</body></html>", status=200, content_type="text/html")


def _oversized(held: dict[str, Any] | None) -> Response:
    body = '{"resourceType": "Observation", "id": "' + "x" * (ANSWER_CAP + 1) + '"}'
    return Response(body, status=200, content_type="application/fhir+json")


def _unavailable(held: dict[str, Any] | None) -> Response:
    return status(503)({})


class CrashingBody(Mapping[str, Any]):
    """A record body whose every read raises: a mapping that crashes on this record (a bug,
    not the ``InputError`` of a record that does not fit)."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("mapping bug")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("mapping bug")

    def __len__(self) -> int:
        raise RuntimeError("mapping bug")


class MappingCrashes:
    """The real store, except that the read-backs of ``record_id`` come with a body whose
    mapping crashes."""

    def __init__(self, store: SqlStore, record_id: str) -> None:
        self._store = store
        self.record_id = record_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claim_landing_checks(self, **kwargs: Any) -> list[OutboxItem]:
        items: list[OutboxItem] = self._store.claim_landing_checks(**kwargs)
        return [
            OutboxItem(**{**_fields(item), "body": CrashingBody()})
            if item.record_id == self.record_id
            else item
            for item in items
        ]


def _fields(item: OutboxItem) -> dict[str, Any]:
    return {name: getattr(item, name) for name in OutboxItem.__slots__}


def _poison(rig: Rig, how: str, record_id: str) -> None:
    """Make the read-back of rating 1 (``record_id``) fail ``how`` (``mapping-crash``: through
    the store the worker is given, ``_worker``)."""
    key = _key(rig, 1)
    if how == "not-fhir":
        rig.fake.read_answers[key] = _not_fhir
    elif how == "oversized":
        rig.fake.read_answers[key] = _oversized
    elif how == "unavailable":
        rig.fake.read_answers[key] = _unavailable
    elif how == "unmappable":  # a stored version this release no longer maps (InputError)
        with rig.store.engine.begin() as connection:
            connection.execute(
                update(records)
                .where(records.c.record_id == record_id)
                .values(body={**R.rating(rig.run, 1), "value": "not a number"})
            )


def _worker(rig: Rig, how: str, record_id: str, later: float) -> Worker:
    worker = rig.worker(later=later)
    if how == "mapping-crash":
        worker.leases = LeaseLedger(MappingCrashes(rig.store, record_id))  # type: ignore[arg-type]
        worker.store = worker.leases.as_store()
    return worker


HOW = ["not-fhir", "oversized", "unavailable", "unmappable", "mapping-crash"]


@pytest.mark.parametrize("how", HOW)
def test_a_read_back_failing_for_one_item_settles_the_others_and_backs_off(
    rig: Rig, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two held items with their landing unknown; reading back the first fails every time.
    The second is still found landed, recorded SENT with its disclosure and retracted (it used
    to wait behind the first for good, or the worker's batch failed on it). The first stays
    HELD and noted, and each failed read-back waits as long as the item has waited: 50 s after
    the first (held at 10 s, read at 60 s), 106 s after the one at 116 s, 216 s after the one at
    226 s (it used to be read every lease, 30 s). Never a traceback; the log names the item and the error type only."""
    first, second = _two_lost_and_held(rig)
    _poison(rig, how, first)
    poisoned, fine = _key(rig, 1), _key(rig, 2)
    caplog.set_level(logging.INFO)

    _worker(rig, how, first, 60).run_once()
    wait = _wait(rig, first, 60)
    _worker(rig, how, first, 95).run_once()  # the second's read-back if it had to wait
    assert rig.items(second) == {1: SyncState.SENT}
    actions = rig.actions(second)
    assert (actions.count("disclose"), actions.count("retract-delete")) == (1, 1)
    assert fine not in rig.fake.resources
    assert 49 < wait < 56

    reads = rig.fake.reads[poisoned]
    _worker(rig, how, first, 105).run_once()  # not due yet: not read
    assert rig.fake.reads[poisoned] == reads
    _worker(rig, how, first, 116).run_once()
    assert 104 < _wait(rig, first, 116) < 112
    _worker(rig, how, first, 226).run_once()
    assert 214 < _wait(rig, first, 226) < 222

    assert rig.items(first) == {1: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 1
    status_ = rig.store.sync_status(first)
    assert status_ is not None and status_.landing_unknown
    assert "disclose" not in rig.actions(first)
    assert poisoned in rig.fake.resources  # not retracted: not known to have landed
    failures = [r for r in caplog.records if "read back later" in r.getMessage()]
    assert len(failures) == 3
    for line in caplog.records:
        text = line.getMessage()
        assert rig.run not in text and "Patient/" not in text and "mapping bug" not in text
        assert line.exc_info is None


def test_a_read_back_failing_for_long_waits_an_hour_at_most(rig: Rig) -> None:
    """An item whose read-back has failed for days is read again within the hour (a fix
    deployed meanwhile settles it): never left noted and unread."""
    first, _ = _two_lost_and_held(rig)
    rig.fake.read_answers[_key(rig, 1)] = _not_fhir
    later = 3 * 86_400.0
    rig.worker(later=later).run_once()
    limit = LANDING_RECHECK_MAX.total_seconds()
    assert limit - 5 < _wait(rig, first, later) <= limit
    del rig.fake.read_answers[_key(rig, 1)]  # the server answers properly again
    rig.worker(later=later + limit + 5).run_once()
    assert rig.items(first) == {1: SyncState.SENT}
    assert rig.store.landing_unknown_count() == 0


def _meta_not_an_object(held: dict[str, Any] | None) -> Response:
    """The resource held, its ``meta`` not an object (a server's or a proxy's mangling)."""
    assert held is not None
    body = json.dumps({**held, "meta": ["not", "an", "object"]})
    return Response(body, status=200, content_type="application/fhir+json")


@pytest.mark.parametrize("when", ["at-once", "later"])
def test_a_landed_copy_whose_meta_is_not_an_object_is_found(rig: Rig, when: str) -> None:
    """A consent record's send lands, its answer is lost, and version 2 is taken in meanwhile
    (version 1 will be superseded). The server's copy has our content (a Consent carries no
    security labels), but its ``meta`` is not an object, so no server version can be read from
    it: ours all the same, recorded SENT without a version, with its disclosure, when read back
    at once or (the server down for reads then) later. The worker's batch used to fail on it
    (and every lease again), the copy left untracked."""
    [record_id] = rig.intake(R.sharing_consent(rig.run, n=2))
    newer = R.sharing_consent(rig.run, n=2, permit_psythpn=True)

    def fault(bundle: dict[str, Any]) -> Response:
        rig.intake(newer)
        if when == "later":
            rig.fake.read_status = 503
        rig.fake.apply(bundle)
        rig.fake.read_answers[bundle["entry"][0]["request"]["url"]] = _meta_not_an_object
        time.sleep(0.45)  # the client gave up after 0.3 s
        return Response("{}", status=200, content_type="application/fhir+json")

    rig.fake.faults = [fault]
    rig.worker().run_once()
    if when == "later":
        assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.QUEUED}
        assert rig.store.landing_unknown_count() == 1
        rig.fake.read_status = None
        rig.fake.faults = [lambda bundle: Response("{}", status=503)]  # version 2 waits
        rig.worker(later=60).run_once()
    assert rig.items(record_id)[1] is SyncState.SENT
    last = rig.store.last_sent(record_id)
    assert last is not None and last.record_version == 1
    assert [s.version_id for s in last.sent] == [None]
    assert rig.actions(record_id).count("disclose") == 1
    assert rig.store.landing_unknown_count() == 0


def _three_lost_and_held(rig: Rig) -> tuple[str, str, str]:
    """Ratings 1, 2 and 3 go out in one Bundle, which lands (rating 3's copy is deleted on the
    server right after: not there when read back); the answer is lost and the patient revokes
    meanwhile. All three are held at their retry, noted *landing unknown*. Their record ids, in
    item order."""
    ids = rig.intake(*(R.rating(rig.run, n, value=n + 1) for n in (1, 2, 3)))
    lost = _answer_lost(rig, R.revocation(rig.run), applied=True, reads_down=False)

    def fault(bundle: dict[str, Any]) -> Response:
        answer = lost(bundle)
        del rig.fake.resources[_key(rig, 3)]
        return answer

    rig.fake.faults = [fault]
    assert rig.worker().run_once().failed == 3
    assert rig.worker(later=10).run_once().held == 3
    assert rig.store.landing_unknown_count() == 3
    first, second, third = ids
    return first, second, third


def _spoil_record(rig: Rig, how: str, record_id: str) -> None:
    """Make recording the read-back of ``record_id``'s item fail ``how``: its stored ``sent``
    corrupted (a server version stored as a number: the read-back works, comparing versions
    when recording it does not), or the database refusing to write that one row (a trigger:
    an error of the statement, not an outage)."""
    item_id = _item_id(rig, record_id)
    with rig.store.engine.begin() as connection:
        if how == "sent-corrupted":
            resource_type, resource_id = _key(rig, 1).split("/")
            corrupted = [{"resource_type": resource_type, "id": resource_id, "version_id": 7}]
            connection.execute(
                update(outbox).where(outbox.c.item_id == item_id).values(sent=corrupted)
            )
        else:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_one_row BEFORE UPDATE OF sent ON outbox"
                f" WHEN OLD.item_id = {item_id} BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )


@pytest.mark.parametrize("how", ["sent-corrupted", "row-refused"])
def test_recording_a_read_back_failing_for_one_item_records_the_others(
    rig: Rig, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three held items with their landing unknown, read back in one pass: rating 1 and 2
    landed, 3 is not there. Recording rating 1's read-back fails (its stored data is corrupted,
    or the database refuses its row), which used to roll the whole pass back and fail the
    worker's batch, every lease again: the others were never recorded and their copies stayed
    untracked. Now the pass is recorded one item at a time: rating 2 SENT with one disclosure
    (and retracted), rating 3's note dropped, rating 1 still HELD and noted, read back again
    after a wait as long as it has waited (as a read-back that failed), with one log line
    naming the item and the error type. The next pass records nothing twice."""
    first, second, third = _three_lost_and_held(rig)
    _spoil_record(rig, how, first)
    spoilt, fine = _key(rig, 1), _key(rig, 2)
    caplog.set_level(logging.INFO)

    assert rig.worker(later=60).run_once().error is None
    assert rig.items(second) == {1: SyncState.SENT}
    actions = rig.actions(second)
    assert (actions.count("disclose"), actions.count("provenance")) == (1, 1)
    assert actions.count("retract-delete") == 1
    assert fine not in rig.fake.resources
    assert rig.items(third) == {1: SyncState.HELD}
    assert "disclose" not in rig.actions(third)
    assert rig.items(first) == {1: SyncState.HELD}
    assert "disclose" not in rig.actions(first)
    assert rig.store.landing_unknown_count() == 1
    assert 49 < _wait(rig, first, 60) < 56  # held at 10 s: waits 50 s, not a lease (30 s)

    reads = rig.fake.reads[spoilt]
    rig.worker(later=95).run_once()  # a lease on: not read again yet
    assert rig.fake.reads[spoilt] == reads
    rig.worker(later=116).run_once()  # due: read back, its record fails again, waits longer
    assert rig.fake.reads[spoilt] > reads
    assert 104 < _wait(rig, first, 116) < 112
    assert rig.items(first) == {1: SyncState.HELD}
    assert rig.items(second) == {1: SyncState.SENT}
    for record_id in (first, second, third):
        actions = rig.actions(record_id)
        assert actions.count("disclose") == (record_id == second)
        assert actions.count("retract-delete") == (record_id == second)
    assert spoilt in rig.fake.resources  # not known to have landed: not retracted

    failures = [r for r in caplog.records if "recording its read-back failed" in r.getMessage()]
    assert len(failures) == 2
    for line in caplog.records:
        text = line.getMessage()
        assert rig.run not in text and "Patient/" not in text and "refused" not in text
        assert line.exc_info is None


class RecordingFailsFor:
    """The real store, except that recording read-backs that name an item of ``errors`` raises
    that item's error (``record_landing_checks``; the first named wins), and every call is
    counted."""

    def __init__(self, store: SqlStore, errors: dict[int, BaseException]) -> None:
        self._store = store
        self.errors = errors
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def record_landing_checks(self, landed: Any, absent: Any, **kwargs: Any) -> list[bool]:
        self.calls += 1
        for item_id in [mark.item_id for mark in landed] + list(absent):
            if item_id in self.errors:
                raise self.errors[item_id]
        result: list[bool] = self._store.record_landing_checks(landed, absent, **kwargs)
        return result


@pytest.mark.parametrize("when", ["at-once", "one-at-a-time"])
def test_a_database_outage_recording_read_backs_ends_the_pass(rig: Rig, when: str) -> None:
    """Recording a pass of read-backs fails for want of the database, in its one transaction
    or, once a bug on rating 1's row sent it to record one item at a time, on rating 2's: the
    pass ends as before (the error is raised, nothing more is recorded) and the items stay
    noted, read back again when their lease ends (then recorded, each once)."""
    first, second, third = _three_lost_and_held(rig)
    outage = OperationalError("UPDATE outbox", {}, Exception("server closed the connection"))
    errors: dict[int, BaseException] = {_item_id(rig, first): outage}
    if when == "one-at-a-time":
        errors = {_item_id(rig, first): RuntimeError("a bug"), _item_id(rig, second): outage}
    failing = RecordingFailsFor(rig.store, errors)
    worker = rig.worker(later=60)
    worker.leases = LeaseLedger(failing)  # type: ignore[arg-type]
    worker.store = worker.leases.as_store()
    with pytest.raises(OperationalError):
        worker.run_once()
    assert failing.calls == (1 if when == "at-once" else 3)  # the pass, rating 1, rating 2
    assert rig.store.landing_unknown_count() == 3
    assert all(rig.items(r) == {1: SyncState.HELD} for r in (first, second, third))
    assert rig.worker(later=95).run_once().error is None  # the lease ended: read back
    assert rig.items(first) == rig.items(second) == {1: SyncState.SENT}
    assert rig.actions(first).count("disclose") == rig.actions(second).count("disclose") == 1
    assert rig.store.landing_unknown_count() == 0
