"""One patient, one key, however the identifier's system is spelt, in the sync against the test
FHIR server: an opt-out filed under one spelling holds the records that a permit filed under
another spelling would let the worker send (before, the worker sent them: fail open); a pulled
Consent naming the patient by another spelling (a bare OID, which only the server writes) is that
patient's; and a patient filed under the NPI/SSN's FHIR URI is found on a server that keeps its
OID spelling."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.gate import HoldReason

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, puller

SSN_OID = "urn:oid:2.16.840.1.113883.4.1"
SSN_URI = "http://hl7.org/fhir/sid/us-ssn"
MRN_OID = "2.16.840.1.113883.3.9999.7"


def _by_identifier(payload: dict[str, Any], patient: str) -> dict[str, Any]:
    """``payload`` (a record of ``Patient/p1``) about the patient named by identifier ``patient``
    (``system|value``) instead, wherever the patient is named."""
    out = copy.deepcopy(payload)
    named = {"identifier": patient, "type": "Patient"}
    out["patient"] = {"identifier": patient}
    if "grantor" in out:
        out["grantor"] = named
    for change in out.get("history", ()):
        change["by"] = named
    return out


def _opt_out(run: str, patient: str) -> dict[str, Any]:
    """The patient's opt-out: no sharing with the EHR for treatment (consent 2)."""
    consent = _by_identifier(R.sharing_consent(run, n=2), patient)
    consent["id"] = f"{R.CONSENT_SYSTEM}|opt-out-{run}"
    consent["decision"] = "deny"
    consent["provision"].pop("provisions")
    return consent


@pytest.mark.parametrize(
    ("denied", "permitted"),
    [
        (f"{SSN_OID}|ssn-{{run}}", f"{SSN_URI}|ssn-{{run}}"),
        (f"{SSN_URI}|ssn-{{run}}", f"{SSN_OID}|ssn-{{run}}"),
        (f"URN:OID:{MRN_OID}|mrn-{{run}}", f"urn:oid:{MRN_OID}|mrn-{{run}}"),
        ("https://Clinic.Example.org/mrn|mrn-{run}", "https://clinic.example.org/mrn|mrn-{run}"),
    ],
    ids=["ssn-oid-deny", "ssn-uri-deny", "oid-case", "host-case"],
)
def test_an_opt_out_under_another_spelling_holds_the_record(
    harness: SyncHarness, denied: str, permitted: str
) -> None:
    """An opt-out filed under one spelling of the patient's identifier, a permit and a rating
    under another: the worker holds the rating as denied, nothing of it reaches the server."""
    run = harness.run
    denied, permitted = denied.format(run=run), permitted.format(run=run)
    harness.intake([_opt_out(run, denied)])
    harness.intake([_by_identifier(R.sharing_consent(run), permitted)])
    [rating] = harness.intake([_by_identifier(R.rating(run, 1), permitted)])
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state is SyncState.HELD
    assert status.held_reason == HoldReason.DENIED.words
    assert harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{run}-1") == []


def test_a_pulled_consent_naming_the_patient_by_a_bare_oid_is_theirs(harness: SyncHarness) -> None:
    """Records filed under ``urn:oid:…|value`` (the patient linked on the server by the pull)
    and sent under a permit; a deny written on the server naming the patient by the bare OID is
    merged as theirs (not ignored as a stranger's), and holds what comes next."""
    run = harness.run
    patient = f"urn:oid:{MRN_OID}|mrn-{run}"
    remote.create(
        harness.server,
        harness.server.tagged(
            {
                "resourceType": "Patient",
                "identifier": [{"system": f"urn:oid:{MRN_OID}", "value": f"mrn-{run}"}],
            }
        ),
    )
    harness.intake([_by_identifier(R.sharing_consent(run), patient)])
    [first] = harness.intake([_by_identifier(R.rating(run, 1), patient)])
    assert puller(harness).pull().error is None  # links the patient
    harness.drain()
    assert harness.state(first.record_id) is SyncState.SENT
    deny = remote.create(
        harness.server,
        remote.foreign_consent(harness.server, f"Patient/nobody-{run}", decision="deny"),
    )
    deny["patient"] = {"identifier": {"system": MRN_OID, "value": f"mrn-{run}"}}
    report = puller(harness).merge("Consent", [deny])
    assert (report.merged, report.ignored) == (1, 0)
    assert report.changed_patients == {patient}
    [second] = harness.intake([_by_identifier(R.rating(run, 2), patient)])
    harness.drain()
    assert harness.state(second.record_id) is SyncState.HELD


def test_a_patient_filed_under_the_ssn_uri_is_found_on_a_server_keeping_the_oid(
    harness: SyncHarness,
) -> None:
    """The server's Patient carries the SSN under its OID, the records name it by the FHIR URI:
    the pull's ``Patient?identifier=`` asks for both spellings, links the patient, and the
    permit the server holds under ``Patient/<id>`` releases the held rating."""
    value = f"ssn-{harness.run}"
    on_server = remote.create(
        harness.server,
        harness.server.tagged(
            {"resourceType": "Patient", "identifier": [{"system": SSN_OID, "value": value}]}
        ),
    )
    [rating] = harness.intake([_by_identifier(R.rating(harness.run, 1), f"{SSN_URI}|{value}")])
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.HELD
    linked = f"Patient/{on_server['id']}"
    remote.create(harness.server, remote.foreign_consent(harness.server, linked))
    report = puller(harness).pull()
    assert (report.merged, report.released) == (1, 1)
    assert harness.store.patient_keys(f"{SSN_URI}|{value}") == [f"{SSN_URI}|{value}", linked]
    harness.drain()
    assert harness.state(rating.record_id) is SyncState.SENT
