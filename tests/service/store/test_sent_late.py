"""Contract of ``mark_sent_late``: a send that reached the server after its worker lost the lease
is recorded whoever holds the item now (SENT, with its versions and its audit), so that
``last_sent``, ``sent_items`` and the retraction see what the server holds; on SQLite and
PostgreSQL."""

from __future__ import annotations

import pytest
from fhir_alliance_service.store import SentResource, SqlStore, SyncState
from fhir_alliance_service.store.interface import SentMark

from .builders import T0, at, audit_entry, record


def _mark(item_id: int, version: str, *, when: float) -> SentMark:
    return SentMark(
        item_id,
        [SentResource("Observation", "obs-1", version)],
        [audit_entry("disclose", "rec-000001", when=at(when))],
    )


def _disclosures(store: SqlStore) -> int:
    return len([e for e in store.list_audit(record_id="rec-000001") if e.action == "disclose"])


def test_a_superseded_item_whose_send_landed_is_recorded_sent(store: SqlStore) -> None:
    """v1's lease ran out mid-send and intake superseded it by v2: the send that landed is still
    recorded (v1 SENT with its version and disclosure), so last_sent and sent_items name it,
    while the record's status stays v2's and v2 is the next claim."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(40))  # lease gone: v1 superseded
    mark = _mark(item.item_id, "1", when=41)
    assert store.mark_sent_many("w1", [mark], at=at(41)) == [False]
    store.mark_sent_late([mark], at=at(41))
    last = store.last_sent("rec-000001")
    assert last is not None
    assert (last.record_version, last.state, last.sent) == (
        1,
        SyncState.SENT,
        (SentResource("Observation", "obs-1", "1"),),
    )
    assert [s.item_id for s in store.sent_items("Patient/p1")] == [item.item_id]
    assert _disclosures(store) == 1
    status = store.sync_status("rec-000001")
    assert status is not None and (status.record_version, status.state) == (2, SyncState.QUEUED)
    [newer] = store.claim("w2", limit=10, lease_seconds=30, now=at(42))
    assert newer.record_version == 2


def test_an_item_another_worker_holds_is_recorded_sent_and_its_lease_released(
    store: SqlStore,
) -> None:
    """w2 took the item over while w1's send was on its way: w1's landed send makes it SENT (no
    second send needed); w2's own mark_* then finds it recorded and writes nothing."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    [taken] = store.claim("w2", limit=1, lease_seconds=30, now=at(40))
    assert taken.item_id == item.item_id
    store.mark_sent_late([_mark(item.item_id, "1", when=41)], at=at(41))
    status = store.sync_status("rec-000001")
    assert status is not None
    assert (status.state, status.sent, status.lost_leases) == (
        SyncState.SENT,
        (SentResource("Observation", "obs-1", "1"),),
        0,
    )
    assert not store.mark_held(item.item_id, "w2", reason="no-permit", audit=[], at=at(42))
    assert store.claim("w3", limit=1, lease_seconds=30, now=at(100)) == []
    assert store.counts_by_state()[SyncState.SENT] == 1


def test_a_held_item_whose_send_landed_is_sent(store: SqlStore) -> None:
    """The worker that took the item over held it (its consent was revoked meanwhile), but the
    first worker's send had landed: SENT, so that the retraction sees it."""
    store.put_records([record(1)], audit=[], at=T0)
    store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    [taken] = store.claim("w2", limit=1, lease_seconds=30, now=at(40))
    assert store.mark_held(taken.item_id, "w2", reason="no-permit", audit=[], at=at(41))
    store.mark_sent_late([_mark(taken.item_id, "1", when=42)], at=at(42))
    [sent] = store.sent_items("Patient/p1")
    assert (sent.state, sent.held_reason, sent.sent[0].version_id) == (SyncState.SENT, None, "1")


