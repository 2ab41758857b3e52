"""``decide_conflict``: a decision is applied to the conflict it names (``against``, the server
versions shown, in any order) and to no later one, even one flagged between its read and its
write; the one-line form of versions the CLI and the console use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from fhir_alliance_service.store import SentResource, SqlStore, SyncState
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from fhir_alliance_service.usecases.conflicts import (
    ConflictChanged,
    decide_conflict,
    format_versions,
    parse_versions,
)

from tests.service.store.builders import T0, at, record

V4 = (SentResource("Consent", "c-1", "4"), SentResource("Provenance", "p-1", None))
V5 = (SentResource("Consent", "c-1", "5"), SentResource("Provenance", "p-1", None))


def _flag(store: SqlStore, versions: Sequence[SentResource]) -> str:
    """Record 1's queued item held for a person against ``versions``; its record id."""
    [item] = store.claim("w", limit=1, lease_seconds=30, now=at(1))
    assert store.mark_held(
        item.item_id,
        "w",
        reason=CONFLICT_HELD_REASON,
        audit=[],
        at=at(2),
        conflict="flagged",
        conflict_versions=versions,
    )
    return item.record_id


def test_against_is_compared_in_any_order(store: SqlStore) -> None:
    """The versions shown, listed in another order, name the same conflict."""
    store.put_records([record(1)], audit=[], at=T0)
    record_id = _flag(store, V4)
    found = decide_conflict(
        store,
        record_id,
        "keep-remote",
        against=V4[::-1],
        record_version=1,
        decided_by="cli",
        at=at(3),
    )
    assert found.sync is not None and found.sync.sent == V4


def test_a_conflict_flagged_again_between_read_and_write_is_not_decided(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone decides and the send is flagged again (version 5) after this decision read the
    status (version 4, as shown) and before it writes: ConflictChanged naming version 5, and
    the record stays flagged."""
    store.put_records([record(1)], audit=[], at=T0)
    record_id = _flag(store, V4)
    write = store.decide_conflict

    def meanwhile(item_id: int, **decision: Any) -> bool:
        assert write(item_id, against=V4, keep_remote=False, conflict="other", audit=[], at=at(3))
        _flag(store, V5)
        return write(item_id, **decision)

    monkeypatch.setattr(store, "decide_conflict", meanwhile)
    with pytest.raises(ConflictChanged) as changed:
        decide_conflict(
            store,
            record_id,
            "overwrite",
            against=V4,
            record_version=1,
            decided_by="cli",
            at=at(4),
        )
    assert changed.value.now == V5
    status = store.sync_status(record_id)
    assert status is not None and (status.state, status.conflict) == (SyncState.HELD, "flagged")


@pytest.mark.parametrize("versions", [(), V4, V5[:1]])
def test_versions_read_back_as_written(versions: tuple[SentResource, ...]) -> None:
    """``Type/id/_history/version`` (``Type/id`` without one), joined by commas."""
    assert parse_versions(format_versions(versions)) == versions
    assert format_versions(V4) == "Consent/c-1/_history/4,Provenance/p-1"


@pytest.mark.parametrize("text", ["Consent", "Consent/c-1/4", "Consent//_history/4", "a/b/c/d"])
def test_other_text_is_not_versions(text: str) -> None:
    """Anything else is a ValueError."""
    with pytest.raises(ValueError, match="Type/id/_history/version"):
        parse_versions(text)
