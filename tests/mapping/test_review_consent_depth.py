"""Review finding 7: what ``to_consent`` writes, ``from_consent`` reads back, at the nesting limit.

The FHIR readers counted the root ``provision`` in the path, so they refused a consent nested
exactly 32 levels below the root (the JSON form's and the engine's limit) that ``to_consent``
had just written. Now the limit counts levels below the root in R4 and R5 alike, and
``to_consent`` refuses to write what no reader would take.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import R4, R5, from_consent, to_consent
from fhir_alliance.model.common import Coding
from fhir_alliance.model.consent import ConsentRecord, Decision, Provision
from fhir_alliance.schemas.consent import MAX_PROVISION_DEPTH, load_consent
from fhir_alliance.terminology import V3_ACT_CODE, V3_ACT_REASON, V3_OBSERVATION_VALUE
from tests.schemas.test_review_depth import deep_consent


def _deepest(provision: dict[str, Any], key: str) -> dict[str, Any]:
    while provision.get(key):
        provision = provision[key][0]
    return provision


def _deeper(provision: Provision) -> Provision:
    """One more level below the deepest provision (the record as Python code could build it)."""
    if not provision.provisions:
        flipped = Decision.DENY if provision.type is Decision.PERMIT else Decision.PERMIT
        return replace(provision, provisions=(Provision(type=flipped),))
    return replace(provision, provisions=(_deeper(provision.provisions[0]),))


@pytest.mark.parametrize("version", [R4, R5])
@pytest.mark.parametrize("root_conditions", [False, True])
def test_the_limit_round_trips(version: str, root_conditions: bool) -> None:
    """32 levels: written and read back equal, in R4 and R5 (R5 with and without the root
    provision marker, which adds a level to the FHIR nesting)."""
    data = deep_consent(MAX_PROVISION_DEPTH)
    if root_conditions:
        data["provision"]["purposes"] = [{"system": V3_ACT_REASON, "code": "TREAT"}]
    record = load_consent(data)
    assert from_consent(to_consent(record, version=version)) == record


@pytest.mark.parametrize("version", [R4, R5])
@pytest.mark.parametrize("root_conditions", [False, True])
def test_one_level_more_is_refused_by_the_reader(version: str, root_conditions: bool) -> None:
    """A FHIR Consent with 33 levels below the root is refused at the provision too deep."""
    data = deep_consent(MAX_PROVISION_DEPTH)
    if root_conditions:
        data["provision"]["purposes"] = [{"system": V3_ACT_REASON, "code": "TREAT"}]
    resource = to_consent(load_consent(data), version=version)
    if version == R4:
        deepest = _deepest(resource["provision"], "provision")
        deepest["provision"] = [{"type": "deny" if deepest["type"] == "permit" else "permit"}]
    else:
        deepest = _deepest({"provision": resource["provision"]}, "provision")
        deepest["provision"] = [{}]
    with pytest.raises(MappingError) as caught:
        from_consent(resource)
    assert f"nested deeper than {MAX_PROVISION_DEPTH} levels" in caught.value.message
    assert caught.value.element.endswith(".provision[0]")
    expected = MAX_PROVISION_DEPTH + 1 + (version == R4 or root_conditions)
    assert caught.value.element.count("provision") == expected


@pytest.mark.parametrize("version", [R4, R5])
def test_the_writer_refuses_what_no_reader_takes(version: str) -> None:
    """A record built in Python 33 levels deep: ``to_consent`` refuses it, naming the provision."""
    record = load_consent(deep_consent(MAX_PROVISION_DEPTH))
    deeper = replace(record, provision=_deeper(record.provision))
    with pytest.raises(MappingError) as caught:
        to_consent(deeper, version=version)
    assert caught.value.element == "provision" + ".provisions.0" * (MAX_PROVISION_DEPTH + 1)


def test_hostile_fhir_nesting_is_refused_without_recursing() -> None:
    """5000 levels of R4 provisions (built without recursion): refused, no RecursionError."""
    resource = to_consent(load_consent(deep_consent(1)), version=R4)
    node = resource["provision"]
    for _ in range(5000):
        child: dict[str, Any] = {"type": "deny"}
        node["provision"] = [child]
        node = child
    with pytest.raises(MappingError) as caught:
        from_consent(resource)
    assert caught.value.element.count("provision") == MAX_PROVISION_DEPTH + 2


@pytest.mark.parametrize("version", [R4, R5])
def test_an_observation_value_label_round_trips(version: str) -> None:
    """The FHIR readers check labels against the JSON form's list (one list now): a consent naming
    the AI-assisted label (v3 ObservationValue AIAST) is read back, as it is loaded."""
    data = deep_consent(1)
    data["provision"]["provisions"][0]["security_labels"] = [
        {"system": V3_OBSERVATION_VALUE, "code": "AIAST"},
        {"system": V3_ACT_CODE, "code": "PSY"},
    ]
    record: ConsentRecord = load_consent(data)
    assert record.provision.provisions[0].security_labels[0] == Coding(
        V3_OBSERVATION_VALUE, "AIAST"
    )
    assert from_consent(to_consent(record, version=version)) == record
