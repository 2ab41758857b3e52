"""Contract of ``put_records`` and the record readers, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store import AuditEntry, NewRecord, PutOutcome, SqlStore, SyncState
from fhir_alliance_service.store.interface import IntakeEvents

from .builders import T0, at, audit_entry, consent, record


def _queued(store: SqlStore) -> int:
    return store.counts_by_state()[SyncState.QUEUED]


def test_new_record_is_version_one_with_a_queued_item(store: SqlStore) -> None:
    """A new record is stored as version 1 with its body and one queued outbox item."""
    new = record(1)
    [result] = store.put_records([new], audit=[], at=T0)
    assert (result.record_id, result.version, result.outcome) == (new.record_id, 1, "created")
    stored = store.get_record(new.record_id)
    assert stored is not None
    assert (stored.version, stored.body, stored.identifier) == (1, new.body, new.identifier)
    assert (stored.kind, stored.family, stored.patient) == ("wai-sr", "observation", "Patient/p1")
    assert stored.created_at == stored.updated_at == T0
    assert stored.created_at.tzinfo is UTC
    status = store.sync_status(new.record_id)
    assert status is not None
    assert (status.record_version, status.state, status.attempts) == (1, SyncState.QUEUED, 0)


def test_unknown_record_reads_as_none(store: SqlStore) -> None:
    """Unknown records and versions read as None, not as errors."""
    store.put_records([record(1)], audit=[], at=T0)
    assert store.get_record("rec-999999") is None
    assert store.get_record("rec-000001", version=2) is None
    assert store.sync_status("rec-999999") is None


def test_same_content_is_unchanged_and_writes_nothing(store: SqlStore) -> None:
    """Re-posting identical content returns UNCHANGED and writes no version, item or audit."""
    store.put_records([record(1)], audit=[audit_entry("intake", "rec-000001")], at=T0)
    results = store.put_records(
        [record(1)],
        audit=[audit_entry("intake", "rec-000001"), audit_entry("login", None)],
        at=at(60),
    )
    assert [(r.version, r.outcome) for r in results] == [(1, PutOutcome.UNCHANGED)]
    assert store.get_record("rec-000001", version=2) is None
    stored = store.get_record("rec-000001")
    assert stored is not None and stored.updated_at == T0
    assert sum(store.counts_by_state().values()) == 1
    # The entry about the unchanged record is dropped; one about no record is kept.
    assert [entry.action for entry in store.list_audit()] == ["intake", "login"]


def test_changed_content_makes_version_two_and_supersedes_the_unsent_item(
    store: SqlStore,
) -> None:
    """Changed content adds version 2, queued; the older unsent item becomes SUPERSEDED."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [result] = store.put_records([record(1, score=2)], audit=[], at=at(60))
    assert (result.version, result.outcome) == (2, PutOutcome.UPDATED)
    newest = store.get_record("rec-000001")
    first = store.get_record("rec-000001", version=1)
    assert newest is not None and first is not None
    assert (newest.version, newest.body["score"], newest.created_at, newest.updated_at) == (
        2,
        2,
        T0,
        at(60),
    )
    assert (first.version, first.body["score"]) == (1, 1)
    [superseded] = store.list_by_state(SyncState.SUPERSEDED)
    assert (superseded.record_id, superseded.record_version) == ("rec-000001", 1)
    status = store.sync_status("rec-000001")
    assert status is not None and (status.record_version, status.state) == (2, SyncState.QUEUED)


