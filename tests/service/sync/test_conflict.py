"""412 conflicts against the test FHIR server: an update of a resource we own carries If-Match
with the version we last wrote; when someone else changed it meanwhile, the conflict policy
decides (overwrite, keep the remote version, flag for a person), shown on the record's status, in
the metrics and in the audit."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store.interface import PulledResource, SyncState
from fhir_alliance_service.sync.gate import gate_item
from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON, _pulled_after_ours

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, decide_flagged, now

RECORD = R.RECORD_SYSTEM
R4 = "4.0.1"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def _conflicts(outcome: str) -> float:
    return REGISTRY.get_sample_value("fhir_alliance_conflicts_total", {"outcome": outcome}) or 0.0


def _edited_remotely(harness: SyncHarness) -> tuple[str, dict[str, Any]]:
    """A rating sent (version 1 on the server), then edited by someone else (version 2), then
    changed here (record version 2, queued)."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [theirs] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    theirs = remote.update(harness.server, theirs, valueInteger=1)
    assert theirs["meta"]["versionId"] == "2"
    [ours] = harness.intake([R.rating(run, 1, value=5)])
    assert ours.version == 2
    return ours.record_id, theirs


def _value(resource: dict[str, Any]) -> Any:
    return resource.get("valueInteger", resource.get("valueQuantity", {}).get("value"))


def test_an_unchanged_resource_is_updated_with_if_match(harness: SyncHarness) -> None:
    """No one else touched it: the update lands as version 2, no conflict noted."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [changed] = harness.intake([R.rating(run, 1, value=5)])
    assert harness.drain().sent == 1
    status = harness.store.sync_status(changed.record_id)
    assert status is not None and status.state is SyncState.SENT and status.conflict is None
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    assert on_server["meta"]["versionId"] == "2"


def test_policy_flag_holds_the_record_for_a_person(harness: SyncHarness) -> None:
    """flag: the record is held with the reason, the remote edit stays, status says flagged."""
    record_id, theirs = _edited_remotely(harness)
    before = _conflicts("flagged")
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == CONFLICT_HELD_REASON and status.conflict == "flagged"
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert on_server["meta"]["versionId"] == "2" and _value(on_server) == _value(theirs)
    assert _conflicts("flagged") == before + 1
    assert harness.store.list_audit(record_id=record_id)[-1].action == "conflict"


def test_policy_overwrite_writes_ours_over_theirs(harness: SyncHarness) -> None:
    """overwrite: our version is written (version 3), status sent with conflict overwritten."""
    record_id, _ = _edited_remotely(harness)
    harness.drain(conflict_policy="overwrite")
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "overwritten"
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert on_server["meta"]["versionId"] == "3"
    assert status.sent[0].version_id == "3"


def test_policy_keep_remote_leaves_theirs(harness: SyncHarness) -> None:
    """keep-remote: nothing is written; the status records the server's version as what it
    holds, with conflict kept-remote."""
    record_id, theirs = _edited_remotely(harness)
    harness.drain(conflict_policy="keep-remote")
    status = harness.store.sync_status(record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict == "kept-remote" and status.sent[0].version_id == "2"
    [on_server] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    assert on_server["meta"]["versionId"] == "2" and _value(on_server) == _value(theirs)


@pytest.mark.parametrize("policy", ["flag", "keep-remote", "overwrite"])
def test_push_audit_pushes_the_disclosures_and_keeps_conflict_events_local(
    harness: SyncHarness, policy: str
) -> None:
    """With ``push_audit`` (docs/service.md, Audit) each disclosure's AuditEvent and Provenance
    go to the FHIR server, an overwrite's (by the policy, or by a person's decision on a flag)
    as any send's. A conflict's AuditEvent, whatever the policy, and a person's decision stay in
    the local audit trail, like every two-way sync event: never queued, never on the server."""
    record_id, _ = _edited_remotely(harness)  # sent before push_audit: kept locally
    harness.drain(conflict_policy=policy, push_audit=True)
    if policy == "flag":
        decide_flagged(harness.store, record_id, "overwrite")
        harness.drain(conflict_policy=policy, push_audit=True)
    entries = harness.store.list_audit(record_id=record_id, limit=1000)
    two_way = [e for e in entries if e.action in ("conflict", "conflict-decision")]
    expected = ["conflict", "conflict-decision"] if policy == "flag" else ["conflict"]
    assert [e.action for e in two_way] == expected
    assert all(e.push_state is None for e in two_way)
    queued = [e for e in entries if e.push_state is not None]
    written = policy != "keep-remote"  # ours written over theirs: a disclosure
    assert sorted(e.action for e in queued) == (["disclose", "provenance"] if written else [])
    assert all(e.pushed for e in queued)
    on_server = {r["id"] for r in harness.tagged("AuditEvent") + harness.tagged("Provenance")}
    assert on_server == {e.resource["id"] for e in queued}


@pytest.mark.parametrize("policy", ["flag", "keep-remote", "overwrite"])
def test_a_lost_answer_to_our_own_update_is_not_a_conflict(
    harness: SyncHarness, policy: str
) -> None:
    """Our update landed but its answer was lost (the server is at our content, one version
    ahead): the 412 is recognised as our own write and recorded as sent."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [changed] = harness.intake([R.rating(run, 1, value=5)])
    # Play the lost answer: a worker's PUT reaches the server, but its lease runs out unrecorded.
    [item] = harness.store.claim("lost", limit=1, lease_seconds=0.01, now=now())
    gated = gate_item(item, settings=harness.settings, store=harness.store, version=R4, at=now())
    [resource] = gated.resources
    harness.client.update(harness.server.tagged(resource), if_match="1")  # tagged: cleaned up
    time.sleep(0.02)
    harness.drain(conflict_policy=policy)
    status = harness.store.sync_status(changed.record_id)
    assert status is not None and status.state is SyncState.SENT
    assert status.conflict is None and status.sent[0].version_id == "2"


