"""The consents input of ``decide`` (and ``read_consent_inputs``) refuses a ``resourceType`` that
misspells one it reads (``consent``, ``"Consent "``, ``CONSENT``, ``bundle``, ``practitioner``),
that is no resource type of FHIR R4 or R5 (``Consnet``, ``Consents``) or no resource type name at
all: skipped, it could have been the Consent that denies. Other resource types of R4 or R5 (a
Provenance, a search's OperationOutcome) are still passed over."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.cli import main
from fhir_alliance.consent import ActorDirectory
from fhir_alliance.consent.cli import read_consent_inputs
from fhir_alliance.errors import InputError, MappingError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "decisions"
REQUEST = EXAMPLES / "requests" / "clinic-observation.json"
SHARING_BUNDLE = EXAMPLES / "consents" / "r4-bundle.json"

#: Near misses of Consent: another case, or spaces around it.
CONSENT_SPELLINGS = ["consent", "CONSENT", "ConSent", "Consent ", " Consent", "Consent\n"]
#: Not the name of any resource type (``\u043e`` is a Cyrillic o).
NOT_TYPE_NAMES = ["", "Con sent", "Consent\u200b", "C\u043ensent", "Consent-R4"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _decide(paths: list[Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    argv = ["decide", *map(str, paths), "-r", str(REQUEST), "--at", "2025-06-01T09:00:00Z"]
    return _run([*argv, "--json"], capsys)


def _bundle() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(SHARING_BUNDLE.read_text())
    return bundle


def _restriction(resource_type: str = "Consent") -> dict[str, Any]:
    """The bundle's sharing consent turned into a restriction of the same scope."""
    restriction: dict[str, Any] = copy.deepcopy(_bundle()["entry"][0]["resource"])
    restriction["resourceType"] = resource_type
    restriction["id"] = "restrict-clinic"
    restriction["identifier"][0]["value"] = "restrict-clinic"
    restriction["provision"]["type"] = "deny"
    return restriction


def _write(tmp_path: Path, name: str, value: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return path


def _assert_refused_at(code: int, out: str, err: str, where: str) -> None:
    assert (code, out) == (1, ""), err
    assert err.startswith("error: "), err
    assert where in err, err
    assert "Traceback" not in err


def test_the_restriction_spelt_right_denies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline: the permit alone permits, and the restriction beside it denies."""
    code, out, err = _decide([SHARING_BUNDLE], capsys)
    assert code == 0, err
    assert json.loads(out)["decision"] == "permit"
    loose = _write(tmp_path, "restriction.json", _restriction())
    code, out, err = _decide([SHARING_BUNDLE, loose], capsys)
    assert code == 0, err
    assert json.loads(out)["decision"] == "deny"


@pytest.mark.parametrize("spelling", CONSENT_SPELLINGS + NOT_TYPE_NAMES)
def test_a_misspelt_loose_consent_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    """A restriction whose resourceType misspells Consent, in its own file beside the permit, is
    an error at its resourceType: before, it was passed over and the permit answered."""
    loose = _write(tmp_path, "restriction.json", _restriction(spelling))
    code, out, err = _decide([SHARING_BUNDLE, loose], capsys)
    _assert_refused_at(code, out, err, f"{loose}[0].resourceType")


@pytest.mark.parametrize("spelling", CONSENT_SPELLINGS + NOT_TYPE_NAMES)
def test_a_misspelt_consent_in_the_bundle_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    """The same restriction as an entry of the consents Bundle: an error at the entry."""
    bundle = _bundle()
    bundle["entry"].append({"resource": _restriction(spelling)})
    source = _write(tmp_path, "consents.json", bundle)
    code, out, err = _decide([source], capsys)
    _assert_refused_at(code, out, err, f"{source}[0].entry[6].resource.resourceType")


def test_a_misspelt_consent_on_an_ndjson_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NDJSON: the line of the misspelt Consent is named."""
    sharing = _bundle()["entry"][0]["resource"]
    source = tmp_path / "consents.ndjson"
    source.write_text(f"{json.dumps(sharing)}\n{json.dumps(_restriction('consent'))}\n")
    code, out, err = _decide([source], capsys)
    _assert_refused_at(code, out, err, f"{source}[1].resourceType")


@pytest.mark.parametrize("spelling", ["bundle", "BUNDLE", "Bundle "])
def test_a_misspelt_bundle_holding_the_restriction_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    """A Bundle misspelt, loose or inside the consents Bundle, would hide every Consent in it."""
    inner = {
        "resourceType": spelling,
        "type": "collection",
        "entry": [{"resource": _restriction()}],
    }
    loose = _write(tmp_path, "restriction.json", inner)
    code, out, err = _decide([SHARING_BUNDLE, loose], capsys)
    _assert_refused_at(code, out, err, f"{loose}[0].resourceType")
    bundle = _bundle()
    bundle["entry"].append({"resource": inner})
    source = _write(tmp_path, "consents.json", bundle)
    code, out, err = _decide([source], capsys)
    _assert_refused_at(code, out, err, f"{source}[0].entry[6].resource.resourceType")


@pytest.mark.parametrize("spelling", ["practitioner", "PRACTITIONER", "Practitioner "])
def test_a_misspelt_actor_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    """An actor resource misspelt would be missing from the actor directory (an identifier it
    shares with another actor would then resolve to that one): an error at the entry."""
    bundle = _bundle()
    assert bundle["entry"][4]["resource"]["resourceType"] == "Practitioner"
    bundle["entry"][4]["resource"]["resourceType"] = spelling
    source = _write(tmp_path, "consents.json", bundle)
    code, out, err = _decide([source], capsys)
    _assert_refused_at(code, out, err, f"{source}[0].entry[4].resource.resourceType")
    loose = _write(tmp_path, "actor.json", bundle["entry"][4]["resource"])
    code, out, err = _decide([SHARING_BUNDLE, loose], capsys)
    _assert_refused_at(code, out, err, f"{loose}[0].resourceType")


def test_read_consent_inputs_names_the_field(tmp_path: Path) -> None:
    """The library function behind decide (and the bulk export) raises an InputError whose issue
    path is the misspelt resourceType."""
    bundle = _bundle()
    bundle["entry"].append({"resource": _restriction("CONSENT")})
    source = _write(tmp_path, "consents.json", bundle)
    with pytest.raises(InputError) as caught:
        read_consent_inputs([str(source)])
    assert [i.path for i in caught.value.issues] == [f"{source}[0].entry[6].resource.resourceType"]
    assert "Consent" in caught.value.issues[0].message


#: Resources that may come with consents and carry no consent decision: a Consent's Provenance,
#: a search Bundle's OperationOutcome, a resource of a type decide does not read.
OTHER_RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Provenance", "id": "pv1", "target": [{"reference": "Consent/share-clinic"}]},
    {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]},
    {"resourceType": "Observation", "id": "o1", "status": "final"},
]  # fmt: skip


