"""Contract tests of the store's two-way sync additions, on SQLite and PostgreSQL: aliases, remote
patient links, pull cursors, pulled resources (dedupe, listing generations), remote-origin
records (no outbox item), sent items, retraction and conflict marks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fhir_alliance_service.store import SentResource, SqlStore, SyncState
from fhir_alliance_service.store.interface import PullCursor, PulledResource, PutOutcome

from .builders import T0, at, audit_entry, consent, record

SERVER = "http://fhir.example.org/fhir"


def _pulled(resource_id: str, version: str, *, generation: int = 0) -> PulledResource:
    return PulledResource(
        server=SERVER,
        resource_type="Consent",
        resource_id=resource_id,
        version_id=version,
        last_updated="2026-03-01T09:00:00.000Z",
        patient="Patient/p1",
        record_id=None,
        origin="foreign",
        state="merged",
        generation=generation,
    )


def test_aliases_group_keys_and_refuse_a_second_owner(store: SqlStore) -> None:
    """An alias joins the patient's keys (from either key); one already owned is refused."""
    store.add_patient_alias("Patient/p1", "urn:mrn|1", at=T0)
    store.add_patient_alias("urn:mrn|1", "urn:other|9", at=T0)  # through the alias: same patient
    assert store.patient_keys("Patient/p1") == ["Patient/p1", "urn:mrn|1", "urn:other|9"]
    assert store.patient_keys("urn:other|9") == ["Patient/p1", "urn:mrn|1", "urn:other|9"]
    assert store.patient_keys("Patient/p2") == ["Patient/p2"]
    store.add_patient_alias("Patient/p1", "urn:mrn|1", at=T0)  # again: nothing changes
    with pytest.raises(ValueError, match="another patient"):
        store.add_patient_alias("Patient/p2", "urn:mrn|1", at=T0)


def test_release_held_releases_under_every_key_of_the_patient(store: SqlStore) -> None:
    """Held items filed under an alias are re-queued when the patient's consents change."""
    store.put_records([record(1, patient="urn:mrn|1")], audit=[], at=T0)
    [item] = store.claim("w", limit=1, lease_seconds=30, now=at(1))
    assert store.mark_held(item.item_id, "w", reason="no consent", audit=[], at=at(2))
    store.add_patient_alias("Patient/p1", "urn:mrn|1", at=at(3))
    assert store.release_held("Patient/p1", at=at(4)) == 1


def test_remote_patients_and_cursors_are_upserted(store: SqlStore) -> None:
    """Links and cursors are inserted, then replaced, per server."""
    store.set_remote_patient(SERVER, "urn:mrn|1", "Patient/a", at=T0)
    store.set_remote_patient(SERVER, "urn:mrn|1", "Patient/b", at=at(1))
    assert store.remote_patients(SERVER) == {"urn:mrn|1": "Patient/b"}
    assert store.remote_patients("http://other/fhir") == {}
    assert store.get_pull_cursor(SERVER, "Consent") is None
    store.save_pull_cursor(PullCursor(SERVER, "Consent", "2026-03-01T09:00:00Z", 1, T0), at=T0)
    store.save_pull_cursor(PullCursor(SERVER, "Consent", "2026-03-01T10:00:00Z", 2, at(5)), at=T0)
    assert store.get_pull_cursor(SERVER, "Consent") == PullCursor(
        SERVER, "Consent", "2026-03-01T10:00:00Z", 2, at(5)
    )


def test_pulled_resources_dedupe_and_listing_generations(store: SqlStore) -> None:
    """Saved pulled resources are found by id; a listing marks what it saw; the rest is
    unlisted (gone) until marked deleted."""
    store.save_pulled([_pulled("a", "1"), _pulled("b", "1"), _pulled("a", "2")], at=T0)
    found = store.pulled(SERVER, "Consent", ["a", "b", "c"])
    assert {k: v.version_id for k, v in found.items()} == {"a": "2", "b": "1"}
    store.mark_listed(SERVER, "Consent", ["a"], 1)
    assert [p.resource_id for p in store.unlisted(SERVER, "Consent", 1)] == ["b"]
    gone = store.unlisted(SERVER, "Consent", 1)[0]
    store.save_pulled([replace(gone, state="deleted")], at=T0)
    assert store.unlisted(SERVER, "Consent", 1) == []


