"""``fhir-alliance map``: records → FHIR Bundle or NDJSON and back, with field-path errors on bad input."""

import json
from pathlib import Path

import pytest

from fhir_alliance.cli import main
from fhir_alliance.mapping.validation import validate_resource
from fhir_alliance.schemas.observations import load_record

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "observations"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["map", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
def test_examples_map_to_a_bundle_and_back(tmp_path: Path, capsys, version: str) -> None:
    """All examples become one collection Bundle; mapping that Bundle back gives the same records."""
    files = sorted(str(p) for p in EXAMPLES.glob("*.json"))
    code, out, err = _run(capsys, *files, "--fhir-version", version)
    assert code == 0, err
    bundle = json.loads(out)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_text(out)
    code, out, err = _run(capsys, str(bundle_file))
    assert code == 0, err
    back = sorted(json.loads(out), key=lambda r: r["id"])
    expected = sorted((json.loads(Path(f).read_text()) for f in files), key=lambda r: r["id"])
    assert [load_record(r) for r in back] == [load_record(r) for r in expected]


def test_ndjson_in_and_out(tmp_path: Path, capsys) -> None:
    """NDJSON input of two records gives one resource per line with --ndjson."""
    lines = [json.loads((EXAMPLES / n).read_text()) for n in ("rupture.json", "repair.json")]
    source = tmp_path / "records.ndjson"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    code, out, err = _run(capsys, str(source), "--ndjson")
    assert code == 0, err
    resources = [json.loads(line) for line in out.splitlines()]
    assert [r["resourceType"] for r in resources] == ["Observation", "Observation"]


def test_bad_input_exits_nonzero_with_field_paths(tmp_path: Path, capsys) -> None:
    """Errors in several records are all printed with file:index.field paths, and the exit code is 1."""
    bad = json.loads((EXAMPLES / "srs-administration.json").read_text())
    bad["responses"]["2"] = 12
    repair = json.loads((EXAMPLES / "repair.json").read_text())
    source = tmp_path / "bad.json"
    source.write_text(json.dumps([bad, repair, {"kind": "mood"}]))
    code, out, err = _run(capsys, str(source))
    assert code == 1
    assert out == ""
    assert "bad.json:0.responses.2" in err
    assert "bad.json:1.rupture" in err
    assert "bad.json:2.kind" in err


@pytest.mark.parametrize("ndjson", [False, True])
@pytest.mark.parametrize("kind", [[], {"a": 1}, 3])
def test_a_kind_that_is_not_a_string_is_an_unknown_kind(
    tmp_path: Path, capsys, kind: object, ndjson: bool
) -> None:
    """``"kind": []`` (or an object, a number) is reported as an unknown kind at its path, with
    exit code 1, on the whole-file and on the streaming path; never a traceback."""
    source = tmp_path / "odd.ndjson"
    source.write_text(json.dumps({"kind": kind}) + "\n")
    code, out, err = _run(capsys, str(source), *(["--ndjson"] if ndjson else []))
    assert code == 1
    assert out == ""
    assert "odd.ndjson:0.kind: unknown record kind" in err


def test_foreign_resource_exits_nonzero_naming_the_element(tmp_path: Path, capsys) -> None:
    """A FHIR Observation that does not fit is refused with its element path."""
    source = tmp_path / "obs.json"
    source.write_text(
        json.dumps(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
            }
        )
    )
    code, _, err = _run(capsys, str(source))
    assert code == 1
    assert "Bundle.entry[0].resource.code.coding" in err


