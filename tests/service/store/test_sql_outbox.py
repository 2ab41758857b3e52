"""Contract of the outbox: claim order and leases, the compare-and-set ``mark_*`` calls,
release of held items, replay, and the state listings; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fhir_alliance_service.store import SentResource, SqlStore, SyncState
from fhir_alliance_service.store.interface import SentMark
from fhir_alliance_service.store.sql import HELD_FOR_A_PERSON

from .builders import T0, at, audit_entry, record

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}


def _ids(items: list) -> list[str]:  # type: ignore[type-arg]
    return [item.record_id for item in items]


def _seed(store: SqlStore) -> None:
    """p1: records 1, 2, 3 in that order; p2: record 4."""
    store.put_records(
        [record(1), record(2), record(4, patient="Patient/p2"), record(3)], audit=[], at=T0
    )


def test_claim_gives_the_oldest_item_of_each_patient_with_its_body(store: SqlStore) -> None:
    """A claim leases the oldest pending item per patient, oldest first, with what the worker
    needs to send it."""
    _seed(store)
    items = store.claim("w1", limit=10, lease_seconds=30, now=at(1))
    assert _ids(items) == ["rec-000001", "rec-000004"]
    first = items[0]
    assert (first.kind, first.family, first.patient, first.record_version) == (
        "wai-sr",
        "observation",
        "Patient/p1",
        1,
    )
    assert first.body == record(1).body
    assert (first.lease_owner, first.lease_until, first.attempts) == ("w1", at(31), 0)


def test_claim_respects_the_limit_oldest_first(store: SqlStore) -> None:
    """``limit`` caps a claim; the rest stays for the next one."""
    store.put_records([record(n, patient=f"Patient/p{n}") for n in range(5)], audit=[], at=T0)
    assert _ids(store.claim("w1", limit=2, lease_seconds=30, now=T0)) == [
        "rec-000000",
        "rec-000001",
    ]
    assert _ids(store.claim("w2", limit=10, lease_seconds=30, now=T0)) == [
        "rec-000002",
        "rec-000003",
        "rec-000004",
    ]
    assert store.claim("w3", limit=10, lease_seconds=30, now=T0) == []


def test_patient_items_follow_intake_order(store: SqlStore) -> None:
    """A patient's next item becomes claimable only once the older one is done."""
    _seed(store)
    first, _ = store.claim("w1", limit=10, lease_seconds=30, now=at(1))
    assert store.claim("w2", limit=10, lease_seconds=30, now=at(2)) == []  # leased blocks
    assert store.mark_sent(first.item_id, "w1", sent=[], audit=[], at=at(3))
    assert _ids(store.claim("w2", limit=10, lease_seconds=30, now=at(4))) == ["rec-000002"]


def test_a_failed_item_waits_and_blocks_its_patient_until_retry_time(store: SqlStore) -> None:
    """A transient failure is retried at ``next_attempt_at``; meanwhile the patient's later
    items wait behind it."""
    _seed(store)
    first, _ = store.claim("w1", limit=10, lease_seconds=30, now=at(1))
    assert store.mark_failed(
        first.item_id, "w1", outcome=OUTCOME, next_attempt_at=at(100), at=at(2)
    )
    status = store.sync_status("rec-000001")
    assert status is not None
    assert (status.state, status.attempts, status.next_attempt_at, status.last_outcome) == (
        SyncState.FAILED,
        1,
        at(100),
        OUTCOME,
    )
    # p2's item (its lease ran out) is claimable again; p1's items all wait.
    assert _ids(store.claim("w1", limit=10, lease_seconds=30, now=at(99))) == ["rec-000004"]
    [retry] = store.claim("w2", limit=10, lease_seconds=30, now=at(100))
    assert (retry.item_id, retry.attempts, retry.lease_owner) == (first.item_id, 1, "w2")


@pytest.mark.parametrize("outcome_state", [SyncState.HELD, SyncState.DEAD_LETTERED])
def test_held_and_dead_lettered_items_do_not_block(
    store: SqlStore, outcome_state: SyncState
) -> None:
    """A held or dead-lettered item lets the patient's later items go."""
    _seed(store)
    first, _ = store.claim("w1", limit=10, lease_seconds=30, now=at(1))
    if outcome_state is SyncState.HELD:
        assert store.mark_held(first.item_id, "w1", reason="no-permit", audit=[], at=at(2))
    else:
        assert store.mark_dead(first.item_id, "w1", outcome=OUTCOME, audit=[], at=at(2))
    assert _ids(store.claim("w1", limit=10, lease_seconds=30, now=at(3))) == ["rec-000002"]
    assert store.counts_by_state()[outcome_state] == 1