def test_pulled_resources_are_found_by_the_record_made_from_them(store: SqlStore) -> None:
    """The copies local records were made from are found by record id, on one server and type
    only; a record id no copy names is missing."""
    store.save_pulled(
        [
            replace(_pulled("a", "1"), record_id="r-a"),
            replace(_pulled("b", "1"), record_id="r-b", state="deleted"),
            replace(_pulled("c", "1"), server="http://other.example.org/fhir", record_id="r-c"),
            replace(_pulled("d", "1"), resource_type="Observation", record_id="r-d"),
            _pulled("e", "1"),
        ],
        at=T0,
    )
    found = store.pulled_of_records(SERVER, "Consent", ["r-a", "r-b", "r-c", "r-d", "r-x"])
    assert {k: (v.resource_id, v.state) for k, v in found.items()} == {
        "r-a": ("a", "merged"),
        "r-b": ("b", "deleted"),
    }


def test_pulled_states_are_those_of_the_server_each_record_was_pulled_from(
    store: SqlStore,
) -> None:
    """A pulled record's state is that of the pulled row of the server its newest version came
    from (the one saved last when two); a record taken in here (a row of ours names it) and one
    no row of its server names are missing."""
    store.put_records([consent(1)], audit=[], at=T0)  # local: no origin
    store.put_remote_records([consent(n) for n in (2, 3, 4)], origin=SERVER, audit=[], at=T0)
    ids = {n: consent(n).record_id for n in (1, 2, 3, 4)}
    other = "http://other.example.org/fhir"
    store.save_pulled(
        [
            replace(_pulled("a", "1"), record_id=ids[1], origin="ours"),
            replace(_pulled("b", "1"), record_id=ids[2]),
            replace(_pulled("c", "1"), server=other, record_id=ids[3], state="deleted"),
        ],
        at=T0,
    )
    store.save_pulled([replace(_pulled("b2", "1"), record_id=ids[2], state="deleted")], at=at(1))
    found = store.pulled_states_of_records([ids[n] for n in (1, 2, 3, 4)] + ["r-x"])
    assert found == {ids[2]: ("deleted", SERVER)}


def test_consent_identifiers_are_those_taken_in_here_or_pulled_from_the_server_named(
    store: SqlStore,
) -> None:
    """The identifiers of the consents filed under the patients named, newest version, that were
    taken in here (no origin) or pulled from the server named; never those of another server or
    another patient."""
    store.put_records([consent(1)], audit=[], at=T0)  # local: no origin
    store.put_remote_records([consent(2)], origin=SERVER, audit=[], at=T0)
    changed = replace(consent(2, status="revoked"), identifier="urn:test:record|2b")
    store.put_remote_records([changed], origin=SERVER, audit=[], at=at(1))
    store.put_remote_records([consent(3, patient="Patient/p2")], origin=SERVER, audit=[], at=T0)
    store.put_remote_records([consent(4, patient="Patient/p3")], origin=SERVER, audit=[], at=T0)
    store.put_records([consent(6, patient="Patient/p3")], audit=[], at=T0)
    store.put_remote_records([consent(5)], origin="http://old.example.org/fhir", audit=[], at=T0)
    found = store.consent_identifiers(SERVER, ["Patient/p1", "Patient/p2", "Patient/p1"])
    assert found == [
        ("rec-000001", "Patient/p1", "urn:test:record|1", None),
        ("rec-000002", "Patient/p1", "urn:test:record|2b", SERVER),
        ("rec-000003", "Patient/p2", "urn:test:record|3", SERVER),
    ]
    assert store.consent_identifiers(SERVER, []) == []
    # No server: those taken in here alone (an intake's lookup of other spellings).
    found = store.consent_identifiers(None, ["Patient/p1", "Patient/p2", "Patient/p3"])
    assert found == [
        ("rec-000001", "Patient/p1", "urn:test:record|1", None),
        ("rec-000006", "Patient/p3", "urn:test:record|6", None),
    ]


def test_remote_records_make_no_outbox_item_but_count_as_consents(store: SqlStore) -> None:
    """A pulled consent is stored (versions, stamp) without anything to push."""
    before = store.consents_stamp("Patient/p1")
    store.put_remote_records(
        [consent(1)], origin=SERVER, audit=[audit_entry("pull", "rec-000001")], at=T0
    )
    assert store.sync_status("rec-000001") is None
    assert [c.record_id for c in store.consents_for_patient("Patient/p1")] == ["rec-000001"]
    assert store.consents_stamp("Patient/p1") != before
    assert store.consent_stamps() == {"Patient/p1": store.consents_stamp("Patient/p1")}
    assert store.claim("w", limit=10, lease_seconds=30, now=at(1)) == []
    assert [e.action for e in store.list_audit(record_id="rec-000001")] == ["pull"]


