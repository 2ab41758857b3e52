"""A conflict settled by the policy (``flag``: held for a person; ``keep-remote``: the server's
version recorded) is written in one compare-and-set with its outcome: the conflict note, the
hold (or the send) and the server's versions it was flagged against, and its AuditEvent, only
while the worker settling it still holds the item's lease. The worker used to note the conflict,
then hold the item, then note the versions, then audit, in four transactions: what came between
them (a takeover after the lease ran out, a newer version superseding the item, a person's
decision on the half-written flag) left a conflict noted on an item another worker was sending,
a conflict audited twice, or a decision applied to a conflict nobody was shown. On SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore, SyncState, open_store
from fhir_alliance_service.store.interface import SentResource, SyncStatus
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from fhir_alliance_service.usecases.conflicts import decide_conflict
from fhir_alliance_service.usecases.intake import intake_records

from fhir_alliance.client import FhirClient
from fhir_alliance.errors import TransientServerError, TransportError
from tests.fhir_server.plugin import FhirTestServer
from tests.review_sync.steps import conflict_events
from tests.service.conftest import (  # noqa: F401 (fixtures: the store on SQLite and PostgreSQL)
    database_url,
    empty_postgres_schema,
    postgres_url,
)
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import QUICK_RETRY, SyncHarness, sync_settings

LEASE = 30.0
RECORD = R.RECORD_SYSTEM


@pytest.fixture
def any_harness(database_url: str, fhir_server: FhirTestServer) -> Iterator[SyncHarness]:  # noqa: F811
    """The sync harness on a store on SQLite, then on PostgreSQL."""
    store = open_store(database_url)
    settings = sync_settings(fhir_server.base_url, database_url)
    try:
        with FhirClient(fhir_server.base_url, retry=QUICK_RETRY) as client:
            yield SyncHarness(store, settings, client, fhir_server, R.run_token())
    finally:
        store.close()


class _Clock:
    """The workers' clock, moved on by hand (a lease that runs out meanwhile)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def _worker(harness: SyncHarness, clock: _Clock, policy: str) -> Worker:
    settings = replace(harness.settings, lease_seconds=LEASE, conflict_policy=policy)
    return Worker(
        settings,
        harness.store,
        harness.client,
        tags=[harness.server.run_tag],
        clock=clock,
        worker_id="worker-a",
    )


