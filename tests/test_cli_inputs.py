"""``map`` and ``decide`` read files and stdin through the strict JSON reader (fhir_alliance.jsonio)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fhir_alliance.cli import main

ROOT = Path(__file__).resolve().parents[1]
SRS = ROOT / "examples" / "observations" / "srs-administration.json"
DECISIONS = ROOT / "examples" / "decisions"
CONSENT_RECORDS = DECISIONS / "consents" / "records.json"
REQUEST = DECISIONS / "requests" / "clinic-observation.json"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_map_refuses_a_duplicated_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A response given twice is an error at its line and column, not a silently changed score."""
    text = SRS.read_text().replace('"3": 8.0,', '"3": 8.0, "3": 1.0,')
    source = tmp_path / "srs.json"
    source.write_text(text)
    code, out, err = _run(capsys, "map", str(source))
    assert (code, out) == (1, "")
    assert f"{source}:11:47:" in err and 'duplicate key "3"' in err


def test_map_reads_a_file_with_a_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A UTF-8 BOM (as some editors write) does not stop the file being read."""
    source = tmp_path / "srs.json"
    source.write_bytes(b"\xef\xbb\xbf" + SRS.read_bytes())
    code, out, err = _run(capsys, "map", str(source))
    assert code == 0, err
    assert json.loads(out)["resourceType"] == "Bundle"


def test_map_reports_malformed_json_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Broken JSON says line, column and reason instead of 'neither JSON nor NDJSON'."""
    source = tmp_path / "broken.json"
    source.write_text('{\n  "kind": "rupture",\n  "id": x\n}\n')
    code, _, err = _run(capsys, "map", str(source))
    assert code == 1
    assert f"{source}:3:9: Expecting value" in err


def test_map_refuses_stdin_over_the_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records on stdin longer than the cap are an error, not cut short."""
    data = SRS.read_bytes()
    monkeypatch.setattr("fhir_alliance.mapping.cli.MAX_INPUT_BYTES", len(data) - 1)
    _stdin(monkeypatch, data)
    code, out, err = _run(capsys, "map", "-")
    assert (code, out) == (1, "")
    assert "stdin" in err and "larger than" in err


def test_decide_refuses_consents_on_stdin_over_the_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Consents on stdin past the cap are an error: a later deny can never be cut off unseen."""
    records = json.loads(CONSENT_RECORDS.read_text())
    ndjson = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    first_line = ndjson.split(b"\n")[0] + b"\n"
    monkeypatch.setattr("fhir_alliance.consent.cli.MAX_INPUT_BYTES", len(first_line))
    _stdin(monkeypatch, ndjson)
    code, out, err = _run(capsys, "decide", "-", "-r", str(REQUEST))
    assert (code, out) == (1, "")
    assert "larger than" in err


def test_decide_refuses_a_duplicated_key_in_the_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request naming its action twice is refused rather than the last one winning."""
    request = tmp_path / "request.json"
    request.write_text(
        REQUEST.read_text().replace(
            '"action": "disclose",', '"action": "disclose", "action": "access",'
        )
    )
    code, out, err = _run(capsys, "decide", str(CONSENT_RECORDS), "-r", str(request))
    assert (code, out) == (1, "")
    assert 'duplicate key "action"' in err


def test_decide_reads_an_empty_consents_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty consents input is allowed (no consent: the answer is not a permit)."""
    empty = tmp_path / "none.ndjson"
    empty.write_text("")
    code, out, err = _run(capsys, "decide", str(empty), "-r", str(REQUEST), "--json")
    assert code == 0, err
    assert json.loads(out)["decision"] != "permit"


def test_map_prints_each_issue_once_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several issues: a count, then one line per issue, none repeated in the headline."""
    source = tmp_path / "bad.json"
    source.write_text('[{"kind": "rupture"}, {"kind": "mood"}]')
    code, _, err = _run(capsys, "map", str(source))
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == "error: invalid input at 7 places"
    assert lines[1:] == sorted(lines[1:], key=lambda line: line.split(":", 2)[1])
    assert sum("bad.json:1.kind: unknown record kind" in line for line in lines) == 1
