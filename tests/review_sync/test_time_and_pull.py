"""Outside review of the sync worker, finding 9: a held record is decided again once a consent's
time boundary passes (a period starting or ending, at any depth)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker

from tests.service.conftest import (  # noqa: F401 (fixtures: the store on PostgreSQL)
    empty_postgres_schema,
    postgres_url,
)
from tests.service.store.builders import at, record
from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness

# ---------------------------------------------------------------- the store functions they use


@pytest.fixture(
    params=[
        pytest.param("sqlite_url", id="sqlite"),
        pytest.param("postgres_url", id="postgres", marks=pytest.mark.postgres),
    ]
)
def any_store(request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    """A store on a migrated SQLite database, then on PostgreSQL (the contract tests' two)."""
    opened = open_store(request.getfixturevalue(request.param))
    try:
        yield opened
    finally:
        opened.close()


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
