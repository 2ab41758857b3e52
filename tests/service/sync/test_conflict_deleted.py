"""A resource of ours deleted on the test FHIR server by someone else: our next update goes
If-Match our last version, meets the 412, and the read-back finds it gone (410). That is a remote
change like an edit, settled by ``CONFLICT_POLICY`` (never dead-lettered), with one ``conflict``
AuditEvent; a Consent of ours deleted there is a withdrawal (as the pull takes it), never re-created
in force (docs/two-way-sync.md, Conflicts)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON
from fhir_alliance_service.usecases.conflicts import decide_conflict

from fhir_alliance.errors import NotFoundError
from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness, decide_flagged, known_patient, now, puller

RECORD = R.RECORD_SYSTEM


def _conflicts(outcome: str) -> float:
    return REGISTRY.get_sample_value("fhir_alliance_conflicts_total", {"outcome": outcome}) or 0.0


def _deleted_remotely(harness: SyncHarness) -> str:
    """A rating sent (version 1 on the server), deleted there by someone else, then changed here
    (record version 2, queued)."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [theirs] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    harness.client.delete("Observation", theirs["id"])
    with pytest.raises(NotFoundError):
        harness.client.read("Observation", theirs["id"])
    [ours] = harness.intake([R.rating(run, 1, value=5)])
    assert ours.version == 2
    return ours.record_id


def _value(resource: dict[str, Any]) -> Any:
    return resource.get("valueInteger", resource.get("valueQuantity", {}).get("value"))


def _conflict_events(harness: SyncHarness, record_id: str) -> list[str]:
    entries = harness.store.list_audit(record_id=record_id, limit=1000)
    return [e.action for e in entries if e.action == "conflict"]


def test_overwrite_creates_ours_again(harness: SyncHarness) -> None:
    """overwrite: ours is written without If-Match (a PUT to its id creates it again), status sent
    with the server's new version, conflict overwritten; a Provenance CREATE for it."""
    record_id = _deleted_remotely(harness)
    before = _conflicts("overwritten")
    report = harness.drain(conflict_policy="overwrite")
    assert report.dead == 0
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "overwritten"
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert _value(on_server) == 5
    assert status.sent[0].version_id == on_server["meta"]["versionId"]
    assert _conflicts("overwritten") == before + 1
    assert _conflict_events(harness, record_id) == ["conflict"]
    provenances = [
        e for e in harness.store.list_audit(record_id=record_id) if e.action == "provenance"
    ]
    activity = provenances[-1].resource["activity"]["coding"][0]["code"]
    assert activity == "CREATE"


def test_keep_remote_accepts_the_deletion(harness: SyncHarness) -> None:
    """keep-remote: nothing is written; sent with no server version (the server holds nothing),
    conflict kept-remote; a later retraction of the gone resource is a no-op success."""
    record_id = _deleted_remotely(harness)
    before = _conflicts("kept-remote")
    report = harness.drain(conflict_policy="keep-remote")
    assert report.dead == 0
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "kept-remote"
    assert [s.version_id for s in status.sent] == [None]
    assert harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1") == []
    assert _conflicts("kept-remote") == before + 1
    assert _conflict_events(harness, record_id) == ["conflict"]


@pytest.mark.parametrize("policy", ["delete", "entered-in-error"])
def test_a_retraction_of_a_deletion_kept_is_a_no_op(harness: SyncHarness, policy: str) -> None:
    """The consent revoked after keep-remote accepted the deletion: the retraction finds nothing
    on the server and succeeds (no retract-failed), whatever the policy."""
    record_id = _deleted_remotely(harness)
    harness.drain(conflict_policy="keep-remote")
    harness.intake([R.revocation(harness.run, "Patient/p1")])
    settings = replace(harness.settings, retraction_policy=policy)
    report = Retractor(settings, harness.store, harness.client).run_pass()
    assert report.failed == 0
    actions = [e.action for e in harness.store.list_audit(record_id=record_id, limit=1000)]
    assert "retract-failed" not in actions
    assert actions[-1] == f"retract-{policy}"
    status = harness.store.sync_status(record_id)
    assert status is not None and status.retraction is not None
    assert harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1") == []


