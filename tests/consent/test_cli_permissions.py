"""The consents input of ``decide`` (and ``export --bulk``) reads R5 Permissions as the treatment
permissions they map (``from_permission``), as it reads the Consents they implement: before, a
Permission was passed over, so a declined treatment written as a Permission was lost and a permit
beside it answered ``permit``. A Permission it cannot read, or one that disagrees with the Consent
it implements given beside it, is an error at its place."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.cli import main
from fhir_alliance.consent.cli import read_consent_inputs
from fhir_alliance.mapping.consent import to_consent, to_permission
from fhir_alliance.model.consent import ConsentStatus, Decision, StatusChange
from fhir_alliance.schemas.consent import load_consent

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SHARING = EXAMPLES / "consent" / "sharing.json"
DECLINED = EXAMPLES / "consent" / "treatment-declined.json"
DECLINED_ID = "https://clinic.example.org/consents|t-2025-0311"
REQUEST = {
    "patient": {"reference": "Patient/p1"},
    "actors": [{"reference": "Organization/ehr-clinic"}],
    "purposes": ["TREAT"],
    "action": "disclose",
    "at": "2025-06-01T09:00:00Z",
}


def _declined() -> Any:
    return load_consent(json.loads(DECLINED.read_text()))


def _permission() -> dict[str, Any]:
    """The declined treatment (deny) as the R5 Permission the library writes."""
    return to_permission(_declined())


def _write(tmp_path: Path, name: str, value: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return path


def _decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], paths: list[Path]
) -> tuple[int, str, str]:
    request = _write(tmp_path, "request.json", REQUEST)
    code = main(["decide", *map(str, paths), "-r", str(request), "--json"])
    out, err = capsys.readouterr()
    return code, out, err


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


def test_the_sharing_permit_alone_permits_and_the_declined_treatment_denies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline: the permit alone answers permit; the declined treatment in our JSON form
    beside it answers deny."""
    code, out, err = _decide(tmp_path, capsys, [SHARING])
    assert code == 0, err
    assert json.loads(out)["decision"] == "permit"
    code, out, err = _decide(tmp_path, capsys, [SHARING, DECLINED])
    assert code == 0, err
    assert json.loads(out)["decision"] == "deny"


def _loose(tmp_path: Path) -> Path:
    return _write(tmp_path, "permission.json", _permission())


def _in_a_bundle(tmp_path: Path) -> Path:
    return _write(tmp_path, "permission.json", _bundle(_permission()))


def _in_a_bundle_in_a_bundle(tmp_path: Path) -> Path:
    return _write(tmp_path, "permission.json", _bundle(_bundle(_permission())))


def _on_an_ndjson_line(tmp_path: Path) -> Path:
    path = tmp_path / "permission.ndjson"
    other = {"resourceType": "Provenance", "id": "pv1"}
    path.write_text(f"{json.dumps(other)}\n{json.dumps(_permission())}\n")
    return path


@pytest.mark.parametrize(
    "place", [_loose, _in_a_bundle, _in_a_bundle_in_a_bundle, _on_an_ndjson_line]
)
def test_a_permission_denies_as_its_consent_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], place: Any
) -> None:
    """The declined treatment as an R5 Permission, loose, in a Bundle, in a Bundle in a Bundle or
    on an NDJSON line, beside the permit: deny, decided by the consent the Permission
    implements. Before, the Permission was passed over and the permit answered."""
    code, out, err = _decide(tmp_path, capsys, [SHARING, place(tmp_path)])
    assert code == 0, err
    answer = json.loads(out)
    assert answer["decision"] == "deny"
    assert [b["consent"] for b in answer["basis"]] == [DECLINED_ID]


def test_read_consent_inputs_reads_a_permission_as_its_record(tmp_path: Path) -> None:
    """The library function behind decide gives the Permission's treatment record; no location
    is recorded for it, so a LEAP card's basedOn names the Consent by its identifier."""
    inputs = read_consent_inputs([str(_loose(tmp_path))])
    (record,) = inputs.records
    assert str(record.id) == DECLINED_ID and record.decision is Decision.DENY
    assert inputs.locations == {}


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0", "ours"])
def test_a_permission_beside_its_consent_is_read_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    """The Consent a Permission implements (FHIR R4, R5 or our JSON) and the Permission, both
    given and agreeing: one record, the Consent's; the answer names it once."""
    consent: Any = (
        json.loads(DECLINED.read_text())
        if version == "ours"
        else to_consent(_declined(), version=version)
    )
    source = _write(tmp_path, "consent.json", consent)
    permission = _loose(tmp_path)
    inputs = read_consent_inputs([str(source), str(permission)])
    assert inputs.records == [_declined()]
    code, out, err = _decide(tmp_path, capsys, [SHARING, permission, source])
    assert code == 0, err
    answer = json.loads(out)
    assert answer["decision"] == "deny"
    assert [b["consent"] for b in answer["basis"]] == [DECLINED_ID]


