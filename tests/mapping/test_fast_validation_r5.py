"""The compiled R5 validator (official R5 JSON schema, ``fhir-r5-observation.schema.json``): what we
emit passes, broken resources are refused with a path, and it agrees with ``fhir.resources`` R5."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from fhir_alliance.errors import ProfileViolation
from fhir_alliance.mapping.export import validate_fastest
from fhir_alliance.mapping.fast_validation import FAST_RESOURCE_TYPES, validate_fast
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.mapping.registry import mapper_for_kind
from fhir_alliance.mapping.validation import validate_resource
from tests.mapping.observation_strategies import records
from tests.notes.note_strategies import notes

R5 = "5.0.0"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _emitted() -> list[dict[str, Any]]:
    """Every Observation and Provenance our mappers write in R5 for the shipped examples."""
    out: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.rglob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("kind") in (None, "consent-revocation"):
            continue
        mapper = mapper_for_kind(data["kind"])
        resources = mapper.to_fhir(mapper.load(data), version=R5)
        out += [r for r in resources if r["resourceType"] in FAST_RESOURCE_TYPES]
    return out


EMITTED = _emitted()


def _accepts(validate: Callable[..., None], resource: dict[str, Any]) -> bool:
    try:
        validate(resource, version=R5)
    except ProfileViolation:
        return False
    return True


def test_examples_cover_both_resource_types() -> None:
    """The examples give R5 Observations and Provenances (so the checks below see both)."""
    assert {r["resourceType"] for r in EMITTED} == FAST_RESOURCE_TYPES


@pytest.mark.parametrize("index", range(len(EMITTED)))
def test_every_emitted_resource_validates(index: int) -> None:
    """Each R5 resource the examples map to passes the compiled validator and the R5 models."""
    validate_fast(EMITTED[index], version=R5)
    validate_resource(EMITTED[index], version=R5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records)
def test_every_r5_observation_we_build_validates(record: Any) -> None:
    """Whatever alliance record the strategies build, its R5 resources pass."""
    for resource in to_observations(record, version=R5):
        validate_fast(resource, version=R5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(note=notes())
def test_every_r5_note_provenance_we_build_validates(note: Any) -> None:
    """A note's R5 Provenance passes (its DocumentReference is left to the R5 models)."""
    for resource in mapper_for_kind("session-note").to_fhir(note, version=R5):
        if resource["resourceType"] in FAST_RESOURCE_TYPES:
            validate_fast(resource, version=R5)


def _observation() -> dict[str, Any]:
    return copy.deepcopy(next(r for r in EMITTED if r["resourceType"] == "Observation"))


@pytest.mark.parametrize(
    ("breakage", "element"),
    [
        (lambda r: r.pop("status"), "Observation"),
        (lambda r: r.pop("code"), "Observation"),
        (lambda r: r.__setitem__("status", "bogus"), "Observation.status"),
        (lambda r: r.__setitem__("subject", {"reference": 42}), "Observation.subject.reference"),
        (lambda r: r.__setitem__("valueIntegr", 3), "Observation"),
        (lambda r: r["code"].__setitem__("texte", "x"), "Observation.code"),
        (
            lambda r: r.__setitem__("effectiveDateTime", "2026-13-01"),
            "Observation.effectiveDateTime",
        ),
        (lambda r: r.__setitem__("id", "not an id"), "Observation.id"),
        (lambda r: r.__setitem__("valueInteger", 1.5), "Observation.valueInteger"),
        (
            lambda r: r.__setitem__("contained", [{"resourceType": "Patient"}]),
            "Observation.contained",
        ),
        (
            lambda r: r.__setitem__("triggeredBy", [{"observation": {"reference": "x"}}]),
            "Observation.triggeredBy[0]",
        ),
    ],
)
def test_broken_resources_are_refused_with_a_path(
    breakage: Callable[[dict[str, Any]], Any], element: str
) -> None:
    """Missing required elements, a code outside its required binding, a wrong JSON type, an
    unknown element, a bad date or id, a fraction for an integer, a contained resource: refused,
    at the element's path, both by the validator and by the R5 path of ``validate_fastest``."""
    resource = _observation()
    validate_fast(resource, version=R5)
    breakage(resource)
    with pytest.raises(ProfileViolation) as exc:
        validate_fast(resource, version=R5)
    assert exc.value.issues[0].path == element
    assert "R5" in exc.value.issues[0].message
    with pytest.raises(ProfileViolation):
        validate_fastest(resource, version=R5)