def _mark_calls(item_id: int, worker: str) -> dict[str, Callable[[SqlStore], bool]]:
    """Each ``mark_*``: whether it wrote (``mark_held``/``mark_failed``/``mark_dead`` answer the
    state they left the item in, None when they wrote nothing)."""
    entry = [audit_entry("disclose", "rec-000001")]
    return {
        "sent": lambda s: s.mark_sent(item_id, worker, sent=[], audit=entry, at=at(50)),
        "held": lambda s: (
            s.mark_held(item_id, worker, reason="r", audit=entry, at=at(50)) is SyncState.HELD
        ),
        "failed": lambda s: (
            s.mark_failed(item_id, worker, outcome=OUTCOME, next_attempt_at=at(60), at=at(50))
            is SyncState.FAILED
        ),
        "dead": lambda s: (
            s.mark_dead(item_id, worker, outcome=OUTCOME, audit=entry, at=at(50))
            is SyncState.DEAD_LETTERED
        ),
    }


@pytest.mark.parametrize("mark", ["sent", "held", "failed", "dead"])
def test_an_expired_lease_is_taken_over_and_the_old_owner_loses(store: SqlStore, mark: str) -> None:
    """After the lease expires another worker takes the item; the old owner's ``mark_*``
    returns False and writes nothing, the new owner's succeeds."""
    store.put_records([record(1)], audit=[], at=T0)
    [mine] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    assert store.claim("w2", limit=1, lease_seconds=30, now=at(30)) == []  # still leased
    [taken] = store.claim("w2", limit=1, lease_seconds=30, now=at(31))
    assert (taken.item_id, taken.lease_owner) == (mine.item_id, "w2")
    assert _mark_calls(mine.item_id, "w1")[mark](store) is False
    status = store.sync_status("rec-000001")
    assert status is not None and status.state is SyncState.QUEUED
    assert store.list_audit() == []
    assert _mark_calls(mine.item_id, "w2")[mark](store) is True
    status = store.sync_status("rec-000001")
    assert status is not None and status.state is not SyncState.QUEUED


def test_a_lease_that_expires_without_a_result_counts_as_a_lost_lease(
    store: SqlStore,
) -> None:
    """Each takeover of an expired lease adds one lost lease (not a failed send) and says so
    (``taken_over``); a claim of a fresh item or of a failed one waiting for its retry does not;
    a result forgets the lost leases, and a failed send counts in ``attempts``."""
    store.put_records([record(1)], audit=[], at=T0)
    [first] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    assert (first.attempts, first.lost_leases, first.taken_over) == (0, 0, False)
    [second] = store.claim("w2", limit=1, lease_seconds=30, now=at(31))
    assert (second.attempts, second.lost_leases, second.taken_over) == (0, 1, True)
    [third] = store.claim("w3", limit=1, lease_seconds=30, now=at(61))
    assert (third.attempts, third.lost_leases, third.taken_over) == (0, 2, True)
    status = store.sync_status("rec-000001")
    assert status is not None
    assert (status.state, status.attempts, status.lost_leases) == (SyncState.QUEUED, 0, 2)
    # A failure recorded by the lease holder counts once, and its retry is no takeover.
    assert store.mark_failed(
        third.item_id, "w3", outcome=OUTCOME, next_attempt_at=at(70), at=at(62)
    )
    [retry] = store.claim("w4", limit=1, lease_seconds=30, now=at(70))
    assert (retry.attempts, retry.lost_leases, retry.taken_over) == (1, 0, False)


def test_release_hands_items_back_untried_without_counting_an_attempt(store: SqlStore) -> None:
    """``release`` frees the leases its worker holds (claimable at once, no attempt counted,
    no takeover); another worker's release, or one of a finished item, changes nothing."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    first, second = store.claim("w1", limit=2, lease_seconds=30, now=at(1))
    assert store.release([first.item_id, second.item_id], "stranger", at=at(2)) == 0
    assert store.claim("w2", limit=2, lease_seconds=30, now=at(2)) == []
    assert store.mark_held(second.item_id, "w1", reason="no consent", audit=[], at=at(2))
    assert store.release([first.item_id, second.item_id], "w1", at=at(3)) == 1
    [again] = store.claim("w2", limit=2, lease_seconds=30, now=at(3))
    assert (again.item_id, again.attempts, again.taken_over) == (first.item_id, 0, False)
    held = store.sync_status("rec-000002")
    assert held is not None and held.state is SyncState.HELD


def test_dead_letter_without_counting_keeps_the_attempts_as_they_were(
    store: SqlStore,
) -> None:
    """``mark_dead(count_attempt=False)`` leaves ``attempts`` (failed sends) as they were;
    the default counts the failed attempt."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    store.claim("w1", limit=2, lease_seconds=30, now=at(1))
    first, second = store.claim("w2", limit=2, lease_seconds=30, now=at(31))
    assert store.mark_dead(
        first.item_id, "w2", outcome=OUTCOME, audit=[], at=at(32), count_attempt=False
    )
    assert store.mark_dead(second.item_id, "w2", outcome=OUTCOME, audit=[], at=at(32))
    counted = [store.sync_status(r) for r in ("rec-000001", "rec-000002")]
    assert [(s.state, s.attempts) for s in counted if s is not None] == [
        (SyncState.DEAD_LETTERED, 0),
        (SyncState.DEAD_LETTERED, 1),
    ]


