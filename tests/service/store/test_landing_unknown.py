"""Contract of the *landing unknown* note (migration 0010): a send whose answer was lost may have
landed, so the failure that records it notes the item, whoever holds it by then; the note survives
the item being superseded, held or dead-lettered; ``claim_landing_checks`` hands such items out for
a read-back under a lease (once each, across workers: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL),
and ``record_landing_checks`` settles them once: landed (SENT with its audit) or not there (the
note dropped). Any send recorded drops it too. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from fhir_alliance_service.store import OutboxItem, SentResource, SqlStore, SyncState, open_store
from fhir_alliance_service.store.interface import AuditEntry, SentMark
from fhir_alliance_service.store.tables import outbox
from fhir_alliance_service.sync.leases import is_store_outage
from sqlalchemy import select

from .builders import T0, at, audit_entry, record

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
LEASE = 30


def _lost(store: SqlStore, worker: str = "w1", *, now: float = 1, check: float = 40) -> int:
    """Claim version 1 of the record and fail it as a lost answer, to be read back at ``check``
    (the worker's ``mark_failed`` with ``landing_check_at``); the item id."""
    [item] = store.claim(worker, limit=1, lease_seconds=LEASE, now=at(now))
    store.mark_failed(
        item.item_id,
        worker,
        outcome=OUTCOME,
        next_attempt_at=at(now + 1),
        at=at(now),
        landing_check_at=at(check),
    )
    return item.item_id


def _mark(item_id: int, version: str = "1") -> SentMark:
    return SentMark(
        item_id,
        [SentResource("Observation", "obs-1", version)],
        [audit_entry("disclose", "rec-000001", when=at(100))],
    )


def _row(store: SqlStore, item_id: int) -> tuple[str, datetime | None, datetime]:
    with store.engine.connect() as connection:
        row = connection.execute(
            select(outbox.c.state, outbox.c.landing_check_at, outbox.c.updated_at).where(
                outbox.c.item_id == item_id
            )
        ).one()
    return row.state, row.landing_check_at, row.updated_at


def _disclosures(store: SqlStore) -> int:
    return len([e for e in store.list_audit(record_id="rec-000001") if e.action == "disclose"])


def test_a_read_back_that_could_not_tell_stays_noted_and_is_due_when_given(
    store: SqlStore,
) -> None:
    """A read-back item comes with when it was left unsent (``left_unsent_at``: the worker's
    wait grows with it); ``record_landing_checks(later=…)`` keeps the note of one whose
    read-back failed and makes it due at the time given, not before; an item whose note is gone
    meanwhile is not noted again by it. A claim's items have no ``left_unsent_at``."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    item_id = _lost(store)
    store.put_records([record(1, score=2)], audit=[], at=at(2))  # unleased: superseded at once
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(40))
    assert check.left_unsent_at == at(2)
    assert store.record_landing_checks([], [], at=at(41), later={item_id: at(500)}) == []
    assert _row(store, item_id) == (SyncState.SUPERSEDED.value, at(500), at(2))
    assert store.landing_unknown_count() == 1
    assert store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(499)) == []
    [again] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(500))
    assert again.item_id == item_id
    assert store.record_landing_checks([], [item_id], at=at(501)) == []  # not there after all
    assert store.record_landing_checks([], [], at=at(502), later={item_id: at(900)}) == []
    assert _row(store, item_id)[1] is None and store.landing_unknown_count() == 0
    [claimed] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(503))
    assert claimed.record_version == 2 and claimed.left_unsent_at is None


def test_a_lost_answer_is_noted_and_read_back_only_once_nothing_will_send_it(
    store: SqlStore,
) -> None:
    """A failed item noted *landing unknown* is left to its own retry (not handed out while
    pending); once a newer version supersedes it, it is handed out when its check is due, under
    a lease: not again while the lease runs, again after it."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    item_id = _lost(store)
    status = store.sync_status("rec-000001")
    assert status is not None and (status.state, status.landing_unknown) == (SyncState.FAILED, True)
    assert store.landing_unknown_count() == 1
    assert store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(50)) == []  # pending
    store.put_records([record(1, score=2)], audit=[], at=at(2))  # unleased: superseded at once
    assert _row(store, item_id)[0] == SyncState.SUPERSEDED.value
    assert store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(39)) == []  # not due
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(40))
    assert (check.item_id, check.record_version, check.lease_until) == (item_id, 1, at(70))
    assert check.body == record(1, score=1).body
    assert store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(69)) == []
    [again] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(70))
    assert again.item_id == item_id
    assert store.landing_unknown_count() == 1


