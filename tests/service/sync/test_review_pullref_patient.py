"""Review finding 5: a foreign Consent whose patient reference is written another way than
``Patient/<id>`` (a version-specific reference, an absolute one on our server's base, an
identifier the store knows as an alias of ours) is that patient's consent: a deny merged through
``Puller.merge`` (the path a notification takes) holds the patient's records. A reference on
another server base is not ours: ignored, and counted as such."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, known_patient, now, puller, rating_state

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.7"


def permitted_patient(harness: SyncHarness) -> str:
    """A patient of ours whose records go out under a foreign permit pulled from the server."""
    patient = known_patient(harness)
    remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    assert puller(harness).pull().merged == 1
    assert rating_state(harness, 1, patient) is SyncState.SENT
    return patient


def foreign_deny(harness: SyncHarness, patient: str) -> dict[str, Any]:
    """A deny created on the test server for ``patient``: the server's copy (id, meta)."""
    return remote.create(
        harness.server, remote.foreign_consent(harness.server, patient, decision="deny")
    )


def by_identifier(harness: SyncHarness, n: int, mrn: str) -> dict[str, Any]:
    """Rating ``n`` of the patient known here only by identifier ``mrn``."""
    rating = R.rating(harness.run, n)
    rating["patient"] = {"identifier": mrn}
    return rating


def written_as(resource: dict[str, Any], subject: dict[str, Any]) -> dict[str, Any]:
    """The server's copy of ``resource`` with its patient written as ``subject``."""
    changed = copy.deepcopy(resource)
    changed["patient"] = subject
    return changed


@pytest.mark.parametrize(
    "form",
    ["{p}/_history/1", "{base}/{p}", "{base}/{p}/_history/3", "{base}/{p}/"[:-1]],
    ids=["versioned", "absolute", "absolute-versioned", "absolute-plain"],
)
def test_a_deny_naming_our_patient_another_way_holds_their_records(
    harness: SyncHarness, form: str
) -> None:
    patient = permitted_patient(harness)
    deny = foreign_deny(harness, patient)
    base = harness.server.base_url.rstrip("/")
    reference = form.format(p=patient, base=base)
    report = puller(harness).merge("Consent", [written_as(deny, {"reference": reference})])
    assert (report.merged, report.ignored) == (1, 0)
    assert report.changed_patients == {patient}
    assert rating_state(harness, 2, patient) is SyncState.HELD


def test_a_deny_naming_our_patient_by_an_alias_identifier_holds_their_records(
    harness: SyncHarness,
) -> None:
    patient = permitted_patient(harness)
    mrn = f"{MRN_SYSTEM}|mrn-{harness.run}"
    harness.store.add_patient_alias(patient, mrn, at=now())
    deny = foreign_deny(harness, patient)
    subject = {"identifier": {"system": MRN_SYSTEM, "value": f"mrn-{harness.run}"}}
    report = puller(harness).merge("Consent", [written_as(deny, subject)])
    assert (report.merged, report.ignored) == (1, 0)
    assert rating_state(harness, 2, patient) is SyncState.HELD


def test_a_reference_that_is_an_alias_of_our_patient_is_that_patient(
    harness: SyncHarness,
) -> None:
    patient = permitted_patient(harness)
    alias = f"Patient/alias-{harness.run}"
    harness.store.add_patient_alias(patient, alias, at=now())
    deny = foreign_deny(harness, patient)
    report = puller(harness).merge("Consent", [written_as(deny, {"reference": alias})])
    assert (report.merged, report.ignored) == (1, 0)
    assert rating_state(harness, 2, patient) is SyncState.HELD


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ({"reference": "https://other.example/fhir/{p}"}, "other server"),
        ({"reference": "https://other.example/fhir/{p}/_history/1"}, "other server"),
        ({"reference": "Patient/someone-else"}, "not our patient"),
        ({"identifier": {"system": MRN_SYSTEM, "value": "nobody"}}, "not our patient"),
        ({"display": "no reference"}, "no patient"),
        ({"reference": "#contained"}, "no patient"),
    ],
    ids=["other-server", "other-server-versioned", "stranger", "stranger-mrn", "none", "local"],
)
def test_a_consent_not_about_our_patient_is_ignored_and_counted_by_why(
    harness: SyncHarness, subject: dict[str, Any], why: str
) -> None:
    patient = permitted_patient(harness)
    deny = foreign_deny(harness, patient)
    written = {k: v.format(p=patient) if k == "reference" else v for k, v in subject.items()}
    report = puller(harness).merge("Consent", [written_as(deny, written)])
    assert (report.merged, report.ignored, report.ignored_why) == (0, 1, {why: 1})
    assert rating_state(harness, 2, patient) is SyncState.SENT


def test_a_patient_known_here_by_identifier_is_held_by_a_deny_naming_it_absolutely(
    harness: SyncHarness,
) -> None:
    """Records filed under an identifier, the patient linked on the server by the pull: a deny
    naming the server's patient absolutely and by version holds them."""
    value = f"mrn-{harness.run}"
    on_server = remote.create(
        harness.server,
        harness.server.tagged(
            {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": value}]}
        ),
    )
    linked = f"Patient/{on_server['id']}"
    remote.create(harness.server, remote.foreign_consent(harness.server, linked))
    [first] = harness.intake([by_identifier(harness, 1, f"{MRN_SYSTEM}|{value}")])
    assert puller(harness).pull().merged == 1
    harness.drain()
    assert harness.state(first.record_id) is SyncState.SENT
    deny = foreign_deny(harness, linked)
    absolute = f"{harness.server.base_url.rstrip('/')}/{linked}/_history/1"
    report = puller(harness).merge("Consent", [written_as(deny, {"reference": absolute})])
    assert (report.merged, report.ignored) == (1, 0)
    [second] = harness.intake([by_identifier(harness, 2, f"{MRN_SYSTEM}|{value}")])
    harness.drain()
    assert harness.state(second.record_id) is SyncState.HELD