def test_a_sent_item_is_not_superseded(store: SqlStore) -> None:
    """A version already sent stays SENT when a newer version arrives."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=T0)
    assert store.mark_sent(item.item_id, "w1", sent=[], audit=[], at=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(2))
    counts = store.counts_by_state()
    assert (counts[SyncState.SENT], counts[SyncState.QUEUED], counts[SyncState.SUPERSEDED]) == (
        1,
        1,
        0,
    )


def test_held_and_dead_lettered_items_are_superseded(store: SqlStore) -> None:
    """Held and dead-lettered versions are replaced by a newer version (never replayed)."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    first, second = store.claim("w1", limit=2, lease_seconds=30, now=T0)
    assert store.mark_held(first.item_id, "w1", reason="no permit", audit=[], at=at(1))
    assert store.mark_dead(second.item_id, "w1", outcome={"x": 1}, audit=[], at=at(1))
    store.put_records(
        [record(1, score=9), record(2, patient="Patient/p2", score=9)], audit=[], at=at(2)
    )
    counts = store.counts_by_state()
    assert (counts[SyncState.SUPERSEDED], counts[SyncState.QUEUED]) == (2, 2)
    assert counts[SyncState.HELD] == counts[SyncState.DEAD_LETTERED] == 0


def test_an_item_under_lease_is_not_superseded_and_keeps_its_place(store: SqlStore) -> None:
    """A version a worker is sending right now stays claimable by that worker; the new version
    waits behind it (one writer per record at a time)."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [item] = store.claim("w1", limit=1, lease_seconds=30, now=T0)
    store.put_records([record(1, score=2)], audit=[], at=at(1))
    assert store.claim("w2", limit=10, lease_seconds=30, now=at(2)) == []
    assert store.mark_sent(item.item_id, "w1", sent=[], audit=[], at=at(3))
    [newer] = store.claim("w2", limit=10, lease_seconds=30, now=at(4))
    assert newer.record_version == 2


def test_two_versions_in_one_batch(store: SqlStore) -> None:
    """Within one batch a changed repeat makes a new version and an identical repeat is
    UNCHANGED; only the newest version stays queued."""
    results = store.put_records(
        [record(1, score=1), record(1, score=2), record(1, score=2)], audit=[], at=T0
    )
    assert [(r.version, r.outcome) for r in results] == [
        (1, PutOutcome.CREATED),
        (2, PutOutcome.UPDATED),
        (2, PutOutcome.UNCHANGED),
    ]
    counts = store.counts_by_state()
    assert (counts[SyncState.QUEUED], counts[SyncState.SUPERSEDED]) == (1, 1)
    stored = store.get_record("rec-000001")
    assert stored is not None and stored.version == 2


class NotJson:
    """A value no JSON encoder accepts."""


def test_a_failing_batch_leaves_nothing(store: SqlStore) -> None:
    """A body that cannot be stored in the middle of a batch fails the whole batch: no
    record, version, item or audit entry of it remains."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    bad = dataclasses.replace(record(3), body={"x": NotJson()})
    batch = [record(1, score=2), record(2), bad, record(4)]
    with pytest.raises(TypeError, match=r"^records\[2\]\.body is not JSON-serialisable") as caught:
        store.put_records(batch, audit=[audit_entry("intake", "rec-000002")], at=at(60))
    # The error names the problem, never the patient data in the statement's parameters.
    assert "Patient/p1" not in str(caught.value) and "urn:test:record" not in str(caught.value)
    assert [r.record_id for r in store.list_records()] == ["rec-000001"]
    stored = store.get_record("rec-000001")
    assert stored is not None and stored.version == 1
    assert store.counts_by_state()[SyncState.QUEUED] == 1
    assert store.counts_by_state()[SyncState.SUPERSEDED] == 0
    assert store.list_audit() == []


def test_naive_datetimes_are_refused(store: SqlStore) -> None:
    """A naive intake time is an error (the store cannot guess its zone); nothing is written."""
    with pytest.raises(Exception, match="naive datetime"):
        store.put_records([record(1)], audit=[], at=datetime(2026, 3, 1, 9, 0))
    assert store.list_records() == []