def test_a_records_read_backs_are_handed_out_due_or_not(store: SqlStore) -> None:
    """``claim_landing_checks(record_id=…)`` (a newer version's 412 found an older one's content
    on the server) hands out that record's noted items left unsent before they are due, and
    while another read-back has them in hand; never a pending one, nor another record's. The
    finding is recorded once whichever read-back records it."""

    def record_checks(now: float) -> list[OutboxItem]:
        return store.claim_landing_checks(
            limit=10, lease_seconds=LEASE, now=at(now), record_id="rec-000001"
        )

    store.put_records([record(1, score=1), record(2, score=1)], audit=[], at=T0)
    [first, second] = store.claim("w1", limit=2, lease_seconds=LEASE, now=at(1), per_patient=2)
    for item in (first, second):
        store.mark_failed(
            item.item_id,
            "w1",
            outcome=OUTCOME,
            next_attempt_at=at(2),
            at=at(1),
            landing_check_at=at(40),
        )
    assert record_checks(3) == []  # pending: its retry finds out
    store.put_records([record(1, score=2), record(2, score=2)], audit=[], at=at(2))
    assert store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(3)) == []  # not due
    [check] = record_checks(3)
    assert (check.item_id, check.record_version, check.lease_until) == (first.item_id, 1, at(33))
    [again] = record_checks(4)
    assert again.item_id == first.item_id
    assert store.record_landing_checks([_mark(first.item_id)], [], at=at(5)) == [True]
    assert store.record_landing_checks([_mark(first.item_id)], [], at=at(6)) == [False]
    assert _disclosures(store) == 1
    assert record_checks(7) == []
    assert store.landing_unknown_count() == 1  # the other record's, due at 40
    [other] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(40))
    assert other.item_id == second.item_id


def test_a_read_back_that_finds_it_landed_records_it_sent_once(store: SqlStore) -> None:
    """Landed: the superseded item becomes SENT with the server's version and its disclosure,
    the note dropped; the same finding recorded again (another worker, after the lease) writes
    nothing more."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    item_id = _lost(store)
    store.put_records([record(1, score=2)], audit=[], at=at(2))
    store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(40))
    assert store.record_landing_checks([_mark(item_id)], [], at=at(41)) == [True]
    assert store.record_landing_checks([_mark(item_id)], [], at=at(80)) == [False]
    last = store.last_sent("rec-000001")
    assert last is not None and (last.item_id, last.record_version) == (item_id, 1)
    assert last.sent == (SentResource("Observation", "obs-1", "1"),)
    assert not last.landing_unknown
    assert [s.item_id for s in store.sent_items("Patient/p1")] == [item_id]
    assert _disclosures(store) == 1
    assert store.landing_unknown_count() == 0
    status = store.sync_status("rec-000001")
    assert status is not None and (status.record_version, status.state) == (2, SyncState.QUEUED)


def test_a_read_back_that_finds_nothing_drops_the_note_and_records_nothing(
    store: SqlStore,
) -> None:
    """Not there: the held item stays HELD as it was (its ``updated_at``, the hold's age, too),
    the note is dropped and nothing is audited; a late finding that it landed then changes
    nothing."""
    store.put_records([record(1)], audit=[], at=T0)
    item_id = _lost(store)
    [retry] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(3))
    assert store.mark_held(retry.item_id, "w2", reason="no consent", audit=[], at=at(4))
    held = _row(store, item_id)
    assert held[0] == SyncState.HELD.value and held[1] is not None
    store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(40))
    assert store.record_landing_checks([], [item_id], at=at(41)) == []
    assert _row(store, item_id) == (SyncState.HELD.value, None, held[2])
    assert store.record_landing_checks([_mark(item_id)], [], at=at(42)) == [False]
    assert store.landing_unknown_count() == 0 and _disclosures(store) == 0
    assert store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(500)) == []


def test_a_send_recorded_drops_the_note(store: SqlStore) -> None:
    """The retry of a noted item is answered: SENT, nothing left to read back."""
    store.put_records([record(1)], audit=[], at=T0)
    item_id = _lost(store)
    [retry] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(3))
    assert store.mark_sent(retry.item_id, "w2", sent=[], audit=[], at=at(4))
    assert _row(store, item_id)[1] is None
    assert store.landing_unknown_count() == 0


def test_a_dead_letter_of_a_lost_answer_is_noted_and_read_back(store: SqlStore) -> None:
    """The last attempt's answer was lost and the item is dead-lettered: noted, read back."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    state = store.mark_dead(
        item.item_id, "w1", outcome=OUTCOME, audit=[], at=at(2), landing_check_at=at(32)
    )
    assert state is SyncState.DEAD_LETTERED
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(32))
    assert check.item_id == item.item_id
    assert store.record_landing_checks([_mark(item.item_id)], [], at=at(33)) == [True]
    status = store.sync_status("rec-000001")
    assert status is not None and status.state is SyncState.SENT


