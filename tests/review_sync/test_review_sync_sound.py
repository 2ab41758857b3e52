"""Outside review of the sync worker: promises probed and found kept (these pass on today's
code; kept beside the reproductions as the evidence for the review's "sound" list)."""

from __future__ import annotations

from fhir_alliance_service.store.interface import SyncState

from fhir_alliance.errors import TransientServerError, UnprocessableError
from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness, now

RECORD = R.RECORD_SYSTEM


def test_replay_after_a_withdrawal_runs_the_gate_again(harness: SyncHarness) -> None:
    """A dead-lettered rating replayed after the patient revoked: held, not sent."""
    run = harness.run
    harness.intake([R.sharing_consent(run)])
    harness.drain()
    [rating] = harness.intake([R.rating(run, 1)])
    [item] = harness.store.claim("worker-a", limit=1, lease_seconds=60, now=now())
    outcome = UnprocessableError("refused", status=422).to_operation_outcome()
    assert harness.store.mark_dead(item.item_id, "worker-a", outcome=outcome, audit=[], at=now())
    harness.intake([R.revocation(run)])
    harness.drain()
    assert harness.store.replay(rating.record_id, at=now()).requeued == 1
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []


def test_a_retry_after_a_5xx_runs_the_gate_again(harness: SyncHarness) -> None:
    """A rating that failed with a 503, the consent revoked before its retry: held, not sent."""
    run = harness.run
    harness.intake([R.sharing_consent(run)])
    harness.drain()
    [rating] = harness.intake([R.rating(run, 1)])
    [item] = harness.store.claim("worker-a", limit=1, lease_seconds=60, now=now())
    outcome = TransientServerError("busy", status=503).to_operation_outcome()
    assert harness.store.mark_failed(
        item.item_id, "worker-a", outcome=outcome, next_attempt_at=now(), at=now()
    )
    harness.intake([R.revocation(run)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []


def test_a_consent_for_another_recipient_releases_nothing_for_good(harness: SyncHarness) -> None:
    """A held rating re-queued by a consent for another organisation is held again (with a new
    hold AuditEvent), never sent."""
    run = harness.run
    [rating] = harness.intake([R.rating(run, 1)])
    harness.drain()
    harness.intake([R.sharing_consent(run, recipient="Organization/other")])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    holds = [a for a in harness.store.list_audit(record_id=rating.record_id) if a.action == "hold"]
    assert len(holds) == 2
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []


def test_a_revocation_before_the_first_sync_holds_the_record(harness: SyncHarness) -> None:
    """Consent, rating, then the revocation, all before any worker ran: the rating is held and
    only the revoked consent reaches the server."""
    run = harness.run
    [_, rating] = harness.intake([R.sharing_consent(run), R.rating(run, 1)])
    harness.intake([R.revocation(run)])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []
    [consent] = harness.on_server("Consent", R.consent_id(run, "Patient/p1"))
    assert consent["status"] == "inactive"