def _accepted() -> Any:
    """The declined treatment's Permission turned into a permit."""
    permission = _permission()
    permission["rule"][0]["type"] = "permit"
    return permission


def _still_active() -> Any:
    """The Permission as it was before its Consent was revoked (see the test)."""
    return _permission()


@pytest.mark.parametrize(
    ("consent_status", "permission"), [("active", _accepted), ("revoked", _still_active)]
)
def test_a_permission_that_disagrees_with_its_consent_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], consent_status: str, permission: Any
) -> None:
    """A Permission that says otherwise than the Consent it implements (a permit beside the
    declining Consent; still active beside the revoked Consent) is an error at the Permission:
    which of the two is right is not for decide to guess."""
    record = _declined()
    if consent_status == "revoked":
        at = datetime(2025, 5, 20, tzinfo=UTC)
        change = StatusChange(status=ConsentStatus.REVOKED, at=at, by=record.grantor)
        record = replace(record, status=ConsentStatus.REVOKED, history=(*record.history, change))
    source = _write(tmp_path, "consent.json", to_consent(record, version="4.0.1"))
    bad = _write(tmp_path, "permission.json", permission())
    code, out, err = _decide(tmp_path, capsys, [SHARING, source, bad])
    assert (code, out) == (1, ""), err
    assert err.startswith(f"error: {bad}[0]: "), err
    assert "disagrees with the Consent it implements" in err
    assert "Traceback" not in err


def _permit_overrides(permission: dict[str, Any]) -> None:
    permission["combining"] = "permit-overrides"


def _two_rules(permission: dict[str, Any]) -> None:
    permission["rule"].append(copy.deepcopy(permission["rule"][0]))


@pytest.mark.parametrize(
    ("spoil", "element"),
    [(_permit_overrides, "Permission.combining"), (_two_rules, "Permission.rule")],
)
def test_a_permission_decide_cannot_read_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spoil: Any, element: str
) -> None:
    """A Permission not shaped as the library writes one (another combining rule, several rules)
    is an error at its element, as a Consent that does not read is: passed over, its deny would
    be lost."""
    permission = _permission()
    spoil(permission)
    bad = _write(tmp_path, "consents.json", _bundle(permission))
    code, out, err = _decide(tmp_path, capsys, [SHARING, bad])
    assert (code, out) == (1, ""), err
    assert f"{bad}[0].entry[0].resource.{element}" in err
    assert "Traceback" not in err


def _data_access(permission: dict[str, Any]) -> None:
    """A foreign Permission about data access: it denies disclosing, not a treatment."""
    action = {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose"}
    permission["rule"][0]["activity"][0]["action"] = [{"coding": [action]}]


def test_a_permission_about_data_access_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Permission whose action is a consentaction code (``disclose``) says who may do what with
    data, which the library does not read from a Permission: read as a declined treatment, its
    deny would not count where disclosure is asked about (the gate asks about patient-privacy
    consents). An error at the action."""
    permission = _permission()
    _data_access(permission)
    bad = _write(tmp_path, "permission.json", permission)
    code, out, err = _decide(tmp_path, capsys, [SHARING, bad])
    assert (code, out) == (1, ""), err
    assert f"{bad}[0].Permission.rule[0].activity[0].action[0]" in err
    assert "Traceback" not in err


def test_export_bulk_reads_permissions_as_decide_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export --bulk`` reads its consents the same way: a Permission it cannot read is an error
    at its place and nothing is written; the declined treatment's Permission is read, and leaves
    the record written (a treatment permission is about care: the gate asks about
    patient-privacy consents, as it does of the same treatment given as a Consent)."""
    sharing = json.loads(SHARING.read_text())
    sharing["period"] = {"start": sharing["period"]["start"]}
    record = json.loads((EXAMPLES / "observations" / "srs-administration.json").read_text())
    record["patient"] = {"reference": "Patient/p1"}
    source = _write(tmp_path, "srs.json", record)

    def export(consents: list[Any], out: Path) -> tuple[int, str, Path]:
        path = _write(tmp_path, "consents.json", consents)
        argv = ["export", "--bulk", str(out), "--consents", str(path), str(source)]
        code = main([*argv, "--recipient", "Organization/ehr-clinic", "--purpose", "TREAT"])
        return code, capsys.readouterr().err, path

    bad = _permission()
    _permit_overrides(bad)
    code, err, path = export([sharing, bad], tmp_path / "refused")
    assert code == 1, err
    assert f"{path}[1].Permission.combining" in err
    assert not (tmp_path / "refused").exists()
    for consents, out in (
        ([sharing], tmp_path / "sharing"),
        ([sharing, _permission()], tmp_path / "with-permission"),
        ([sharing, json.loads(DECLINED.read_text())], tmp_path / "with-consent"),
    ):
        code, err, _ = export(consents, out)
        assert code == 0, err
        assert "held" not in err
        assert (out / "Observation.ndjson").exists()