def test_a_lost_answer_is_noted_whoever_holds_the_item_but_never_on_a_sent_one(
    store: SqlStore,
) -> None:
    """w1's lease ran out during its send and a newer version came: the claim superseded the
    item, noting it (its lease expired: the send may have landed). w1's failure then writes no
    outcome (lease lost), and keeps that earlier note. An item SENT meanwhile is not noted."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(10))  # leased: waits behind it
    store.claim("w2", limit=10, lease_seconds=LEASE, now=at(40))  # supersedes v1, claims v2
    assert _row(store, item.item_id)[:2] == (SyncState.SUPERSEDED.value, at(40))
    lost = store.mark_failed(
        item.item_id,
        "w1",
        outcome=OUTCOME,
        next_attempt_at=at(42),
        at=at(41),
        landing_check_at=at(71),
    )
    assert lost is None
    assert _row(store, item.item_id)[:2] == (SyncState.SUPERSEDED.value, at(40))

    store.put_records([record(2)], audit=[], at=at(100))
    [other] = store.claim("w3", limit=1, lease_seconds=LEASE, now=at(101))
    store.mark_sent_late([SentMark(other.item_id, [], [])], at=at(102))  # another's late record
    assert (
        store.mark_failed(
            other.item_id,
            "w3",
            outcome=OUTCOME,
            next_attempt_at=at(104),
            at=at(103),
            landing_check_at=at(133),
        )
        is None
    )
    assert _row(store, other.item_id)[:2] == (SyncState.SENT.value, None)


def test_an_item_taken_over_from_an_expired_lease_is_noted_in_the_claim(store: SqlStore) -> None:
    """A worker may die after its send landed and before recording it: the claim that takes the
    item over from its expired lease notes it *landing unknown* (due at once), in the same
    transaction. Held by the takeover, it is read back; sent by the takeover, the note goes.
    A first claim, of an item nobody held, notes nothing."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    first = store.claim("w1", limit=10, lease_seconds=LEASE, now=at(1))
    assert [_row(store, i.item_id)[1] for i in first] == [None, None]
    held, sent = store.claim("w2", limit=10, lease_seconds=LEASE, now=at(40))
    assert held.taken_over and sent.taken_over
    assert _row(store, held.item_id)[1] == at(40) == _row(store, sent.item_id)[1]
    assert store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(41)) == []  # pending
    store.mark_held(held.item_id, "w2", reason="no consent", audit=[], at=at(41))
    store.mark_sent(sent.item_id, "w2", sent=[], audit=[], at=at(41))
    assert _row(store, sent.item_id)[1] is None
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(42))
    assert check.item_id == held.item_id
    assert store.record_landing_checks([_mark(held.item_id)], [], at=at(43)) == [True]
    assert _disclosures(store) == 1


def test_a_late_record_of_a_send_a_read_back_recorded_first_is_not_audited_twice(
    store: SqlStore,
) -> None:
    """The worker whose lease was taken was not dead, only slow: a read-back found its send and
    recorded it before the worker's own late record came. The same server version is the same
    write: recorded once, one disclosure. A later write of it (another version) is another."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    store.claim("w2", limit=1, lease_seconds=LEASE, now=at(40))  # w1's lease taken over
    store.mark_held(item.item_id, "w2", reason="no consent", audit=[], at=at(41))
    store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(42))
    assert store.record_landing_checks([_mark(item.item_id)], [], at=at(43)) == [True]
    assert store.mark_sent_many("w1", [_mark(item.item_id)], at=at(44)) == [False]
    store.mark_sent_late([_mark(item.item_id)], at=at(44))  # w1's answer came at last
    assert _disclosures(store) == 1
    store.mark_sent_late([_mark(item.item_id, "2")], at=at(45))
    assert _disclosures(store) == 2
    last = store.last_sent("rec-000001")
    assert last is not None and last.sent == (SentResource("Observation", "obs-1", "2"),)


@pytest.mark.parametrize("by", ["claim", "intake"])
def test_an_item_superseded_from_an_expired_lease_is_noted(store: SqlStore, by: str) -> None:
    """The same when the item is superseded instead of taken over: version 2 came while the dead
    worker's lease still ran (the next claim supersedes version 1) or after it expired (intake
    supersedes it). An item superseded that nobody held is not noted."""
    store.put_records([record(1, score=1), record(2, patient="Patient/p2")], audit=[], at=T0)
    items = store.claim("w1", limit=10, lease_seconds=LEASE, now=at(1))
    if by == "claim":
        store.put_records([record(1, score=2)], audit=[], at=at(10))  # leased: waits behind it
        assert _row(store, items[0].item_id)[0] == SyncState.QUEUED.value
        store.claim("w2", limit=10, lease_seconds=LEASE, now=at(40))
    else:
        store.put_records([record(1, score=2)], audit=[], at=at(40))
    assert _row(store, items[0].item_id)[:2] == (SyncState.SUPERSEDED.value, at(40))
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(40))
    assert (check.item_id, check.record_version) == (items[0].item_id, 1)

    store.put_records([record(3, score=1, patient="Patient/p3")], audit=[], at=at(50))
    store.put_records([record(3, score=2, patient="Patient/p3")], audit=[], at=at(51))
    status = store.sync_status("rec-000003")
    assert status is not None and status.record_version == 2
    assert store.landing_unknown_count() == 1 + (by == "claim")  # w2 holds record 2 now


def test_a_hand_back_notes_the_items_only_when_asked(store: SqlStore) -> None:
    """``release`` with ``landing_check_at`` (items whose send started, handed back after a
    database outage) notes them in the same transaction; without it, nothing is noted."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    sent, untried = store.claim("w1", limit=10, lease_seconds=LEASE, now=at(1))
    assert store.release([sent.item_id], "w1", at=at(2), landing_check_at=at(2)) == 1
    assert store.release([untried.item_id], "w1", at=at(2)) == 1
    assert _row(store, sent.item_id)[:2] == (SyncState.QUEUED.value, at(2))
    assert _row(store, untried.item_id)[1] is None
    again = store.claim("w1", limit=10, lease_seconds=LEASE, now=at(3))
    assert not any(i.taken_over for i in again)
    store.mark_held(sent.item_id, "w1", reason="no consent", audit=[], at=at(4))
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(4))
    assert check.item_id == sent.item_id