@pytest.mark.parametrize("mark", ["sent", "held", "failed", "dead"])
def test_marking_twice_or_without_a_claim_returns_false(store: SqlStore, mark: str) -> None:
    """A ``mark_*`` by a worker that never claimed the item, or a second one, is refused."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    assert _mark_calls(item.item_id, "stranger")[mark](store) is False
    assert _mark_calls(item.item_id, "w1")[mark](store) is True
    assert _mark_calls(item.item_id, "w1")[mark](store) is False
    assert _mark_calls(item.item_id + 1000, "w1")[mark](store) is False


def test_mark_sent_records_resources_and_audit(store: SqlStore) -> None:
    """``mark_sent`` records the server's ids and versions and writes its audit entries."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    sent = [SentResource("Observation", "abc", "3"), SentResource("Provenance", "def")]
    assert store.mark_sent(
        item.item_id, "w1", sent=sent, audit=[audit_entry("disclose", "rec-000001")], at=at(2)
    )
    status = store.sync_status("rec-000001")
    assert status is not None
    assert (status.state, status.sent, status.updated_at) == (SyncState.SENT, tuple(sent), at(2))
    assert [entry.action for entry in store.list_audit(record_id="rec-000001")] == ["disclose"]
    assert store.claim("w1", limit=1, lease_seconds=30, now=at(3)) == []


def test_mark_sent_many_records_each_item_and_skips_one_whose_lease_was_lost(
    store: SqlStore,
) -> None:
    """``mark_sent_many`` records every item it still holds, with its resources and audit, in one
    call; an item another worker took over writes nothing, neither its state nor its audit."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    first, second = store.claim("w1", limit=10, lease_seconds=30, now=at(1))
    [taken] = store.claim("w2", limit=1, lease_seconds=30, now=at(40))  # w1's leases ran out
    assert taken.item_id == first.item_id
    marks = [
        SentMark(
            item.item_id,
            [SentResource("Observation", f"obs-{n}", "1")],
            [audit_entry("disclose", item.record_id)],
        )
        for n, item in enumerate((first, second))
    ]
    assert store.mark_sent_many("w1", marks, at=at(41)) == [False, True]
    lost, landed = store.sync_status("rec-000001"), store.sync_status("rec-000002")
    assert lost is not None and landed is not None
    assert (lost.state, lost.sent) == (SyncState.QUEUED, ())
    assert (landed.state, landed.sent, landed.updated_at) == (
        SyncState.SENT,
        (SentResource("Observation", "obs-1", "1"),),
        at(41),
    )
    assert store.list_audit(record_id="rec-000001") == []
    assert [e.action for e in store.list_audit(record_id="rec-000002")] == ["disclose"]
    assert store.mark_sent_many("w1", marks, at=at(42)) == [False, False]


def test_mark_held_keeps_the_reason(store: SqlStore) -> None:
    """A held item shows why it is held."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    assert store.mark_held(item.item_id, "w1", reason="no-permit:PSYTHPN", audit=[], at=at(2))
    status = store.sync_status("rec-000001")
    assert status is not None
    assert (status.state, status.held_reason) == (SyncState.HELD, "no-permit:PSYTHPN")


def test_release_held_requeues_one_patients_held_items(store: SqlStore) -> None:
    """``release_held`` re-queues every held item of that patient, and only those."""
    store.put_records([record(1), record(2, patient="Patient/p2"), record(3)], audit=[], at=T0)
    for _ in range(2):
        for item in store.claim("w1", limit=10, lease_seconds=30, now=at(1)):
            assert store.mark_held(item.item_id, "w1", reason="no-permit", audit=[], at=at(2))
    assert store.counts_by_state()[SyncState.HELD] == 3
    assert store.release_held("Patient/p1", at=at(3)) == 2
    assert store.release_held("Patient/p1", at=at(4)) == 0
    counts = store.counts_by_state()
    assert (counts[SyncState.QUEUED], counts[SyncState.HELD]) == (2, 1)
    status = store.sync_status("rec-000001")
    assert status is not None and (status.held_reason, status.updated_at) == (None, at(3))
    assert _ids(store.claim("w1", limit=10, lease_seconds=30, now=at(5))) == ["rec-000001"]


