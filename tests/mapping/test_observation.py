"""Alliance records ⇄ FHIR Observations: round trips, shape, labels, ids, goldens and hostile input."""

import contextlib
import copy
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_alliance import terminology as t
from fhir_alliance.errors import InputError, MappingError, ProfileViolation
from fhir_alliance.instruments.scoring import DEFAULT_RULES, ScoringRules
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.mapping.observation import MAPPER, from_observations, to_observations
from fhir_alliance.mapping.registry import mapper_for_kind, mapper_for_resource_type
from fhir_alliance.mapping.validation import validate_resource, validate_resources
from fhir_alliance.model.common import Identifier
from fhir_alliance.schemas.observations import dump_record, load_record
from tests.mapping.observation_strategies import records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "observations").glob("*.json"))
GOLDEN = ROOT / "tests" / "golden" / "observations"
VERSIONS = {"r4": "4.0.1", "r5": "5.0.0"}
REGENERATE = os.environ.get("FHIR_ALLIANCE_REGENERATE_GOLDEN") == "1"


def _record(name: str):
    return load_record(
        json.loads((ROOT / "examples" / "observations" / f"{name}.json").read_text())
    )


@pytest.mark.parametrize("version", VERSIONS.values())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records)
def test_round_trip_domain_fhir_domain(version: str, record) -> None:
    """Any valid record maps to FHIR and back unchanged, in R4 and R5."""
    resources = to_observations(record, version=version)
    assert from_observations(resources) == [record]


@pytest.mark.parametrize("version", VERSIONS.values())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records)
def test_round_trip_keeps_the_json_form_to_the_digit(version: str, record) -> None:
    """Through FHIR and back, the record's JSON form is the same text: 9.0 stays 9.0, 9 stays 9
    (Decimal equality alone would not notice)."""
    (back,) = from_observations(to_observations(record, version=version))
    assert json.dumps(dump_record(back)) == json.dumps(dump_record(record))


@pytest.mark.parametrize("version", VERSIONS.values())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records)
def test_every_resource_passes_base_validation(version: str, record) -> None:
    """Everything we emit validates with the fhir.resources models of that version."""
    validate_resources(to_observations(record, version=version), version=version)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("tag", VERSIONS)
def test_golden_files(path: Path, tag: str) -> None:
    """Output for each example equals its golden file (set FHIR_ALLIANCE_REGENERATE_GOLDEN=1 to rewrite)."""
    resources = to_observations(load_record(json.loads(path.read_text())), version=VERSIONS[tag])
    golden = GOLDEN / tag / f"{path.stem}.json"
    text = json.dumps(resources, indent=2, ensure_ascii=False) + "\n"
    if REGENERATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
        pytest.fail(
            f"regenerated {golden.relative_to(ROOT)}; review the diff, then rerun without the flag"
        )
    assert golden.exists(), f"missing golden file {golden.relative_to(ROOT)}"
    assert json.loads(golden.read_text()) == resources


def test_wai_sr_panel_has_total_subscales_and_items() -> None:
    """A full WAI-SR gives a panel whose hasMember lists 1 total, 3 subscales and 12 items."""
    resources = to_observations(_record("wai-sr-administration"))
    panel, members = resources[0], resources[1:]
    assert [m["reference"] for m in panel["hasMember"]] == [
        f"Observation/{m['id']}" for m in members
    ]
    codes = [m["code"]["coding"][0]["code"] for m in members]
    assert codes[:4] == ["wai-sr.total", "wai-sr.task", "wai-sr.bond", "wai-sr.goal"]
    assert codes[4:] == [f"wai-sr.{n}" for n in range(1, 13)]
    bond = members[2]
    # Bond = items 3, 5, 7, 9 = 5 + 5 + 4 + 5 in the example.
    assert bond["valueQuantity"]["value"] == 19
    assert all(m["category"][0]["coding"][0]["code"] == "survey" for m in resources)


def test_identifiers_and_ids_are_derived_from_the_record_id() -> None:
    """Business identifiers are {id}, {id}#total, {id}#item-n; resource ids are their UUIDv5."""
    record = _record("srs-administration")
    resources = to_observations(record)
    values = [r["identifier"][0]["value"] for r in resources]
    assert values == [
        "srs-2026-0001",
        "srs-2026-0001#total",
        *(f"srs-2026-0001#item-{n}" for n in range(1, 5)),
    ]
    for r in resources:
        ident = r["identifier"][0]
        assert r["id"] == resource_id(Identifier(ident["system"], ident["value"]))
    assert to_observations(record) == resources  # deterministic


