"""Contract of the pending retraction checks (migration 0011): a patient whose sends must be put to
the retraction policy (again) is noted in the store, so that the note outlives the worker that
made it and every worker sharing the store sees it. ``claim_retraction_checks`` hands the due
notes out under a lease (once each, across workers: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL),
and a note is cleared only by a check that started after it was made (its note id), never by one
that began before the patient was noted again. Intake notes the patient of every consent version it
stores (a new consent, a new version, a revocation) in the write of that version
(``put_records``), so that a revocation posted through the API is retracted by any worker, one
that runs no retraction passes (``worker --no-pull``) included. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import (
    PendingRetractionChecks,
    PutOutcome,
    RetractionCheck,
)
from fhir_alliance_service.store.tables import retraction_checks
from sqlalchemy import func, select

from .builders import at, audit_entry, consent, record

LEASE = 30


def _patients(checks: list[RetractionCheck]) -> list[str]:
    return [check.patient for check in checks]


def test_a_note_is_claimed_by_any_store_once_while_leased(database_url: str) -> None:
    """Noted through one store (a worker), the checks are claimed through another (another
    worker process, or the same one restarted), patient by patient in key order; while that
    claim's lease runs nobody gets them again, after it (the claimer died) they are due again.
    Cleared, a check is gone for everyone."""
    stores = [open_store(database_url) for _ in range(2)]
    try:
        noting, other = stores
        noting.note_retraction_checks(["Patient/p2", "Patient/p1"])
        claimed = other.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(0))
        assert _patients(claimed) == ["Patient/p1", "Patient/p2"]
        leased = noting.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(LEASE - 1))
        assert leased == []
        again = noting.claim_retraction_checks(limit=1, lease_seconds=LEASE, now=at(LEASE))
        assert again == claimed[:1]  # the same notes, one as asked
        assert other.clear_retraction_check(claimed[0])
        assert not noting.clear_retraction_check(claimed[0])  # already cleared
        later = noting.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(3 * LEASE))
        assert later == claimed[1:]
    finally:
        for opened in stores:
            opened.close()


def test_a_patient_noted_again_meanwhile_stays_noted(store: SqlStore) -> None:
    """A check claimed, then the patient noted again while it runs (a send recorded meanwhile
    that it may not have seen): clearing the claimed check leaves the newer note, which is due
    at once and cleared by its own check."""
    store.note_retraction_checks(["Patient/p1"])
    [first] = store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(0))
    store.note_retraction_checks(["Patient/p1"])
    assert not store.clear_retraction_check(first)
    [second] = store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(1))
    assert second.patient == "Patient/p1" and second.note != first.note
    assert store.clear_retraction_check(second)
    assert store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(3600)) == []


def test_a_check_noted_under_a_lease_waits_for_it_and_a_failure_makes_it_due(
    store: SqlStore,
) -> None:
    """A worker notes the patients it is about to check under a lease of its own: nobody claims
    them until the lease ends (when a worker that died is done for). Noted again without a lease
    (its check failed), the patient is due at once, whatever the clocks say."""
    note = store.note_retraction_checks(["Patient/p1", "Patient/p2"], lease_until=at(LEASE))
    assert store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(LEASE - 1)) == []
    store.note_retraction_checks(["Patient/p2"])
    [due] = store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(-3600))
    assert due.patient == "Patient/p2" and due.note != note
    assert not store.clear_retraction_check(RetractionCheck("Patient/p2", note))
    assert store.clear_retraction_check(RetractionCheck("Patient/p1", note))  # checked in time
    assert store.clear_retraction_check(due)
    assert store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(3600)) == []


def test_a_note_kept_is_not_replaced_by_a_check_about_to_write(store: SqlStore) -> None:
    """``keep``: a retraction about to write on the server notes its patient under its lease
    unless they are noted already: a note there (due, or another check's) keeps its id and
    lease, and the check's own note id clears nothing; a patient not noted is noted, and
    cleared by that id."""
    [earlier] = [RetractionCheck("Patient/p1", store.note_retraction_checks(["Patient/p1"]))]
    mine = store.note_retraction_checks(
        ["Patient/p1", "Patient/p2"], lease_until=at(LEASE), keep=True
    )
    [due] = store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(0))
    assert due == earlier  # still due at once, under its own id
    assert not store.clear_retraction_check(RetractionCheck("Patient/p1", mine))
    assert store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(LEASE - 1)) == []
    assert store.clear_retraction_check(RetractionCheck("Patient/p2", mine))
    assert store.clear_retraction_check(earlier)
    assert store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(3600)) == []


def test_pending_checks_are_counted_due_and_leased(store: SqlStore) -> None:
    """``pending_retraction_checks(now=)``: the noted patients due at ``now`` (a note without a
    lease, or whose lease ended) and those leased (a check running, or its worker died): what
    ``fhir-alliance status`` and ``fhir_alliance_retraction_checks_pending`` show. One query."""
    assert store.pending_retraction_checks(now=at(0)) == PendingRetractionChecks(due=0, leased=0)
    store.note_retraction_checks(["Patient/p1", "Patient/p2"])
    store.note_retraction_checks(["Patient/p3"], lease_until=at(LEASE))
    pending = store.pending_retraction_checks(now=at(0))
    assert (pending.due, pending.leased, pending.total) == (2, 1, 3)
    assert store.pending_retraction_checks(now=at(LEASE)) == PendingRetractionChecks(3, 0)
    for check in store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(LEASE)):
        store.clear_retraction_check(check)
    assert store.pending_retraction_checks(now=at(LEASE)).total == 0


def test_noting_a_patient_twice_keeps_one_note(store: SqlStore) -> None:
    """One row per patient, however often (and in however many calls) they are noted."""
    store.note_retraction_checks(["Patient/p1", "Patient/p1"])
    store.note_retraction_checks(["Patient/p1"])
    store.note_retraction_checks([])
    with store.engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(retraction_checks)).scalar()
    assert rows == 1
    assert store.claim_retraction_checks(limit=0, lease_seconds=LEASE, now=at(0)) == []


@pytest.mark.postgres
def test_a_check_another_worker_is_claiming_is_skipped_not_waited_for(postgres_url: str) -> None:
    """PostgreSQL: notes another worker's claim has locked (its transaction still open) are
    skipped, not waited for (``FOR UPDATE SKIP LOCKED``): the claim takes the others."""
    store = open_store(postgres_url)
    try:
        store.note_retraction_checks([f"Patient/p{n}" for n in range(4)])
        with store.engine.connect() as other, other.begin():
            locked = list(
                other.execute(
                    select(retraction_checks.c.patient)
                    .order_by(retraction_checks.c.patient)
                    .limit(2)
                    .with_for_update()
                ).scalars()
            )
            claimed: list[RetractionCheck] = []
            claiming = threading.Thread(
                target=lambda: claimed.extend(
                    store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(0))
                )
            )
            claiming.start()
            claiming.join(timeout=10)  # a claim that waited for the locks would still be running
            assert not claiming.is_alive()
        assert _patients(claimed) == ["Patient/p2", "Patient/p3"]
        assert not set(_patients(claimed)) & set(locked)
    finally:
        store.close()


class _AuditInsertFails(RuntimeError):
    """Raised in place of the intake transaction's audit insert (a statement after the note)."""


def test_a_consent_stored_notes_its_patient_in_the_same_transaction(store: SqlStore) -> None:
    """Intake of a consent notes its patient for a retraction check, due at once, in the write
    of the consent: when a later statement of that transaction fails, neither the consent nor
    the note is kept, and the same intake done again keeps both. A new observation notes
    nothing. (Noted in a transaction of its own after the answer, a process that died between
    the two left a revocation no worker that runs without pulls ever retracted for.)"""
    seen: list[str] = []

    def fail_at_audit(statement: str) -> None:
        seen.append(statement)
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT "):
            raise _AuditInsertFails

    batch = [consent(1), record(2, patient="Patient/p2")]
    intake_audit = [audit_entry("intake", "rec-000001")]
    store.raw.statement_listeners.append(fail_at_audit)
    try:
        with pytest.raises(_AuditInsertFails):
            store.put_records(batch, audit=intake_audit, at=at(0))
    finally:
        store.raw.statement_listeners.remove(fail_at_audit)
    assert any("retraction_checks" in statement for statement in seen)  # noted, then rolled back
    assert store.get_record("rec-000001") is None
    assert store.pending_retraction_checks(now=at(0)).total == 0

    results = store.put_records(batch, audit=intake_audit, at=at(1))
    assert [r.outcome for r in results] == [PutOutcome.CREATED, PutOutcome.CREATED]
    assert store.pending_retraction_checks(now=at(1)) == PendingRetractionChecks(due=1, leased=0)
    claimed = store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(1))
    assert _patients(claimed) == ["Patient/p1"]


