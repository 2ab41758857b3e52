"""Sync review, remote edits of what we own: an active or draft consent of ours edited on the FHIR
server is settled by the conflict policy (not only noted), and withdrawn there is revoked here; a
write-back of a record at version 1 carries If-Match; conflict-flagged (and draft) holds wait for a
person, not for a consent change."""

from __future__ import annotations

from typing import Any

import pytest
from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import StoredRecord, SyncState, SyncStatus
from fhir_alliance_service.sync.gate import HoldReason
from fhir_alliance_service.sync.pull import PullReport
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON

from tests.review_sync.steps import before_send, conflict_events, consent_on_server, value_of
from tests.service.conftest import (  # noqa: F401 (fixtures: the store on PostgreSQL)
    empty_postgres_schema,
    postgres_url,
)
from tests.service.store.builders import at, record
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, puller

RECORD = R.RECORD_SYSTEM
EDITED_AT = "2026-11-03T09:00:00+00:00"


def _conflicts(outcome: str) -> float:
    return REGISTRY.get_sample_value("fhir_alliance_conflicts_total", {"outcome": outcome}) or 0.0


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "text")}


# ---------------------------------------------------------------- 1. an active consent edited


def _sent_consent(harness: SyncHarness, *, changed_here: bool) -> tuple[str, dict[str, Any]]:
    """Our sharing consent of Patient/p1, sent (at record version 2 when ``changed_here``): its
    record id and the server's copy of our write."""
    payload = R.sharing_consent(harness.run)
    [consent] = harness.intake([payload])
    assert harness.drain().sent == 1
    if changed_here:
        payload["date"] = "2026-11-02T09:00:00+00:00"
        [consent] = harness.intake([payload])
        assert consent.version == 2 and harness.drain().sent == 1
    return consent.record_id, consent_on_server(harness)


@pytest.mark.parametrize("changed_here", [False, True], ids=["version-1", "version-2"])
@pytest.mark.parametrize("policy", ["flag", "overwrite", "keep-remote"])
def test_an_active_consent_edited_on_the_server_is_settled_by_the_conflict_policy(
    harness: SyncHarness, policy: str, changed_here: bool
) -> None:
    """Someone edits the content of our active consent on the FHIR server and leaves it active.
    The service is the source of truth: the pull queues our version again, its update is made
    If-Match our last write, meets the 412, and CONFLICT_POLICY settles it as documented (flag:
    held for a person, their edit stays; overwrite: ours is written; keep-remote: theirs is
    recorded as what the server holds), with its conflict AuditEvent. The pass after settles
    nothing more."""
    record_id, ours = _sent_consent(harness, changed_here=changed_here)
    theirs = remote.update(harness.server, ours, dateTime=EDITED_AT)
    report = puller(harness).pull(full_listing=True)
    assert report.conflicts == 1
    status = harness.store.sync_status(record_id)
    assert status is not None and status.conflict == "remote-edited"
    _settled_by_the_policy(harness, policy, record_id, ours, theirs)


def _settled_by_the_policy(
    harness: SyncHarness,
    policy: str,
    record_id: str,
    ours: dict[str, Any],
    theirs: dict[str, Any],
) -> None:
    """Our consent ``record_id`` (our write ``ours``), edited on the server (``theirs``) and
    queued again by the pull: its send meets the 412 and ``policy`` settles it as documented,
    with its conflict AuditEvent; the pass after settles nothing more."""
    harness.drain(conflict_policy=policy)
    on_server = consent_on_server(harness)
    status = harness.store.sync_status(record_id)
    assert status is not None
    print(
        f"policy={policy} state={status.state.value} conflict={status.conflict} "
        f"server_dateTime={on_server.get('dateTime')} events={conflict_events(harness, record_id)}"
    )
    expected = {"flag": "flagged", "overwrite": "overwritten", "keep-remote": "kept-remote"}
    assert status.conflict == expected[policy], "the remote edit was never settled"
    assert conflict_events(harness, record_id) == [expected[policy]]
    if policy == "flag":
        assert status.state is SyncState.HELD and status.held_reason == CONFLICT_HELD_REASON
        assert on_server["meta"]["versionId"] == theirs["meta"]["versionId"]
    elif policy == "overwrite":
        assert status.state is SyncState.SENT
        assert _content(on_server) == _content(ours), "the EHR keeps someone else's edit"
        assert [s.version_id for s in status.sent] == [on_server["meta"]["versionId"]]
    else:
        assert status.state is SyncState.SENT
        assert _content(on_server) == _content(theirs)
        assert [s.version_id for s in status.sent] == [theirs["meta"]["versionId"]]
    again = puller(harness).pull(full_listing=True)
    assert (again.conflicts, harness.drain(conflict_policy=policy).claimed) == (0, 0)