def test_r5_only_elements_pass_and_elements_r5_dropped_do_not() -> None:
    """``Observation.triggeredBy`` is R5 (the R4 schema refuses it); ``SampledData.period`` is R4
    only (R5 renamed it ``interval``), so the R5 schema refuses it as an unknown element."""
    resource = _observation()
    resource["triggeredBy"] = [{"observation": {"reference": "Observation/x"}, "type": "reflex"}]
    validate_fast(resource, version=R5)
    with pytest.raises(ProfileViolation):
        validate_fast(resource, version="4.0.1")
    sampled = _observation()
    for key in [k for k in sampled if k.startswith("value")]:
        del sampled[key]
    sampled["valueSampledData"] = {"origin": {"value": 0}, "intervalUnit": "ms", "dimensions": 1}
    validate_fast(sampled, version=R5)
    sampled["valueSampledData"]["period"] = 1
    with pytest.raises(ProfileViolation) as exc:
        validate_fast(sampled, version=R5)
    assert exc.value.issues[0].path == "Observation.valueSampledData"
    assert "additionalProperties" in exc.value.issues[0].message


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _nodes(value, (*path, index))


def _changed(resource: dict[str, Any], path: tuple[Any, ...], value: Any = ...) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    node = out
    for part in path[:-1]:
        node = node[part]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


#: Elements whose type is a date, dateTime or instant: the R5 models (pydantic, lax) read a JSON
#: number there as a Unix time, so "a number for a string" is compared elsewhere only.
_TIME_ELEMENTS = {"effectiveDateTime", "recorded", "issued", "start", "end", "occurredDateTime"}


def _structure_mutations(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Structure errors (and harmless removals) at every element of ``resource``."""
    for path, node in list(_nodes(resource)):
        if not path or path[-1] == "resourceType":
            continue
        where = ".".join(map(str, path))
        if isinstance(path[-1], str):
            yield f"without {where}", _changed(resource, path)
        if isinstance(node, dict):
            yield f"unknown element in {where}", _changed(resource, (*path, "bogusElement"), "x")
            yield f"string for object {where}", _changed(resource, path, "x")
        elif isinstance(node, list):
            yield f"object for array {where}", _changed(resource, path, node[0])
            yield f"empty array {where}", _changed(resource, path, [])
        elif isinstance(node, str):
            if path[-1] in _TIME_ELEMENTS:
                yield f"bad date {where}", _changed(resource, path, "2026-13-01T25:00:00Z")
            else:
                yield f"number for string {where}", _changed(resource, path, 12)


def test_agrees_with_fhir_resources_on_structure_errors() -> None:
    """Over every element of every emitted resource (missing, unknown, wrong JSON type, array vs
    object, empty array, bad date), the compiled validator and the ``fhir.resources`` R5 models
    accept and refuse the very same mutated resources; and both refuse some and accept some."""
    outcomes: list[tuple[str, bool, bool]] = []
    for resource in EMITTED:
        for name, mutated in _structure_mutations(resource):
            ours = _accepts(validate_fast, mutated)
            models = _accepts(validate_resource, mutated)
            outcomes.append((f"{resource['resourceType']}: {name}", ours, models))
    disagreements = [name for name, ours, models in outcomes if ours != models]
    assert disagreements == []
    assert len(outcomes) > 1000
    assert any(ours for _, ours, _ in outcomes) and not all(ours for _, ours, _ in outcomes)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda r: r.__setitem__("status", "bogus"), "a code outside its required binding"),
        (lambda r: r.__setitem__("effectiveDateTime", 1700000000), "a number for a dateTime"),
        (lambda r: r["code"].__setitem__("text", "bell\x07"), "a control character"),
    ],
)
def test_stricter_than_fhir_resources_where_the_models_are_lax(
    change: Callable[[dict[str, Any]], Any], what: str
) -> None:
    """Where the R5 models accept what FHIR JSON forbids (they check no codes, coerce JSON types,
    allow control characters), the compiled validator refuses it."""
    resource = _observation()
    change(resource)
    assert _accepts(validate_resource, resource), what
    assert not _accepts(validate_fast, resource), what