def test_each_new_consent_version_notes_its_patient_and_an_unchanged_one_nothing(
    store: SqlStore,
) -> None:
    """A consent's new version (a revocation, a narrowed consent) notes its patient again, under
    a new note due at once: a check running since before it (leased) does not clear it, since
    it may have read the consents before the change. The same version posted again (nothing
    stored) notes nothing; nor does a changed observation. A pulled consent notes its patient
    too: a worker dying between the pull's write and its retraction pass (a restart takes every
    patient's consents as checked) used to leave the copies until the full pass."""
    store.put_records([consent(1), record(2)], audit=[], at=at(0))
    for check in store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(0)):
        assert store.clear_retraction_check(check)
    running = store.note_retraction_checks(["Patient/p1"], lease_until=at(LEASE))

    [revoked] = store.put_records([consent(1, status="revoked")], audit=[], at=at(1))
    assert revoked.outcome is PutOutcome.UPDATED
    [due] = store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(1))
    assert due.patient == "Patient/p1" and due.note != running
    assert not store.clear_retraction_check(RetractionCheck("Patient/p1", running))
    assert store.clear_retraction_check(due)

    [again] = store.put_records([consent(1, status="revoked")], audit=[], at=at(2))
    assert again.outcome is PutOutcome.UNCHANGED
    store.put_records([record(2, score=5)], audit=[], at=at(3))
    assert store.pending_retraction_checks(now=at(3)).total == 0
    store.put_remote_records(
        [consent(4, patient="Patient/p4")], origin="remote", audit=[], at=at(4)
    )
    [pulled] = store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=at(4))
    assert pulled.patient == "Patient/p4"