# ---------------------------------------------------------------- 2. a draft consent edited


def _sent_draft(harness: SyncHarness) -> tuple[str, dict[str, Any]]:
    """Our consent of Patient/p1 taken in as a draft (record version 1) and sent: its record id
    and the server's copy of our write."""
    payload = R.sharing_consent(harness.run)
    payload["status"] = "draft"
    payload["history"] = [{"status": "draft", "at": payload["date"], "by": payload["grantor"]}]
    [draft] = harness.intake([payload])
    assert draft.version == 1 and harness.drain().sent == 1
    return draft.record_id, consent_on_server(harness)


def _pull_and_show(
    harness: SyncHarness, record_id: str
) -> tuple[PullReport, SyncStatus, StoredRecord]:
    """A full pull: its report, then the sync status and the stored newest version of our
    consent ``record_id``, printed (what a failure shows)."""
    report = puller(harness).pull(full_listing=True)
    status = harness.store.sync_status(record_id)
    stored = harness.store.get_record(record_id)
    assert status is not None and stored is not None
    print(
        f"pull: conflicts={report.conflicts} withdrawn={report.withdrawn} "
        f"deleted={report.deleted} merged={report.merged}; status conflict={status.conflict} "
        f"state={status.state.value}; stored v{stored.version} {stored.body['status']}"
    )
    return report, status, stored


@pytest.mark.parametrize(
    "edit",
    [{"dateTime": EDITED_AT}, {"dateTime": EDITED_AT, "status": "proposed"}],
    ids=["left-draft", "set-proposed"],
)
@pytest.mark.parametrize("policy", ["flag", "overwrite", "keep-remote"])
def test_a_draft_consent_edited_on_the_server_is_settled_by_the_conflict_policy(
    harness: SyncHarness, policy: str, edit: dict[str, Any]
) -> None:
    """Someone edits the content of our draft consent on the FHIR server and leaves it a draft
    (``draft``, or R4's ``proposed``: not in force, not withdrawn). As for an active consent:
    the pull counts a conflict, queues our version again, its update meets the 412 and
    CONFLICT_POLICY settles it (flag: held for a person, their edit stays; overwrite: ours is
    written; keep-remote: theirs is recorded as what the server holds), with its conflict
    AuditEvent. The pass after settles nothing more."""
    record_id, ours = _sent_draft(harness)
    theirs = remote.update(harness.server, ours, **edit)
    seen = _conflicts("remote-edit-seen")
    report, status, _ = _pull_and_show(harness, record_id)
    assert (report.conflicts, report.withdrawn, report.reasserted) == (1, 0, 0)
    assert status.conflict == "remote-edited", "the edit of our draft was merged quietly"
    assert _conflicts("remote-edit-seen") == seen + 1
    _settled_by_the_policy(harness, policy, record_id, ours, theirs)