_NORMAL_RANGE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/referencerange-meaning",
            "code": "normal",
            "display": "Normal Range",
        }
    ]
}


def _srs_total(rules: ScoringRules = DEFAULT_RULES, answers=(9, 9, 9, 8)) -> dict:
    data = json.loads((ROOT / "examples/observations/srs-administration.json").read_text())
    data["responses"] = {str(n): value for n, value in enumerate(answers, start=1)}
    return to_observations(load_record(data), rules=rules)[1]


def test_srs_total_below_cutoff_is_interpreted_low_with_reference_range() -> None:
    """An SRS total of 35 is L; its one reference range is the cutoff, typed, with the rule as text."""
    total = _srs_total()
    assert total["valueQuantity"]["value"] == 35
    assert total["interpretation"][0]["coding"][0] == {
        "system": t.OBSERVATION_INTERPRETATION,
        "code": "L",
    }
    (reference_range,) = total["referenceRange"]
    assert reference_range["type"] == _NORMAL_RANGE
    assert reference_range["low"]["value"] == 36
    assert "high" not in reference_range  # the scale's maximum is not a clinical bound
    assert reference_range["text"] == (
        "36 or more; a total below 36 flags a possible alliance problem"
    )


def test_inclusive_srs_cutoff_rule_is_what_the_range_says() -> None:
    """With srs_cutoff_inclusive, 36 is flagged: the text says so and no low bound claims 36 is fine."""
    rules = ScoringRules(srs_cutoff_inclusive=True)
    total = _srs_total(rules, answers=(9, 9, 9, 9))
    assert total["interpretation"][0]["coding"][0]["code"] == "L"
    (reference_range,) = total["referenceRange"]
    assert "low" not in reference_range  # FHIR's low bound is inclusive
    assert reference_range["text"] == (
        "above 36; a total of 36 or below flags a possible alliance problem"
    )
    assert reference_range["type"] == _NORMAL_RANGE


def test_ors_total_carries_its_clinical_cutoff() -> None:
    """The ORS total's reference range is its clinical cutoff."""
    total = to_observations(_record("ors-administration"))[1]
    (reference_range,) = total["referenceRange"]
    assert reference_range["low"]["value"] == 25
    assert reference_range["text"] == "25 or more; a total below 25 is in the clinical range"


def test_ors_total_carries_the_verified_snomed_code_beside_ours() -> None:
    """The ORS total has SNOMED CT 716613004 after our own coding; no other score has a standard
    code (none could be verified), and reading back ignores the extra coding."""
    ors = to_observations(_record("ors-administration"))
    total = ors[1]
    assert total["code"]["coding"] == [
        {"system": t.CS_ALLIANCE_MEASURES, "code": "ors.total", "display": "ORS total score"},
        {
            "system": "http://snomed.info/sct",
            "code": "716613004",
            "display": "Outcome Rating Scale total score",
        },
    ]
    others = [
        r
        for name in ("srs-administration", "wai-sr-administration", "dimension-rating")
        for r in to_observations(_record(name))
    ] + [ors[0], *ors[2:]]
    assert all(len(r["code"]["coding"]) == 1 for r in others)
    assert from_observations(ors) == [_record("ors-administration")]


def test_scores_without_a_cutoff_and_ratings_have_no_reference_range() -> None:
    """A WAI-SR total or subscale, and a dimension rating, carry no reference range: the possible
    range of a score is not a reference range."""
    wai = to_observations(_record("wai-sr-administration"))
    scores = [r for r in wai if r["meta"]["profile"] == [t.PROFILE_ALLIANCE_SCORE]]
    assert len(scores) == 4
    assert all("referenceRange" not in r for r in scores)
    (rating,) = to_observations(_record("dimension-rating"))
    assert "referenceRange" not in rating