def _overwrite(when: float) -> AuditEntry:
    """An overwrite's conflict AuditEvent (the worker's ``audit.two_way_event``), made at ``when``."""
    entry = audit_entry("conflict", "rec-000001", when=at(when))
    return replace(entry, resource={**entry.resource, "outcomeDesc": "overwritten"})


def _lost_overwrite(store: SqlStore, item_id: int) -> Any:
    """The item's ``lost_overwrite`` column; None only for SQL NULL (not JSON ``null``)."""
    with store.engine.connect() as connection:
        kept = connection.execute(
            select(outbox.c.lost_overwrite.is_(None), outbox.c.lost_overwrite).where(
                outbox.c.item_id == item_id
            )
        ).one()
    return None if kept[0] else ("kept", kept[1])


def _conflicts(store: SqlStore) -> list[AuditEntry]:
    return [e for e in store.list_audit(record_id="rec-000001") if e.action == "conflict"]


def test_a_lost_overwrite_is_kept_with_the_note_and_recorded_with_the_send_once(
    store: SqlStore,
) -> None:
    """An overwrite's answer was lost: its conflict AuditEvent is kept with the note, handed
    out with the item (its retry's claim, and the read-back once it is superseded), not audited
    yet. A read-back that finds it landed records the item SENT noted ``overwritten`` with that
    AuditEvent, in one transaction, and the kept copy goes with the note; recorded again (another
    worker), nothing more is written."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    assert item.lost_overwrite is None
    overwrite = _overwrite(1)
    store.mark_failed(
        item.item_id,
        "w1",
        outcome=OUTCOME,
        next_attempt_at=at(2),
        at=at(1),
        landing_check_at=at(31),
        lost_overwrite=overwrite,
    )
    assert _conflicts(store) == []
    [retry] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(3))
    assert retry.lost_overwrite == overwrite
    store.mark_failed(  # the retry's answer lost too, no overwrite of its own: the first kept
        retry.item_id,
        "w2",
        outcome=OUTCOME,
        next_attempt_at=at(5),
        at=at(4),
        landing_check_at=at(34),
    )
    store.put_records([record(1, score=2)], audit=[], at=at(6))  # unleased: superseded at once
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(34))
    assert check.lost_overwrite == overwrite
    mark = replace(
        _mark(item.item_id), audit=[*_mark(item.item_id).audit, overwrite], conflict="overwritten"
    )
    assert store.record_landing_checks([mark], [], at=at(35)) == [True]
    [sent] = [s for s in store.list_by_state(SyncState.SENT) if s.item_id == item.item_id]
    assert (sent.conflict, sent.landing_unknown) == ("overwritten", False)
    assert [e.resource for e in _conflicts(store)] == [overwrite.resource]
    assert _disclosures(store) == 1
    assert _lost_overwrite(store, item.item_id) is None
    assert store.record_landing_checks([mark], [], at=at(80)) == [False]
    store.mark_sent_late([mark], at=at(81))  # the same write, recorded late: not again
    assert len(_conflicts(store)) == 1 and _disclosures(store) == 1


@pytest.mark.parametrize("settled", ["not-there", "sent", "kept-remote"])
def test_a_lost_overwrite_goes_with_the_note(store: SqlStore, settled: str) -> None:
    """The kept AuditEvent survives a dead letter and its replay, and goes when the note does:
    the read-back of the item, held at its retry, finds nothing (nothing is audited), or the
    retry is recorded SENT (a send of its own, or the conflict policy ``keep-remote``)."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    store.mark_dead(
        item.item_id,
        "w1",
        outcome=OUTCOME,
        audit=[],
        at=at(1),
        landing_check_at=at(31),
        lost_overwrite=_overwrite(1),
    )
    store.replay("rec-000001", at=at(2))
    [retry] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(3))
    assert retry.lost_overwrite == _overwrite(1)
    if settled == "not-there":
        store.mark_held(retry.item_id, "w2", reason="no consent", audit=[], at=at(4))
        [again] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(31))
        assert again.lost_overwrite == _overwrite(1)
        assert store.record_landing_checks([], [item.item_id], at=at(32)) == []
    elif settled == "sent":
        assert store.mark_sent_many("w2", [_mark(item.item_id)], at=at(4)) == [True]
    else:
        assert store.mark_sent(
            item.item_id, "w2", sent=[], audit=[], at=at(4), conflict="kept-remote"
        )
    assert _lost_overwrite(store, item.item_id) is None
    assert _conflicts(store) == []