def test_sent_items_retraction_conflict_and_sent_versions(store: SqlStore) -> None:
    """The newest SENT item per record is listed with its item id; marks and versions land."""
    store.put_records([record(1), record(2, patient="Patient/p2")], audit=[], at=T0)
    items = store.claim("w", limit=10, lease_seconds=30, now=at(1))
    for item in items:
        store.mark_sent(
            item.item_id,
            "w",
            sent=[SentResource("Observation", item.record_id, "1")],
            audit=[],
            at=at(2),
        )
    [sent] = store.sent_items("Patient/p1")
    assert sent.state is SyncState.SENT and sent.item_id is not None
    assert store.record_retraction(
        sent.item_id,
        "deleted",
        was=None,
        sent=sent.sent,
        audit=[audit_entry("retract-delete", "rec-000001")],
        at=at(3),
    )
    store.mark_conflict(sent.item_id, "flagged", at=at(3))
    store.record_sent_versions(
        sent.item_id, [SentResource("Observation", "rec-000001", "4")], audit=[], at=at(4)
    )
    status = store.sync_status("rec-000001")
    assert status is not None
    assert (status.retraction, status.conflict, status.sent[0].version_id) == (
        "deleted",
        "flagged",
        "4",
    )
    last = store.last_sent("rec-000001")
    assert last is not None and last.item_id == sent.item_id
    assert store.last_sent("rec-000002") is not None and store.last_sent("nope") is None


def test_a_retraction_is_recorded_in_one_write_while_the_send_is_as_read(
    store: SqlStore,
) -> None:
    """``record_retraction``: the versions the server holds, the outcome and the audit in one
    write, only while the send's retraction is what the pass read (``was``); else nothing is
    written (another pass recorded it meanwhile). A failure's record keeps the outcome as read;
    a ``kept`` send is retracted by a policy that now retracts."""
    store.put_records([record(1), record(2)], audit=[], at=T0)
    for n in (1, 2):  # one item of a patient per claim
        for item in store.claim("w", limit=10, lease_seconds=30, now=at(n)):
            store.mark_sent(
                item.item_id,
                "w",
                sent=[SentResource("Observation", item.record_id, "1")],
                audit=[],
                at=at(2),
            )
    first, second = store.sent_items("Patient/p1")
    assert first.item_id is not None and second.item_id is not None
    marked = [SentResource("Observation", "rec-000001", "2")]
    failed = audit_entry("retract-failed", "rec-000001")
    assert store.record_retraction(
        first.item_id, None, was=None, sent=marked, audit=[failed], at=at(3)
    )
    status = store.sync_status("rec-000001")
    assert status is not None and (status.retraction, status.sent) == (None, tuple(marked))
    done = [SentResource("Observation", "rec-000001", "3")]
    entries = [
        audit_entry("retract-entered-in-error", "rec-000001"),
        audit_entry("provenance", "rec-000001"),
    ]
    assert store.record_retraction(
        first.item_id, "entered-in-error", was=None, sent=done, audit=entries, at=at(4)
    )
    # Another pass that read the send before: nothing written, its audit neither.
    late = [audit_entry("retract-entered-in-error", "rec-000001")]
    assert not store.record_retraction(
        first.item_id, "entered-in-error", was=None, sent=marked, audit=late, at=at(5)
    )
    status = store.sync_status("rec-000001")
    assert status is not None
    assert (status.retraction, status.sent, status.updated_at) == (
        "entered-in-error",
        tuple(done),
        at(4),
    )
    assert [e.action for e in store.list_audit(record_id="rec-000001")] == [
        "retract-failed",
        "retract-entered-in-error",
        "provenance",
    ]
    # kept, then deleted by a policy that now deletes (the versions none: a PUT creates again).
    kept = list(second.sent)
    assert store.record_retraction(second.item_id, "kept", was=None, sent=kept, audit=[], at=at(3))
    assert not store.record_retraction(
        second.item_id, "deleted", was=None, sent=kept, audit=[], at=at(4)
    )
    gone = [SentResource("Observation", "rec-000002")]
    assert store.record_retraction(
        second.item_id, "deleted", was="kept", sent=gone, audit=[], at=at(4)
    )
    status = store.sync_status("rec-000002")
    assert status is not None and (status.retraction, status.sent) == ("deleted", tuple(gone))