@pytest.mark.parametrize("withdrawn_as", ["inactive", "rejected", "entered-in-error"])
def test_a_draft_consent_withdrawn_on_the_server_is_revoked_here(
    harness: SyncHarness, withdrawn_as: str
) -> None:
    """Someone withdraws our draft consent on the FHIR server (a status that is neither in force
    nor a draft). As for an active consent, the withdrawal is adopted at once: revoked here
    through intake (a new version, audited) and the revoked version written back against the
    version the pull saw, with no conflict."""
    record_id, ours = _sent_draft(harness)
    remote.update(harness.server, ours, status=withdrawn_as)
    report, _, stored = _pull_and_show(harness, record_id)
    assert (report.withdrawn, report.conflicts) == (1, 0), "the withdrawal was merged quietly"
    assert stored.version == 2 and stored.body["status"] == "revoked"
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT and status.conflict is None
    on_server = consent_on_server(harness)
    assert on_server["status"] == "inactive" and on_server["meta"]["versionId"] == "3"
    again = puller(harness).pull(full_listing=True)
    assert (again.withdrawn, again.conflicts, harness.drain().claimed) == (0, 0, 0)


def test_a_draft_consent_deleted_on_the_server_is_revoked_here(harness: SyncHarness) -> None:
    """Someone deletes our draft consent on the FHIR server: as for an active consent, the
    deletion is adopted as a withdrawal, revoked here through intake."""
    record_id, ours = _sent_draft(harness)
    assert puller(harness).pull(full_listing=True).conflicts == 0  # our write, seen
    remote.delete(harness.server, ours)
    report, _, stored = _pull_and_show(harness, record_id)
    assert (report.deleted, report.withdrawn) == (1, 1), "the deletion was merged quietly"
    assert stored.version == 2 and stored.body["status"] == "revoked"


# ---------------------------------------------------------------- 3. If-Match at version 1


def _draft_consent_put_in_force(harness: SyncHarness) -> tuple[str, dict[str, Any]]:
    """Our consent taken in as a draft (record version 1) and sent; someone sets it active on the
    FHIR server; the pull queues our draft to be written back: its record id, the server's copy."""
    record_id, ours = _sent_draft(harness)
    put_in_force = remote.update(harness.server, ours, status="active")
    report = puller(harness).pull(full_listing=True)
    assert report.reasserted == 1
    return record_id, put_in_force


def test_a_draft_written_back_at_version_1_goes_if_match_the_version_the_pull_saw(
    harness: SyncHarness,
) -> None:
    """The write-back of a version-1 consent with no further change: written against the server
    version the pull noted (no 412), the consent is a draft on the server again."""
    record_id, _ = _draft_consent_put_in_force(harness)
    if_match: list[str | None] = []
    original = harness.client.transaction

    def transaction(requests: Any, *args: Any, **kwargs: Any) -> Any:
        if_match.extend(r.if_match for r in requests)
        return original(requests, *args, **kwargs)

    harness.client.transaction = transaction  # type: ignore[method-assign]
    harness.drain(conflict_policy="flag")
    assert if_match == ['W/"2"']
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "withdrawal-reasserted"
    assert consent_on_server(harness)["status"] == "draft"


@pytest.mark.parametrize("policy", ["flag", "overwrite"])
def test_a_write_back_at_version_1_does_not_silently_overwrite_a_concurrent_edit(
    harness: SyncHarness, policy: str
) -> None:
    """Between the pull and the write-back of the version-1 draft, someone edits the Consent on
    the server again. The write-back carries If-Match the version the pull saw, so it meets the
    412 and the conflict policy decides (flag: held, their edit stays; overwrite: written, and
    said so), instead of a PUT without If-Match silently overwriting their edit."""
    record_id, put_in_force = _draft_consent_put_in_force(harness)
    edited: list[dict[str, Any]] = []
    before_send(
        harness,
        lambda: edited.append(remote.update(harness.server, put_in_force, dateTime=EDITED_AT)),
    )
    harness.drain(conflict_policy=policy)
    on_server = consent_on_server(harness)
    status = harness.store.sync_status(record_id)
    assert status is not None
    events = conflict_events(harness, record_id)
    print(f"policy={policy} state={status.state.value} conflict={status.conflict} events={events}")
    expected = {"flag": "flagged", "overwrite": "overwritten"}[policy]
    assert status.conflict == expected, "the concurrent edit was overwritten without a conflict"
    assert events == ["withdrawal-reasserted", expected]
    if policy == "flag":
        assert status.state is SyncState.HELD
        assert on_server["meta"]["versionId"] == edited[0]["meta"]["versionId"]
    else:
        assert status.state is SyncState.SENT and on_server["status"] == "draft"