def test_other_resource_types_are_still_passed_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resource types decide does not read, spelt as FHIR spells them, loose or in the Bundle,
    leave the answer as it was."""
    bundle = _bundle()
    bundle["entry"] += [{"resource": r, "search": {"mode": "include"}} for r in OTHER_RESOURCES]
    source = _write(tmp_path, "consents.json", bundle)
    loose = _write(tmp_path, "others.json", OTHER_RESOURCES)
    code, out, err = _decide([source, loose], capsys)
    assert code == 0, err
    assert json.loads(out)["decision"] == "permit"


@pytest.mark.parametrize("spelling", ["practitioner", "Practitioner ", "bundle"])
def test_actor_directory_refuses_a_misspelt_actor(spelling: str) -> None:
    """``ActorDirectory.from_resources`` (public) refuses a misspelt actor or Bundle at its path
    instead of leaving the party out."""
    bundle = _bundle()
    bundle["entry"][4]["resource"]["resourceType"] = spelling
    with pytest.raises(MappingError) as caught:
        ActorDirectory.from_resources([bundle])
    assert caught.value.element == "[0].entry[4].resource.resourceType"


#: Names that look like a resource type but are none of R4 or R5 (misspelt Consents, Bundles,
#: actors), a data type, a backbone element and the abstract types no resource is of.
NOT_FHIR_TYPES = [
    "Consnet",
    "Consents",
    "Concent",
    "Bundel",
    "Practitoner",
    "Organisation",
    "Address",
    "ConsentProvision",
    "Resource",
    "DomainResource",
]


@pytest.mark.parametrize("name", NOT_FHIR_TYPES)
def test_a_name_that_is_no_fhir_resource_type_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A restriction whose resourceType is a name but no FHIR resource type of R4 or R5
    (``Consnet``), loose beside the permit or in the consents Bundle: an error at its
    resourceType, one line, exit 1. Before, it was passed over and the permit answered."""
    loose = _write(tmp_path, "restriction.json", _restriction(name))
    code, out, err = _decide([SHARING_BUNDLE, loose], capsys)
    _assert_refused_at(code, out, err, f"{loose}[0].resourceType")
    assert "not a FHIR resource type" in err
    assert len(err.strip().splitlines()) == 1, err
    bundle = _bundle()
    bundle["entry"].append({"resource": _restriction(name)})
    source = _write(tmp_path, "consents.json", bundle)
    code, out, err = _decide([source], capsys)
    _assert_refused_at(code, out, err, f"{source}[0].entry[6].resource.resourceType")


