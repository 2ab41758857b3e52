"""Sync review, a conflict flagged for a person can be decided by one: ``overwrite`` (ours over
theirs, gated, If-Match the server's version the conflict was flagged against) or ``keep-remote``
(theirs kept, recorded as sent); audited with who decided, counted; a change made on the server
after the flag is flagged again, never silently overwritten."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store.interface import SentResource, SyncState
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from fhir_alliance_service.usecases.conflicts import (
    NotFlagged,
    RecordVersionChanged,
    ServerVersionsUnknown,
    decide_conflict,
)
from fhir_alliance_service.usecases.status import RecordStatus

from tests.review_sync.steps import value_of
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM


def _now() -> datetime:
    return datetime.now(UTC)


def _conflicts(outcome: str) -> float:
    return REGISTRY.get_sample_value("fhir_alliance_conflicts_total", {"outcome": outcome}) or 0.0


def _actions(harness: SyncHarness, record_id: str) -> list[str]:
    return [a.action for a in harness.store.list_audit(record_id=record_id, limit=1000)]


def _shown(harness: SyncHarness, record_id: str) -> tuple[SentResource, ...]:
    """The server versions the record's conflict is flagged against, as a person is shown them."""
    status = harness.store.sync_status(record_id)
    return status.conflict_versions if status is not None else ()


def _version(harness: SyncHarness, record_id: str) -> int:
    """The version of our record the conflict is flagged on, as a person is shown it."""
    status = harness.store.sync_status(record_id)
    return status.record_version if status is not None else 0


def _decide(harness: SyncHarness, record_id: str, decision: str) -> RecordStatus:
    """A person's decision from the command line, against the conflict the status shows now."""
    return decide_conflict(
        harness.store,
        record_id,
        decision,
        against=_shown(harness, record_id),
        record_version=_version(harness, record_id),
        decided_by="cli",
        at=_now(),
    )


def _on_server(harness: SyncHarness) -> dict[str, Any]:
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    return on_server


def _edit_on_server(harness: SyncHarness, value: int) -> dict[str, Any]:
    """Someone else sets rating 1's value on the server: the server's new copy."""
    current = _on_server(harness)
    quantity = {**current["valueQuantity"], "value": value}
    return remote.update(harness.server, current, valueQuantity=quantity)


def _flagged_rating(harness: SyncHarness) -> tuple[str, dict[str, Any]]:
    """Rating 1 (value 4) sent; someone sets it to 1 on the server (version 2); our version 2
    (value 5) meets the 412 and policy flag holds it for a person: its record id, theirs."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    theirs = _edit_on_server(harness, 1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    assert (status.state, status.held_reason) == (SyncState.HELD, CONFLICT_HELD_REASON)
    return rating.record_id, theirs


def test_a_flagged_conflict_notes_the_server_version_it_was_flagged_against(
    harness: SyncHarness,
) -> None:
    """What a decision is made against is kept with the flag: the server's version then."""
    record_id, theirs = _flagged_rating(harness)
    status = harness.store.sync_status(record_id)
    assert status is not None and status.conflict == "flagged"
    assert status.conflict_versions == (
        SentResource("Observation", theirs["id"], theirs["meta"]["versionId"]),
    )


def test_overwrite_writes_ours_over_theirs_gated_and_audited(harness: SyncHarness) -> None:
    """``overwrite``: queued again, sent by the worker If-Match the flagged version; SENT with
    our value on the server, a disclosure AuditEvent for the send and a decision AuditEvent
    naming the API key id (never a name); counted."""
    record_id, _ = _flagged_rating(harness)
    before = _conflicts("decided-overwrite")
    found = decide_conflict(
        harness.store,
        record_id,
        "overwrite",
        against=_shown(harness, record_id),
        record_version=_version(harness, record_id),
        decided_by="fa_0123456789ab",
        at=_now(),
    )
    assert found.sync is not None and found.sync.state is SyncState.QUEUED
    assert harness.drain(conflict_policy="flag").sent == 1
    status = harness.store.sync_status(record_id)
    assert status is not None
    assert (status.state, status.conflict) == (SyncState.SENT, "decided-overwrite")
    assert value_of(_on_server(harness))["value"] == 5
    assert _on_server(harness)["meta"]["versionId"] == "3"
    actions = _actions(harness, record_id)
    assert actions.count("conflict-decision") == 1
    assert actions.count("disclose") == 2  # version 1, and the decided overwrite
    [decision] = [
        a for a in harness.store.list_audit(record_id=record_id) if a.action == "conflict-decision"
    ]
    assert decision.resource["outcomeDesc"] == "overwrite"
    assert decision.resource["agent"][0]["who"]["identifier"]["value"] == "fa_0123456789ab"
    assert _conflicts("decided-overwrite") == before + 1


