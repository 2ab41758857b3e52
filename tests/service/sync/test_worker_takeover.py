"""The worker and items whose earlier workers stopped without a result (issue 8): a poison record
that kills every worker taking it is dead-lettered after ``max_attempts`` takeovers in a row,
with an OperationOutcome saying so, and stops blocking its patient; fewer takeovers still send it
once, and its result forgets them."""

from __future__ import annotations

from datetime import timedelta

from fhir_alliance_service.store.interface import SyncState

from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness, now

RECORD = R.RECORD_SYSTEM


def _crash_workers(harness: SyncHarness, times: int) -> None:
    """``times`` workers claim the outbox and stop without a result (their leases expire)."""
    start = now() - timedelta(hours=1)
    for n in range(times):
        claimed = harness.store.claim(
            f"crashed-{n}", limit=50, lease_seconds=1, now=start + timedelta(seconds=10 * n)
        )
        assert claimed, "nothing to claim"


def test_a_record_whose_workers_keep_stopping_is_dead_lettered_at_max_attempts(
    harness: SyncHarness,
) -> None:
    """After ``max_attempts`` workers stopped without a result, the next worker dead-letters the
    item with the reason, does not send it, and the patient's later items go through."""
    run = harness.run
    harness.intake([R.sharing_consent(run)])
    harness.drain()
    [poison] = harness.intake([R.rating(run, 1)])
    _crash_workers(harness, 3)  # claimed once, then taken over twice: 2 lost leases counted
    [later] = harness.intake([R.rating(run, 2)])

    report = harness.drain(max_attempts=3)  # this takeover counts the third
    assert (report.dead, report.sent) == (1, 1)

    status = harness.store.sync_status(poison.record_id)
    assert status is not None
    assert (status.state, status.attempts) == (SyncState.DEAD_LETTERED, 0)  # nothing was sent
    assert status.last_outcome is not None
    text = status.last_outcome["issue"][0]["details"]["text"]
    assert "stopped without a result 3 times in a row" in text
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-1") == []
    assert [e.action for e in harness.store.list_audit(record_id=poison.record_id)] == [
        "intake",
        "dead-letter",
    ]
    assert harness.state(later.record_id) is SyncState.SENT
    assert len(harness.on_server("Observation", f"{RECORD}|trust-{run}-2")) == 1


def test_an_item_taken_over_fewer_than_max_attempts_times_is_still_sent_once(
    harness: SyncHarness,
) -> None:
    """Workers that stopped fewer than ``max_attempts`` times do not dead-letter the item: the
    next worker sends it, once, and its result forgets the lost leases."""
    run = harness.run
    harness.intake([R.sharing_consent(run)])
    harness.drain()
    [rating] = harness.intake([R.rating(run, 1)])
    _crash_workers(harness, 3)

    report = harness.drain(max_attempts=4)
    assert (report.dead, report.sent) == (0, 1)
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    assert (status.state, status.attempts, status.lost_leases) == (SyncState.SENT, 0, 0)
    assert len(harness.on_server("Observation", f"{RECORD}|trust-{run}-1")) == 1