def test_a_misspelt_consent_names_the_type_it_is_near(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error says which type read here the name is near."""
    loose = _write(tmp_path, "restriction.json", _restriction("Consnet"))
    code, out, err = _decide([SHARING_BUNDLE, loose], capsys)
    _assert_refused_at(code, out, err, f"{loose}[0].resourceType")
    assert "Consent?" in err


@pytest.mark.parametrize("name", NOT_FHIR_TYPES + NOT_TYPE_NAMES)
def test_actor_directory_refuses_a_name_that_is_no_fhir_resource_type(name: str) -> None:
    """``ActorDirectory.from_resources`` (public) refuses a resourceType that is no FHIR resource
    type of R4 or R5 (``Practitoner``), loose or in a Bundle, at its path: library users get the
    check ``decide`` makes. Before, the resource was passed over, and an actor so named was lost
    (and with it what made another actor's identifier ambiguous)."""
    with pytest.raises(MappingError) as caught:
        ActorDirectory.from_resources([{"resourceType": name, "id": "a"}])
    assert caught.value.element == "[0].resourceType"
    bundle = _bundle()
    bundle["entry"][4]["resource"]["resourceType"] = name
    with pytest.raises(MappingError) as caught:
        ActorDirectory.from_resources([_bundle(), bundle])
    assert caught.value.element == "[1].entry[4].resource.resourceType"


@pytest.mark.parametrize("value", [7, None, ["Practitioner"], {"name": "Practitioner"}, True])
def test_actor_directory_refuses_a_resource_type_that_is_no_string(value: object) -> None:
    """``ActorDirectory.from_resources`` refuses a resourceType that is not a string (a number,
    null, an array), or none at all, loose or in a Bundle, at its path, as ``decide`` does.
    Before, the resource was passed over: an actor so written was lost without a word."""
    with pytest.raises(MappingError, match="expected a resource type") as caught:
        ActorDirectory.from_resources([{"resourceType": value, "id": "a"}])
    assert caught.value.element == "[0].resourceType"
    bundle = _bundle()
    bundle["entry"][4]["resource"]["resourceType"] = value
    with pytest.raises(MappingError) as caught:
        ActorDirectory.from_resources([_bundle(), bundle])
    assert caught.value.element == "[1].entry[4].resource.resourceType"
    del bundle["entry"][4]["resource"]["resourceType"]
    with pytest.raises(MappingError) as caught:
        ActorDirectory.from_resources([bundle])
    assert caught.value.element == "[0].entry[4].resource.resourceType"


@pytest.mark.parametrize("value", [7, "Practitioner/t1", None, ["entry"], True])
def test_actor_directory_refuses_a_bundle_entry_that_is_no_object(value: object) -> None:
    """``ActorDirectory.from_resources`` refuses a Bundle entry that is not an object, at its path,
    as ``decide`` does. Before, it was passed over: an actor so written was lost without a word."""
    bundle = _bundle()
    bundle["entry"][4] = value
    with pytest.raises(MappingError, match="expected a Bundle entry") as caught:
        ActorDirectory.from_resources([_bundle(), bundle])
    assert caught.value.element == "[1].entry[4]"


@pytest.mark.parametrize("value", [7, "Practitioner/t1", ["Practitioner"], False])
def test_actor_directory_refuses_an_entry_resource_that_is_no_object(value: object) -> None:
    """A Bundle entry whose ``resource`` is not an object is refused at the resource's path, as
    ``decide`` does (in a Bundle inside a Bundle too); an entry without a resource (a request or
    a response) is still passed over."""
    bundle = _bundle()
    bundle["entry"][4]["resource"] = value
    with pytest.raises(MappingError, match="expected a FHIR resource") as caught:
        ActorDirectory.from_resources([bundle])
    assert caught.value.element == "[0].entry[4].resource"
    outer = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bundle}]}
    with pytest.raises(MappingError) as caught:
        ActorDirectory.from_resources([outer])
    assert caught.value.element == "[0].entry[0].resource.entry[4].resource"
    del bundle["entry"][4]["resource"]
    ActorDirectory.from_resources([bundle])