def test_both_sends_of_a_taken_over_item_keep_the_later_version(store: SqlStore) -> None:
    """Both workers' sends landed: whichever is recorded last, the item lists the later server
    version (the If-Match of the next update), and each send has its own disclosure."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.claim("w2", limit=1, lease_seconds=30, now=at(40))
    assert store.mark_sent_many("w2", [_mark(item.item_id, "3", when=41)], at=at(41)) == [True]
    store.mark_sent_late([_mark(item.item_id, "2", when=42)], at=at(42))  # landed before w2's
    last = store.last_sent("rec-000001")
    assert last is not None and last.sent == (SentResource("Observation", "obs-1", "3"),)
    store.mark_sent_late([_mark(item.item_id, "10", when=43)], at=at(43))  # landed after
    last = store.last_sent("rec-000001")
    assert last is not None and last.sent == (SentResource("Observation", "obs-1", "10"),)
    assert _disclosures(store) == 3


def test_a_later_landing_clears_a_retraction_an_earlier_one_does_not(store: SqlStore) -> None:
    """The retraction marked the sent version entered-in-error; a late send that landed before
    that write leaves it retracted, one that landed after puts our content back on the server:
    the retraction is cleared, so that the next pass checks the item again."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    assert store.mark_sent_many("w1", [_mark(item.item_id, "1", when=2)], at=at(2)) == [True]
    assert store.record_retraction(
        item.item_id,
        "entered-in-error",
        was=None,
        sent=[SentResource("Observation", "obs-1", "3")],
        audit=[],
        at=at(3),
    )
    store.mark_sent_late([_mark(item.item_id, "2", when=4)], at=at(4))
    [status] = store.sent_items("Patient/p1")
    assert (status.retraction, status.sent[0].version_id) == ("entered-in-error", "3")
    store.mark_sent_late([_mark(item.item_id, "4", when=5)], at=at(5))
    [status] = store.sent_items("Patient/p1")
    assert (status.retraction, status.sent[0].version_id) == (None, "4")


def test_an_older_version_landing_after_a_newer_one_queues_the_newest_again(
    store: SqlStore,
) -> None:
    """v1 (never sent before: no If-Match) landed after v2 was sent and recorded: the server
    holds v1's content at a later version. v2's item lists that version (the If-Match of the
    next write) and v2 is queued again, to be written over it."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [first] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(40))
    [second] = store.claim("w2", limit=1, lease_seconds=30, now=at(41))
    assert store.mark_sent_many("w2", [_mark(second.item_id, "1", when=42)], at=at(42)) == [True]
    assert store.mark_sent_late([_mark(first.item_id, "2", when=43)], at=at(43)) == 1
    last = store.last_sent("rec-000001")
    assert last is not None and (last.record_version, last.sent[0].version_id) == (2, "2")
    [again] = store.claim("w3", limit=1, lease_seconds=30, now=at(44))
    assert again.record_version == 2
    assert store.mark_sent_late([_mark(first.item_id, "2", when=45)], at=at(45)) == 0


def test_an_older_version_landing_before_the_newer_one_queues_nothing(store: SqlStore) -> None:
    """v1's late send landed before v2's write (a lower version): the server holds v2, nothing
    is queued again; v1 is recorded SENT with its own version."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [first] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(40))
    [second] = store.claim("w2", limit=1, lease_seconds=30, now=at(41))
    assert store.mark_sent_many("w2", [_mark(second.item_id, "2", when=42)], at=at(42)) == [True]
    assert store.mark_sent_late([_mark(first.item_id, "1", when=43)], at=at(43)) == 0
    last = store.last_sent("rec-000001")
    assert last is not None and (last.record_version, last.sent[0].version_id) == (2, "2")
    assert store.claim("w3", limit=1, lease_seconds=30, now=at(44)) == []
    assert store.counts_by_state()[SyncState.SENT] == 2


def test_records_sent_names_the_records_with_a_sent_item(store: SqlStore) -> None:
    """``records_sent``: of the records asked about, those with a SENT item (held, queued,
    superseded and unknown ones are not), in one call for any number of them (the worker reads
    it once per batch and looks up an If-Match only for these)."""
    store.put_records([record(1), record(2), record(3, patient="Patient/p2")], audit=[], at=T0)
    items = {i.record_id: i for i in store.claim("w1", limit=10, lease_seconds=30, now=at(1))}
    assert store.mark_sent_many("w1", [_mark(items["rec-000001"].item_id, "1", when=2)], at=at(2))
    store.mark_held(items["rec-000003"].item_id, "w1", reason="no consent", audit=[], at=at(2))
    many = [f"rec-{n:06d}" for n in range(1, 1200)]  # more than one IN list's worth
    assert store.records_sent([*many, "unknown"]) == {"rec-000001"}
    assert store.records_sent([]) == set()


@pytest.mark.parametrize("version", ["\u00b2", "\u0662"], ids=["superscript", "arabic-indic"])
def test_versions_in_other_digits_are_not_compared_as_numbers(
    store: SqlStore, version: str
) -> None:
    """A server version of another script's digits (a superscript 2, which int() refuses; an
    Arabic-Indic 2, which it reads) is not a number: a send landing late with it is taken as a
    different, later write than version 3 recorded (it used to raise ValueError out of
    ``mark_sent_late``, or be taken for version 2, older, and not recorded)."""
    store.put_records([record(1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.claim("w2", limit=1, lease_seconds=30, now=at(40))
    assert store.mark_sent_many("w2", [_mark(item.item_id, "3", when=41)], at=at(41)) == [True]
    store.mark_sent_late([_mark(item.item_id, version, when=42)], at=at(42))
    last = store.last_sent("rec-000001")
    assert last is not None and last.sent == (SentResource("Observation", "obs-1", version),)
