"""``export --bulk`` decides every resource it writes, with the service gate's note rules.

Review findings: a record whose patient is given only by identifier was written without any
consent check (its subject has no ``reference``, so it was skipped as if it were a Provenance), and
session notes ignored the gate's rules (drafts held; an AI-drafted note only while the client's
recording/AI-notes consent permits it).
"""

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.cli import main
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.mapping import cli as mapping_cli
from fhir_alliance.mapping.bulk import HOLD_WORDS, MANIFEST, export_bulk
from fhir_alliance.schemas.consent import load_consent

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MRN = "https://clinic.example.org/mrn|000123"
RECIPIENT = "Organization/ehr-clinic"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _sharing(*, decision: str = "permit") -> dict[str, Any]:
    """The example sharing consent, open-ended (the command decides at the current time)."""
    form = _load(EXAMPLES / "consent" / "sharing.json")
    form["period"] = {"start": form["period"]["start"]}
    form["decision"] = decision
    if decision == "deny":
        form["provision"]["provisions"] = []
    return form


def _recording(*, status: str = "active") -> dict[str, Any]:
    form = _load(EXAMPLES / "consent" / "recording-ai-notes.json")
    form["status"] = status
    return form


def _ai_note(*, signed: bool) -> dict[str, Any]:
    form = _load(EXAMPLES / "notes" / "ai-drafted-progress-note.json")
    assert form.get("status", "draft") == "draft" and form["ai_drafting"]
    if signed:
        form["id"] = "https://clinic.example.org/notes|n-signed"
        form["status"] = "final"
        form["signed_at"] = "2025-06-09T17:00:00+00:00"
        form["signed_by"] = {"reference": "Practitioner/t1", "type": "Practitioner"}
    return form


def _identifier_only(form: dict[str, Any]) -> dict[str, Any]:
    form = copy.deepcopy(form)
    form["patient"] = {"identifier": MRN, "type": "Patient"}
    return form


def _export(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    consents: list[dict[str, Any]],
    records: dict[str, dict[str, Any]],
) -> tuple[Path, str]:
    """Run the real command; the output directory and what it reported on stderr."""
    consent_file = tmp_path / "consents.json"
    consent_file.write_text(json.dumps(consents))
    paths = []
    for name, form in records.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(form))
        paths.append(str(path))
    out = tmp_path / "out"
    code = main(
        [
            "export",
            "--bulk",
            str(out),
            "--consents",
            str(consent_file),
            "--recipient",
            RECIPIENT,
            "--purpose",
            "TREAT",
            *paths,
        ]
    )
    assert code == 0
    return out, capsys.readouterr().err


def _written(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != MANIFEST)


def test_identifier_only_patient_is_decided_and_denied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 1: an instrument administration and a note whose patient is only an MRN, with a
    deny-all consent for that patient: both held as denied, nothing written."""
    srs = _identifier_only(_load(EXAMPLES / "observations" / "srs-administration.json"))
    note = _identifier_only(_ai_note(signed=True))
    note.pop("ai_drafting")
    out, err = _export(tmp_path, capsys, [_sharing(decision="deny")], {"srs": srs, "note": note})
    assert _written(out) == []
    assert json.loads((out / MANIFEST).read_text())["output"] == []
    assert "held srs.json:0: deny" in err
    assert "held note.json:0: deny" in err
    assert "000123" not in err  # the held report names the input, never the patient


def test_identifier_only_psychotherapy_note_is_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 1: a PSYTHPN-labelled note of an MRN-only patient is held by the sharing consent's
    PSYTHPN deny, while the same patient's instrument administration is written (decided)."""
    psy = _identifier_only(_load(EXAMPLES / "notes" / "psychotherapy-note.json"))
    srs = _identifier_only(_load(EXAMPLES / "observations" / "srs-administration.json"))
    out, err = _export(tmp_path, capsys, [_sharing()], {"psy": psy, "srs": srs})
    assert _written(out) == ["Observation.ndjson"]
    assert "held psy.json:0: deny" in err


