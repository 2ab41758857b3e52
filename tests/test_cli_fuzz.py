"""``map`` and ``decide`` on hostile files (garbage, binary, huge numbers, deep nesting, NDJSON with
bad lines, JSON of any shape): exit status 1 and an ``error:`` line on stderr, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_alliance.cli import main

ROOT = Path(__file__).resolve().parents[1]
REQUEST = ROOT / "examples" / "decisions" / "requests" / "clinic-observation.json"
CONSENTS = ROOT / "examples" / "decisions" / "consents" / "records.json"

#: Each command with ``{}`` where the hostile file goes.
COMMANDS = {
    "map": ["map", "{}"],
    "map-ndjson": ["map", "--ndjson", "{}"],
    "decide-consents": ["decide", "{}", "-r", str(REQUEST)],
    "decide-request": ["decide", str(CONSENTS), "-r", "{}"],
}


def _run(argv: list[str]) -> tuple[int, str, str]:
    """Run the command in this process, as the console script does (``main`` returns the exit
    status; an escaping exception is what a user would see as a traceback)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    out.flush()
    return code, out.buffer.getvalue().decode("utf-8"), err.getvalue()  # type: ignore[attr-defined]


def _assert_refused_cleanly(code: int, err: str) -> None:
    assert code == 1, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err


GARBAGE: dict[str, bytes] = {
    "binary": bytes(range(256)) * 4,
    "gzip-header": b"\x1f\x8b\x08\x00" + bytes(range(64)),
    "latin-1": '{"kind": "rupture", "note": "é"}'.encode("latin-1"),
    "utf-16": '{"kind": "rupture"}'.encode("utf-16"),
    "integer-of-5000-digits": b'{"kind": "consent", "id": ' + b"9" * 5000 + b"}",
    "number-out-of-range": b'{"resourceType": "Observation", "valueInteger": 1e999}',
    "nan": b'{"resourceType": "Observation", "valueInteger": NaN}',
    "nested-100000-deep": b"[" * 100_000 + b"]" * 100_000,
    "unclosed-nesting": b"[" * 100_000,
    "lone-surrogate": b'{"kind": "consent", "id": "\\ud800"}',
    "nul-byte": b'{"kind": "consent\x00"}',
    "a-string": b'"hello"',
    "a-number": b"42",
    "ndjson-bad-line": b'{"kind": "rupture"}\nnot json\n{"resourceType": "Consent"}\n',
    "ndjson-deep-line": b"{}\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "resource-type-an-array": b'{"resourceType": ["Consent"]}',
    "resource-type-an-object": b'{"resourceType": {"Consent": 1}}',
    "kind-an-object": b'{"kind": {"consent": 1}}',
    "bundle-entry-resource-type-an-array": json.dumps(
        {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": ["Organization"]}}]}
    ).encode(),
}
#: Bundles that ``decide`` once skipped in part (an entry that is not an object, a resource that
#: is not one): the skipped part might have been a Consent that denies.
BROKEN_BUNDLES: dict[str, object] = {
    "entries-not-an-array": {"resourceType": "Bundle", "entry": "Consent"},
    "entry-a-string": {"resourceType": "Bundle", "entry": ["Consent"]},
    "entry-resource-a-string": {"resourceType": "Bundle", "entry": [{"resource": "Consent"}]},
    "entry-resource-without-type": {"resourceType": "Bundle", "entry": [{"resource": {}}]},
}
GARBAGE.update({f"bundle-{k}": json.dumps(v).encode() for k, v in BROKEN_BUNDLES.items()})


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_files_are_refused_in_one_error(tmp_path: Path, command: str, name: str) -> None:
    """Each hostile file is an error (exit 1, ``error:`` on stderr, nothing on stdout)."""
    source = tmp_path / "input.json"
    source.write_bytes(GARBAGE[name])
    code, out, err = _run([a.replace("{}", str(source)) for a in COMMANDS[command]])
    _assert_refused_cleanly(code, err)
    assert out == ""


_KEYS = st.sampled_from(
    ["kind", "resourceType", "entry", "resource", "fullUrl", "id", "identifier", "patient",
     "subject", "hook", "context", "actor", "patientId", "purposeOfUse", "reference", "type",
     "status", "provision", "consent", "at", "actors", "purposes", "action"]
)  # fmt: skip
_WORDS = st.sampled_from(
    ["Consent", "Bundle", "Observation", "Organization", "Practitioner", "Permission", "consent",
     "consent-revocation", "rupture", "Patient/p1", "patient-consent-consult", "TREAT", "access"]
)  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
    | _WORDS,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(_KEYS | st.text(max_size=4), children, max_size=4),
    max_leaves=15,
)  # fmt: skip


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=_JSON, command=st.sampled_from(sorted(COMMANDS)), ndjson=st.booleans())
def test_json_of_any_shape_is_mapped_decided_or_refused(
    tmp_path: Path, value: object, command: str, ndjson: bool
) -> None:
    """Any JSON (or NDJSON) input gives an answer or an ``error:`` line, never a traceback."""
    source = tmp_path / "input.json"
    if ndjson and isinstance(value, list):
        source.write_text("\n".join(json.dumps(item) for item in value))
    else:
        source.write_text(json.dumps(value))
    code, _, err = _run([a.replace("{}", str(source)) for a in COMMANDS[command]])
    if code != 0:
        _assert_refused_cleanly(code, err)