def test_unreadable_file_is_an_error_not_a_crash(tmp_path: Path, capsys) -> None:
    """A missing file and a file that is neither JSON nor NDJSON exit 1 with a message."""
    code, _, err = _run(capsys, str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read the input" in err
    junk = tmp_path / "junk.json"
    junk.write_text("{not json\n")
    code, _, err = _run(capsys, str(junk))
    assert code == 1 and "junk.json:1" in err


def test_repair_before_its_rupture_maps(capsys) -> None:
    """Order in a batch does not matter: a repair listed before its rupture maps, and both come out."""
    code, out, err = _run(
        capsys, str(EXAMPLES / "repair.json"), str(EXAMPLES / "rupture.json"), "--ndjson"
    )
    assert code == 0, err
    codes = [json.loads(line)["code"]["coding"][0]["code"] for line in out.splitlines()]
    assert sorted(codes) == ["repair-event", "rupture-event"]


def test_decimals_keep_their_precision_through_fhir_and_back(tmp_path: Path, capsys) -> None:
    """An SRS item entered as 9.0 is 9.0 in the Observation and 9.0 again in the record read back."""
    record = json.loads((EXAMPLES / "srs-administration.json").read_text())
    record["responses"] = {"1": 9.0, "2": 8.5, "3": 10, "4": 7.0}
    source = tmp_path / "srs.json"
    source.write_text(json.dumps(record))
    code, out, err = _run(capsys, str(source), "--ndjson")
    assert code == 0, err
    lines = {json.loads(line)["code"]["coding"][0]["code"]: line for line in out.splitlines()}
    assert '"value":9.0,' in lines["srs.1"]
    assert '"value":10,' in lines["srs.3"]
    assert '"value":34.5,' in lines["srs.total"]
    resources = tmp_path / "resources.ndjson"
    resources.write_text(out)
    code, out, err = _run(capsys, str(resources))
    assert code == 0, err
    (back,) = json.loads(out)
    assert back["responses"] == {"1": 9.0, "2": 8.5, "3": 10, "4": 7.0}
    assert '"1": 9.0' in out and '"3": 10' in out


def _references(value) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def test_bundle_entries_have_full_urls_and_internal_references_resolve(capsys) -> None:
    """Every entry has a fullUrl; hasMember and Provenance.target name entries of the Bundle."""
    files = [
        str(EXAMPLES / n) for n in ("srs-administration.json", "dimension-rating-automated.json")
    ]
    code, out, err = _run(capsys, *files)
    assert code == 0, err
    bundle = json.loads(out)
    validate_resource(bundle, version="4.0.1")  # the Bundle itself is valid FHIR
    entries = bundle["entry"]
    full_urls = [e["fullUrl"] for e in entries]
    assert all(u.startswith("urn:uuid:") for u in full_urls)
    assert len(set(full_urls)) == len(entries)
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in entries)
    panel = entries[0]["resource"]
    assert panel["hasMember"] and all(m["reference"] in full_urls for m in panel["hasMember"])
    (provenance,) = [
        e["resource"] for e in entries if e["resource"]["resourceType"] == "Provenance"
    ]
    assert all(target["reference"] in full_urls for target in provenance["target"])
    outside = [r for e in entries for r in _references(e["resource"]) if r not in full_urls]
    assert outside and all(
        r.split("/")[0]
        in {
            "Patient",
            "Practitioner",
            "Encounter",
            "QuestionnaireResponse",
            "DocumentReference",
            "Media",
        }
        for r in outside
    )


def test_bundle_with_a_base_url_uses_restful_full_urls(capsys) -> None:
    """With --base-url, fullUrls are base/Type/id and relative references resolve against them."""
    base = "https://ehr.example.org/fhir"
    code, out, err = _run(
        capsys, str(EXAMPLES / "srs-administration.json"), "--base-url", base + "/"
    )
    assert code == 0, err
    entries = json.loads(out)["entry"]
    assert [e["fullUrl"] for e in entries] == [
        f"{base}/Observation/{e['resource']['id']}" for e in entries
    ]
    members = {m["reference"] for m in entries[0]["resource"]["hasMember"]}
    assert members == {f"Observation/{e['resource']['id']}" for e in entries[1:]}


def test_bundle_past_its_limit_is_refused_with_a_pointer_to_ndjson(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More resources than a Bundle may hold: nothing written, exit 1, the message names --ndjson;
    the same input with --ndjson is written line by line."""
    from fhir_alliance.mapping import cli as map_cli

    monkeypatch.setattr(map_cli, "MAX_BUNDLE_ENTRIES", 2)
    files = [str(EXAMPLES / n) for n in ("rupture.json", "repair.json", "srs-administration.json")]
    code, out, err = _run(capsys, *files)
    assert code == 1 and out == ""
    assert "--ndjson" in err and "at most 2" in err
    code, out, err = _run(capsys, *files, "--ndjson")
    assert code == 0, err
    assert len(out.splitlines()) >= 3


def test_collector_is_paused_during_a_run_and_restored_after() -> None:
    """The cycle collector is off inside paused_gc and back on after it, even on an error."""
    import gc

    from fhir_alliance.mapping.cli import paused_gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
