"""``fhir-alliance reconcile`` and ``fhir-alliance pull`` as an operator runs them, against the
test FHIR server: JSON reports, exit statuses, and ``--fix``."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path

import pytest
from fhir_alliance_service.sync.pull import PullReport

from fhir_alliance.cli import main
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness
from tests.service.sync.test_patient_key_spellings import _by_identifier


@pytest.fixture
def environment(harness: SyncHarness, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", harness.server.base_url)
    monkeypatch.setenv("FHIR_ALLIANCE_RECIPIENTS", ",".join(harness.settings.recipients))
    monkeypatch.setenv("FHIR_ALLIANCE_LOG_LEVEL", "WARNING")


def test_reconcile_json_reports_a_duplicate_and_fix_removes_it(
    harness: SyncHarness, environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy made outside the service: exit 1 and a JSON finding; ``--fix`` deletes the copy
    (exit 0); a third run is clean."""
    [_, rating] = harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1)])
    harness.drain()
    [ours] = harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{harness.run}-1")
    duplicate = copy.deepcopy(ours)
    duplicate.pop("id")
    duplicate.pop("meta")
    remote.create(harness.server, harness.server.tagged(duplicate))
    capsys.readouterr()

    assert main(["reconcile", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["duplicated"], report["missing"], report["drifted"]) == (1, 0, 0)
    assert report["findings"][0]["record_id"] == rating.record_id
    assert R.RECORD_SYSTEM not in json.dumps(report)  # ids only, never business identifiers

    assert main(["reconcile", "--fix", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fixed"] == 1
    assert main(["reconcile"]) == 0
    assert "0 duplicated" in capsys.readouterr().out
    assert len(harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{harness.run}-1")) == 1


def test_reconcile_fix_says_why_the_gate_holds_what_it_did_not_write(
    harness: SyncHarness, environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resource missing after the patient revoked is not written again: exit 1, the line
    says the gate holds it and why in plain words, and ``--json`` gives the reason code."""
    [_, rating] = harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1)])
    harness.drain()
    harness.intake([R.revocation(harness.run)])
    [ours] = harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{harness.run}-1")
    remote.delete(harness.server, ours)
    capsys.readouterr()

    assert main(["reconcile", "--fix"]) == 1
    [line] = [x for x in capsys.readouterr().out.splitlines() if rating.record_id in x]
    assert line.endswith("(held by the gate: no consent to share with the clinic's EHR)")
    assert main(["reconcile", "--fix", "--json"]) == 1
    [finding] = json.loads(capsys.readouterr().out)["findings"]
    assert (finding["held"], finding["held_reason"]) == (True, "no-consent")
    assert harness.on_server("Observation", f"{R.RECORD_SYSTEM}|trust-{harness.run}-1") == []


def test_reconcile_refuses_a_malformed_patient(
    environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--patient`` that is neither a reference nor an identifier stops with exit 2."""
    assert main(["reconcile", "--patient", "not a patient"]) == 2
    assert "--patient" in capsys.readouterr().err


def test_reconcile_finds_the_patient_by_another_spelling_of_their_identifier(
    harness: SyncHarness, environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--patient`` with the identifier's system spelt otherwise than the records were posted
    (an OID in capitals) checks that patient's sent records."""
    mrn = f"urn:oid:2.16.840.1.113883.3.9999.7|mrn-{harness.run}"
    harness.intake(
        [
            _by_identifier(R.sharing_consent(harness.run), mrn),
            _by_identifier(R.rating(harness.run, 1), mrn),
        ]
    )
    harness.drain()
    capsys.readouterr()
    assert main(["reconcile", "--patient", mrn.replace("urn:oid:", "URN:OID:"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 2


def _two_records_by_identifier(harness: SyncHarness) -> str:
    """A patient known by an MRN with a consent and a rating sent; the MRN."""
    mrn = f"urn:oid:2.16.840.1.113883.3.9999.7|mrn-{harness.run}"
    harness.intake(
        [
            _by_identifier(R.sharing_consent(harness.run), mrn),
            _by_identifier(R.rating(harness.run, 1), mrn),
        ]
    )
    harness.drain()
    return mrn


def test_reconcile_reads_the_patient_from_stdin_with_a_dash(
    harness: SyncHarness,
    environment: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--patient -`` reads the patient from stdin (not on the command line, where ``ps`` shows
    it to every user of the machine): that patient's records are checked, and no warning."""
    mrn = _two_records_by_identifier(harness)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{mrn}\n"))
    assert main(["reconcile", "--patient", "-", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["records"] == 2
    assert "warning" not in captured.err


def test_reconcile_reads_the_patient_from_a_file(
    harness: SyncHarness,
    environment: None,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """``--patient-file PATH`` reads the patient from the file's one line."""
    mrn = _two_records_by_identifier(harness)
    path = tmp_path / "patient"
    path.write_text(f"{mrn}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["reconcile", "--patient-file", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["records"] == 2
    assert "warning" not in captured.err


def test_reconcile_warns_once_when_the_patient_is_on_the_command_line(
    harness: SyncHarness, environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old form still works, with one ``warning:`` line on stderr naming the ways that keep
    the value out of argv, and never the value."""
    mrn = _two_records_by_identifier(harness)
    capsys.readouterr()
    assert main(["reconcile", "--patient", mrn, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["records"] == 2
    [line] = captured.err.splitlines()
    assert line.startswith("warning: ") and "--patient -" in line and "--patient-file" in line
    assert mrn not in captured.err and "mrn" not in captured.err


@pytest.mark.parametrize(
    ("given", "stdin", "says"),
    [
        (["--patient", "-"], "", "--patient: no patient on stdin"),
        (["--patient", "-"], "not a patient\n", "--patient: expected"),
        (["--patient", "-"], "Patient/a\nPatient/b\n", "--patient: expected one line"),
        (["--patient-file", "{missing}"], "", "--patient-file: cannot read"),
        (["--patient-file", "{bad}"], "", "--patient-file: expected"),
    ],
)
def test_reconcile_refuses_a_patient_it_cannot_read_without_echoing_it(
    environment: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    given: list[str],
    stdin: str,
    says: str,
) -> None:
    """Empty stdin, more than one line, a value that is no patient, a file that cannot be read:
    exit 2, one line naming the option, never the value read."""
    bad = tmp_path / "bad"
    bad.write_text("not a patient\n", encoding="utf-8")
    argv = [a.format(missing=tmp_path / "missing", bad=bad) for a in given]
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["reconcile", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "not a patient" not in err and "Patient/a" not in err


def test_reconcile_takes_one_way_of_naming_the_patient(
    environment: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--patient`` and ``--patient-file`` together: a usage error (exit 2)."""
    path = tmp_path / "patient"
    path.write_text("Patient/a\n", encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        main(["reconcile", "--patient", "-", "--patient-file", str(path)])
    assert stopped.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_pull_json_merges_and_releases(
    harness: SyncHarness, environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pull --json``: a consent written on the server is merged and the held record is
    re-queued."""
    patient = f"Patient/cli-{harness.run}"
    [rating] = harness.intake([R.rating(harness.run, 1, patient)])
    harness.drain()
    remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    capsys.readouterr()
    assert main(["pull", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["merged"], summary["released"], summary["error"]) == (1, 1, None)
    assert summary["reasserted"] == 0  # a foreign consent: no withdrawal of ours undone
    # every outcome PullReport counts (docs/two-way-sync.md names them), the paging aside
    counters = {f.name for f in dataclasses.fields(PullReport) if f.type == "int"}
    assert counters - {"pages", "history_pages", "history_entries"} <= summary.keys()
    # Consents of patients not ours (the shared test server holds other tests' too) are counted.
    assert sum(summary["ignored_why"].values()) == summary["ignored"]
    assert summary["retraction"]["policy"] == "none"
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None and status.state.value == "sent"
