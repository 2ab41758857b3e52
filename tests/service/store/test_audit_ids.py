"""Distinct audit events never share an AuditEvent id in the store: the builders name a decision or
a step by the millisecond it was made, so two made in the same millisecond about the same record
version (two holds, two repairs) are built under one id; the store gives the later one an id of
its own, in the write that records it (intake's own write excepted: its ``intake`` events are
kept as built). Both stay in the trail, and both are pushed (``PUT`` to the id) without one
replacing the other. On SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from fhir_alliance_service import audit
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import AuditEntry, AuditPushState, SentResource

from .builders import T0, at, record

RECORD = "rec-000001"
PATIENT = "Patient/p1"
SERVER = "https://ehr.example/fhir"
#: Two instants in one millisecond (the builders' ids name the millisecond).
AT, SAME_MS = at(10), at(10) + timedelta(microseconds=300)


def _hold(reason: str, when: datetime = AT) -> AuditEntry:
    """A hold of version 1 of the record, for ``reason``."""
    return audit.hold_event(
        RECORD, PATIENT, 1, reason, when, recipient="Organization/ehr", purpose="TREAT"
    )


def _repair(version_id: str) -> AuditEntry:
    """A reconcile write's disclosure of Observation/a (pushed), at ``AT``."""
    entry = audit.disclosure_event(
        RECORD,
        PATIENT,
        1,
        [SentResource("Observation", "a", version_id)],
        AT,
        recipient="Organization/ehr",
        purpose="TREAT",
        step="reconcile-write",
    )
    return replace(entry, push_state=AuditPushState.PENDING)


def _ids(store: SqlStore, action: str) -> list[str]:
    return [str(e.resource["id"]) for e in store.list_audit(record_id=RECORD) if e.action == action]


def test_the_builders_give_two_decisions_in_one_millisecond_one_id() -> None:
    """What the store guards against: two holds of one record version for different reasons,
    and two repairs writing different server versions, each decided within one millisecond."""
    assert _hold("no-consent").resource["id"] == _hold("no-permit:PSYTHPN", SAME_MS).resource["id"]
    assert _repair("4").resource["id"] == _repair("5").resource["id"]


def test_an_event_under_an_id_taken_in_the_trail_is_stored_under_an_id_of_its_own(
    store: SqlStore,
) -> None:
    """A hold recorded after another of the same record version in the same millisecond keeps
    both in the trail: the first under the id it was built with, the second under another."""
    first, second = _hold("no-consent"), _hold("no-permit:PSYTHPN", SAME_MS)
    store.add_audit([first])
    store.add_audit([second])
    ids = _ids(store, "hold")
    assert len(ids) == 2 and len(set(ids)) == 2
    assert ids[0] == first.resource["id"]
    reasons = [e.resource["outcomeDesc"] for e in store.list_audit(record_id=RECORD)]
    assert reasons == ["no-consent", "no-permit:PSYTHPN"]


def test_events_under_one_id_in_one_write_are_stored_under_ids_of_their_own(
    store: SqlStore,
) -> None:
    """Three events built under one id and recorded in one write: three rows, three ids."""
    store.add_audit([_hold("no-consent"), _hold("draft", SAME_MS), _hold("no-consent", SAME_MS)])
    ids = _ids(store, "hold")
    assert len(ids) == 3 and len(set(ids)) == 3


def test_the_workers_holds_of_one_item_in_one_millisecond_keep_ids_of_their_own(
    store: SqlStore,
) -> None:
    """The worker's path (``mark_held``): an item held, re-queued by a consent change and held
    again within the same millisecond records two hold events under two ids."""
    store.put_records([record(1)], audit=[], at=T0)
    for hold in (_hold("no-consent"), _hold("no-permit:PSYTHPN", SAME_MS)):
        [item] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
        assert store.mark_held(item.item_id, "w1", reason="r", audit=[hold], at=at(2))
        store.release_held(PATIENT, at=at(3))
    ids = _ids(store, "hold")
    assert len(ids) == 2 and len(set(ids)) == 2


def test_a_pulls_write_stores_an_event_under_a_taken_id_under_an_id_of_its_own(
    store: SqlStore,
) -> None:
    """The pull's write (``put_remote_records``, on the raw connection): a pull event about a
    record, then another about its next version in the same millisecond."""
    first = audit.two_way_event("pull", RECORD, PATIENT, AT, outcome_code="merged")
    second = audit.two_way_event("pull", RECORD, PATIENT, SAME_MS, outcome_code="deleted")
    assert first.resource["id"] == second.resource["id"]
    store.put_remote_records([record(1)], origin=SERVER, audit=[first], at=T0)
    store.put_remote_records([record(1, score=2)], origin=SERVER, audit=[second], at=T0)
    ids = _ids(store, "pull")
    assert len(ids) == 2 and len(set(ids)) == 2
    assert ids[0] == first.resource["id"]


def test_intakes_write_keeps_every_event_as_built(store: SqlStore) -> None:
    """Intake's own write (``put_records``) stores its events as built, unchecked (its ids name
    the record version; the lookup would lengthen the most contended write): two intakes of a
    record under one id, as a concurrent intake that read the same version makes them, are
    both kept. Intake events stay local, so nothing is replaced on the server."""
    first = audit.intake_event(RECORD, PATIENT, "wai-sr", 2, AT)
    stale = audit.intake_event(RECORD, PATIENT, "wai-sr", 2, SAME_MS)
    store.put_records([record(1)], audit=[], at=T0)
    store.put_records([record(1, score=2)], audit=[first], at=T0)
    store.put_records([record(1, score=3)], audit=[stale], at=T0)
    assert _ids(store, "intake") == [first.resource["id"]] * 2


def test_pushed_events_under_one_id_are_pushed_under_ids_of_their_own(store: SqlStore) -> None:
    """Two reconcile runs writing Observation/a again in the same millisecond (server versions 4
    and 5): both disclosures are queued for the server, each under its own id, so neither push
    replaces the other there."""
    store.add_audit([_repair("4")])
    store.add_audit([_repair("5")])
    claimed = store.claim_audit_pushes(limit=10, lease_seconds=30, now=at(20))
    assert len(claimed) == 2
    assert len({e.resource["id"] for e in claimed}) == 2