def test_partial_srs_has_no_total_observation() -> None:
    """A partial SRS (not computable) yields items only, no total."""
    data = json.loads((ROOT / "examples/observations/srs-administration.json").read_text())
    del data["responses"]["4"]
    data["partial"] = True
    codes = [r["code"]["coding"][0]["code"] for r in to_observations(load_record(data))]
    assert codes == ["srs", "srs.1", "srs.2", "srs.3"]


def test_prorated_score_says_so_in_method() -> None:
    """A prorated WAI-SR-T total carries method = prorated."""
    total = to_observations(_record("wai-sr-t-partial-administration"))[1]
    assert total["method"]["coding"][0]["code"] == "prorated"


def _labels(resource) -> set[str]:
    return {s["code"] for s in resource["meta"]["security"]}


def test_security_labels() -> None:
    """R+BH on all; PSYTHPN with session narrative; AIAST on automated measures and their Provenance."""
    assert all(_labels(r) == {"R", "BH"} for r in to_observations(_record("srs-administration")))
    assert _labels(to_observations(_record("rupture"))[0]) == {"R", "BH", "PSYTHPN"}
    assert _labels(to_observations(_record("repair"))[0]) == {"R", "BH"}
    auto = to_observations(_record("dimension-rating-automated"))
    assert all(_labels(r) == {"R", "BH", "AIAST"} for r in auto)


def test_automated_measure_gets_provenance_with_device_agent_and_source() -> None:
    """The Provenance targets the Observation, names the tool as Device and the recording as source."""
    obs, prov = to_observations(_record("dimension-rating-automated"))
    assert prov["resourceType"] == "Provenance"
    assert prov["target"] == [{"reference": f"Observation/{obs['id']}"}]
    who = prov["agent"][0]["who"]
    assert (
        who["type"] == "Device" and who["identifier"]["value"] == "example-alliance-analyser@2.3.1"
    )
    assert prov["entity"] == [
        {"role": "source", "what": {"reference": "DocumentReference/example-session-7-recording"}}
    ]
    assert "performer" not in obs


def test_repair_links_to_its_rupture_resource() -> None:
    """The repair's repairs-rupture extension points at the rupture's deterministic resource id."""
    rupture = to_observations(_record("rupture"))[0]
    repair = to_observations(_record("repair"))[0]
    link = next(e for e in repair["extension"] if e["url"] == t.EXT_REPAIRS_RUPTURE)
    assert link["valueReference"]["reference"] == f"Observation/{rupture['id']}"


def test_r4_claims_profiles_and_r5_does_not() -> None:
    """meta.profile is set for R4 only."""
    record = _record("rupture")
    assert to_observations(record)[0]["meta"]["profile"] == [t.PROFILE_RUPTURE]
    assert "profile" not in to_observations(record, version="5.0.0")[0]["meta"]


def test_unknown_version_is_an_input_error() -> None:
    """Asking for FHIR 3.0.2 is refused at 'version'."""
    with pytest.raises(InputError) as exc:
        to_observations(_record("rupture"), version="3.0.2")
    assert exc.value.issues[0].path == "version"


@pytest.mark.parametrize(("item", "value"), [(2, "2.5"), (12, "6")])
def test_a_record_built_in_code_with_an_answer_off_the_scale_is_an_input_error(
    item: int, value: str
) -> None:
    """A WAI-SR built in code (no schema) with a half-point or out-of-range answer is refused at
    that response: a 2.5 was written as valueInteger 2 and its total from the truncated and
    out-of-range values, a score no one gave."""
    import dataclasses
    from decimal import Decimal

    record = _record("wai-sr-administration")
    responses = tuple(
        dataclasses.replace(r, value=Decimal(value)) if r.number == item else r
        for r in record.responses
    )
    index = next(i for i, r in enumerate(responses) if r.number == item)
    with pytest.raises(InputError) as exc:
        to_observations(dataclasses.replace(record, responses=responses))
    assert [issue.path for issue in exc.value.issues] == [f"responses[{index}].value"]


def test_a_rating_built_in_code_off_its_scale_is_an_input_error() -> None:
    """A dimension rating of 7 on the 1..5 Likert scale, built in code, is refused at ``value``:
    it was written as given, a resource our own reader then refuses."""
    import dataclasses
    from decimal import Decimal

    record = dataclasses.replace(_record("dimension-rating"), value=Decimal(7))
    with pytest.raises(InputError) as exc:
        to_observations(record)
    assert [issue.path for issue in exc.value.issues] == ["value"]


