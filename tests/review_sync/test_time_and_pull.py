"""Outside review of the sync worker, findings 9 and 10: a held record is decided again once a
consent's time boundary passes (a period starting or ending, at any depth), and a consent the
patient revoked here that someone sets back to active on the FHIR server is written back revoked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store import SentResource, SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker

from tests.service.conftest import (  # noqa: F401 (fixtures: the store on PostgreSQL)
    empty_postgres_schema,
    postgres_url,
)
from tests.service.store.builders import at, audit_entry, consent, record
from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness

# ---------------------------------------------------------------- the store functions they use


def test_held_since_gives_each_patient_with_held_items_its_oldest_hold(any_store: SqlStore) -> None:
    """``held_since``: per patient key, the oldest ``updated_at`` of its HELD items; patients
    with none held are not listed."""
    any_store.put_records(
        [record(1), record(2), record(3, patient="Patient/p2"), record(4, patient="Patient/p3")],
        audit=[],
        at=at(0),
    )
    assert any_store.held_since() == {}
    claimed = any_store.claim("w", limit=10, lease_seconds=30, now=at(1), per_patient=10)
    items = {i.record_id: i for i in claimed}
    for number, when in ((1, 5), (2, 3), (3, 7)):
        item = items[f"rec-{number:06d}"]
        assert any_store.mark_held(item.item_id, "w", reason="no consent", audit=[], at=at(when))
    item = items["rec-000004"]
    assert any_store.mark_sent(item.item_id, "w", sent=[], audit=[], at=at(8))
    assert any_store.held_since() == {"Patient/p1": at(3), "Patient/p2": at(7)}


def test_queue_again_queues_the_newest_version_once(any_store: SqlStore) -> None:
    """``queue_again``: a new QUEUED item of the record's newest version, noted with the conflict
    and audited; none (and no audit) while an item of the record waits, or for a record not
    stored."""
    any_store.put_records([consent(1)], audit=[], at=at(0))
    any_store.put_records([consent(1, status="revoked")], audit=[], at=at(1))
    [item] = any_store.claim("w", limit=1, lease_seconds=30, now=at(2))
    assert any_store.mark_sent(
        item.item_id, "w", sent=[SentResource("Consent", "c1", "2")], audit=[], at=at(3)
    )
    queued = any_store.queue_again(
        "rec-000001",
        conflict="withdrawal-reasserted",
        audit=[audit_entry("conflict", "rec-000001")],
        at=at(4),
    )
    assert queued is not None
    status = any_store.sync_status("rec-000001")
    assert status is not None
    assert (status.state, status.record_version, status.conflict, status.item_id) == (
        SyncState.QUEUED,
        2,
        "withdrawal-reasserted",
        queued,
    )
    again = any_store.queue_again(
        "rec-000001",
        conflict="withdrawal-reasserted",
        audit=[audit_entry("conflict", "rec-000001")],
        at=at(5),
    )
    assert again is None
    assert any_store.queue_again("rec-999999", conflict=None, audit=[], at=at(5)) is None
    assert [a.action for a in any_store.list_audit(record_id="rec-000001")] == ["conflict"]
    [claimed] = any_store.claim("w", limit=1, lease_seconds=30, now=at(6))
    assert (claimed.item_id, claimed.record_version) == (queued, 2)


# ---------------------------------------------------------------- 9. a consent taking effect later


def _worker_at(harness: SyncHarness, when: datetime) -> Worker:
    """A new worker (a restart) whose clock says ``when``."""
    return Worker(
        harness.settings,
        harness.store,
        harness.client,
        tags=[harness.server.run_tag],
        clock=lambda: when,
    )


def _drain(worker: Worker) -> None:
    while worker.run_once().claimed:
        pass


def test_records_held_before_a_consent_takes_effect_go_once_it_does(
    harness: SyncHarness,
) -> None:
    """A sharing consent signed now that takes effect on 1 January 2027 (``period.start``): a
    rating taken in before then is held ('no consent'). Once the period has started (the
    worker's clock moved on), the rating is re-evaluated and sent, with no consent record
    changed and no manual ``release_held``."""
    run = harness.run
    consent = R.sharing_consent(run)
    consent["period"] = {"start": "2027-01-01T00:00:00+00:00"}
    [_, rating] = harness.intake([consent, R.rating(run, 1)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    _drain(_worker_at(harness, datetime(2027, 1, 2, tzinfo=UTC)))
    unattended = harness.state(rating.record_id)
    print(f"on 2027-01-02: state={unattended.value}")
    assert unattended is SyncState.SENT


def _holds(harness: SyncHarness, record_id: str) -> int:
    return sum(1 for a in harness.store.list_audit(record_id=record_id) if a.action == "hold")


def test_a_provision_period_at_depth_two_starting_later_releases_the_held_record(
    harness: SyncHarness,
) -> None:
    """A consent in force now that denies everything, except (a provision nested two deep) from
    1 January 2027: a rating held now ('denied') goes on 2 January 2027."""
    run = harness.run
    consent = R.sharing_consent(run)
    consent["provision"]["provisions"] = [
        {
            "type": "deny",
            "provisions": [{"type": "permit", "period": {"start": "2027-01-01T00:00:00+00:00"}}],
        }
    ]
    [_, rating] = harness.intake([consent, R.rating(run, 1)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    _drain(_worker_at(harness, datetime(2027, 1, 2, tzinfo=UTC)))
    assert harness.state(rating.record_id) is SyncState.SENT


def test_a_deny_consent_that_ends_releases_the_held_record(harness: SyncHarness) -> None:
    """A sharing consent and a second consent denying everything until 1 January 2027 (its
    ``period.end``; deny overrides): a rating held now ('denied') goes once the deny has ended."""
    run = harness.run
    deny = R.sharing_consent(run, n=2)
    deny["decision"] = "deny"
    deny["provision"]["provisions"] = []
    deny["period"] = {
        "start": "2026-11-01T00:00:00+00:00",
        "end": "2027-01-01T00:00:00+00:00",
    }
    [_, _, rating] = harness.intake([R.sharing_consent(run), deny, R.rating(run, 1)])
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason is not None and "denies" in status.held_reason
    _drain(_worker_at(harness, datetime(2027, 1, 2, tzinfo=UTC)))
    assert harness.state(rating.record_id) is SyncState.SENT


def test_a_foreign_consent_pulled_with_a_later_provision_period_releases_when_it_starts(
    harness: SyncHarness,
) -> None:
    """A Consent written by the EHR (pulled, kept in the store's domain form) whose provision
    permits from 1 January 2027: a rating held now goes on 2 January 2027."""
    from tests.service.sync import remote
    from tests.service.sync.conftest import known_patient, puller

    patient = known_patient(harness)
    [rating] = harness.intake([R.rating(harness.run, 1, patient)])
    consent = remote.foreign_consent(harness.server, patient)
    consent["provision"]["period"] = {"start": "2027-01-01T00:00:00Z"}
    remote.create(harness.server, consent)
    assert puller(harness).pull().merged == 1
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    _drain(_worker_at(harness, datetime(2027, 1, 2, tzinfo=UTC)))
    assert harness.state(rating.record_id) is SyncState.SENT


def test_a_boundary_re_gates_a_held_record_once_and_only_once_it_has_passed(
    harness: SyncHarness,
) -> None:
    """A rating held for want of a consent for the clinic's EHR; the patient's only consent (for
    another organisation) ends on 1 January 2027, which permits nothing new. Before the end no
    pass re-gates the rating; after it, the first worker re-gates it once (a second hold
    AuditEvent) and later workers (restarts) never again for that boundary."""
    run = harness.run
    other = R.sharing_consent(run, recipient="Organization/other")
    other["period"] = {
        "start": "2026-11-01T00:00:00+00:00",
        "end": "2027-01-01T00:00:00+00:00",
    }
    [_, rating] = harness.intake([other, R.rating(run, 1)])
    harness.drain()
    assert _holds(harness, rating.record_id) == 1
    _drain(_worker_at(harness, datetime(2026, 12, 31, 23, 0, tzinfo=UTC)))
    assert _holds(harness, rating.record_id) == 1  # nothing has passed yet
    for day in (2, 3, 3):
        _drain(_worker_at(harness, datetime(2027, 1, day, tzinfo=UTC)))
    assert harness.state(rating.record_id) is SyncState.HELD
    assert _holds(harness, rating.record_id) == 2


# ---------------------------------------------------------------- 10. a revocation undone remotely


@pytest.mark.parametrize("put_back_as", ["active", "proposed"])
def test_a_revoked_consent_set_active_on_the_server_is_not_left_active(
    harness: SyncHarness, put_back_as: str
) -> None:
    """The patient revoked their consent here and the revocation was pushed (the EHR's Consent
    is inactive). Someone on the FHIR server sets it back to active (or proposed). The pull must
    not leave it so: the revoked version is written back (the service is the source of truth for
    its consents, and a withdrawal is never undone by someone else), as a conflict that is
    audited, counted and on the record's status; the pass after sees our own write."""
    from tests.service.sync import remote
    from tests.service.sync.conftest import puller

    run = harness.run
    harness.intake([R.sharing_consent(run)])
    harness.drain()
    [revocation] = harness.intake([R.revocation(run)])
    harness.drain()
    [revoked] = harness.on_server("Consent", R.consent_id(run, "Patient/p1"))
    assert revoked["status"] == "inactive"
    remote.update(harness.server, revoked, status=put_back_as)
    report = puller(harness).pull(full_listing=True)
    drained = harness.drain()
    [on_server] = harness.on_server("Consent", R.consent_id(run, "Patient/p1"))
    print(
        f"pull conflicts={report.conflicts} server_status={on_server['status']} "
        f"server_version={on_server['meta']['versionId']}"
    )
    assert on_server["status"] == "inactive", "the EHR keeps a consent the patient withdrew"
    assert (report.conflicts, report.reasserted, drained.sent) == (1, 1, 1)
    status = harness.store.sync_status(revocation.record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "withdrawal-reasserted"
    assert [s.version_id for s in status.sent] == [on_server["meta"]["versionId"]]
    conflicts = [
        a
        for a in harness.store.list_audit(record_id=revocation.record_id)
        if a.action == "conflict"
    ]
    assert [a.resource["outcomeDesc"] for a in conflicts] == ["withdrawal-reasserted"]
    again = puller(harness).pull(full_listing=True)
    assert (again.conflicts, again.reasserted, harness.drain().claimed) == (0, 0, 0)


def test_a_revocation_still_queued_is_written_over_a_remote_reactivation(
    harness: SyncHarness,
) -> None:
    """The patient revoked here; before the revocation is pushed, someone on the server edits
    the still-active Consent (a new version). The pull queues nothing more (the revocation is
    queued already) but lets it be written against the server's version: it is sent, not
    held as a 412 conflict for a person while the EHR keeps the consent active."""
    from tests.service.sync import remote
    from tests.service.sync.conftest import puller

    run = harness.run
    harness.intake([R.sharing_consent(run)])
    harness.drain()
    [sent] = harness.on_server("Consent", R.consent_id(run, "Patient/p1"))
    [revocation] = harness.intake([R.revocation(run)])
    remote.update(harness.server, sent, language="en")
    report = puller(harness).pull(full_listing=True)
    harness.drain()
    [on_server] = harness.on_server("Consent", R.consent_id(run, "Patient/p1"))
    status = harness.store.sync_status(revocation.record_id)
    assert status is not None
    print(f"server_status={on_server['status']} state={status.state.value}")
    assert on_server["status"] == "inactive", "the EHR keeps a consent the patient withdrew"
    assert status.state is SyncState.SENT
    assert (report.conflicts, report.reasserted) == (1, 1)
