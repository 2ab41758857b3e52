"""``replay`` of a dead letter whose record has a newer version: superseded, not re-queued, and
the command says so (record, version, newest version) instead of a silent count."""

from __future__ import annotations

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.tables import outbox
from sqlalchemy import update

from fhir_alliance.cli import main
from tests.service.store.builders import T0, at, record

pytestmark = pytest.mark.usefixtures("root_logging_restored")

OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}


def _stale_dead_letter(store: SqlStore) -> None:
    """rec-000001: version 1 dead-lettered, version 2 sent (a database written by an older
    release: this store now supersedes v1 when it is dead-lettered after v2 came)."""
    store.put_records([record(1, score=1)], audit=[], at=T0)
    [first] = store.claim("w1", limit=1, lease_seconds=30, now=at(1))
    store.put_records([record(1, score=2)], audit=[], at=at(2))
    assert store.mark_sent(first.item_id, "w1", sent=[], audit=[], at=at(3))
    [newer] = store.claim("w1", limit=1, lease_seconds=30, now=at(4))
    assert store.mark_sent(newer.item_id, "w1", sent=[], audit=[], at=at(5))
    with store.engine.begin() as connection:
        connection.execute(
            update(outbox)
            .where(outbox.c.item_id == first.item_id)
            .values(state="dead-lettered", last_outcome=OUTCOME)
        )


def test_replay_of_a_record_says_its_dead_letter_is_superseded_by_the_newer_version(
    opened: SqlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay RECORD_ID`: one line says version 1 is superseded by version 2, not re-queued;
    then, as for any record that is not dead-lettered, its state on stderr and exit 1."""
    _stale_dead_letter(opened)
    assert main(["replay", "rec-000001"]) == 1
    captured = capsys.readouterr()
    assert captured.out == (
        "record rec-000001 version 1: superseded by version 2, not re-queued "
        "(sending it would overwrite the newer version)\n"
    )
    assert captured.err.startswith("error: record rec-000001 is sent, not dead-lettered")
    assert main(["replay", "rec-000001"]) == 1  # again: nothing left to supersede
    assert capsys.readouterr().out == ""


def test_replay_all_counts_what_it_superseded(
    opened: SqlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay --all`: the superseded dead letter named, the others re-queued, both counted."""
    _stale_dead_letter(opened)
    opened.put_records([record(2, patient="Patient/p2")], audit=[], at=at(6))
    [other] = opened.claim("w1", limit=1, lease_seconds=30, now=at(7))
    assert opened.mark_dead(other.item_id, "w1", outcome=OUTCOME, audit=[], at=at(8))
    assert main(["replay", "--all"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "record rec-000001 version 1: superseded by version 2, not re-queued "
        "(sending it would overwrite the newer version)",
        "re-queued 1 dead-lettered item(s); superseded 1 by a newer version",
    ]