def test_registry_finds_this_mapper() -> None:
    """The registry hands out MAPPER for our kinds and resource types."""
    assert mapper_for_kind("rupture") is MAPPER
    assert mapper_for_resource_type("Observation") is MAPPER


# --- foreign and hostile input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "element"),
    [
        (
            lambda rs: rs[0]["code"]["coding"][0].__setitem__("system", "http://loinc.org"),
            "Bundle.entry[0].resource.code.coding",
        ),
        (lambda rs: rs[0].__setitem__("status", "preliminary"), "Bundle.entry[0].resource.status"),
        (
            lambda rs: rs[0].__setitem__("effectiveDateTime", "2026-11"),
            "Bundle.entry[0].resource.effectiveDateTime",
        ),
        (lambda rs: rs[0].pop("subject"), "Bundle.entry[0].resource.subject"),
        (lambda rs: rs[0].pop("identifier"), "Bundle.entry[0].resource.identifier"),
        (lambda rs: rs.pop(3), "Bundle.entry[0].resource.hasMember[2]"),
        (
            lambda rs: rs[5].__setitem__("valueQuantity", {"value": 11}),
            "Bundle.entry[5].resource.value[x]",
        ),
        (lambda rs: rs.pop(0), "Bundle.entry[0].resource"),
        (
            lambda rs: rs[0]["extension"][0]["valueCoding"].__setitem__("code", "parent"),
            "Bundle.entry[0].resource.extension[0].valueCoding.code",
        ),
        (  # more digits than Python makes an int of: an unknown item, not a ValueError
            lambda rs: rs[5]["code"]["coding"][0].__setitem__("code", "srs." + "9" * 5000),
            "Bundle.entry[5].resource.code",
        ),
    ],
)
def test_foreign_observation_raises_mapping_error_naming_the_element(mutate, element: str) -> None:
    """Observations that do not fit the model raise MappingError at the offending element."""
    resources = copy.deepcopy(to_observations(_record("srs-administration")))
    mutate(resources)
    with pytest.raises(MappingError) as exc:
        from_observations(resources)
    assert exc.value.element == element


def test_foreign_client_reported_observation_without_our_extension_is_read() -> None:
    """Without the rater-role extension, a performer that is the patient reads as a client rating."""
    resources = copy.deepcopy(to_observations(_record("srs-administration")))
    for r in resources:
        r["extension"] = [e for e in r["extension"] if e["url"] != t.EXT_RATER_ROLE]
    [record] = from_observations(resources)
    assert record == _record("srs-administration")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    record=records,
    path_seed=st.integers(0, 10_000),
    replacement=json_values,
)
def test_fuzzed_resources_never_crash(record, path_seed: int, replacement) -> None:
    """Replacing any element of our output with arbitrary JSON gives a record or a MappingError."""
    resources = copy.deepcopy(to_observations(record))
    slots = []

    def collect(node, depth=0):
        if isinstance(node, dict):
            for key in node:
                slots.append((node, key))
                collect(node[key], depth + 1)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                slots.append((node, i))
                collect(item, depth + 1)

    collect(resources)
    container, key = slots[path_seed % len(slots)]
    container[key] = replacement
    with contextlib.suppress(MappingError):
        from_observations(resources)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=3))
def test_arbitrary_json_never_crashes(resources) -> None:
    """Arbitrary JSON values as resources give records or MappingError, never another exception."""
    with contextlib.suppress(MappingError):
        from_observations(resources)


def test_validation_rejects_an_invalid_resource_and_names_the_element() -> None:
    """A wrongly typed element fails validation with its path and without its value."""
    resource = to_observations(_record("dimension-rating"))[0]
    resource["valueQuantity"]["value"] = "Mrs Example"
    with pytest.raises(ProfileViolation) as exc:
        validate_resource(resource)
    assert "Observation.valueQuantity.value" in {i.path for i in exc.value.issues}
    assert "Mrs Example" not in str(exc.value.to_operation_outcome())


