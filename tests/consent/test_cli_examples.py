"""Every shipped example under examples/decisions/ runs through ``fhir-alliance decide`` and
prints exactly its golden output (set FHIR_ALLIANCE_UPDATE_GOLDEN=1 to rewrite the golden files)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "decisions"
GOLDEN = Path(__file__).resolve().parent / "golden" / "decide"
MANIFEST: dict[str, Any] = json.loads((EXAMPLES / "examples.json").read_text())


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("example", MANIFEST["examples"], ids=lambda e: e["name"])
def test_example_matches_golden(
    example: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The example's decision output (text, --json or LEAP card) equals its golden file."""
    consents = [str(EXAMPLES / c) for c in MANIFEST["consents"]]
    argv = ["decide", *consents, "-r", str(EXAMPLES / example["request"]), *example["args"]]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    golden = GOLDEN / f"{example['name']}.out"
    if os.environ.get("FHIR_ALLIANCE_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out)
    assert out == golden.read_text()


def test_every_request_file_is_an_example() -> None:
    """No request under examples/decisions/requests is left out of the manifest."""
    listed = {e["request"] for e in MANIFEST["examples"]}
    shipped = {f"requests/{p.name}" for p in (EXAMPLES / "requests").glob("*.json*")}
    assert shipped == listed


def test_every_golden_file_belongs_to_an_example() -> None:
    """No stale golden file outlives its example."""
    names = {f"{e['name']}.out" for e in MANIFEST["examples"]}
    assert {p.name for p in GOLDEN.glob("*.out")} == names


def test_bad_request_names_field_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed request exits 1 and names each bad field path, without a traceback."""
    request = tmp_path / "bad.json"
    request.write_text(
        json.dumps(
            {
                "patient": {"reference": "Patient/p1"},
                "actors": [{}],
                "at": "yesterday",
                "resource": {"labels": [""]},
            }
        )
    )
    code, out, err = run(
        ["decide", str(EXAMPLES / MANIFEST["consents"][0]), "-r", str(request)], capsys
    )
    assert code == 1 and out == ""
    for path in ("actors.0", "at", "resource.labels.0"):
        assert f"  {path}:" in err


def test_bad_hook_context_names_field_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hook context without actors exits 1 naming context.actor."""
    request = tmp_path / "hook.json"
    request.write_text(
        json.dumps(
            {
                "hook": "patient-consent-consult",
                "context": {"patientId": [{"system": "urn:x", "value": "1"}]},
            }
        )
    )
    code, _, err = run(
        [
            "decide",
            str(EXAMPLES / MANIFEST["consents"][0]),
            "-r",
            str(request),
            "--at",
            "2025-06-01T00:00:00Z",
        ],
        capsys,
    )
    assert code == 1
    assert "context.actor" in err


def test_broken_consent_file_names_element(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Consent the mapping cannot read exits 1 naming the file and the element."""
    consent = tmp_path / "consents.ndjson"
    consent.write_text(
        json.dumps({"resourceType": "Consent", "status": "active", "provision": {"type": "maybe"}})
        + "\n"
    )
    code, _, err = run(
        ["decide", str(consent), "-r", str(EXAMPLES / "requests" / "research.json")], capsys
    )
    assert code == 1
    assert str(consent) in err


def test_not_json_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A consent file that is neither JSON nor NDJSON exits 1 naming file and line."""
    consent = tmp_path / "consents.txt"
    consent.write_text("{}\nnot json\n")
    code, _, err = run(
        ["decide", str(consent), "-r", str(EXAMPLES / "requests" / "research.json")], capsys
    )
    assert code == 1
    assert f"{consent}:2" in err
