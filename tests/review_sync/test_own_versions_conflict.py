"""A 412 against a version we wrote ourselves is no conflict (the follow-up to the late-send
finding): two versions of one rating go out with the same If-Match, the older one's send having
outlasted its lease, and the older one lands first. The newer send's 412 used to be taken for
someone else's edit (``flag`` held it for a person, ``keep-remote`` left the older content on the
EHR); it is sent again against our own version, whether the older send is recorded by then or
only a moment later. A version someone else wrote is still a conflict."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store import SentResource, SqlStore
from fhir_alliance_service.store.interface import SentMark, SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from fhir_alliance_service.usecases.intake import intake_records

from tests.review_sync.steps import sent_consent_first, value_of
from tests.service.conftest import (  # noqa: F401 (fixtures: the store on SQLite and PostgreSQL)
    database_url,
    empty_postgres_schema,
    postgres_url,
    store,
)
from tests.service.store.builders import T0, at, audit_entry, record
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM
LEASE = 30.0
POLICIES = ["flag", "keep-remote", "overwrite"]


class _Clock:
    """The workers' clock, moved on by hand (a send that takes longer than the lease)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def _worker(harness: SyncHarness, clock: _Clock, name: str, policy: str) -> Worker:
    settings = replace(harness.settings, lease_seconds=LEASE, conflict_policy=policy)
    return Worker(
        settings,
        harness.store,
        harness.client,
        tags=[harness.server.run_tag],
        clock=clock,
        worker_id=name,
    )


def _server_rating(harness: SyncHarness) -> dict[str, Any]:
    [resource] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    return resource


def _actions(harness: SyncHarness, record_id: str) -> list[str]:
    return [e.action for e in harness.store.list_audit(record_id=record_id)]