def test_returned_resources_share_no_state() -> None:
    """Mutating one returned resource changes neither its siblings nor later outputs."""
    record = _record("srs-administration")
    first = to_observations(record)
    first[0]["category"][0]["coding"][0]["code"] = "changed"
    first[0]["meta"]["security"].clear()
    assert first[1]["category"][0]["coding"][0]["code"] == "survey"
    assert to_observations(record)[0]["category"][0]["coding"][0]["code"] == "survey"
    assert to_observations(record)[0]["meta"]["security"]


# --- labels another system added, and elements the reader would otherwise ignore ---------------

_SUD = {"system": t.V3_ACT_CODE, "code": "SUD"}


def test_a_label_on_an_item_only_is_kept_and_written_on_every_resource() -> None:
    """An EHR labelled one item Observation SUD: the record keeps it (OID system normalised), and
    every resource it maps to again carries it, which is what the gate reads."""
    resources = copy.deepcopy(to_observations(_record("srs-administration")))
    resources[3]["meta"]["security"].append(
        {"system": "urn:oid:2.16.840.1.113883.5.4", "code": "SUD"}
    )
    (record,) = from_observations(resources)
    assert [(c.system, c.code) for c in record.security_labels] == [(t.V3_ACT_CODE, "SUD")]
    assert load_record(dump_record(record)) == record
    for resource in to_observations(record):
        assert resource["meta"]["security"].count(_SUD) == 1, resource["meta"]["security"]


def test_a_label_the_engine_cannot_read_is_refused_at_its_element() -> None:
    """A v3-ActCode code the library does not know (``sud``) is refused, never taken for none."""
    resources = copy.deepcopy(to_observations(_record("srs-administration")))
    resources[0]["meta"]["security"].append({"system": t.V3_ACT_CODE, "code": "sud"})
    with pytest.raises(MappingError) as caught:
        from_observations(resources)
    assert caught.value.element == "Bundle.entry[0].resource.meta.security[2]"


@pytest.mark.parametrize(
    ("example", "mutate", "element"),
    [
        (
            "srs-administration",
            lambda rs: rs[0].update(focus=[{"reference": "Patient/other"}]),
            "Bundle.entry[0].resource.focus",
        ),
        (
            "srs-administration",
            lambda rs: rs[-1].update(dataAbsentReason={"text": "asked"}),
            "Bundle.entry[{last}].resource.dataAbsentReason",
        ),
        (
            "rupture",
            lambda rs: rs[0]["component"][0].update(modifierExtension=[{"url": "urn:x"}]),
            "Bundle.entry[0].resource.component[0].modifierExtension[0]",
        ),
        (
            "rupture",
            lambda rs: rs[0]["component"][0].update(dataAbsentReason={"text": "x"}),
            "Bundle.entry[0].resource.component[0].dataAbsentReason",
        ),
    ],
)
def test_an_element_the_reader_would_drop_is_refused(example: str, mutate, element: str) -> None:
    """A focus, a dataAbsentReason or a component's modifier changes what the Observation says:
    refused at the element, not dropped."""
    resources = copy.deepcopy(to_observations(_record(example)))
    mutate(resources)
    with pytest.raises(MappingError) as caught:
        from_observations(resources)
    assert caught.value.element == element.format(last=len(resources) - 1)


def test_an_effective_offset_with_seconds_is_refused_at_the_element() -> None:
    """``+05:30:15`` is no FHIR dateTime: reading it would write it again."""
    resources = copy.deepcopy(to_observations(_record("srs-administration")))
    resources[0]["effectiveDateTime"] = "2025-01-01T10:00:00+05:30:15"
    with pytest.raises(MappingError) as caught:
        from_observations(resources)
    assert caught.value.element == "Bundle.entry[0].resource.effectiveDateTime"


def test_a_confidentiality_below_restricted_read_back_is_refused_at_its_element() -> None:
    """Another system relabelled a member ``N`` (normal): writing it again beside our R would let
    a consent permitting normal-confidentiality data release the record. Refused at the label,
    as the JSON form refuses it. Found: kept and written on every resource (fail open)."""
    resources = copy.deepcopy(to_observations(_record("srs-administration")))
    resources[2]["meta"]["security"].append({"system": t.V3_CONFIDENTIALITY, "code": "N"})
    with pytest.raises(MappingError) as caught:
        from_observations(resources)
    assert caught.value.element == "Bundle.entry[2].resource.meta.security[2]"
