"""``fhir-alliance map`` with consents: records → Consents (R4/R5) and back, revocations applied in a batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.cli import main
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.terminology import EXT_CONSENT_STATE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "consent"
FILES = sorted(str(p) for p in EXAMPLES.glob("*.json"))
REVOCATION = EXAMPLES / "revocation" / "withdraw-sharing.json"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["map", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
def test_consent_examples_map_to_a_bundle_and_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    """All consent examples become Consents in one Bundle; mapping it back gives the same records."""
    code, out, err = _run(capsys, *FILES, "--fhir-version", version)
    assert code == 0, err
    bundle = json.loads(out)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Consent"] * len(FILES)
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_text(out)
    code, out, err = _run(capsys, str(bundle_file))
    assert code == 0, err
    back = sorted((load_consent(r) for r in json.loads(out)), key=lambda r: str(r.id))
    expected = sorted(
        (load_consent(json.loads(Path(f).read_text())) for f in FILES), key=lambda r: str(r.id)
    )
    assert back == expected


def test_revocation_in_the_batch_is_applied_to_its_consent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A consent followed by its revocation maps to one inactive Consent with state revoked."""
    code, out, err = _run(capsys, str(EXAMPLES / "sharing.json"), str(REVOCATION), "--ndjson")
    assert code == 0, err
    (resource,) = [json.loads(line) for line in out.splitlines()]
    assert resource["status"] == "inactive"
    state = [e for e in resource["extension"] if e["url"] == EXT_CONSENT_STATE]
    assert state[0]["valueCode"] == "revoked"


def test_revocation_of_unknown_consent_fails_with_its_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A revocation whose consent is not in the batch exits 1 naming file:index.consent."""
    batch = tmp_path / "batch.json"
    revocation: dict[str, Any] = json.loads(REVOCATION.read_text())
    treatment = json.loads((EXAMPLES / "treatment-declined.json").read_text())
    batch.write_text(json.dumps([treatment, revocation]))
    code, out, err = _run(capsys, str(batch))
    assert code == 1
    assert out == ""
    assert "batch.json:1.consent" in err


def test_bad_consent_field_is_reported_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consent with an unknown purpose code exits 1 naming file:index and the field path."""
    data = json.loads((EXAMPLES / "sharing.json").read_text())
    data["provision"]["purposes"][0]["code"] = "FUN"
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(data))
    code, _, err = _run(capsys, str(source))
    assert code == 1
    assert "bad.json:0.provision.purposes.0.code" in err


def test_foreign_consent_that_does_not_fit_names_the_element(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reading a Consent with an invalid LOINC category exits 1 naming the element, not crashing."""
    resource = json.loads(
        (Path(__file__).parent / "fixtures/consent/leap-r4-optin-deny-code.json").read_text()
    )
    resource["category"][1]["coding"][0]["code"] = "59284-6"
    source = tmp_path / "leap.json"
    source.write_text(json.dumps(resource))
    code, _, err = _run(capsys, str(source))
    assert code == 1
    assert "category[1].coding[0].code" in err


def test_revocation_before_its_consent_in_the_batch_is_applied(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Order in a batch does not matter: a revocation given before its consent still revokes it."""
    code, out, err = _run(capsys, str(REVOCATION), str(EXAMPLES / "sharing.json"), "--ndjson")
    assert code == 0, err
    (resource,) = [json.loads(line) for line in out.splitlines()]
    assert resource["status"] == "inactive"
    state = [e for e in resource["extension"] if e["url"] == EXT_CONSENT_STATE]
    assert state[0]["valueCode"] == "revoked"


def test_revocation_before_its_consent_in_decide_inputs_is_applied(
    tmp_path: Path,
) -> None:
    """Consent records read for ``decide`` apply a revocation listed before its consent."""
    from fhir_alliance.consent.cli import read_consent_inputs

    batch = tmp_path / "batch.json"
    sharing = json.loads((EXAMPLES / "sharing.json").read_text())
    batch.write_text(json.dumps([json.loads(REVOCATION.read_text()), sharing]))
    (record,) = read_consent_inputs([str(batch)]).records
    assert record.status.value == "revoked"
    assert record.history[-1].status.value == "revoked"