def _around_first(
    store: SqlStore,
    names: tuple[str, ...],
    *,
    before: Callable[[], object] = lambda: None,
    after: Callable[[], object] = lambda: None,
) -> None:
    """Run ``before`` just before, and ``after`` just after, the first call to any of the store
    methods ``names`` (the worker recording a conflict's outcome): what another process does
    meanwhile."""
    done: list[bool] = []

    def wrap(name: str) -> None:
        original = getattr(store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            first = not done
            done.append(True)
            if first:
                before()
            result = original(*args, **kwargs)
            if first:
                after()
            return result

        setattr(store, name, call)

    for name in names:
        wrap(name)


def _server_rating(harness: SyncHarness) -> dict[str, Any]:
    [resource] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    return resource


def _edit_on_server(harness: SyncHarness, value: int) -> SentResource:
    """Someone else sets rating 1's value on the server: the version it is left in."""
    current = _server_rating(harness)
    changed = remote.update(
        harness.server, current, valueQuantity={**current["valueQuantity"], "value": value}
    )
    return SentResource("Observation", changed["id"], changed["meta"]["versionId"])


def _status(harness: SyncHarness, record_id: str) -> SyncStatus:
    status = harness.store.sync_status(record_id)
    assert status is not None
    return status


OUTCOMES = {"flag": "flagged", "keep-remote": "kept-remote"}


@pytest.mark.parametrize("meanwhile", ["taken-over", "newer-version"])
@pytest.mark.parametrize("policy", ["flag", "keep-remote"])
def test_a_conflict_settled_after_the_lease_was_lost_writes_nothing(
    any_harness: SyncHarness, policy: str, meanwhile: str
) -> None:
    """Rating 1 sent; someone edits it on the server; our version 2 meets the 412. Just before
    worker A records the policy's outcome, its lease runs out and either worker B takes the
    item over, or version 3 comes in and supersedes it. A writes nothing: no conflict noted on
    the item (B's, pending; or superseded), no conflict AuditEvent, counted as a lost lease.
    The conflict is settled once, by the send that holds the item (B's retry, or version 3's):
    one conflict AuditEvent, the outcome noted with the server's version."""
    harness = any_harness
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    assert harness.drain().sent == 2
    theirs = _edit_on_server(harness, 1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    clock = _Clock()
    taken: list[int] = []

    def lease_lost() -> None:
        clock.offset += timedelta(seconds=LEASE + 1)
        if meanwhile == "taken-over":
            claimed = harness.store.claim("worker-b", limit=10, lease_seconds=LEASE, now=clock())
            taken.extend(i.item_id for i in claimed)
            assert taken
        else:
            intake_records(harness.store, [R.rating(run, 1, value=3)], at=clock())

    _around_first(harness.store, ("mark_held", "mark_sent"), before=lease_lost)
    report = _worker(harness, clock, policy).run_once()
    assert report.error is None
    assert (report.lease_lost, report.held, report.sent) == (1, 0, 0)
    status = _status(harness, rating.record_id)
    if meanwhile == "taken-over":
        assert status.item_id in taken
        assert (status.record_version, status.state, status.conflict) == (2, SyncState.QUEUED, None)
        harness.store.release(taken, "worker-b", at=clock())  # B stops: claimable again
    else:
        [older] = [
            s
            for s in harness.store.list_by_state(SyncState.SUPERSEDED)
            if s.record_id == rating.record_id
        ]
        assert (older.record_version, older.conflict) == (2, None)
        assert (status.record_version, status.state, status.conflict) == (3, SyncState.QUEUED, None)
    assert conflict_events(harness, rating.record_id) == []

    harness.drain(conflict_policy=policy)
    outcome = OUTCOMES[policy]
    assert conflict_events(harness, rating.record_id) == [outcome]
    status = _status(harness, rating.record_id)
    assert status.conflict == outcome
    if policy == "flag":
        assert (status.state, status.held_reason) == (SyncState.HELD, CONFLICT_HELD_REASON)
        assert status.conflict_versions == (theirs,)
    else:
        assert (status.state, status.sent) == (SyncState.SENT, (theirs,))


def test_a_decision_on_a_flag_being_written_is_made_on_the_conflict_it_shows(
    any_harness: SyncHarness,
) -> None:
    """Rating 1 flagged against the server's version 2; a person decides ``overwrite``; someone
    edits it on the server again (version 3) and the overwrite, If-Match 2, meets a 412 and is
    flagged again. A person who looks the moment the record is held again is shown the
    conflict it is flagged on, version 3, never the one decided already: their ``keep-remote``
    records version 3 as what the server holds. The flag's AuditEvent comes before the
    decision's."""
    harness = any_harness
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    first = _edit_on_server(harness, 1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    harness.drain(conflict_policy="flag")
    status = _status(harness, rating.record_id)
    assert (status.state, status.conflict_versions) == (SyncState.HELD, (first,))

    def decide(decision: str) -> None:
        shown = _status(harness, rating.record_id)
        decide_conflict(
            harness.store,
            rating.record_id,
            decision,
            against=shown.conflict_versions,
            record_version=shown.record_version,
            decided_by="cli",
            at=datetime.now(UTC),
        )

    decide("overwrite")
    second = _edit_on_server(harness, 2)
    _around_first(harness.store, ("mark_held",), after=lambda: decide("keep-remote"))
    report = _worker(harness, _Clock(), "flag").run_once()
    assert (report.error, report.held) == (None, 1)

    status = _status(harness, rating.record_id)
    assert (status.state, status.conflict) == (SyncState.SENT, "decided-keep-remote")
    assert status.sent == (second,)  # what the server holds, the conflict the person was shown
    on_server = _server_rating(harness)
    assert (on_server["meta"]["versionId"], on_server["valueQuantity"]["value"]) == (
        second.version_id,
        2,
    )
    actions = [
        a.action
        for a in harness.store.list_audit(record_id=rating.record_id, limit=1000)
        if a.action in ("conflict", "conflict-decision")
    ]
    assert actions == ["conflict", "conflict-decision", "conflict", "conflict-decision"]


def test_an_overwrite_handed_back_untried_notes_and_audits_nothing(
    any_harness: SyncHarness,
) -> None:
    """Policy ``overwrite``: worker A's read of the server's copy after the 412 ends past the
    last moment a send may start (its lease still its own). A hands the item back untried:
    nothing overwritten, so no ``conflict: overwritten`` on the item and no conflict AuditEvent.
    The next claim meets the 412 again and overwrites: one conflict AuditEvent, ours on the
    server."""
    harness = any_harness
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    assert harness.drain().sent == 2
    _edit_on_server(harness, 1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    clock = _Clock()
    original = harness.client.read

    def read(resource_type: str, resource_id: str) -> dict[str, Any]:
        clock.offset = timedelta(seconds=LEASE - 1)  # past the last send start, lease still ours
        return original(resource_type, resource_id)

    harness.client.read = read  # type: ignore[method-assign]
    report = _worker(harness, clock, "overwrite").run_once()
    harness.client.read = original  # type: ignore[method-assign]
    assert (report.error, report.sent, report.lease_lost) == (None, 0, 0)
    status = _status(harness, rating.record_id)
    assert (status.state, status.conflict) == (SyncState.QUEUED, None)
    assert conflict_events(harness, rating.record_id) == []
    assert _server_rating(harness)["valueQuantity"]["value"] == 1

    harness.drain(conflict_policy="overwrite")
    status = _status(harness, rating.record_id)
    assert (status.state, status.conflict) == (SyncState.SENT, "overwritten")
    assert conflict_events(harness, rating.record_id) == ["overwritten"]
    assert _server_rating(harness)["valueQuantity"]["value"] == 5


@pytest.mark.parametrize("overwrite", ["handed-back", "failed"])
def test_an_overwrite_that_never_went_out_leaves_no_conflict_noted(
    any_harness: SyncHarness, overwrite: str
) -> None:
    """Policy ``overwrite``, the read of the server's copy after the 412 done in time. Then either
    what comes before the overwrite's send (noting the conflict, a slow store) takes worker A
    past the last moment a send may start, its lease still its own, so the item is handed back
    untried (``handed-back``); or the overwrite's send is refused for now, a 503 (``failed``).
    Nothing was overwritten: the item, handed back or to be retried, carries no
    ``conflict: overwritten`` and no conflict AuditEvent is written. The next claim meets the
    412 again and overwrites: one conflict AuditEvent, ours on the server, noted overwritten."""
    harness = any_harness
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    assert harness.drain().sent == 2
    _edit_on_server(harness, 1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    clock = _Clock()
    worker = _worker(harness, clock, "overwrite")
    sends: list[bool] = []
    send_group = worker._send_group
    transaction = harness.client.transaction

    def before_the_overwrite(group: Any, batch: Any) -> bool:
        sends.append(True)
        if len(sends) == 2 and overwrite == "handed-back":  # the 412's send, then the overwrite
            clock.offset = timedelta(seconds=LEASE - 1)
        return send_group(group, batch)

    def refused(*args: Any, **kwargs: Any) -> Any:
        if len(sends) == 2:
            raise TransientServerError("unavailable", status=503)
        return transaction(*args, **kwargs)

    worker._send_group = before_the_overwrite  # type: ignore[method-assign]
    if overwrite == "failed":
        harness.client.transaction = refused  # type: ignore[method-assign]
    try:
        report = worker.run_once()
    finally:
        harness.client.transaction = transaction  # type: ignore[method-assign]
    assert len(sends) == 2
    assert (report.error, report.sent, report.lease_lost) == (None, 0, 0)
    status = _status(harness, rating.record_id)
    state = SyncState.QUEUED if overwrite == "handed-back" else SyncState.FAILED
    assert (status.state, status.conflict) == (state, None)
    assert conflict_events(harness, rating.record_id) == []
    assert _server_rating(harness)["valueQuantity"]["value"] == 1

    time.sleep(0.1)  # the failed send's backoff (``sync_settings``: at most 0.05 s)
    harness.drain(conflict_policy="overwrite")
    status = _status(harness, rating.record_id)
    assert (status.state, status.conflict) == (SyncState.SENT, "overwritten")
    assert conflict_events(harness, rating.record_id) == ["overwritten"]
    assert _server_rating(harness)["valueQuantity"]["value"] == 5


def test_an_overwrite_whose_answer_was_lost_is_noted_when_it_landed(
    any_harness: SyncHarness,
) -> None:
    """Policy ``overwrite``: ours lands on the server but the answer is lost (the connection
    reset after the write). The overwrite is read back at once: ours is there, so the item is
    recorded sent, noted ``overwritten``, with one conflict AuditEvent. (Left to its retry, the
    retry's 412 would find our content and record a lost answer: someone's edit overwritten
    and never audited as a conflict.)"""
    harness = any_harness
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    assert harness.drain().sent == 2
    _edit_on_server(harness, 1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    transaction = harness.client.transaction
    calls: list[bool] = []

    def answer_lost(*args: Any, **kwargs: Any) -> Any:
        calls.append(True)
        outcomes = transaction(*args, **kwargs)
        if len(calls) == 2:  # the 412's send, then the overwrite: written, its answer lost
            raise TransportError("connection reset")
        return outcomes

    harness.client.transaction = answer_lost  # type: ignore[method-assign]
    try:
        report = _worker(harness, _Clock(), "overwrite").run_once()
    finally:
        harness.client.transaction = transaction  # type: ignore[method-assign]
    assert len(calls) == 2
    assert (report.error, report.sent) == (None, 1)
    status = _status(harness, rating.record_id)
    assert (status.state, status.conflict, status.landing_unknown) == (
        SyncState.SENT,
        "overwritten",
        False,
    )
    assert conflict_events(harness, rating.record_id) == ["overwritten"]
    assert _server_rating(harness)["valueQuantity"]["value"] == 5
    harness.drain(conflict_policy="overwrite")
    assert conflict_events(harness, rating.record_id) == ["overwritten"]