def test_release_all_held_requeues_every_patients_held_items_but_a_persons(
    store: SqlStore,
) -> None:
    """``release_all_held`` re-queues what a consent change would, of every patient; the draft
    and unsigned-note holds only with ``notes``; a conflict flagged for a person never."""
    draft, unsigned, conflict = HELD_FOR_A_PERSON[1], HELD_FOR_A_PERSON[2], HELD_FOR_A_PERSON[0]
    reasons = ["no-permit", "no-permit", draft, unsigned, conflict]
    store.put_records(
        [record(n, patient=f"Patient/p{n}") for n in range(len(reasons))], audit=[], at=T0
    )
    items = store.claim("w1", limit=10, lease_seconds=30, now=at(1))
    for item, reason in zip(items, reasons, strict=True):
        flag = "flagged" if reason == conflict else None
        assert store.mark_held(item.item_id, "w1", reason=reason, audit=[], at=at(2), conflict=flag)
    assert store.release_all_held(notes=False, at=at(3)) == 2
    assert store.release_all_held(notes=True, at=at(4)) == 2
    assert store.release_all_held(notes=True, at=at(5)) == 0
    counts = store.counts_by_state()
    assert (counts[SyncState.QUEUED], counts[SyncState.HELD]) == (4, 1)


def test_replay_requeues_dead_letters_with_attempts_reset(store: SqlStore) -> None:
    """``replay`` re-queues one record's dead-lettered items, or all of them; attempts
    start again at 0."""
    store.put_records([record(n, patient=f"Patient/p{n}") for n in range(3)], audit=[], at=T0)
    for item in store.claim("w1", limit=10, lease_seconds=30, now=at(1)):
        assert store.mark_failed(
            item.item_id, "w1", outcome=OUTCOME, next_attempt_at=at(2), at=at(1)
        )
    for item in store.claim("w1", limit=10, lease_seconds=30, now=at(2)):
        assert store.mark_dead(item.item_id, "w1", outcome=OUTCOME, audit=[], at=at(3))
    dead = store.sync_status("rec-000000")
    assert dead is not None and (dead.state, dead.attempts) == (SyncState.DEAD_LETTERED, 2)
    assert store.replay("rec-000000", at=at(4)).requeued == 1
    assert store.replay("rec-000000", at=at(4)).requeued == 0
    replayed = store.sync_status("rec-000000")
    assert replayed is not None
    assert (replayed.state, replayed.attempts, replayed.next_attempt_at) == (
        SyncState.QUEUED,
        0,
        None,
    )
    assert store.counts_by_state()[SyncState.DEAD_LETTERED] == 2
    assert store.replay(at=at(5)).requeued == 2
    assert store.counts_by_state()[SyncState.DEAD_LETTERED] == 0
    assert len(store.claim("w2", limit=10, lease_seconds=30, now=at(6))) == 3


def test_counts_and_listing_by_state(store: SqlStore) -> None:
    """``counts_by_state`` names every state (zero included); ``list_by_state`` pages by item."""
    store.put_records([record(n, patient=f"Patient/p{n}") for n in range(5)], audit=[], at=T0)
    items = store.claim("w1", limit=2, lease_seconds=30, now=at(1))
    for item in items:
        assert store.mark_sent(item.item_id, "w1", sent=[], audit=[], at=at(2))
    counts = store.counts_by_state()
    assert set(counts) == set(SyncState)
    assert (counts[SyncState.SENT], counts[SyncState.QUEUED], counts[SyncState.HELD]) == (2, 3, 0)
    queued = store.list_by_state(SyncState.QUEUED, limit=2)
    assert [s.record_id for s in queued] == ["rec-000002", "rec-000003"]
    assert store.list_by_state(SyncState.HELD) == []
    sent = store.list_by_state(SyncState.SENT)
    assert [s.record_id for s in sent] == ["rec-000000", "rec-000001"]
    item_ids = [item.item_id for item in items]
    assert [s.record_id for s in store.list_by_state(SyncState.SENT, after=item_ids[0])] == [
        "rec-000001"
    ]


def test_claim_times_are_instants_not_wall_clock_text(store: SqlStore) -> None:
    """Leases compare as instants whatever zone the worker's clock uses."""
    from zoneinfo import ZoneInfo

    store.put_records([record(1)], audit=[], at=T0)
    tokyo = ZoneInfo("Asia/Tokyo")
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1).astimezone(tokyo))
    assert item.lease_until == at(31)
    # 29 s later in another zone: still leased.
    assert store.claim("w2", limit=1, lease_seconds=30, now=at(30)) == []
    later = (at(31) + timedelta(microseconds=1)).astimezone(ZoneInfo("America/New_York"))
    assert len(store.claim("w2", limit=1, lease_seconds=30, now=later)) == 1