def test_overwrite_does_not_clobber_a_change_made_after_the_flag(harness: SyncHarness) -> None:
    """Someone changes the resource again after the flag (version 3): the decided overwrite goes
    If-Match version 2, meets a 412 and is flagged again (a new conflict, with version 3 noted);
    their latest change stays on the server."""
    record_id, _ = _flagged_rating(harness)
    later = _edit_on_server(harness, 2)
    _decide(harness, record_id, "overwrite")
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(record_id)
    assert status is not None
    assert (status.state, status.conflict) == (SyncState.HELD, "flagged")
    assert status.conflict_versions == (
        SentResource("Observation", later["id"], later["meta"]["versionId"]),
    )
    assert value_of(_on_server(harness))["value"] == 2
    conflicts = [
        str(a.resource.get("outcomeDesc"))
        for a in harness.store.list_audit(record_id=record_id)
        if a.action == "conflict"
    ]
    assert conflicts == ["flagged", "flagged"]
    # Decided again, against what the server holds now: it goes.
    _decide(harness, record_id, "overwrite")
    assert harness.drain(conflict_policy="flag").sent == 1
    assert value_of(_on_server(harness))["value"] == 5


def test_keep_remote_records_the_server_version_and_sends_nothing(harness: SyncHarness) -> None:
    """``keep-remote``: SENT at the server's version, their value stays, nothing is sent; the
    next change of ours goes If-Match their version (no conflict)."""
    record_id, theirs = _flagged_rating(harness)
    found = _decide(harness, record_id, "keep-remote")
    assert found.sync is not None
    assert (found.sync.state, found.sync.conflict) == (SyncState.SENT, "decided-keep-remote")
    assert found.sync.sent == (
        SentResource("Observation", theirs["id"], theirs["meta"]["versionId"]),
    )
    assert harness.drain(conflict_policy="flag").claimed == 0
    assert value_of(_on_server(harness))["value"] == 1
    assert _actions(harness, record_id).count("disclose") == 1  # version 1 only
    [corrected] = harness.intake([R.rating(harness.run, 1, value=3)])
    assert harness.drain(conflict_policy="flag").sent == 1
    assert harness.state(corrected.record_id) is SyncState.SENT
    assert value_of(_on_server(harness))["value"] == 3


def test_a_decision_never_bypasses_the_consent_gate(harness: SyncHarness) -> None:
    """The patient's consent revoked before the overwrite is sent: the gate holds it (for the
    consents, not for a person); nothing is sent."""
    record_id, _ = _flagged_rating(harness)
    harness.intake([R.revocation(harness.run)])
    _decide(harness, record_id, "overwrite")
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason != CONFLICT_HELD_REASON
    assert value_of(_on_server(harness))["value"] == 1


def test_only_a_flagged_conflict_can_be_decided(harness: SyncHarness) -> None:
    """A sent record: NotFlagged, nothing changed, nothing audited."""
    harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1, value=4)])
    harness.drain()
    [rating] = harness.intake([R.rating(harness.run, 1, value=4)])
    actions = _actions(harness, rating.record_id)
    with pytest.raises(NotFlagged):
        decide_conflict(
            harness.store,
            rating.record_id,
            "overwrite",
            against=_shown(harness, rating.record_id),
            record_version=_version(harness, rating.record_id),
            decided_by="cli",
            at=_now(),
        )
    assert _actions(harness, rating.record_id) == actions


def test_keep_remote_needs_the_noted_server_version(harness: SyncHarness) -> None:
    """A conflict flagged without its server version noted (before this release): keep-remote is
    refused (nothing known to record); overwrite works and is flagged again, with it noted."""
    record_id, theirs = _flagged_rating(harness)
    status = harness.store.sync_status(record_id)
    assert status is not None and status.item_id is not None
    with harness.store.engine.begin() as connection:
        from fhir_alliance_service.store.tables import outbox
        from sqlalchemy import update

        connection.execute(
            update(outbox).where(outbox.c.item_id == status.item_id).values(conflict_versions=None)
        )
    with pytest.raises(ServerVersionsUnknown):
        _decide(harness, record_id, "keep-remote")
    _decide(harness, record_id, "overwrite")
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(record_id)
    assert status is not None and (status.state, status.conflict) == (SyncState.HELD, "flagged")
    assert status.conflict_versions[0].version_id == theirs["meta"]["versionId"]
    assert value_of(_on_server(harness))["value"] == 1


def test_a_decision_on_an_older_record_version_is_refused(harness: SyncHarness) -> None:
    """A person is shown our version 2 flagged against the server's version 2. Before they
    decide, our version 3 is taken in and meets the same 412: flagged against the very same
    server version. Their decision (made looking at version 2) decides nothing
    (RecordVersionChanged naming version 3; nothing changed or audited); one made on version 3,
    as shown now, is taken."""
    record_id, _ = _flagged_rating(harness)
    shown, seen = _shown(harness, record_id), _version(harness, record_id)
    assert seen == 2
    harness.intake([R.rating(harness.run, 1, value=3)])
    harness.drain(conflict_policy="flag")
    before = harness.store.sync_status(record_id)
    assert before is not None and (before.state, before.conflict) == (SyncState.HELD, "flagged")
    assert (before.record_version, before.conflict_versions) == (3, shown)
    with pytest.raises(RecordVersionChanged) as changed:
        decide_conflict(
            harness.store,
            record_id,
            "overwrite",
            against=shown,
            record_version=seen,
            decided_by="cli",
            at=_now(),
        )
    assert changed.value.version == 3 and "record version 3" in str(changed.value)
    assert harness.store.sync_status(record_id) == before
    assert "conflict-decision" not in _actions(harness, record_id)
    _decide(harness, record_id, "overwrite")
    assert harness.drain(conflict_policy="flag").sent == 1
    assert value_of(_on_server(harness))["value"] == 3
