"""The fast path (map, validate, orjson) writes valid resources and refuses invalid ones."""

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings

from fhir_alliance.errors import ProfileViolation
from fhir_alliance.mapping.export import dumps_validated, records_to_ndjson
from fhir_alliance.mapping.fast_validation import validate_r4_fast
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.schemas.observations import load_record
from tests.mapping.observation_strategies import records

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "examples" / "observations" / "wai-sr-administration.json"
)


def test_ndjson_lines_equal_the_mapped_resources() -> None:
    """Each NDJSON line parses back to the resource the mapping built, in order."""
    record = load_record(json.loads(EXAMPLE.read_text()))
    lines = list(records_to_ndjson([record]))
    assert [orjson.loads(line) for line in lines] == to_observations(record)
    assert all(line.endswith(b"\n") for line in lines)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda r: r.pop("status"),
        lambda r: r.__setitem__("effectiveDateTime", "yesterday"),
        lambda r: r.__setitem__("valueIntegr", 3),
        lambda r: r["subject"].__setitem__("reference", 42),
    ],
)
def test_fast_path_validation_rejects_invalid_resources(breakage) -> None:
    """A missing required element, a bad dateTime, an unknown element or a wrong type is refused."""
    resource = to_observations(load_record(json.loads(EXAMPLE.read_text())))[5]
    dumps_validated(resource)
    breakage(resource)
    with pytest.raises(ProfileViolation):
        dumps_validated(resource)


def test_r5_validation_is_used_for_r5() -> None:
    """R5 output validates with the R5 models (R5-only element accepted, R4B refuses it)."""
    resource = to_observations(load_record(json.loads(EXAMPLE.read_text())), version="5.0.0")[0]
    resource["triggeredBy"] = [{"observation": {"reference": "Observation/x"}, "type": "reflex"}]
    dumps_validated(resource, version="5.0.0")
    with pytest.raises(ProfileViolation):
        dumps_validated(resource, version="4.0.1")


@settings(max_examples=100, deadline=None)
@given(record=records)
def test_compiled_validator_accepts_everything_we_produce(record) -> None:
    """Every R4 resource the mapping builds passes the compiled JSON-schema validator."""
    for resource in to_observations(record):
        validate_r4_fast(resource)


@pytest.mark.parametrize(
    ("breakage", "element"),
    [
        (lambda r: r.pop("status"), "Observation"),
        (lambda r: r.__setitem__("status", "bogus"), "Observation.status"),
        (
            lambda r: r.__setitem__("effectiveDateTime", "2026-13-01"),
            "Observation.effectiveDateTime",
        ),
        (lambda r: r.__setitem__("valueIntegr", 3), "Observation"),
        (lambda r: r["subject"].__setitem__("reference", 42), "Observation.subject.reference"),
        (
            lambda r: r["category"][0]["coding"][0].__setitem__("system", "has space"),
            "Observation.category[0].coding[0].system",
        ),
        (
            lambda r: r.__setitem__("contained", [{"resourceType": "Patient"}]),
            "Observation.contained",
        ),
    ],
)
def test_compiled_validator_rejects_invalid_resources(breakage, element: str) -> None:
    """Missing status, a code outside the base binding, bad dates, unknown elements, wrong types are refused."""
    resource = to_observations(load_record(json.loads(EXAMPLE.read_text())))[0]
    validate_r4_fast(resource)
    breakage(resource)
    with pytest.raises(ProfileViolation) as exc:
        validate_r4_fast(resource)
    assert exc.value.issues[0].path == element


@pytest.mark.parametrize(
    ("text", "valid"),
    [("a\u00a0b\u2028c", True), ("line\r\nnext\ttab", True), ("bell\x07", False)],
)
def test_note_text_allows_unicode_spaces_but_not_control_characters(text: str, valid: bool) -> None:
    """FHIR's markdown pattern read as XML Schema means it: a no-break space is text, BEL is not."""
    resource = to_observations(load_record(json.loads(EXAMPLE.read_text())))[0]
    resource["note"] = [{"text": text}]
    if valid:
        validate_r4_fast(resource)
    else:
        with pytest.raises(ProfileViolation):
            validate_r4_fast(resource)