def test_a_later_lost_overwrite_replaces_the_earlier_one_whoever_holds_the_item(
    store: SqlStore,
) -> None:
    """The retry overwrote again and lost that answer too: its AuditEvent replaces the first
    (which, the 412 said, had not landed). Written with the note also when the worker lost its
    lease meanwhile (the item is another worker's by then), never on an item SENT."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    store.mark_failed(
        item.item_id,
        "w1",
        outcome=OUTCOME,
        next_attempt_at=at(2),
        at=at(1),
        landing_check_at=at(31),
        lost_overwrite=_overwrite(1),
    )
    store.claim("w2", limit=1, lease_seconds=LEASE, now=at(3))
    store.claim("w3", limit=1, lease_seconds=LEASE, now=at(40))  # w2's lease taken over
    lost = store.mark_failed(
        item.item_id,
        "w2",
        outcome=OUTCOME,
        next_attempt_at=at(42),
        at=at(41),
        landing_check_at=at(71),
        lost_overwrite=_overwrite(41),
    )
    assert lost is None  # w3 holds it: no outcome of w2's written, the overwrite kept
    [held] = store.claim("w4", limit=1, lease_seconds=LEASE, now=at(80))
    assert held.lost_overwrite == _overwrite(41)
    assert store.mark_sent(item.item_id, "w4", sent=[], audit=[], at=at(81))
    assert (
        store.mark_failed(
            item.item_id,
            "w3",
            outcome=OUTCOME,
            next_attempt_at=at(83),
            at=at(82),
            landing_check_at=at(112),
            lost_overwrite=_overwrite(82),
        )
        is None
    )
    assert _lost_overwrite(store, item.item_id) is None
    assert _row(store, item.item_id)[:2] == (SyncState.SENT.value, None)


def test_an_overwrite_noted_before_its_send_is_handed_to_the_takeover_of_a_dead_worker(
    store: SqlStore,
) -> None:
    """``note_overwrite``: before an overwrite goes out, its conflict AuditEvent is written on
    the item under the worker's lease (compare-and-set: another worker's note writes nothing),
    not audited and leaving the item's state alone. The worker dies: the claim taking the item
    over from the expired lease notes it *landing unknown* and hands the overwrite out with it;
    the takeover's record of the send it found (``overwritten``, with that AuditEvent) audits
    it once and drops it."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    before = _row(store, item.item_id)
    assert store.note_overwrite(item.item_id, "w1", _overwrite(2)) is True
    assert store.note_overwrite(item.item_id, "w9", _overwrite(3)) is False  # not its lease
    assert _row(store, item.item_id) == before  # state, note and updated_at as they were
    assert _lost_overwrite(store, item.item_id) is not None
    assert _conflicts(store) == []
    assert store.landing_unknown_count() == 0

    [taken] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(40))  # w1 died
    assert taken.taken_over and taken.lost_overwrite == _overwrite(2)
    assert _row(store, item.item_id)[1] == at(40)
    mark = replace(
        _mark(item.item_id),
        audit=[*_mark(item.item_id).audit, _overwrite(2)],
        conflict="overwritten",
    )
    assert store.mark_sent_many("w2", [mark], at=at(41)) == [True]
    assert [e.resource for e in _conflicts(store)] == [_overwrite(2).resource]
    assert _lost_overwrite(store, item.item_id) is None
    assert _row(store, item.item_id)[:2] == (SyncState.SENT.value, None)
    assert store.note_overwrite(item.item_id, "w2", _overwrite(42)) is False  # SENT: never
    assert _lost_overwrite(store, item.item_id) is None