# ---------------------------------------------------------------- 4. holds that wait for a person


def test_release_held_leaves_holds_that_wait_for_a_person(any_store: SqlStore) -> None:
    """``release_held`` re-queues a patient's items held by the consent gate, never those held
    for a person (a conflict flagged for a person to decide, a draft note before its signature):
    a consent change decides nothing for them. ``held_since`` (the consent time pass) ignores
    them likewise, so an old such hold does not make every later pass re-queue the patient."""
    any_store.put_records([record(n) for n in (1, 2, 3)], audit=[], at=at(0))
    items = any_store.claim("w", limit=10, lease_seconds=30, now=at(1), per_patient=10)
    reasons = {
        "rec-000001": CONFLICT_HELD_REASON,
        "rec-000002": HoldReason.DRAFT_NOTE.words,
        "rec-000003": HoldReason.NO_CONSENT.words,
    }
    when = {"rec-000001": 2, "rec-000002": 3, "rec-000003": 5}
    for item in items:
        held = any_store.mark_held(
            item.item_id, "w", reason=reasons[item.record_id], audit=[], at=at(when[item.record_id])
        )
        assert held
    conflict = next(i for i in items if i.record_id == "rec-000001")
    any_store.mark_conflict(conflict.item_id, "flagged", at=at(2))
    assert any_store.held_since() == {"Patient/p1": at(5)}
    assert any_store.release_held("Patient/p1", at=at(6)) == 1
    states = {r: any_store.sync_status(r) for r in reasons}
    assert {r: s.state if s else None for r, s in states.items()} == {
        "rec-000001": SyncState.HELD,
        "rec-000002": SyncState.HELD,
        "rec-000003": SyncState.QUEUED,
    }
    assert {r: s.held_reason if s else None for r, s in states.items() if r != "rec-000003"} == {
        "rec-000001": CONFLICT_HELD_REASON,
        "rec-000002": HoldReason.DRAFT_NOTE.words,
    }
    assert any_store.held_since() == {}
    assert any_store.release_held("Patient/p1", at=at(7)) == 0


def test_a_consent_change_does_not_resend_a_conflict_flagged_hold(harness: SyncHarness) -> None:
    """A rating flagged for a person (someone edited it on the server; policy flag). The
    patient's consents then change (more consents): the flagged rating is not sent again to
    meet the same 412 and write another conflict AuditEvent; it waits for a person. What a person
    can do still works: a new version of the record replaces the flagged one and its send is
    settled by the conflict policy in force (here overwrite)."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [theirs] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    remote.update(harness.server, theirs, valueInteger=1)
    [rating] = harness.intake([R.rating(run, 1, value=5)])
    harness.drain(conflict_policy="flag")
    assert harness.state(rating.record_id) is SyncState.HELD
    flagged = _conflicts("flagged")
    for n in (2, 3):
        harness.intake([R.sharing_consent(run, n=n)])
        harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    events = conflict_events(harness, rating.record_id)
    print(f"state={status.state.value} conflict_events={events}")
    assert status.state is SyncState.HELD and status.held_reason == CONFLICT_HELD_REASON
    assert events == ["flagged"], "each consent change re-sent the flagged record"
    assert _conflicts("flagged") == flagged
    [corrected] = harness.intake([R.rating(run, 1, value=3)])
    assert harness.drain(conflict_policy="overwrite").sent == 1
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.record_version == corrected.version == 3
    assert status.state is SyncState.SENT and status.conflict == "overwritten"
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    assert value_of(on_server)["value"] == 3


def test_the_store_knows_the_held_reasons_that_wait_for_a_person() -> None:
    """The store repeats the words of the holds that wait for a person (it must not import the
    sync package): they are the worker's and the gate's own."""
    from fhir_alliance_service.store.sql import HELD_FOR_A_PERSON

    assert set(HELD_FOR_A_PERSON) == {
        CONFLICT_HELD_REASON,
        HoldReason.DRAFT_NOTE.words,
        HoldReason.UNSIGNED_NOTE.words,
    }
