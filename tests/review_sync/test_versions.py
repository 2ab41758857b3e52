"""An older version of a record never goes out over a newer one (the sync review's findings 4 and
8): a replayed dead letter, a retried or taken-over item whose record has a newer version since,
is superseded, not sent; two versions of one record never share a transaction Bundle."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from fhir_alliance_service.store.interface import SyncState

from fhir_alliance.errors import TransientServerError
from tests.review_sync.steps import sent_consent_first, value_of
from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness, now

RECORD = R.RECORD_SYSTEM
REFUSED = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}


def _bundles(harness: SyncHarness) -> list[list[str]]:
    """The resource ids of every transaction Bundle the worker sends from now on."""
    original = harness.client.transaction
    bundles: list[list[str]] = []

    def transaction(requests: Any, **kwargs: Any) -> Any:
        bundles.append([f"{r.resource['resourceType']}/{r.resource['id']}" for r in requests])
        return original(requests, **kwargs)

    harness.client.transaction = transaction  # type: ignore[method-assign]
    return bundles


def _item_states(harness: SyncHarness, record_id: str) -> dict[int, str]:
    """Every outbox item of ``record_id``: record version → state."""
    from fhir_alliance_service.store.tables import outbox
    from sqlalchemy import select

    with harness.store.engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.record_version, outbox.c.state).where(outbox.c.record_id == record_id)
        )
        return {version: state for version, state in rows}


# ---------------------------------------------------------------- 4. replaying an old version


def test_replay_never_sends_an_older_version_over_a_newer_one(harness: SyncHarness) -> None:
    """Version 1 of a rating is claimed; version 2 arrives meanwhile (not superseded: v1 is
    leased); v1 is dead-lettered (the server refused it), v2 is sent. ``fhir-alliance replay
    RECORD_ID`` (or ``--all``) must not re-queue v1, which would overwrite v2 on the server:
    v1 is superseded by v2, and replay says it re-queued nothing."""
    run = harness.run
    sent_consent_first(harness)
    [first] = harness.intake([R.rating(run, 1, value=2)])
    [item] = harness.store.claim("worker-a", limit=1, lease_seconds=60, now=now())
    assert item.record_version == 1
    harness.intake([R.rating(run, 1, value=5)])  # the correction, while v1 is in hand
    assert harness.store.mark_dead(item.item_id, "worker-a", outcome=REFUSED, audit=[], at=now())
    harness.drain()
    [before] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    replayed = harness.store.replay(first.record_id, at=now())  # cli.py _replay, RECORD_ID
    everything = harness.store.replay(at=now())  # --all
    harness.drain()
    [after] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    status = harness.store.sync_status(first.record_id)
    assert status is not None
    print(
        f"replayed={replayed} all={everything} value_before={value_of(before)} "
        f"value_after={value_of(after)} status_version={status.record_version} "
        f"state={status.state.value} items={_item_states(harness, first.record_id)}"
    )
    assert value_of(after) == value_of(before), "an older version overwrote the newer one"
    assert value_of(after)["value"] == 5
    assert after["meta"]["versionId"] == before["meta"]["versionId"], "sent again"
    assert replayed.requeued == 0 and everything.requeued == 0
    assert status.record_version == 2 and status.state is SyncState.SENT
    assert _item_states(harness, first.record_id) == {1: "superseded", 2: "sent"}


# ---------------------------------------------------------------- 8. two versions in one Bundle


def test_two_versions_of_one_record_never_share_a_bundle(harness: SyncHarness) -> None:
    """Version 2 of a rating arrives while version 1 is in a worker's hands (so it is not
    superseded); version 1's send fails transiently. The next claim took both (a patient's
    consecutive items) into one transaction Bundle: two PUTs to one id, whose order a
    transaction does not keep (FHIR: overlapping identities SHALL fail). Expected: version 1,
    stale, is superseded rather than sent; version 2 is sent, once."""
    run = harness.run
    sent_consent_first(harness)
    [first] = harness.intake([R.rating(run, 1, value=2)])
    [item] = harness.store.claim("worker-a", limit=1, lease_seconds=60, now=now())
    harness.intake([R.rating(run, 1, value=5)])  # the correction, while v1 is in hand
    outcome = TransientServerError("busy", status=503).to_operation_outcome()
    assert harness.store.mark_failed(
        item.item_id, "worker-a", outcome=outcome, next_attempt_at=now(), at=now()
    )
    bundles = _bundles(harness)
    harness.drain()
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    status = harness.store.sync_status(first.record_id)
    assert status is not None
    print(
        f"bundles={bundles} value_on_server={value_of(on_server)['value']} "
        f"server_version={on_server['meta']['versionId']} state={status.state.value} "
        f"items={_item_states(harness, first.record_id)}"
    )
    assert all(len(b) == len(set(b)) for b in bundles), "one resource twice in one Bundle"
    assert value_of(on_server)["value"] == 5
    assert on_server["meta"]["versionId"] == "1", "the rating was written more than once"
    assert _item_states(harness, first.record_id) == {1: "superseded", 2: "sent"}


def test_an_item_taken_over_after_a_newer_version_arrived_is_superseded(
    harness: SyncHarness,
) -> None:
    """Version 1 is claimed by a worker that then stops (its lease runs out, no result);
    version 2 arrives meanwhile (not superseded: v1 was leased). The next worker's claim takes
    the patient's items over: v1 must be superseded, not sent before (or with) v2."""
    run = harness.run
    sent_consent_first(harness)
    [first] = harness.intake([R.rating(run, 1, value=2)])
    almost_a_minute_ago = now() - timedelta(seconds=59)
    [item] = harness.store.claim("worker-a", limit=1, lease_seconds=60, now=almost_a_minute_ago)
    assert item.record_version == 1  # leased for one more second; worker-a has stopped
    harness.intake([R.rating(run, 1, value=5)])
    assert _item_states(harness, first.record_id) == {1: "queued", 2: "queued"}
    time.sleep(max(0.0, (item.lease_until - now()).total_seconds()) + 0.05)  # the lease runs out
    bundles = _bundles(harness)
    harness.drain()
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    print(
        f"bundles={bundles} value_on_server={value_of(on_server)['value']} "
        f"server_version={on_server['meta']['versionId']} "
        f"items={_item_states(harness, first.record_id)}"
    )
    assert bundles == [[f"Observation/{first.record_id}"]]
    assert value_of(on_server)["value"] == 5
    assert on_server["meta"]["versionId"] == "1"
    assert _item_states(harness, first.record_id) == {1: "superseded", 2: "sent"}