def test_times_come_back_in_utc(store: SqlStore) -> None:
    """A time given in another zone is stored and returned as the same instant in UTC."""
    from zoneinfo import ZoneInfo

    local = datetime(2026, 3, 1, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    store.put_records([record(1)], audit=[], at=local)
    stored = store.get_record("rec-000001")
    assert stored is not None
    assert stored.created_at == T0 and stored.created_at.utcoffset() == UTC.utcoffset(None)


def test_a_thousand_records_are_one_transaction_of_few_statements(store: SqlStore) -> None:
    """Intake of 1,000 records costs a handful of statements (bulk lookups and inserts), not
    one round trip per record."""
    statements: list[str] = []

    batch = [record(n, patient=f"Patient/p{n % 50}") for n in range(1000)]
    store.raw.statement_listeners.append(statements.append)
    try:
        results = store.put_records(batch, audit=[audit_entry("intake", None)], at=T0)
        assert len(results) == 1000 and {r.outcome for r in results} == {PutOutcome.CREATED}
        # BEGIN, two lookups (500 ids each), records, heads, tokens, outbox, audit, COMMIT
        assert 0 < len(statements) <= 10, statements
        assert _queued(store) == 1000
        # Again, unchanged: one lookup round per chunk of ids, nothing written.
        statements.clear()
        again = store.put_records(batch, audit=[], at=at(1))
    finally:
        store.raw.statement_listeners.remove(statements.append)
    assert {r.outcome for r in again} == {PutOutcome.UNCHANGED}
    assert not any(s.lstrip().upper().startswith(("INSERT", "UPDATE")) for s in statements)
    assert any(s.lstrip().upper().startswith("SELECT") for s in statements)
    assert len(statements) <= 4


def test_list_records_newest_versions_filters_and_pages(store: SqlStore) -> None:
    """``list_records`` gives each record's newest version by record id, filtered by patient
    and family, and pages by keyset."""
    store.put_records(
        [
            record(1),
            record(2, patient="Patient/p2"),
            consent(3),
            record(4),
        ],
        audit=[],
        at=T0,
    )
    store.put_records([record(4, score=5)], audit=[], at=at(1))
    everything = store.list_records()
    assert [(r.record_id, r.version) for r in everything] == [
        ("rec-000001", 1),
        ("rec-000002", 1),
        ("rec-000003", 1),
        ("rec-000004", 2),
    ]
    assert [r.record_id for r in store.list_records(patient="Patient/p1")] == [
        "rec-000001",
        "rec-000003",
        "rec-000004",
    ]
    assert [r.record_id for r in store.list_records(family="consent")] == ["rec-000003"]
    assert [
        r.record_id for r in store.list_records(patient="Patient/p1", family="observation")
    ] == ["rec-000001", "rec-000004"]
    first_page = store.list_records(limit=2)
    second_page = store.list_records(limit=2, after=first_page[-1].record_id)
    assert [r.record_id for r in first_page + second_page] == [r.record_id for r in everything]
    assert store.list_records(after="rec-000004") == []


def test_patients_are_listed_once_each(store: SqlStore) -> None:
    """``patients`` lists each patient key once, sorted."""
    store.put_records(
        [
            record(1, patient="Patient/b"),
            record(2, patient="Patient/a"),
            record(3, patient="Patient/b"),
        ],
        audit=[],
        at=T0,
    )
    assert store.patients() == ["Patient/a", "Patient/b"]


def test_audit_of_a_record_created_then_repeated_in_one_batch_is_kept(store: SqlStore) -> None:
    """A record created and then repeated unchanged in the same batch keeps its audit entry;
    entries about records outside the batch are kept too."""
    store.put_records(
        [record(1), record(1)],
        audit=[audit_entry("intake", "rec-000001"), audit_entry("revoke", "rec-000777")],
        at=T0,
    )
    assert [(e.action, e.record_id) for e in store.list_audit()] == [
        ("intake", "rec-000001"),
        ("revoke", "rec-000777"),
    ]


def test_get_records_reads_a_batch_of_newest_versions_in_few_queries(store: SqlStore) -> None:
    """``get_records`` returns the newest version of each known id (unknown ids left out), with
    a handful of queries for a thousand ids."""
    store.put_records([record(n) for n in range(1000)], audit=[], at=T0)
    store.put_records([record(7, score=2)], audit=[], at=at(1))
    wanted = [f"rec-{n:06d}" for n in range(1000)] + ["rec-999999", "rec-000007"]
    statements: list[str] = []
    store.raw.statement_listeners.append(statements.append)
    try:
        found = store.get_records(wanted)
    finally:
        store.raw.statement_listeners.remove(statements.append)
    assert len(found) == 1000 and "rec-999999" not in found
    assert found["rec-000007"].version == 2 and found["rec-000007"].body["score"] == 2
    assert found["rec-000008"] == store.get_record("rec-000008")
    assert 0 < len(statements) <= 4
    assert store.get_records([]) == {}


def _event(record_id: str, patient: str, kind: str, version: int, when: datetime) -> AuditEntry:
    """A stand-in for ``audit.intake_event``: an event whose id names ``version``."""
    resource = {"resourceType": "AuditEvent", "id": f"{record_id}-v{version}", "kind": kind}
    return AuditEntry("intake", record_id, patient, resource, when)


def _intake_events(
    records: list[NewRecord], versions: list[int], remade: list[tuple[str, int]]
) -> IntakeEvents:
    """Events built for ``versions`` (at ``at(60)``); each event the store makes again is noted
    in ``remade``."""

    def build(record_id: str, patient: str, kind: str, version: int, when: datetime) -> AuditEntry:
        remade.append((record_id, version))
        return _event(record_id, patient, kind, version, when)

    entries = [
        _event(r.record_id, r.patient, r.kind, v, at(60))
        for r, v in zip(records, versions, strict=True)
    ]
    return IntakeEvents(entries=entries, versions=versions, build=build)


def test_intake_events_built_for_the_versions_written_are_stored_as_given(
    store: SqlStore,
) -> None:
    """Intake's events (``IntakeEvents``) naming the versions the records get are stored as
    they are: nothing is built again."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    batch = [record(1, score=2), record(2)]
    remade: list[tuple[str, int]] = []
    results = store.put_records(batch, audit=_intake_events(batch, [2, 1], remade), at=at(60))
    assert [(r.version, r.outcome) for r in results] == [
        (2, PutOutcome.UPDATED),
        (1, PutOutcome.CREATED),
    ]
    assert remade == []
    assert [e.resource["id"] for e in store.list_audit()] == ["rec-000001-v2", "rec-000002-v1"]


def test_an_intake_event_built_for_another_version_is_made_for_the_version_written(
    store: SqlStore,
) -> None:
    """The caller built record 1's event for version 1 (it read the store before another intake
    created the record); the write gives it version 2, so the event stored is the one ``build``
    makes for version 2 (record id, patient, kind, the event's time); record 2's is as given."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    batch = [record(1, score=3), record(2)]
    remade: list[tuple[str, int]] = []
    results = store.put_records(batch, audit=_intake_events(batch, [1, 1], remade), at=at(60))
    assert [r.version for r in results] == [2, 1]
    assert remade == [("rec-000001", 2)]
    stored = store.list_audit()
    assert [(e.record_id, e.resource["id"], e.at) for e in stored] == [
        ("rec-000001", "rec-000001-v2", at(60)),
        ("rec-000002", "rec-000002-v1", at(60)),
    ]
    assert (stored[0].patient, stored[0].resource["kind"]) == ("Patient/p1", "wai-sr")


def test_no_intake_event_is_stored_for_an_unchanged_record(store: SqlStore) -> None:
    """A record whose content another intake stored already (UNCHANGED) gets no event, however
    its event was built."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    batch = [record(1, score=1)]
    remade: list[tuple[str, int]] = []
    [result] = store.put_records(batch, audit=_intake_events(batch, [2], remade), at=at(60))
    assert (result.version, result.outcome) == (1, PutOutcome.UNCHANGED)
    assert remade == []
    assert store.list_audit() == []
