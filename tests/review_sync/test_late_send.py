"""A send that outlasts its lease (requests' timeout is per socket operation, not for the whole
send) still lands on the server: it is recorded whoever holds the item by then (the sync review's
follow-up to finding 7), with its disclosure AuditEvent and Provenance, so that retraction and
the next update's If-Match see what the server holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.usecases.intake import intake_records

from tests.review_sync.steps import sent_consent_first, value_of
from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM
LEASE = 30.0


class _Clock:
    """The workers' clock, moved on by hand (a send that takes longer than the lease)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def _worker(harness: SyncHarness, clock: _Clock, name: str, **overrides: Any) -> Worker:
    settings = replace(harness.settings, lease_seconds=LEASE, **overrides)
    return Worker(
        settings,
        harness.store,
        harness.client,
        tags=[harness.server.run_tag],
        clock=clock,
        worker_id=name,
    )


def _slow_send(
    harness: SyncHarness,
    clock: _Clock,
    *,
    before: Callable[[], object] = lambda: None,
    after: Callable[[], object] = lambda: None,
) -> None:
    """The next transaction Bundle outlasts its lease: the clock passes the lease's end while it
    is on its way; ``before`` runs just before it reaches the server, ``after`` once it landed
    and before its answer is back."""
    original = harness.client.transaction
    done: list[bool] = []

    def transaction(requests: Any, **kwargs: Any) -> Any:
        if done:
            return original(requests, **kwargs)
        done.append(True)
        clock.offset += timedelta(seconds=LEASE + 1)
        before()
        answer = original(requests, **kwargs)
        after()
        return answer

    harness.client.transaction = transaction  # type: ignore[method-assign,assignment]


def _disclosures(harness: SyncHarness, record_id: str) -> list[str]:
    """The audit actions of ``record_id``'s disclosures and Provenances."""
    return [
        e.action
        for e in harness.store.list_audit(record_id=record_id)
        if e.action in ("disclose", "provenance")
    ]


def _server_version(harness: SyncHarness, n: int) -> tuple[str, dict[str, Any]]:
    [resource] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-{n}")
    return str(resource["meta"]["versionId"]), resource


def test_a_send_landing_after_its_lease_is_tracked_and_retracted(harness: SyncHarness) -> None:
    """v1 of a rating is on its way when its lease runs out; meanwhile intake supersedes it by
    v2 and the patient revokes (v2 held). v1 landed: it is recorded SENT with the server's
    version, its disclosure and Provenance, and retracted by the policy once the consent is
    revoked (it used to be untracked: status final on the server, nothing to retract)."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1, value=2)])
    clock = _Clock()
    _slow_send(
        harness,
        clock,
        before=lambda: intake_records(
            harness.store, [R.rating(run, 1, value=5), R.revocation(run)], at=clock()
        ),
    )
    report = _worker(harness, clock, "worker-a").run_once()
    assert report.lease_lost == 1
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and (status.record_version, status.state) == (2, SyncState.HELD)
    last = harness.store.last_sent(rating.record_id)
    version, _ = _server_version(harness, 1)
    assert last is not None and last.record_version == 1
    assert [s.version_id for s in last.sent] == [version]
    assert _disclosures(harness, rating.record_id) == ["disclose", "provenance"]

    retracted = Retractor(
        replace(harness.settings, retraction_policy="entered-in-error"),
        harness.store,
        harness.client,
    ).run_pass(everyone=True)
    assert retracted.retracted_records == [rating.record_id]
    _, on_server = _server_version(harness, 1)
    assert on_server["status"] == "entered-in-error"


def test_the_worker_retracts_a_late_send_whose_consent_was_revoked_meanwhile(
    harness: SyncHarness,
) -> None:
    """The revocation came while the late send was on its way: the worker's own check after
    recording it retracts it at once (a retraction pass that ran meanwhile found nothing sent)."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1, value=2)])
    clock = _Clock()
    _slow_send(
        harness,
        clock,
        before=lambda: intake_records(
            harness.store, [R.rating(run, 1, value=5), R.revocation(run)], at=clock()
        ),
    )
    _worker(harness, clock, "worker-a", retraction_policy="entered-in-error").run_once()
    _, on_server = _server_version(harness, 1)
    assert on_server["status"] == "entered-in-error"
    last = harness.store.last_sent(rating.record_id)
    assert last is not None and last.retraction == "entered-in-error"


def test_the_update_after_a_late_send_is_made_against_its_version(harness: SyncHarness) -> None:
    """v1 sent; v2 lands after its lease ran out, superseded meanwhile by v3: v3 goes out with
    If-Match v2's server version and is sent (it used to meet a 412 against v1's version and be
    held as someone else's change)."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1, value=1)])
    assert harness.drain().sent == 1
    harness.intake([R.rating(run, 1, value=2)])
    clock = _Clock()
    _slow_send(
        harness,
        clock,
        before=lambda: intake_records(harness.store, [R.rating(run, 1, value=3)], at=clock()),
    )
    _worker(harness, clock, "worker-a").run_once()
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    assert (status.record_version, status.state, status.conflict) == (3, SyncState.SENT, None)
    version, on_server = _server_version(harness, 1)
    assert value_of(on_server)["value"] == 3
    assert [s.version_id for s in status.sent] == [version]


@pytest.mark.parametrize("other_first", [True, False], ids=["other-lands-first", "ours-first"])
def test_both_sends_of_a_taken_over_item_are_recorded_once_each(
    harness: SyncHarness, other_first: bool
) -> None:
    """Worker B takes over the item while A's send is on its way and sends it too (same
    content), landing before or after A's: the item is SENT with the version the server holds
    now (the later write), and each send has one disclosure and one Provenance."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1, value=2)])
    clock = _Clock()
    reports = []

    def other_worker() -> None:
        reports.append(_worker(harness, clock, "worker-b").run_once())

    if other_first:
        _slow_send(harness, clock, before=other_worker)
    else:
        _slow_send(harness, clock, after=other_worker)
    first = _worker(harness, clock, "worker-a").run_once()
    [second] = reports
    assert (first.lease_lost, second.sent) == (1, 1)
    status = harness.store.sync_status(rating.record_id)
    version, _ = _server_version(harness, 1)
    assert status is not None and status.state is SyncState.SENT
    assert [s.version_id for s in status.sent] == [version]
    assert sorted(_disclosures(harness, rating.record_id)) == [
        "disclose",
        "disclose",
        "provenance",
        "provenance",
    ]
    assert harness.drain().claimed == 0


def test_an_older_version_landing_over_a_newer_one_is_written_over_again(
    harness: SyncHarness,
) -> None:
    """A rating never sent before: v1's send outlasts its lease; v2 comes, is claimed by worker B
    and sent first (neither carries an If-Match), then v1 lands over it. v1's send is recorded,
    v2 queued again and written over it against the server's version: the server ends with v2
    (it used to keep v1, an older version over a newer one, with nothing to repair it)."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1, value=2)])
    clock = _Clock()

    def newer_version_sent_first() -> None:
        intake_records(harness.store, [R.rating(run, 1, value=5)], at=clock())
        assert _worker(harness, clock, "worker-b").run_once().sent == 1

    _slow_send(harness, clock, before=newer_version_sent_first)
    _worker(harness, clock, "worker-a").run_once()
    assert harness.drain().sent == 1
    version, on_server = _server_version(harness, 1)
    assert value_of(on_server)["value"] == 5
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    assert (status.record_version, status.state, status.conflict) == (2, SyncState.SENT, None)
    assert [s.version_id for s in status.sent] == [version]
