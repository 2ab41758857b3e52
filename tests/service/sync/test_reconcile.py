"""Reconcile against the test FHIR server: duplicates created outside the service, resources
deleted or edited on the server are reported by record, and ``fix`` repairs them (audited, a
write as the disclosure it is, and never without the gate's permit)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service import audit
from fhir_alliance_service.console.pages import daily_trend
from fhir_alliance_service.store.interface import AuditEntry, AuditPushState, SentResource
from fhir_alliance_service.sync.gate import HoldReason
from fhir_alliance_service.sync.reconcile import Reconciler

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness

RECORD = R.RECORD_SYSTEM


def _reconciler(harness: SyncHarness, **overrides: Any) -> Reconciler:
    settings = replace(harness.settings, **overrides) if overrides else harness.settings
    return Reconciler(settings, harness.store, harness.client, tags=[harness.server.run_tag])


def _sent(harness: SyncHarness, **overrides: Any) -> list[str]:
    """A consent, two ratings and an SRS, all sent (the worker's settings overridden as given);
    their record ids."""
    run = harness.run
    results = harness.intake(
        [R.sharing_consent(run), R.rating(run, 1), R.rating(run, 2), R.srs(run, 3)]
    )
    assert harness.drain(**overrides).sent == 4
    return [r.record_id for r in results]


def _audit(harness: SyncHarness, record_id: str, action: str) -> list[AuditEntry]:
    entries = harness.store.list_audit(record_id=record_id, limit=1000)
    return [e for e in entries if e.action == action]


def _stored_with_the_versions(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> list[list[str]]:
    """The audit actions of each ``record_sent_versions`` call (one transaction each)."""
    calls: list[list[str]] = []
    record = harness.store.record_sent_versions

    def spy(item_id: int, sent: list[SentResource], *, audit: list[AuditEntry], at: Any) -> None:
        calls.append(sorted(e.action for e in audit))
        record(item_id, sent, audit=audit, at=at)

    monkeypatch.setattr(harness.store, "record_sent_versions", spy)
    return calls


def _srs_members(harness: SyncHarness) -> list[dict[str, Any]]:
    """The item and score Observations of the SRS panel ``_sent`` sent (not the panel)."""
    return [
        o
        for o in harness.tagged("Observation")
        if f"srs-{harness.run}-3" in o["identifier"][0]["value"] and "hasMember" not in o
    ]


def _last_audit_id(harness: SyncHarness, record_id: str) -> int:
    return max(e.id or 0 for e in harness.store.list_audit(record_id=record_id, limit=1000))


def _copy_outside(harness: SyncHarness, resource: dict[str, Any]) -> dict[str, Any]:
    """Someone else POSTs a copy of ``resource`` (same business identifier, a new id)."""
    duplicate = copy.deepcopy(resource)
    duplicate.pop("id")
    duplicate.pop("meta")
    return remote.create(harness.server, harness.server.tagged(duplicate))


def test_a_faithful_server_reconciles_clean(harness: SyncHarness) -> None:
    """Everything sent is on the server once, as the mapping gives it: nothing to report."""
    _sent(harness)
    report = _reconciler(harness).run()
    assert report.clean, report.to_json()
    assert (report.records, report.resources) == (4, 1 + 1 + 1 + 6)


def test_duplicates_created_outside_are_found_and_fixed(harness: SyncHarness) -> None:
    """A copy POSTed by someone else is reported as duplicated; fix deletes the copy, keeps
    ours, and a second run is clean."""
    ids = _sent(harness)
    [ours] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    copied = _copy_outside(harness, ours)
    report = _reconciler(harness).run()
    [finding] = report.findings
    assert (finding.problem, finding.record_id) == ("duplicated", ids[1])
    assert sorted(finding.found) == sorted(
        [f"Observation/{ours['id']}", f"Observation/{copied['id']}"]
    )

    fixed = _reconciler(harness).run(fix=True)
    assert [f.fixed for f in fixed.findings] == [True]
    [left] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert left["id"] == ours["id"]
    assert _reconciler(harness).run().clean
    assert harness.store.list_audit(record_id=ids[1])[-1].action == "reconcile-delete"


def test_a_deleted_resource_is_missing_and_written_again(harness: SyncHarness) -> None:
    """A resource deleted on the server is reported missing; fix writes it again, and the
    record's status lists the new version."""
    ids = _sent(harness)
    [ours] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-2")
    remote.delete(harness.server, ours)
    report = _reconciler(harness).run()
    assert [(f.problem, f.record_id) for f in report.findings] == [("missing", ids[2])]
    _reconciler(harness).run(fix=True)
    [back] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-2")
    assert back["id"] == ours["id"]
    status = harness.store.sync_status(ids[2])
    assert status is not None and status.sent[0].version_id == back["meta"]["versionId"]
    assert _reconciler(harness).run().clean


def test_an_edited_resource_drifts_and_is_restored(harness: SyncHarness) -> None:
    """A member of the SRS panel edited on the server drifts from the mapping; fix restores
    what the mapping gives, and a later update of the record is no conflict."""
    ids = _sent(harness)
    members = [
        o
        for o in harness.tagged("Observation")
        if f"srs-{harness.run}-3" in o["identifier"][0]["value"] and "hasMember" not in o
    ]
    edited = remote.update(
        harness.server, members[0], effectiveDateTime="2026-11-21T15:50:00+00:00"
    )
    report = _reconciler(harness).run()
    assert [(f.problem, f.resource) for f in report.findings] == [
        ("drifted", f"Observation/{edited['id']}")
    ]
    [srs_id] = [
        i
        for i in ids
        if (r := harness.store.get_record(i))
        and r.kind != "consent"
        and r.body.get("instrument") == "srs"
    ]
    assert report.findings[0].record_id == srs_id
    _reconciler(harness).run(fix=True)
    assert _reconciler(harness).run().clean
    changed = R.srs(harness.run, 3)
    changed["responses"]["1"] = 7.0
    harness.intake([changed])
    assert harness.drain().sent == 1  # If-Match the versions fix wrote: no 412
    status = harness.store.sync_status(srs_id)
    assert status is not None and status.conflict is None


def test_reconcile_by_patient_looks_at_that_patient_only(harness: SyncHarness) -> None:
    """``patient`` limits the check to that patient's records (and their aliases)."""
    _sent(harness)
    run = harness.run
    harness.intake([R.sharing_consent(run, "Patient/p2"), R.rating(run, 9, "Patient/p2")])
    harness.drain()
    [theirs] = harness.on_server("Observation", f"{RECORD}|trust-{run}-9")
    _copy_outside(harness, theirs)
    assert _reconciler(harness).run(patient="Patient/p1").clean
    assert _reconciler(harness).run(patient="Patient/p2").count("duplicated") == 1


def test_a_record_the_gate_now_holds_is_reported_not_written(harness: SyncHarness) -> None:
    """After a revocation (policy none), a deleted resource of the patient is missing but is not
    written back: the finding says held, and why (the gate's reason code)."""
    ids = _sent(harness)
    harness.intake([R.revocation(harness.run)])
    [ours] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    remote.delete(harness.server, ours)
    report = _reconciler(harness).run(fix=True)
    [finding] = [f for f in report.findings if f.record_id == ids[1]]
    assert (finding.problem, finding.fixed, finding.held) == ("missing", False, True)
    assert harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1") == []
    assert finding.held_reason == HoldReason.NO_CONSENT.code
    assert report.to_json()["findings"][0]["held_reason"] == HoldReason.NO_CONSENT.code


@pytest.mark.parametrize("push", [False, True], ids=["push-off", "push-on"])
def test_a_missing_resource_written_again_is_audited_as_a_disclosure(
    harness: SyncHarness, push: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a missing resource again discloses the record to the server, as the worker's send
    did: a ``disclose`` AuditEvent of the send's shape (same type, action, outcome, purpose,
    agents and entities; only its id and time its own), stored in the one transaction that
    records the version written, with the reconcile-write event and the Provenance; with
    push_audit queued and pushed by the worker's next batch, beside the send's own disclosure on
    the server, never over it."""
    ids = _sent(harness, push_audit=push)
    record_id = ids[1]
    [send] = _audit(harness, record_id, "disclose")
    [ours] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    remote.delete(harness.server, ours)
    transactions = _stored_with_the_versions(harness, monkeypatch)

    report = _reconciler(harness, push_audit=push).run(fix=True)
    assert [(f.problem, f.fixed) for f in report.findings] == [("missing", True)]
    assert transactions == [["disclose", "provenance", "reconcile-write"]]
    [_, again] = _audit(harness, record_id, "disclose")
    [write] = _audit(harness, record_id, "reconcile-write")
    assert again.at == write.at
    assert again.resource["id"] != send.resource["id"]
    assert again.resource["recorded"] != send.resource["recorded"]
    assert {k: v for k, v in again.resource.items() if k not in ("id", "recorded")} == {
        k: v for k, v in send.resource.items() if k not in ("id", "recorded")
    }
    assert again.push_state is (AuditPushState.PENDING if push else None)

    harness.drain(push_audit=push)
    on_server = {e["id"] for e in harness.tagged("AuditEvent")}
    if push:
        assert {send.resource["id"], again.resource["id"]} <= on_server
    else:
        assert on_server == set()


def test_a_drifted_resource_written_back_is_audited_as_a_disclosure(
    harness: SyncHarness,
) -> None:
    """A drifted resource written back sends the mapping's content over someone's edit, as the
    worker's overwrite of a conflict does: it is a disclosure too, naming the resource written."""
    ids = _sent(harness)
    member = next(
        o
        for o in harness.tagged("Observation")
        if f"srs-{harness.run}-3" in o["identifier"][0]["value"] and "hasMember" not in o
    )
    remote.update(harness.server, member, effectiveDateTime="2026-11-21T15:50:00+00:00")
    report = _reconciler(harness).run(fix=True)
    [finding] = report.findings
    assert (finding.problem, finding.fixed) == ("drifted", True)
    disclosures = _audit(harness, ids[3], "disclose")
    assert len(disclosures) == 2
    whats = [e["what"] for e in disclosures[-1].resource["entity"]]
    written = [w for w in whats if w.get("type") == "Observation"]
    assert written == [{"reference": f"Observation/{member['id']}", "type": "Observation"}]


def test_a_revocation_stored_while_reconcile_searches_stops_the_write(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate is asked when a record's check starts; the searches that follow take a while. A
    revocation stored meanwhile is seen before anything is written: the missing resource is not
    written again, the finding says held and why, and nothing is recorded as disclosed."""
    ids = _sent(harness)
    record_id = ids[1]
    [ours] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    remote.delete(harness.server, ours)
    search = harness.client.find_by_identifier
    revoked: list[bool] = []

    def search_while_the_patient_revokes(
        resource_type: str, identifier: Any, *, limit: int = 10
    ) -> list[dict[str, Any]]:
        if not revoked and identifier.value == f"trust-{harness.run}-1":
            revoked.append(True)
            harness.intake([R.revocation(harness.run)])
        return search(resource_type, identifier, limit=limit)

    monkeypatch.setattr(harness.client, "find_by_identifier", search_while_the_patient_revokes)
    before = max(e.id or 0 for e in harness.store.list_audit(record_id=record_id, limit=1000))

    report = _reconciler(harness, push_audit=True).run(fix=True)
    assert revoked
    assert harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1") == []
    [finding] = [f for f in report.findings if f.record_id == record_id]
    assert (finding.problem, finding.fixed, finding.held) == ("missing", False, True)
    assert finding.held_reason == HoldReason.NO_CONSENT.code
    new = harness.store.list_audit(record_id=record_id, after=before, limit=1000)
    assert not {"disclose", "reconcile-write", "provenance"} & {e.action for e in new}


def test_a_held_repair_is_audited_once_per_record_and_run(harness: SyncHarness) -> None:
    """A record the gate now holds is not written again, and that decision not to disclose is
    audited as the worker audits a hold: one ``hold`` AuditEvent per record and reconcile run
    (two resources held, one event), the worker's shape and the gate's reason code, under an id
    of its own, stored though nothing was written, and kept local (a held decision is never
    pushed). The console's *held* line counts the record on that day."""
    ids = _sent(harness)
    srs_id = ids[3]
    harness.intake([R.revocation(harness.run)])
    for member in _srs_members(harness)[:2]:
        remote.delete(harness.server, member)

    report = _reconciler(harness, push_audit=True).run(fix=True)
    held = [f for f in report.findings if f.record_id == srs_id]
    assert [(f.problem, f.fixed, f.held) for f in held] == [("missing", False, True)] * 2
    [hold] = _audit(harness, srs_id, "hold")
    assert hold.resource["outcome"] == "4"
    assert hold.resource["outcomeDesc"] == HoldReason.NO_CONSENT.code
    assert hold.push_state is None
    workers = audit.hold_event(
        srs_id,
        hold.patient,
        1,
        HoldReason.NO_CONSENT.code,
        hold.at,
        recipient=harness.settings.recipients[0],
        purpose=harness.settings.purpose,
    ).resource
    assert hold.resource["id"] != workers["id"]
    assert {k: v for k, v in hold.resource.items() if k != "id"} == {
        k: v for k, v in workers.items() if k != "id"
    }
    assert daily_trend(harness.store, hold.at.date())[-1].counts["hold"] == 1

    _reconciler(harness).run(fix=True)
    first, again = _audit(harness, srs_id, "hold")
    assert first.resource["id"] != again.resource["id"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt], ids=["bug", "interrupt"])
def test_writes_made_before_a_failure_are_recorded_and_the_failure_raised(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    """An error that is no server error (a bug, the database, an interrupt) raised after a
    resource of a record was written again does not leave that write unrecorded: its version is
    in the record's status, with its ``disclose`` event (naming it alone), ``reconcile-write``
    event and Provenance, in one transaction; nothing for the resource not written; the error
    propagates."""
    ids = _sent(harness)
    srs_id = ids[3]
    for member in _srs_members(harness)[:2]:
        remote.delete(harness.server, member)
    update = harness.client.update
    calls: list[str] = []

    def update_then_fail(resource: Any, *, if_match: str | None = None) -> Any:
        calls.append(str(resource["id"]))
        if len(calls) == 2:
            raise error("a failure after the first write")
        return update(resource, if_match=if_match)

    monkeypatch.setattr(harness.client, "update", update_then_fail)
    transactions = _stored_with_the_versions(harness, monkeypatch)
    before = _last_audit_id(harness, srs_id)

    with pytest.raises(error, match="a failure after the first write"):
        _reconciler(harness).run(fix=True)
    written, failed = calls
    on_server = {o["id"]: o for o in harness.tagged("Observation")}
    assert written in on_server and failed not in on_server
    version = on_server[written]["meta"]["versionId"]
    status = harness.store.sync_status(srs_id)
    assert status is not None
    assert SentResource("Observation", written, version) in status.sent
    assert transactions == [["disclose", "provenance", "reconcile-write"]]
    new = harness.store.list_audit(record_id=srs_id, after=before, limit=1000)
    assert sorted(e.action for e in new) == ["disclose", "provenance", "reconcile-write"]
    by_action = {e.action: e.resource for e in new}
    named = [
        e["what"].get("reference")
        for e in by_action["disclose"]["entity"]
        if e["what"].get("type") == "Observation"
    ]
    assert named == [f"Observation/{written}"]
    assert by_action["provenance"]["target"] == [
        {"reference": f"Observation/{written}/_history/{version}"}
    ]