@pytest.mark.parametrize(
    "result", ["sent", "failed", "dead", "superseded", "lost", "noted-before", "lease-lost"]
)
def test_an_overwrite_noted_before_its_send_is_kept_only_while_it_may_have_landed(
    store: SqlStore, result: str
) -> None:
    """The worker records its overwrite's result: SENT drops the note (the mark audits it); a
    failure answered by the server (FAILED, DEAD_LETTERED, or SUPERSEDED by a newer version)
    overwrote nothing and drops it, unless the item is noted *landing unknown* (an earlier send
    of it may have landed: kept with that note, to be read back); a lost answer keeps it with
    its note; a worker whose lease was lost writes nothing, and the taker has it."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    if result == "noted-before":  # an earlier overwrite's answer lost, then its retry's 412
        store.mark_failed(
            item.item_id,
            "w1",
            outcome=OUTCOME,
            next_attempt_at=at(2),
            at=at(1),
            landing_check_at=at(31),
            lost_overwrite=_overwrite(1),
        )
        [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(3))
    assert store.note_overwrite(item.item_id, "w1", _overwrite(4))
    if result == "superseded":
        store.put_records([record(1, score=2)], audit=[], at=at(5))  # leased: waits behind it
    if result == "sent":
        assert store.mark_sent_many("w1", [_mark(item.item_id)], at=at(6)) == [True]
    elif result == "dead":
        state = store.mark_dead(item.item_id, "w1", outcome=OUTCOME, audit=[], at=at(6))
        assert state is SyncState.DEAD_LETTERED
    elif result == "lease-lost":
        store.claim("w2", limit=1, lease_seconds=LEASE, now=at(40))
        state = store.mark_failed(
            item.item_id, "w1", outcome=OUTCOME, next_attempt_at=at(42), at=at(41)
        )
        assert state is None
    else:
        state = store.mark_failed(
            item.item_id,
            "w1",
            outcome=OUTCOME,
            next_attempt_at=at(7),
            at=at(6),
            landing_check_at=at(36) if result == "lost" else None,
            lost_overwrite=_overwrite(4) if result == "lost" else None,
        )
        assert state is (SyncState.SUPERSEDED if result == "superseded" else SyncState.FAILED)
    kept = _lost_overwrite(store, item.item_id)
    if result in ("lost", "noted-before", "lease-lost"):
        assert kept is not None
        [again] = store.claim("w3", limit=1, lease_seconds=LEASE, now=at(80))
        assert again.lost_overwrite == _overwrite(4)
    else:
        assert kept is None
    assert _conflicts(store) == []


AGAINST = (SentResource("Observation", "obs-1", "7"),)


def test_a_lost_overwrite_keeps_the_versions_it_was_written_over(store: SqlStore) -> None:
    """``note_overwrite(against=…)`` and ``mark_failed(lost_overwrite_against=…)`` (also by a
    worker whose lease was lost) keep the server's versions the overwrite was written over
    with its AuditEvent, handed out with the item by ``claim`` and ``claim_landing_checks``
    (``lost_overwrite_against``); an overwrite kept without them has none."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=LEASE, now=at(1))
    assert item.lost_overwrite_against == ()
    assert store.note_overwrite(item.item_id, "w1", _overwrite(2), against=AGAINST)
    [taken] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(40))  # w1 died
    assert (taken.lost_overwrite, taken.lost_overwrite_against) == (_overwrite(2), AGAINST)
    store.claim("w3", limit=1, lease_seconds=LEASE, now=at(80))  # w2's lease taken over
    later = (SentResource("Observation", "obs-1", "9"),)
    lost = store.mark_failed(
        item.item_id,
        "w2",
        outcome=OUTCOME,
        next_attempt_at=at(82),
        at=at(81),
        landing_check_at=at(111),
        lost_overwrite=_overwrite(41),
        lost_overwrite_against=later,
    )
    assert lost is None  # w3 holds it: kept all the same
    store.mark_held(item.item_id, "w3", reason="no consent", audit=[], at=at(82))
    [check] = store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(111))
    assert (check.lost_overwrite, check.lost_overwrite_against) == (_overwrite(41), later)
    assert store.record_landing_checks([], [item.item_id], at=at(112)) == []
    store.put_records([record(1, score=2)], audit=[], at=at(113))
    [newer] = store.claim("w4", limit=1, lease_seconds=LEASE, now=at(114))
    assert store.note_overwrite(newer.item_id, "w4", _overwrite(115))
    store.mark_failed(
        newer.item_id,
        "w4",
        outcome=OUTCOME,
        next_attempt_at=at(116),
        at=at(116),
        landing_check_at=at(146),
        lost_overwrite=_overwrite(115),
    )
    [retry] = store.claim("w4", limit=1, lease_seconds=LEASE, now=at(117))
    assert (retry.lost_overwrite, retry.lost_overwrite_against) == (_overwrite(115), ())


