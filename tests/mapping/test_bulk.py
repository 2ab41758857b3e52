"""``fhir-alliance export --bulk``: Bulk Data NDJSON per type and a manifest, only what consent permits."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fhir_alliance.cli import main
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.mapping.bulk import MANIFEST, export_bulk
from fhir_alliance.schemas.consent import load_consent

ROOT = Path(__file__).resolve().parents[2]
SHARING = ROOT / "examples" / "consent" / "sharing.json"
AT = datetime(2025, 6, 1, tzinfo=UTC)


def _record(patient: str, n: int) -> dict:
    form = json.loads((ROOT / "examples" / "observations" / "srs-administration.json").read_text())
    form["id"] = f"https://bench.example/records|bulk-{n}"
    form["patient"] = {"reference": patient}
    form["effective"] = "2025-05-01T10:00:00+00:00"
    return form


def _engine() -> ConsentEngine:
    return ConsentEngine([load_consent(json.loads(SHARING.read_text()))])


def test_permitted_records_are_written_and_others_held(tmp_path: Path) -> None:
    """p1 consented to sharing with the recipient: written; p2 has no consent: held, not written."""
    items = [("in:0", _record("Patient/p1", 0)), ("in:1", _record("Patient/p2", 1))]
    result = export_bulk(
        items,
        tmp_path,
        engine=_engine(),
        recipient="Organization/ehr-clinic",
        purposes=["TREAT"],
        at=AT,
    )
    assert result.held == [("in:1", "no-consent")]
    lines = (tmp_path / "Observation.ndjson").read_text().splitlines()
    assert lines and {json.loads(line)["subject"]["reference"] for line in lines} == {"Patient/p1"}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    assert {o["type"]: o["count"] for o in manifest["output"]} == result.counts
    assert all(o["url"].startswith("file://") for o in manifest["output"])


def test_a_recipient_without_consent_gets_nothing(tmp_path: Path) -> None:
    """For a recipient no consent names, every record is held and no NDJSON file is written."""
    result = export_bulk(
        [("in:0", _record("Patient/p1", 0))],
        tmp_path,
        engine=_engine(),
        recipient="Organization/elsewhere",
        purposes=["TREAT"],
        at=AT,
    )
    assert result.counts == {} and [label for label, _ in result.held] == ["in:0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_command_requires_consents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --consents the command refuses (argparse exit 2) and writes nothing."""
    records = tmp_path / "r.json"
    records.write_text(json.dumps(_record("Patient/p1", 0)))
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "export",
                "--bulk",
                str(tmp_path / "out"),
                "--recipient",
                "Organization/x",
                "--purpose",
                "TREAT",
                str(records),
            ]
        )
    assert stopped.value.code == 2
    assert "--consents" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_record_writes_nothing(tmp_path: Path) -> None:
    """A record that does not load: an InputError naming its label, and no file at all."""
    bad = _record("Patient/p1", 0)
    bad["responses"] = {"99": 3}
    with pytest.raises(Exception) as caught:
        export_bulk(
            [("in:0", bad)],
            tmp_path / "out",
            engine=_engine(),
            recipient="Organization/ehr-clinic",
            purposes=["TREAT"],
            at=AT,
        )
    assert any(i.path.startswith("in:0.responses") for i in caught.value.issues)  # type: ignore[attr-defined]
    assert not (tmp_path / "out").exists()