SHARING_BUNDLE = ROOT / "examples" / "decisions" / "consents" / "r4-bundle.json"


def _decide_json(*argv: str) -> tuple[int, str, str]:
    return _run(["decide", *argv, "-r", str(REQUEST), "--at", "2025-06-01T09:00:00Z", "--json"])


@pytest.mark.parametrize("name", BROKEN_BUNDLES)
def test_a_broken_entry_beside_a_permit_is_refused_not_skipped(tmp_path: Path, name: str) -> None:
    """A consents Bundle that permits, with one entry that cannot be read, is an error: before, the
    entry was skipped and the permit answered."""
    bundle = json.loads(SHARING_BUNDLE.read_text())
    assert _decide_json(str(SHARING_BUNDLE))[0] == 0
    assert json.loads(_decide_json(str(SHARING_BUNDLE))[1])["decision"] == "permit"
    broken = BROKEN_BUNDLES[name]
    assert isinstance(broken, dict)
    bundle["entry"].append({"resource": broken})
    source = tmp_path / "consents.json"
    source.write_text(json.dumps(bundle))
    code, out, err = _decide_json(str(source))
    _assert_refused_cleanly(code, err)
    assert out == ""
    assert f"{source}[0].entry[6].resource" in err


def test_a_consent_in_a_bundle_inside_the_bundle_counts(tmp_path: Path) -> None:
    """A Consent in a Bundle nested in the consents Bundle is read (the actor directory already
    read such Bundles): a restriction there denies, where before it was skipped and the sharing
    consent beside it permitted."""
    bundle = json.loads(SHARING_BUNDLE.read_text())
    restriction = json.loads(json.dumps(bundle["entry"][0]["resource"]))
    restriction["id"] = "restrict-clinic"
    restriction["identifier"][0]["value"] = "restrict-clinic"
    restriction["provision"]["type"] = "deny"
    bundle["entry"].append(
        {"resource": {"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "https://ehr.example/fhir/Consent/restrict-clinic", "resource": restriction}
        ]}}
    )  # fmt: skip
    source = tmp_path / "consents.json"
    source.write_text(json.dumps(bundle))
    code, out, err = _decide_json(str(source))
    assert code == 0, err
    answer = json.loads(out)
    assert answer["decision"] == "deny"
    assert [b["consent"] for b in answer["basis"]] == [
        "https://clinic.example/consent-ids|restrict-clinic"
    ]