def test_a_lost_overwrite_its_retry_did_not_find_is_settled_once(store: SqlStore) -> None:
    """``settle_lost_overwrite``: the retry's 412 did not find the kept overwrite on the server.
    Under the worker's lease, while it is kept, the kept copy is dropped and the AuditEvent
    given is added, in one write (the state and the note left as they were); another worker, or
    a second settlement, writes nothing; an overwrite shown never to have landed is dropped
    with nothing added."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    items = store.claim("w1", limit=2, lease_seconds=LEASE, now=at(1))
    for item in items:
        store.mark_failed(
            item.item_id,
            "w1",
            outcome=OUTCOME,
            next_attempt_at=at(2),
            at=at(1),
            landing_check_at=at(31),
            lost_overwrite=_overwrite(1),
            lost_overwrite_against=AGAINST,
        )
    first, second = store.claim("w2", limit=2, lease_seconds=LEASE, now=at(3))
    before = _row(store, first.item_id)
    unknown = replace(
        _overwrite(1), resource={**_overwrite(1).resource, "outcomeDesc": "landing-unknown"}
    )
    assert store.settle_lost_overwrite(first.item_id, "w9", audit=[unknown]) is False
    assert store.settle_lost_overwrite(first.item_id, "w2", audit=[unknown]) is True
    assert store.settle_lost_overwrite(first.item_id, "w2", audit=[unknown]) is False
    assert [e.resource for e in _conflicts(store)] == [unknown.resource]
    assert _lost_overwrite(store, first.item_id) is None
    assert _row(store, first.item_id) == before
    assert store.settle_lost_overwrite(second.item_id, "w2", audit=[]) is True
    assert _lost_overwrite(store, second.item_id) is None
    assert len(_conflicts(store)) == 1
    [again] = store.claim("w3", limit=1, lease_seconds=LEASE, now=at(40))
    assert (again.lost_overwrite, again.lost_overwrite_against) == (None, ())


def test_a_read_back_not_finding_a_lost_overwrite_records_its_audit_with_the_drop(
    store: SqlStore,
) -> None:
    """``record_landing_checks(absent_audit=…)``: the entries of an absent item (a lost overwrite
    not found, audited *landing unknown*) are added in the transaction that drops its note, only
    while it is noted and left unsent: recorded again (another worker) or for an item pending
    again, nothing is added."""
    store.put_records([record(1)], audit=[], at=T0)
    item_id = _lost(store)
    [retry] = store.claim("w2", limit=1, lease_seconds=LEASE, now=at(3))
    assert store.mark_held(retry.item_id, "w2", reason="no consent", audit=[], at=at(4))
    unknown = {item_id: [_overwrite(1)]}
    store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(40))
    assert store.record_landing_checks([], [item_id], at=at(41), absent_audit=unknown) == []
    assert [e.resource for e in _conflicts(store)] == [_overwrite(1).resource]
    assert _row(store, item_id)[:2] == (SyncState.HELD.value, None)
    assert store.record_landing_checks([], [item_id], at=at(42), absent_audit=unknown) == []
    assert len(_conflicts(store)) == 1


def test_workers_sharing_the_store_read_each_item_back_once(database_url: str) -> None:
    """Two stores (two worker processes) claim the due read-backs one after the other and at
    once: each item goes to one of them only, and a finding recorded twice is recorded once."""
    stores = [open_store(database_url) for _ in range(2)]
    try:
        first = stores[0]
        first.put_records([record(n, patient=f"Patient/p{n}") for n in range(6)], audit=[], at=T0)
        items = first.claim("w1", limit=10, lease_seconds=LEASE, now=at(1), per_patient=1)
        for item in items:
            first.mark_dead(
                item.item_id, "w1", outcome=OUTCOME, audit=[], at=at(2), landing_check_at=at(3)
            )
        a = first.claim_landing_checks(limit=3, lease_seconds=LEASE, now=at(5))
        b = stores[1].claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(5))
        assert len(a) == 3 and len(b) == 3
        assert not {i.item_id for i in a} & {i.item_id for i in b}
        assert stores[1].claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(6)) == []
        marks = [
            SentMark(i.item_id, [SentResource("Observation", f"obs-{i.item_id}", "1")], [])
            for i in a
        ]
        assert first.record_landing_checks(marks, [], at=at(7)) == [True] * 3
        assert stores[1].record_landing_checks(marks, [], at=at(8)) == [False] * 3
        assert first.landing_unknown_count() == 3
    finally:
        for opened in stores:
            opened.close()


@pytest.mark.postgres
def test_a_read_back_another_worker_is_claiming_is_skipped_not_waited_for(
    postgres_url: str,
) -> None:
    """PostgreSQL: rows another worker's claim has locked (its transaction still open) are
    skipped, not waited for (``FOR UPDATE SKIP LOCKED``): the claim takes the others."""
    store = open_store(postgres_url)
    try:
        store.put_records([record(n, patient=f"Patient/p{n}") for n in range(4)], audit=[], at=T0)
        for item in store.claim("w1", limit=10, lease_seconds=LEASE, now=at(1)):
            store.mark_dead(
                item.item_id, "w1", outcome=OUTCOME, audit=[], at=at(2), landing_check_at=at(3)
            )
        with store.engine.connect() as other, other.begin():
            locked = list(
                other.execute(
                    select(outbox.c.item_id)
                    .where(outbox.c.landing_check_at.is_not(None))
                    .order_by(outbox.c.item_id)
                    .limit(2)
                    .with_for_update()
                ).scalars()
            )
            claimed: list[OutboxItem] = []
            claiming = threading.Thread(
                target=lambda: claimed.extend(
                    store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(5))
                )
            )
            claiming.start()
            claiming.join(timeout=10)  # a claim that waited for the locks would still be running
            assert not claiming.is_alive()
        assert len(claimed) == 2
        assert not {i.item_id for i in claimed} & set(locked)
    finally:
        store.close()


def test_a_pass_whose_record_fails_on_one_row_records_nothing_and_each_apart_once(
    store: SqlStore,
) -> None:
    """What the worker's fallback relies on (``Worker._record_landing_checks_apart``): a pass of
    read-backs whose record fails on one item's row (its stored ``sent`` corrupted: a version
    stored as a number) raises an error that is no database outage and records nothing, no
    audit entry either; its items recorded one at a time then are, each once with its audit,
    the corrupted one still failing alone and kept noted with a later check."""
    store.put_records([record(n, patient=f"Patient/p{n}") for n in range(3)], audit=[], at=T0)
    items = store.claim("w1", limit=10, lease_seconds=LEASE, now=at(1), per_patient=1)
    for item in items:
        store.mark_dead(
            item.item_id, "w1", outcome=OUTCOME, audit=[], at=at(2), landing_check_at=at(3)
        )
    spoilt, fine, gone = (
        c.item_id for c in store.claim_landing_checks(limit=10, lease_seconds=LEASE, now=at(5))
    )
    with store.engine.begin() as connection:
        connection.execute(
            outbox.update()
            .where(outbox.c.item_id == spoilt)
            .values(sent=[{"resource_type": "Observation", "id": f"obs-{spoilt}", "version_id": 7}])
        )
    by_id = {item.item_id: item.record_id for item in items}
    marks = {
        i: SentMark(
            i,
            [SentResource("Observation", f"obs-{i}", "1")],
            [audit_entry("disclose", by_id[i], when=at(6))],
        )
        for i in (spoilt, fine)
    }

    def disclosures() -> int:
        return len([e for e in store.list_audit() if e.action == "disclose"])

    with pytest.raises(Exception) as failed:
        store.record_landing_checks(list(marks.values()), [gone], at=at(6))
    assert not is_store_outage(failed.value)
    assert store.landing_unknown_count() == 3 and disclosures() == 0

    with pytest.raises(Exception) as failed:
        store.record_landing_checks([marks[spoilt]], [], at=at(7))
    assert not is_store_outage(failed.value)
    assert store.record_landing_checks([marks[fine]], [], at=at(7)) == [True]
    assert store.record_landing_checks([], [gone], at=at(7)) == []
    assert store.record_landing_checks([], [], at=at(7), later={spoilt: at(60)}) == []
    assert store.record_landing_checks([marks[fine]], [], at=at(8)) == [False]
    assert _row(store, fine)[:2] == (SyncState.SENT.value, None)
    assert _row(store, gone)[:2] == (SyncState.DEAD_LETTERED.value, None)
    assert _row(store, spoilt)[:2] == (SyncState.DEAD_LETTERED.value, at(60))
    assert store.landing_unknown_count() == 1 and disclosures() == 1