def test_flag_holds_for_a_person_whose_overwrite_creates_it_again(harness: SyncHarness) -> None:
    """flag: held with the usual reason, flagged against the resource without a version; the
    person's overwrite then creates it again."""
    record_id = _deleted_remotely(harness)
    before = _conflicts("flagged")
    report = harness.drain(conflict_policy="flag")
    assert report.dead == 0
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == CONFLICT_HELD_REASON and status.conflict == "flagged"
    assert [v.version_id for v in status.conflict_versions] == [None]
    assert _conflicts("flagged") == before + 1
    assert _conflict_events(harness, record_id) == ["conflict"]
    decide_conflict(
        harness.store,
        record_id,
        "overwrite",
        against=status.conflict_versions,
        record_version=status.record_version,
        decided_by="cli",
        at=now(),
    )
    assert harness.drain(conflict_policy="flag").dead == 0
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "decided-overwrite"
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert _value(on_server) == 5


def test_flag_then_keep_remote_accepts_the_deletion(harness: SyncHarness) -> None:
    """flag, then the person's keep-remote: sent with no server version, nothing written."""
    record_id = _deleted_remotely(harness)
    harness.drain(conflict_policy="flag")
    decide_flagged(harness.store, record_id, "keep-remote")
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "decided-keep-remote"
    assert [s.version_id for s in status.sent] == [None]
    assert harness.drain(conflict_policy="flag").dead == 0
    assert harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1") == []


@pytest.mark.parametrize("policy", ["flag", "keep-remote", "overwrite"])
def test_our_consent_deleted_and_edited_here_is_withdrawn_not_recreated(
    harness: SyncHarness, policy: str
) -> None:
    """Our consent deleted on the server is a withdrawal (the pull's rule) also when the worker
    meets it first, with a newer version of ours in force: whatever the policy it is never
    written back in force; it is revoked here, and the revocation is written back."""
    patient = known_patient(harness)
    [consent] = harness.intake([R.sharing_consent(harness.run, patient)])
    harness.drain()
    [on_server] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    harness.client.delete("Consent", on_server["id"])
    harness.intake([R.sharing_consent(harness.run, patient, permit_psythpn=True)])
    report = harness.drain(conflict_policy=policy)
    assert report.dead == 0
    stored = harness.store.get_record(consent.record_id)
    assert stored is not None and stored.body["status"] == "revoked"
    status = harness.store.sync_status(consent.record_id)
    assert status is not None and status.state is SyncState.SENT
    [after] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    assert after["status"] == "inactive"
    assert len(_conflict_events(harness, consent.record_id)) == 1


@pytest.mark.parametrize("policy", ["flag", "keep-remote", "overwrite"])
def test_the_pulls_revocation_of_our_deleted_consent_is_written_back(
    harness: SyncHarness, policy: str
) -> None:
    """The pull adopts the deletion of our consent as a withdrawal; the revoked version's update
    then meets the 412 and the deletion: written back (the EHR keeps the revocation itself),
    not dead-lettered, whatever the policy."""
    patient = known_patient(harness)
    [consent] = harness.intake([R.sharing_consent(harness.run, patient)])
    harness.drain()
    puller(harness).pull(full_listing=True)  # the pull tracks it
    [on_server] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    harness.client.delete("Consent", on_server["id"])
    assert puller(harness, pull_deletions="listing").pull(full_listing=True).withdrawn == 1
    report = harness.drain(conflict_policy=policy)
    assert report.dead == 0
    status = harness.store.sync_status(consent.record_id)
    assert status is not None and status.state is SyncState.SENT
    [after] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    assert after["status"] == "inactive"


def test_our_deleted_consent_is_revoked_here_before_the_items_outcome(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stops between revoking our deleted consent here and recording the item's
    outcome (the outcome's write raises): the consent is revoked here all the same, so the gate
    never permits by a consent the EHR has withdrawn. It used to record the outcome first, so a
    worker stopping in between left the consent in force here."""
    patient = known_patient(harness)
    [consent] = harness.intake([R.sharing_consent(harness.run, patient)])
    harness.drain()
    [on_server] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    harness.client.delete("Consent", on_server["id"])
    harness.intake([R.sharing_consent(harness.run, patient, permit_psythpn=True)])

    class Stopped(Exception):
        pass

    def stopped(*args: object, **kwargs: object) -> bool:
        raise Stopped

    monkeypatch.setattr(harness.store, "mark_sent", stopped)
    with pytest.raises(Stopped):
        harness.drain(conflict_policy="keep-remote")
    stored = harness.store.get_record(consent.record_id)
    assert stored is not None and stored.body["status"] == "revoked"