def test_ai_drafted_notes_need_the_recording_consent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 2: with a sharing consent but no recording/AI-notes consent, the AI-drafted draft is
    held as a draft and the signed AI-drafted note as not permitted; the report says why."""
    records = {"draft": _ai_note(signed=False), "signed": _ai_note(signed=True)}
    out, err = _export(tmp_path, capsys, [_sharing()], records)
    assert _written(out) == []
    draft, signed = (f"held {name}.json:0: " for name in ("draft", "signed"))
    assert f"{draft}draft-note ({HOLD_WORDS['draft-note']})" in err
    assert f"{signed}ai-notes-not-permitted ({HOLD_WORDS['ai-notes-not-permitted']})" in err


def test_signed_ai_note_goes_while_the_recording_consent_permits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the recording consent active the signed AI note is written (its draft still held)."""
    records = {"draft": _ai_note(signed=False), "signed": _ai_note(signed=True)}
    out, err = _export(tmp_path, capsys, [_sharing(), _recording()], records)
    assert _written(out) == ["DocumentReference.ndjson", "Provenance.ndjson"]
    lines = (out / "DocumentReference.ndjson").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["docStatus"] == "final"
    assert "held draft.json:0: draft-note" in err
    assert "signed.json" not in err


def test_revoked_recording_consent_holds_the_signed_ai_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 2: the recording consent revoked, the signed AI-drafted note is held."""
    out, err = _export(
        tmp_path,
        capsys,
        [_sharing(), _recording(status="revoked")],
        {"signed": _ai_note(signed=True)},
    )
    assert _written(out) == []
    assert "held signed.json:0: ai-notes-not-permitted" in err


@pytest.mark.parametrize(
    "resources",
    [
        [{"resourceType": "Observation", "id": "o1", "status": "final"}],
        [{"resourceType": "Observation", "id": "o1", "subject": {"identifier": {"system": "x"}}}],
        [{"resourceType": "Observation", "id": "o1", "subject": {"display": "Jane"}}],
        [{"resourceType": "Provenance", "id": "pv", "target": [{"reference": "Observation/o1"}]}],
        [
            {"resourceType": "Provenance", "id": "pv", "target": [{"reference": "Observation/o1"}]},
            {"resourceType": "Observation", "id": "o1"},
        ],
    ],
    ids=["no-subject", "identifier-without-value", "display-only", "provenance-alone", "both"],
)
def test_a_resource_whose_patient_is_unknown_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resources: list[dict[str, Any]]
) -> None:
    """Deny by default: a record with a resource whose patient cannot be determined (or with
    nothing decided at all, a lone Provenance) is held as ``patient-unknown``, never written."""

    def groups(items: list[tuple[str, Any]], *, version: str) -> Iterator[Any]:
        yield "in:0", copy.deepcopy(resources)

    monkeypatch.setattr(mapping_cli, "resource_groups", groups)
    engine = ConsentEngine([load_consent(_sharing())])
    result = export_bulk(
        [("in:0", {})],
        tmp_path,
        engine=engine,
        recipient=RECIPIENT,
        purposes=["TREAT"],
        at=datetime(2025, 6, 1, tzinfo=UTC),
    )
    assert result.held == [("in:0", "patient-unknown")] and result.counts == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_an_unsigned_entered_in_error_note_is_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An AI-drafted note marked entered-in-error without a signature is held (``unsigned-note``)
    even with every consent in place: nobody signed its text, and an export has no earlier
    version of it to correct. The signed note beside it is written."""
    voided = _ai_note(signed=False) | {"status": "entered-in-error"}
    records = {"voided": voided, "signed": _ai_note(signed=True)}
    out, err = _export(tmp_path, capsys, [_sharing(), _recording()], records)
    lines = (out / "DocumentReference.ndjson").read_text().splitlines()
    assert [json.loads(line)["docStatus"] for line in lines] == ["final"]
    assert f"held voided.json:0: unsigned-note ({HOLD_WORDS['unsigned-note']})" in err
