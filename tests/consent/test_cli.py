"""``fhir-alliance decide``: options checked, empty inputs said out loud, deep nesting refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "decisions"
REQUEST = EXAMPLES / "requests" / "clinic-observation.json"
HOOK = EXAMPLES / "requests" / "leap-context-dr-a.json"
CONSENTS = [str(p) for p in sorted((EXAMPLES / "consents").iterdir())]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("action", ["acess", "ACCESS", ""])
def test_unknown_hook_action_is_refused(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--action outside consentaction exits 1 naming --action, and decides nothing."""
    code, out, err = run(["decide", *CONSENTS, "-r", str(HOOK), "--action", action], capsys)
    assert (code, out) == (1, "")
    assert "--action" in err


def test_empty_consents_input_is_said_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty consents file is allowed: the answer is no-consent and stderr says none were read."""
    empty = tmp_path / "none.json"
    empty.write_text("[]")
    code, out, err = run(["decide", str(empty), "-r", str(REQUEST), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["decision"] == "no-consent"
    assert "no consents were read" in err


def _nested(depth: int, key: str) -> str:
    """JSON text of a provision with ``depth`` nested levels below it (written as text: deeper
    than Python's recursion limit, it cannot go through json.dumps)."""
    return f'{{"type": "permit", "{key}": [' * depth + '{"type": "deny"}' + "]}" * depth


def _with_nested(document: dict[str, Any], depth: int, key: str) -> str:
    marker = "__NESTED__"
    document["provision"] = {**document.get("provision", {}), key: [marker]}
    return json.dumps(document).replace(f'"{marker}"', _nested(depth, key))


@pytest.mark.parametrize("depth", [40, 300, 5000])
def test_deeply_nested_fhir_consent_is_a_short_error(
    depth: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Consent nested past the limit (or past Python's recursion limit) exits 1, briefly."""
    bundle = json.loads((EXAMPLES / "consents" / "r4-bundle.json").read_text())
    consent = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent"
    )
    path = tmp_path / "deep.json"
    path.write_text(_with_nested(consent, depth, "provision"))
    code, out, err = run(["decide", str(path), "-r", str(REQUEST)], capsys)
    assert (code, out) == (1, "")
    assert "Traceback" not in err and "RecursionError" not in err
    assert "nested" in err and len(err.replace(str(path), "F")) < 200, err


@pytest.mark.parametrize("depth", [40, 300, 5000])
def test_deeply_nested_consent_record_is_a_short_error(
    depth: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Our JSON form nested past the limit (or the recursion limit) exits 1, briefly."""
    records = json.loads((EXAMPLES / "consents" / "records.json").read_text())
    record = next(r for r in records if r.get("kind") == "consent")
    path = tmp_path / "deep.json"
    path.write_text("[" + _with_nested(record, depth, "provisions") + "]")
    code, out, err = run(["decide", str(path), "-r", str(REQUEST)], capsys)
    assert (code, out) == (1, "")
    assert "Traceback" not in err and "RecursionError" not in err
    assert "nested" in err and len(err.replace(str(path), "F")) < 200, err


def test_batch_answers_each_request_line_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--batch reads JSON lines of requests (our form or hook contexts) and prints one JSON
    answer per line, in order, each equal to the answer of a single run."""
    names = ["clinic-observation.json", "leap-context-dr-a.json", "general-clinic.json"]
    lines = [json.dumps(json.loads((EXAMPLES / "requests" / n).read_text())) for n in names]
    batch = tmp_path / "requests.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    at = ["--at", "2025-06-01T09:00:00Z"]
    code, out, err = run(["decide", *CONSENTS, "-r", str(batch), "--batch", *at], capsys)
    assert (code, err) == (0, "")
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 3
    for name, answer in zip(names, answers, strict=True):
        single_code, single_out, _ = run(
            ["decide", *CONSENTS, "-r", str(EXAMPLES / "requests" / name), "--json", *at], capsys
        )
        assert single_code == 0
        assert answer == json.loads(single_out)


def test_batch_reports_a_bad_line_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad request in a batch gives an error line naming its line and field path; the others are
    answered, and the exit status is 1."""
    good = json.dumps(json.loads(REQUEST.read_text()))
    bad = json.dumps({**json.loads(REQUEST.read_text()), "action": "acess"})
    batch = tmp_path / "requests.jsonl"
    batch.write_text(f"{good}\n{bad}\n{good}\n")
    code, out, _ = run(["decide", *CONSENTS, "-r", str(batch), "--batch"], capsys)
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert [a.get("decision") for a in answers] == ["permit", None, "permit"]
    assert answers[1]["line"] == 2
    assert [i["path"] for i in answers[1]["issues"]] == ["action"]


def test_base_url_equates_absolute_and_relative_references(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --base-url, a deny naming https://ehr/fhir/Practitioner/x applies to Practitioner/x."""
    base = "https://ehr.example.net/fhir"
    v3 = "http://terminology.hl7.org/CodeSystem"
    ircp = {"system": f"{v3}/v3-ParticipationType", "code": "IRCP"}
    record = {
        "kind": "consent",
        "id": "https://clinic.example/consent-ids|base-1",
        "consent_kind": "sharing",
        "patient": {"reference": "Patient/p1"},
        "status": "active",
        "decision": "permit",
        "date": "2025-01-01T00:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example/policy"}],
        "provision": {
            "purposes": [{"system": f"{v3}/v3-ActReason", "code": "TREAT"}],
            "provisions": [
                {
                    "type": "deny",
                    "actors": [
                        {"role": ircp, "reference": {"reference": f"{base}/Practitioner/x"}}
                    ],
                }
            ],
        },
    }
    request = {
        "patient": {"reference": "Patient/p1"},
        "actors": [{"reference": "Practitioner/x"}],
        "purposes": ["TREAT"],
        "action": "disclose",
        "at": "2025-06-01T09:00:00Z",
    }
    consents, asked = tmp_path / "consents.json", tmp_path / "request.json"
    consents.write_text(json.dumps([record]))
    asked.write_text(json.dumps(request))
    argv = ["decide", str(consents), "-r", str(asked), "--json"]
    code, out, err = run(argv, capsys)
    assert (code, json.loads(out)["decision"]) == (0, "permit"), err
    code, out, err = run([*argv, "--base-url", f"{base}/"], capsys)
    assert (code, json.loads(out)["decision"]) == (0, "deny"), err
