"""The consents input of ``decide`` (``read_consent_inputs``) reads each consent once. Two
Consents, Permissions or consent records with the same business identifier that say the same are
one consent; two that say otherwise (a history export with the older, active version beside the
newer, revoked one) are an error at the second one's identifier: before, both were read and the
old version's permit answered. The error names where the identifier is, never its value."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.cli import main
from fhir_alliance.consent.cli import read_consent_inputs
from fhir_alliance.errors import InputError
from fhir_alliance.mapping.consent import to_consent, to_permission
from fhir_alliance.model.common import Identifier
from fhir_alliance.model.consent import ConsentRecord, ConsentStatus, Decision, StatusChange
from fhir_alliance.schemas.consent import dump_consent, load_consent
from tests.consent.test_cli_permissions import DECLINED, REQUEST, SHARING

#: The identifier's value: never in an error message.
VALUE = "c-2025-0001"


def _sharing() -> ConsentRecord:
    return load_consent(json.loads(SHARING.read_text()))


def _revoked(record: ConsentRecord) -> ConsentRecord:
    """The newer version: revoked on 20 May 2025, before the request."""
    change = StatusChange(
        status=ConsentStatus.REVOKED, at=datetime(2025, 5, 20, tzinfo=UTC), by=record.grantor
    )
    return replace(record, status=ConsentStatus.REVOKED, history=(*record.history, change))


def _as(record: ConsentRecord, form: str) -> dict[str, Any]:
    return dump_consent(record) if form == "ours" else to_consent(record, version=form)


def _write(tmp_path: Path, name: str, value: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return path


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": r} for r in resources],
    }


def _decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], paths: list[Path]
) -> tuple[int, str, str]:
    request = _write(tmp_path, "request.json", REQUEST)
    code = main(["decide", *map(str, paths), "-r", str(request), "--json"])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_refused_at(code: int, out: str, err: str, where: str) -> None:
    assert (code, out) == (1, ""), err
    assert err.startswith("error: "), err
    assert f"{where}: " in err, err
    assert "same identifier" in err or "a consent with this id was given before" in err, err
    assert VALUE not in err, err
    assert "Traceback" not in err


def test_each_version_alone_answers_as_it_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline: the older, active version permits; the newer, revoked one does not."""
    older = _write(tmp_path, "older.json", _as(_sharing(), "4.0.1"))
    newer = _write(tmp_path, "newer.json", _as(_revoked(_sharing()), "4.0.1"))
    code, out, err = _decide(tmp_path, capsys, [older])
    assert code == 0, err
    assert json.loads(out)["decision"] == "permit"
    code, out, err = _decide(tmp_path, capsys, [newer])
    assert code == 0, err
    assert json.loads(out)["decision"] == "no-consent"


def test_a_history_bundle_with_two_versions_of_one_consent_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A history Bundle holding the older, active version and the newer, revoked one of one
    Consent: an error at the second entry's identifier, exit 1. Before, the older version's
    permit answered."""
    bundle = _bundle(_as(_sharing(), "4.0.1"), _as(_revoked(_sharing()), "4.0.1"))
    source = _write(tmp_path, "history.json", bundle)
    code, out, err = _decide(tmp_path, capsys, [source])
    _assert_refused_at(code, out, err, f"{source}[0].entry[1].resource.identifier[0]")


@pytest.mark.parametrize(
    ("first", "second", "position"),
    [
        ("4.0.1", "4.0.1", "identifier[0]"),
        ("5.0.0", "4.0.1", "identifier[0]"),
        ("4.0.1", "5.0.0", "identifier[0]"),
        ("ours", "4.0.1", "identifier[0]"),
        ("4.0.1", "ours", "id"),
        ("ours", "ours", "id"),
    ],
)
def test_two_versions_in_two_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str, second: str, position: str
) -> None:
    """The two versions in two files, as FHIR R4, R5 or our consent records, in any mix: an error
    at the second one's identifier (a record's ``id``), whichever of them is the newer one."""
    for older_first in (True, False):
        records = [_sharing(), _revoked(_sharing())]
        if not older_first:
            records.reverse()
        one = _write(tmp_path, "one.json", _as(records[0], first))
        two = _write(tmp_path, "two.json", _as(records[1], second))
        code, out, err = _decide(tmp_path, capsys, [one, two])
        _assert_refused_at(code, out, err, f"{two}[0].{position}")


def test_the_identifier_spelt_another_way_is_the_same_identifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Identifiers are compared as URIs: the revoked version naming the system's host in upper
    case is still the same consent."""
    newer = _revoked(_sharing())
    newer = replace(newer, id=Identifier("https://CLINIC.example.org/consents", VALUE))
    one = _write(tmp_path, "one.json", _as(_sharing(), "4.0.1"))
    two = _write(tmp_path, "two.json", _as(newer, "4.0.1"))
    code, out, err = _decide(tmp_path, capsys, [one, two])
    _assert_refused_at(code, out, err, f"{two}[0].identifier[0]")


@pytest.mark.parametrize(
    ("first", "second"), [("4.0.1", "4.0.1"), ("4.0.1", "5.0.0"), ("ours", "ours")]
)
def test_the_same_consent_twice_is_read_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str, second: str
) -> None:
    """The same consent in two files (R4 twice, R4 and R5, our record twice) says the same: one
    record."""
    one = _write(tmp_path, "one.json", _as(_sharing(), first))
    two = _write(tmp_path, "two.json", _as(_sharing(), second))
    assert read_consent_inputs([str(one), str(two)]).records == [_sharing()]
    code, out, err = _decide(tmp_path, capsys, [one, two])
    assert code == 0, err
    assert json.loads(out)["decision"] == "permit"


def _declined() -> ConsentRecord:
    return load_consent(json.loads(DECLINED.read_text()))


def test_two_permissions_implementing_one_consent_must_agree(tmp_path: Path) -> None:
    """Two Permissions implementing the same Consent, without it: the same twice is read once;
    a permit beside the deny is an error at the second one's evidence of the Consent."""
    deny = to_permission(_declined())
    one = _write(tmp_path, "one.json", deny)
    two = _write(tmp_path, "two.json", to_permission(_declined()))
    (record,) = read_consent_inputs([str(one), str(two)]).records
    assert record.decision is Decision.DENY
    permit = to_permission(_declined())
    permit["rule"][0]["type"] = "permit"
    two = _write(tmp_path, "two.json", permit)
    with pytest.raises(InputError) as caught:
        read_consent_inputs([str(one), str(two)])
    (issue,) = caught.value.issues
    assert issue.path == f"{two}[0].justification.evidence[0].identifier"
    assert "same identifier" in issue.message
    assert "t-2025-0311" not in caught.value.message


def test_a_consent_record_and_a_fhir_consent_that_disagree_are_refused(tmp_path: Path) -> None:
    """Our consent record and a FHIR Consent with its identifier but revoked: an error, not two
    consents."""
    ours = _write(tmp_path, "ours.json", _as(_sharing(), "ours"))
    fhir = _write(tmp_path, "fhir.json", _as(_revoked(_sharing()), "5.0.0"))
    with pytest.raises(InputError) as caught:
        read_consent_inputs([str(ours), str(fhir)])
    assert [i.path for i in caught.value.issues] == [f"{fhir}[0].identifier[0]"]