def test_a_label_someone_added_makes_an_equal_copy_a_conflict(harness: SyncHarness) -> None:
    """Someone else changed our rating on the server to the value we then change it to, and
    labelled it V (very restricted). The 412 must not be read as our own write whose answer was
    lost: the server's copy carries a label we never wrote. Read as ours, it was recorded as sent
    at their version, and our next change went out If-Match that version, dropping their label
    without any conflict."""
    run = harness.run
    harness.intake([R.sharing_consent(run), R.rating(run, 1, value=4)])
    harness.drain()
    [theirs] = harness.on_server("Observation", f"{RECORD}|trust-{run}-1")
    labelled = {k: v for k, v in theirs.items() if k != "meta"}
    labelled["valueQuantity"] = {**theirs["valueQuantity"], "value": 5}
    security = [*theirs["meta"].get("security", []), {"system": V3_CONFIDENTIALITY, "code": "V"}]
    labelled["meta"] = {"security": security, "profile": theirs["meta"].get("profile", [])}
    response = harness.server.http.put(
        harness.server.url(f"Observation/{theirs['id']}"),
        json=harness.server.tagged(labelled),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 200, response.text
    [ours] = harness.intake([R.rating(run, 1, value=5)])
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(ours.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.conflict == "flagged"


@pytest.mark.parametrize("theirs", ["\u00b2", "\u0662"], ids=["superscript", "arabic-indic"])
def test_a_pulled_version_in_other_digits_is_not_compared_as_a_number(theirs: str) -> None:
    """A withdrawn copy the pull read with a ``versionId`` of another script's digits (the pull
    keeps it as the server wrote it) is not compared with ours as a number: the times it and our
    send were recorded decide (it used to raise ValueError, failing the worker's batch every
    time, or compare the digits as a number)."""
    seen = PulledResource(
        "https://ehr.example/fhir",
        "Consent",
        "c1",
        theirs,
        None,
        "Patient/p1",
        "rec-1",
        "ours",
        "withdrawn",
        updated_at=now(),
    )
    # Read as numbers, the Arabic-Indic 2 would be before 3 and after 1.
    assert _pulled_after_ours(seen, "3", now() - timedelta(seconds=1))
    assert not _pulled_after_ours(seen, "1", now() + timedelta(seconds=1))
