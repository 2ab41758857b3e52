"""Each stored ``intake`` AuditEvent names the record version its intake wrote, also when another
intake of the same record commits between the use case's read of the store and its write (the
use case builds the events before the write; the store assigns the versions in it). SQLite and
PostgreSQL alike (the same ``_put_records``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service import audit
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import (
    AuditEntry,
    PutOutcome,
)
from fhir_alliance_service.usecases.intake import RecordIntake, intake_records

from tests.service.usecases.payloads import OBSERVATION_PATIENT, observation
from tests.service.usecases.races import write_after

AT = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
#: The intake that is overtaken: later than every other one, so its event is told apart by time.
LATE = AT + timedelta(minutes=5)


def _rupture(tension: int) -> dict[str, Any]:
    payload = observation("rupture")
    payload["tension"] = tension
    return payload


def _version_named(entry: AuditEntry) -> str:
    [record_entity] = [e for e in entry.resource["entity"] if "detail" in e]
    [version] = [d["valueString"] for d in record_entity["detail"] if d["type"] == "version"]
    return str(version)


def _assert_truthful(store: SqlStore, late: RecordIntake, versions: int) -> None:
    """The record has ``versions`` versions and one ``intake`` event for each, each naming its
    own version under an id of its own; the overtaken intake's is the event
    :func:`audit.intake_event` builds for the version it wrote."""
    head = store.get_record(late.record_id)
    assert head is not None and head.version == versions
    events = store.list_audit(record_id=late.record_id)
    assert [e.action for e in events] == ["intake"] * versions
    assert sorted(_version_named(e) for e in events) == [str(v) for v in range(1, versions + 1)]
    assert len({e.resource["id"] for e in events}) == versions
    [mine] = [e for e in events if e.at == LATE]
    built = audit.intake_event(late.record_id, OBSERVATION_PATIENT, late.kind, late.version, LATE)
    assert mine.resource == built.resource


def test_an_overtaken_update_names_the_version_it_wrote(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 1 is stored; this intake reads it and builds its event for version 2; another
    intake writes version 2 meanwhile; this one writes version 3, and its event says 3 (it said 2,
    the other intake's event id and version)."""
    first, second = two_stores
    intake_records(second, [_rupture(1)], at=AT)
    write_after(
        monkeypatch,
        first,
        lambda: intake_records(second, [_rupture(2)], at=AT + timedelta(minutes=1)),
        once=True,
    )
    [late] = intake_records(first, [_rupture(3)], at=LATE)
    assert (late.version, late.outcome) == (3, PutOutcome.UPDATED)
    _assert_truthful(second, late, 3)


def test_an_overtaken_create_names_the_update_it_made(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """This intake finds no record and builds a create of version 1; another intake creates it
    meanwhile; this one writes version 2, and its event is an update of version 2 (it was a
    create of version 1, under the other intake's event id)."""
    first, second = two_stores
    write_after(monkeypatch, first, lambda: intake_records(second, [_rupture(2)], at=AT), once=True)
    [late] = intake_records(first, [_rupture(3)], at=LATE)
    assert (late.version, late.outcome) == (2, PutOutcome.UPDATED)
    _assert_truthful(second, late, 2)
    [mine] = [e for e in second.list_audit(record_id=late.record_id) if e.at == LATE]
    assert mine.resource["action"] == "U"
    assert mine.resource["subtype"][0]["code"] == "update"


def test_an_overtaken_intake_of_the_same_content_stores_no_event(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other intake wrote this intake's content meanwhile: this one is UNCHANGED, writes
    nothing, and stores no event (as an unchanged repost does); the other's event stands."""
    first, second = two_stores
    intake_records(second, [_rupture(1)], at=AT)
    write_after(
        monkeypatch,
        first,
        lambda: intake_records(second, [_rupture(3)], at=AT + timedelta(minutes=1)),
        once=True,
    )
    [late] = intake_records(first, [_rupture(3)], at=LATE)
    assert (late.version, late.outcome) == (2, PutOutcome.UNCHANGED)
    events = second.list_audit(record_id=late.record_id)
    assert sorted(_version_named(e) for e in events) == ["1", "2"]
    assert all(e.at != LATE for e in events)


def test_a_batch_names_each_record_at_its_own_version(
    two_stores: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a batch, only the overtaken record's event is made again; the others are stored as
    the use case built them."""
    first, second = two_stores
    other = observation("srs-administration")
    intake_records(second, [_rupture(1), other], at=AT)
    other["responses"]["1"] = 5.0
    write_after(
        monkeypatch,
        first,
        lambda: intake_records(second, [_rupture(2)], at=AT + timedelta(minutes=1)),
        once=True,
    )
    late, changed = intake_records(first, [_rupture(3), other], at=LATE)
    assert (late.version, changed.version) == (3, 2)
    _assert_truthful(second, late, 3)
    events = second.list_audit(record_id=changed.record_id)
    assert sorted(_version_named(e) for e in events) == ["1", "2"]


@pytest.mark.postgres
def test_on_postgresql_a_version_committed_inside_the_write_is_named_too(
    postgres_url: str,
) -> None:
    """PostgreSQL: the other intake commits after this intake's write transaction began, before
    it reads the records' newest versions (a pause between statements of the write): the
    version written is the one after the other's, and the event names it."""
    first, second = open_store(postgres_url), open_store(postgres_url)
    staged: list[bool] = []

    def another_intake_commits(statement: str) -> None:
        if not staged and "h.content_hash" in statement:
            # The write's own read of the heads (both it and the use case's lookup join records;
            # only the write reads the heads' content hash).
            staged.append(True)
            intake_records(second, [_rupture(2)], at=AT + timedelta(minutes=1))

    try:
        intake_records(second, [_rupture(1)], at=AT)
        first.raw.statement_listeners.append(another_intake_commits)
        [late] = intake_records(first, [_rupture(3)], at=LATE)
        assert staged
        assert (late.version, late.outcome) == (3, PutOutcome.UPDATED)
        _assert_truthful(second, late, 3)
    finally:
        first.close()
        second.close()