def test_actor_directory_refuses_bundle_entries_that_are_no_array() -> None:
    """A Bundle whose ``entry`` is not an array is refused at it, as ``decide`` does: before, an
    object's keys (or a string's letters) were read as entries and all passed over."""
    bundle = _bundle()
    bundle["entry"] = bundle["entry"][4]
    with pytest.raises(MappingError, match="expected an array") as caught:
        ActorDirectory.from_resources([bundle])
    assert caught.value.element == "[0].entry"


def test_actor_directory_still_passes_over_other_fhir_types() -> None:
    """Resources of a FHIR type that is no actor (a Consent, a Provenance, R4's
    MedicinalProduct, R5's ActorDefinition) are still passed over; the actors beside them
    count."""
    bundle = _bundle()
    others = ["Consent", "Permission", "Provenance", "MedicinalProduct", "ActorDefinition"]
    bundle["entry"].extend({"resource": {"resourceType": t, "id": "x1"}} for t in others)
    loose = [{"resourceType": t, "id": "x2"} for t in others]
    directory = ActorDirectory.from_resources([bundle, *loose])
    assert len(directory) == len(ActorDirectory.from_resources([_bundle()]))


#: FHIR resource types decide passes over: of R4 and R5, R4 only (dropped by R4B), R4B and R5,
#: R5 only.
OTHER_FHIR_TYPES = [
    "Provenance",
    "OperationOutcome",
    "AuditEvent",
    "MedicinalProduct",
    "EffectEvidenceSynthesis",
    "SubscriptionStatus",
    "ActorDefinition",
    "Requirements",
]


@pytest.mark.parametrize("name", OTHER_FHIR_TYPES)
def test_every_fhir_version_s_other_types_are_passed_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A resource of a FHIR type of R4 or R5 that carries no consent decision is passed over,
    loose or in the Bundle: the answer stays the permit's."""
    bundle = _bundle()
    bundle["entry"].append({"resource": {"resourceType": name, "id": "x1"}})
    source = _write(tmp_path, "consents.json", bundle)
    loose = _write(tmp_path, "other.json", {"resourceType": name, "id": "x2"})
    code, out, err = _decide([source, loose], capsys)
    assert code == 0, err
    assert json.loads(out)["decision"] == "permit"


def test_export_bulk_refuses_a_name_that_is_no_resource_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export --bulk`` reads its consents the same way: a ``Consnet`` is an error at its
    place, and nothing is written."""
    consents = _write(tmp_path, "consents.json", [_restriction("Consnet")])
    record = ROOT / "examples" / "observations" / "srs-administration.json"
    out_dir = tmp_path / "out"
    argv = ["export", "--bulk", str(out_dir), "--consents", str(consents), str(record)]
    code, out, err = _run([*argv, "--recipient", "Organization/ehr", "--purpose", "TREAT"], capsys)
    _assert_refused_at(code, out, err, f"{consents}[0].resourceType")
    assert not out_dir.exists() or not any(out_dir.iterdir())


def _imported_by_decide(tmp_path: Path, paths: list[Path]) -> set[str]:
    """Module names a fresh interpreter has imported after deciding over ``paths``."""
    argv = ["decide", *map(str, paths), "-r", str(REQUEST), "--at", "2025-06-01T09:00:00Z"]
    script = (
        "import sys\nfrom fhir_alliance.cli import main\n"
        f"code = main({argv!r})\nprint('modules:', code, *sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    code, *modules = done.stdout.split("modules:", 1)[1].split()
    assert code == "0", done.stderr
    return set(modules)


def test_deciding_over_consents_imports_no_fhir_model(tmp_path: Path) -> None:
    """Consents, Bundles and actors alone: no fhir.resources model is imported to check their
    types; a Provenance beside them imports that model, not all of them."""
    loaded = _imported_by_decide(tmp_path, [SHARING_BUNDLE])
    assert not [m for m in loaded if m.startswith("fhir.resources.")]
    provenance = _write(tmp_path, "provenance.json", OTHER_RESOURCES[0])
    loaded = _imported_by_decide(tmp_path, [SHARING_BUNDLE, provenance])
    loaded = {m for m in loaded if m.startswith("fhir.resources.")}
    assert {"fhir.resources.provenance", "fhir.resources.R4B.provenance"} & loaded
    assert len(loaded) < 40, sorted(loaded)
