"""Outside review of the sync worker, consent changes racing the worker: a revocation stored
between the gate and the send, a revocation stored while the Bundle is on its way, and a consent
stored while the gate is holding a record (each played at the exact point of the race)."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import worker as worker_module
from fhir_alliance_service.sync.gate import gate_item
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.sync.worker import Worker

from fhir_alliance.errors import TransientServerError
from tests.review_sync.steps import before_send, sent_consent_first
from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM


def _after_the_gate(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch, record_id: str, action: Any
) -> None:
    """Run ``action`` once, right after the worker's gate decided about ``record_id``: what a
    concurrent API request (or a pull) does between the gate and the send."""
    done: list[bool] = []

    def gate_then_act(item: Any, **kwargs: Any) -> Any:
        result = gate_item(item, **kwargs)
        if item.record_id == record_id and not done:
            done.append(True)
            action(result)
        return result

    monkeypatch.setattr(worker_module, "gate_item", gate_then_act)


def _actions(harness: SyncHarness, record_id: str) -> list[str]:
    return [entry.action for entry in harness.store.list_audit(record_id=record_id, limit=1000)]


# ---------------------------------------------------------------- 1. a revocation after the gate


def test_a_revocation_stored_before_the_send_stops_the_send(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rating gated (PERMIT) before the patient's revocation is stored, its Bundle sent after
    it: held with a hold audit, never sent, as for a revocation stored a moment earlier."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1)])

    def revoke(result: Any) -> None:
        assert result.permitted  # the gate's answer, stale once the revocation is stored
        harness.intake([R.revocation(run)])

    _after_the_gate(harness, monkeypatch, rating.record_id, revoke)
    report = harness.drain()
    on_server = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    print(f"state={status.state.value} on_server={len(on_server)}")
    assert on_server == [], "sent after the revocation was stored"
    assert status.state is SyncState.HELD
    assert report.held == 1
    assert "hold" in _actions(harness, rating.record_id)
    assert "disclose" not in _actions(harness, rating.record_id)


def test_a_consent_change_that_still_permits_lets_the_gated_record_go(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consent change after the gate that does not withdraw the share (another consent
    stored): gated again, still permitted, sent once."""
    run = harness.run
    sent_consent_first(harness)
    [rating] = harness.intake([R.rating(run, 1)])
    _after_the_gate(
        harness,
        monkeypatch,
        rating.record_id,
        lambda result: harness.intake([R.sharing_consent(run, n=2)]),
    )
    report = harness.drain()
    assert harness.state(rating.record_id) is SyncState.SENT
    assert report.held == 0
    assert len(harness.on_server("Observation", f"{RECORD}|trust-{run}-1")) == 1