def _two_sends_of_one_if_match(
    harness: SyncHarness,
    policy: str,
    *,
    recorded_first: bool,
    meanwhile: Callable[[], object] = lambda: None,
) -> str:
    """v1 of a rating is sent (server version 1). Worker A sends v2 with If-Match 1; its send
    outlasts the lease and lands (server version 2), its answer still on the way. Meanwhile v3
    comes, worker B claims it (v2 superseded: A's lease ran out) and prepares it with If-Match
    1 too; ``meanwhile`` runs, then B sends. ``recorded_first``: A's late record lands before
    B's send; else only after B is done (B's 412 finds the server's version unrecorded)."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1, value=1)])
    assert harness.drain().sent == 1
    clock = _Clock()
    intake_records(harness.store, [R.rating(run, 1, value=2)], at=clock())
    original = harness.client.transaction
    landed, go = threading.Event(), threading.Event()
    sender_a: list[int] = []

    def transaction(requests: Any, **kwargs: Any) -> Any:
        if threading.get_ident() in sender_a and not landed.is_set():
            clock.offset += timedelta(seconds=LEASE + 1)  # the send outlasts its lease
            answer = original(requests, **kwargs)
            landed.set()
            assert go.wait(60)  # its answer comes back late
            return answer
        if recorded_first and not go.is_set():
            go.set()
            thread_a.join(60)  # A has recorded its send late
        meanwhile()
        return original(requests, **kwargs)

    def run_a() -> None:
        sender_a.append(threading.get_ident())
        reports.append(_worker(harness, clock, "worker-a", policy).run_once())

    reports: list[Any] = []
    harness.client.transaction = transaction  # type: ignore[method-assign,assignment]
    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    assert landed.wait(60)
    intake_records(harness.store, [R.rating(run, 1, value=3)], at=clock())
    _worker(harness, clock, "worker-b", policy).run_once()
    go.set()
    thread_a.join(60)
    assert not thread_a.is_alive()
    [report_a] = reports
    assert report_a.lease_lost == 1  # recorded late (mark_sent_late)
    harness.drain()
    return rating.record_id


@pytest.mark.parametrize("recorded_first", [True, False], ids=["recorded-first", "recorded-after"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_412_against_our_own_late_write_sends_again_against_it(
    harness: SyncHarness, policy: str, recorded_first: bool
) -> None:
    """The server ends with v3 (never v2, our older content), the record SENT with the server's
    version and no conflict noted, whatever the policy; each of the three sends has its
    disclosure and Provenance, and no conflict is audited."""
    record_id = _two_sends_of_one_if_match(harness, policy, recorded_first=recorded_first)
    on_server = _server_rating(harness)
    assert value_of(on_server)["value"] == 3
    status = harness.store.sync_status(record_id)
    assert status is not None
    assert (status.record_version, status.state, status.conflict, status.held_reason) == (
        3,
        SyncState.SENT,
        None,
        None,
    )
    assert [s.version_id for s in status.sent] == [on_server["meta"]["versionId"]]
    actions = _actions(harness, record_id)
    assert "conflict" not in actions
    assert (actions.count("disclose"), actions.count("provenance")) == (3, 3)


@pytest.mark.parametrize("value", [7, 1], ids=["new-value", "v1-value-restored"])
@pytest.mark.parametrize("recorded_first", [True, False], ids=["recorded-first", "recorded-after"])
def test_someone_elses_edit_after_our_late_write_is_still_a_conflict(
    harness: SyncHarness, recorded_first: bool, value: int
) -> None:
    """Someone edits the rating after our late v2 landed and before v3 goes (to a value of
    their own, or back to v1's, the version last recorded as sent): v3's 412 is a conflict,
    settled by the policy (flag: held for a person, their edit left on the server)."""

    def edited_remotely() -> None:
        if not edits:
            theirs = _server_rating(harness)
            quantity = {**theirs["valueQuantity"], "value": value}
            edits.append(remote.update(harness.server, theirs, valueQuantity=quantity))

    edits: list[dict[str, Any]] = []
    record_id = _two_sends_of_one_if_match(
        harness, "flag", recorded_first=recorded_first, meanwhile=edited_remotely
    )
    assert value_of(_server_rating(harness))["value"] == value
    status = harness.store.sync_status(record_id)
    assert status is not None
    assert (status.record_version, status.state, status.conflict) == (
        3,
        SyncState.HELD,
        "flagged",
    )
    assert status.held_reason == CONFLICT_HELD_REASON
    assert _actions(harness, record_id).count("conflict") == 1


def test_the_store_lists_every_version_its_items_sent(store: SqlStore) -> None:  # noqa: F811
    """``sent_versions``: the versions any item of the record lists as sent, a send recorded
    late (its item superseded meanwhile) too; an item never sent, or another record, adds none."""
    observation = "Observation"
    store.put_records([record(1, score=1), record(2, patient="Patient/p2")], audit=[], at=T0)
    first, other = store.claim("w1", limit=2, lease_seconds=30, now=at(1))
    sent_v1 = [SentResource(observation, "obs-1", "1")]
    assert store.mark_sent(first.item_id, "w1", sent=sent_v1, audit=[], at=at(2))
    assert store.mark_sent(
        other.item_id, "w1", sent=[SentResource(observation, "obs-2", "1")], audit=[], at=at(2)
    )
    store.put_records([record(1, score=2)], audit=[], at=at(3))
    [v2] = store.claim("w1", limit=1, lease_seconds=30, now=at(4))
    store.put_records([record(1, score=3)], audit=[], at=at(40))  # v2's lease gone: superseded
    store.put_records([record(1, score=4)], audit=[], at=at(41))  # v3 superseded, never sent
    late = SentMark(
        v2.item_id,
        [SentResource(observation, "obs-1", "2")],
        [audit_entry("disclose", "rec-000001", when=at(42))],
    )
    store.mark_sent_late([late], at=at(42))
    assert store.sent_versions("rec-000001") == {
        SentResource(observation, "obs-1", "1"),
        SentResource(observation, "obs-1", "2"),
    }
    assert store.sent_versions("rec-000009") == set()