def test_last_sent_before_a_version(store: SqlStore) -> None:
    """``last_sent(before_version=n)``: the newest SENT item of a version older than ``n`` (what
    the server held before version ``n`` went), whether or not version ``n`` was sent since."""
    store.put_records([record(1)], audit=[], at=T0)
    [first] = store.claim("w", limit=1, lease_seconds=30, now=at(1))
    sent = [SentResource("Observation", "rec-000001", "1")]
    store.mark_sent(first.item_id, "w", sent=sent, audit=[], at=at(2))
    store.put_records([record(1, score=2)], audit=[], at=at(3))
    assert store.last_sent("rec-000001", before_version=1) is None

    def before_two() -> tuple[int | None, int] | None:
        last = store.last_sent("rec-000001", before_version=2)
        return None if last is None else (last.item_id, last.record_version)

    assert before_two() == (first.item_id, 1)
    [second] = store.claim("w", limit=1, lease_seconds=30, now=at(4))
    store.mark_sent(second.item_id, "w", sent=sent, audit=[], at=at(5))
    assert before_two() == (first.item_id, 1)  # version 2 sent since: still version 1
    newest = store.last_sent("rec-000001")
    assert newest is not None and newest.record_version == 2


def _copy(version: str | None, stamp: str, *, state: str = "merged") -> PulledResource:
    """The server's copy ``c1`` that record ``rec-000001`` was made from."""
    return replace(
        _pulled("c1", "0"),
        version_id=version,
        last_updated=stamp,
        record_id="rec-000001",
        state=state,
    )


def test_a_remote_copy_older_than_the_one_saved_is_not_written(store: SqlStore) -> None:
    """``put_remote_records`` compares each copy with the one saved, in its own transaction:
    an older version after a newer one (here a permit over its withdrawal, as a second pass
    running at once would write it) is refused as STALE and nothing of it is kept; a newer one
    is written with its row."""
    early, late = "2026-03-01T09:00:00.000Z", "2026-03-01T10:00:00.000Z"
    put = store.put_remote_records
    put([consent(1)], origin=SERVER, audit=[], at=T0, remote=[_copy("1", early)])
    [withdrawn] = put(
        [consent(1, status="revoked")], origin=SERVER, audit=[], at=at(1), remote=[_copy("2", late)]
    )
    [stale] = put(
        [consent(1)],
        origin=SERVER,
        audit=[audit_entry("pull", "rec-000001")],
        at=at(2),
        remote=[_copy("1", early)],
    )
    assert (withdrawn.outcome, stale.outcome) == (PutOutcome.UPDATED, PutOutcome.STALE)
    stored = store.get_record("rec-000001")
    assert stored is not None and (stored.version, stored.body["score"]) == (2, "revoked")
    assert store.pulled(SERVER, "Consent", ["c1"])["c1"].version_id == "2"
    assert store.list_audit(record_id="rec-000001") == []


def test_a_remote_copy_of_a_version_since_deleted_is_not_written(store: SqlStore) -> None:
    """The deletion of a copy is saved with its version; the same version read again (a lagging
    replica) does not bring the consent back."""
    stamp = "2026-03-01T09:00:00.000Z"
    put = store.put_remote_records
    put([consent(1)], origin=SERVER, audit=[], at=T0, remote=[_copy("1", stamp)])
    [deleted] = put(
        [consent(1, status="revoked")],
        origin=SERVER,
        audit=[],
        at=at(1),
        remote=[_copy("1", stamp, state="deleted")],
    )
    [again] = put([consent(1)], origin=SERVER, audit=[], at=at(2), remote=[_copy("1", stamp)])
    assert (deleted.outcome, again.outcome) == (PutOutcome.UPDATED, PutOutcome.STALE)
    assert store.pulled(SERVER, "Consent", ["c1"])["c1"].state == "deleted"


def test_pulled_consents_elsewhere_are_those_of_other_servers(store: SqlStore) -> None:
    """Consents pulled from another base URL, newest version, with that URL; never local ones
    or those of the server named."""
    other = "http://old.example.org/fhir"
    store.put_records([consent(1)], audit=[], at=T0)  # local: no origin
    store.put_remote_records([consent(2)], origin=SERVER, audit=[], at=T0)
    store.put_remote_records([consent(3)], origin=other, audit=[], at=T0)
    store.put_remote_records([consent(3, status="revoked")], origin=other, audit=[], at=at(1))
    [(origin, stored)] = store.pulled_consents_elsewhere(SERVER)
    assert (origin, stored.record_id, stored.version) == (other, consent(3).record_id, 2)
    assert [r.record_id for _, r in store.pulled_consents_elsewhere(other)] == [
        consent(2).record_id
    ]