def test_a_revocation_stored_while_a_bundle_is_sent_stops_the_next_one_already_gated(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline: the preparing thread gates the next Bundle while the one before is sent; the
    revocation, stored while that earlier Bundle is on its way, stops the next Bundle (held,
    never sent), and the earlier one, which outran it, is retracted by the policy."""
    run = harness.run
    harness.settings = replace(harness.settings, retraction_policy="entered-in-error")
    sent_consent_first(harness)
    first, second = harness.intake([R.rating(run, 1), R.rating(run, 2)])
    second_gated = threading.Event()

    def gate_and_note(item: Any, **kwargs: Any) -> Any:
        result = gate_item(item, **kwargs)
        if item.record_id == second.record_id:
            second_gated.set()
        return result

    def revoke_once_the_next_bundle_is_gated() -> None:
        assert second_gated.wait(10), "the next Bundle was not gated while this one was sent"
        harness.intake([R.revocation(run)])

    monkeypatch.setattr(worker_module, "gate_item", gate_and_note)
    before_send(harness, revoke_once_the_next_bundle_is_gated)
    worker = Worker(harness.settings, harness.store, harness.client, tags=[harness.server.run_tag])
    worker.bundle_entries = 1  # one rating a Bundle: the second is gated while the first is sent
    worker.run_batches()
    states = [harness.state(first.record_id), harness.state(second.record_id)]
    print(f"states={[s.value for s in states]}")
    assert harness.on_server("Observation", f"{RECORD}|trust-{run}-2") == []
    assert states[1] is SyncState.HELD
    first_status = harness.store.sync_status(first.record_id)
    assert first_status is not None and first_status.retraction == "entered-in-error"


# ---------------------------------------------------------------- 2. a revocation in flight


@pytest.mark.parametrize("pass_in_between", [True, False])
def test_a_send_after_the_revocation_is_retracted(
    harness: SyncHarness, pass_in_between: bool
) -> None:
    """The revocation stored while the Bundle is on its way (after the last check before the
    send), with or without the worker's between-batches retraction pass running meanwhile (it
    finds nothing sent yet and marks the patient checked): the rating that reached the server
    after the revocation is retracted by the policy, without waiting for the hourly full pass."""
    run = harness.run
    harness.settings = replace(harness.settings, retraction_policy="entered-in-error")
    retractor = Retractor(harness.settings, harness.store, harness.client)
    sent_consent_first(harness)
    retractor.seed()
    [rating] = harness.intake([R.rating(run, 1)])

    def revoke_then_pass() -> None:
        harness.intake([R.revocation(run)])
        if pass_in_between:
            retractor.run_pass()

    before_send(harness, revoke_then_pass)
    harness.drain()
    later = retractor.run_pass()  # the next pass, as the worker runs every pull interval
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1") or [{}]
    print(
        f"state={status.state.value} retraction={status.retraction} "
        f"later_pass_checked={later.checked} server_status={on_server.get('status')}"
    )
    assert status.state is not SyncState.SENT or status.retraction == "entered-in-error"
    assert on_server.get("status") in (None, "entered-in-error")
    assert "retract-entered-in-error" in _actions(harness, rating.record_id)


# ---------------------------------------------------------------- 3. a lost wake-up


def test_a_consent_stored_while_the_gate_holds_releases_the_record(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate reads 'no consent'; before ``mark_held`` lands, the patient's sharing consent is
    stored through the API (its ``release_held`` finds nothing held yet: the item is leased).
    The record is gated again and sent, not left held until some later consent change."""
    run = harness.run
    [rating] = harness.intake([R.rating(run, 1)])

    def consent(result: Any) -> None:
        assert result.hold is not None
        harness.intake([R.sharing_consent(run)])  # the API request, concurrent

    _after_the_gate(harness, monkeypatch, rating.record_id, consent)
    harness.drain()  # anything re-queued by the consent goes in the same run
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    print(f"state={status.state.value} held_reason={status.held_reason!r}")
    assert status.state is SyncState.SENT
    assert len(harness.on_server("Observation", f"{RECORD}|trust-{run}-1")) == 1


def test_a_failed_retraction_of_a_send_after_the_revocation_is_tried_again(
    harness: SyncHarness,
) -> None:
    """The same race, the server refusing the retraction the worker attempts once the send is
    recorded: audited as failed, and the next retraction pass tries again (the patient's
    consents stamp no longer changes, so without this only the hourly full pass would)."""
    run = harness.run
    harness.settings = replace(harness.settings, retraction_policy="entered-in-error")
    retractor = Retractor(harness.settings, harness.store, harness.client)
    sent_consent_first(harness)
    retractor.seed()
    [rating] = harness.intake([R.rating(run, 1)])
    original_update = harness.client.update
    refused: list[bool] = []

    def update_refused_once(*args: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(True)
            raise TransientServerError("busy", status=503)
        return original_update(*args, **kwargs)

    def revoke_then_pass() -> None:
        harness.intake([R.revocation(run)])
        retractor.run_pass()

    harness.client.update = update_refused_once  # type: ignore[method-assign]
    before_send(harness, revoke_then_pass)
    harness.drain()
    assert refused, "the worker attempted no retraction"
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.retraction is None
    assert "retract-failed" in _actions(harness, rating.record_id)
    later = retractor.run_pass()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    print(f"state={status.state.value} retraction={status.retraction} checked={later.checked}")
    assert status.retraction == "entered-in-error"
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    assert on_server["status"] == "entered-in-error"
    assert retractor.run_pass().checked == 0  # done: not checked again and again
