"""Review (library, area a): alliance Observations read back after another system touched them.

``from_observations`` must give a faithful record or a ``MappingError`` naming the element: a
restrictive label another system added must not vanish (it would not be on what we send next),
and a modifier it cannot understand must not be ignored.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.observation import from_observations, to_observations
from fhir_alliance.schemas.observations import load_record
from tests.review_library.foreign import FOREIGN_MODIFIER, V3, example

SRS = load_record(example("examples/observations/srs-administration.json"))


def _resources(version: str) -> list[dict[str, Any]]:
    return copy.deepcopy(to_observations(SRS, version=version))


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
@pytest.mark.parametrize("label", ["SUD", "PSYTHPN"])
def test_a_label_added_elsewhere_survives_reading_or_is_refused(version: str, label: str) -> None:
    """The EHR labelled our SRS panel SUD (42 CFR Part 2) or PSYTHPN. Reading it back either
    keeps the label (mapping the record again carries it) or refuses it at meta.security; today
    the label is dropped and the record maps back to R + BH only."""
    resources = _resources(version)
    resources[0]["meta"]["security"].append({"system": f"{V3}/v3-ActCode", "code": label})
    try:
        (record,) = from_observations(resources)
    except MappingError as error:
        assert error.element.startswith("Bundle.entry[0].resource.meta.security"), error.element
        return
    again = to_observations(record, version=version)
    labels = {(s["system"], s["code"]) for s in again[0]["meta"]["security"]}
    assert (f"{V3}/v3-ActCode", label) in labels, labels


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
@pytest.mark.parametrize(
    ("element", "value"),
    [
        ("modifierExtension", FOREIGN_MODIFIER),
        ("implicitRules", "https://other-ehr.example/rules/v1"),
    ],
)
def test_a_modifier_we_do_not_understand_is_refused(version: str, element: str, value: Any) -> None:
    """An unknown modifierExtension, or implicitRules, changes what the Observation means: the
    consent reader refuses such input; the observation reader must too, at that element."""
    resources = _resources(version)
    resources[0][element] = value
    with pytest.raises(MappingError) as caught:
        from_observations(resources)
    assert caught.value.element.startswith(f"Bundle.entry[0].resource.{element}"), (
        caught.value.element
    )


def test_a_comparator_on_an_item_value_is_refused() -> None:
    """``Quantity.comparator`` is a modifier: an SRS item '< 8.7' is not an answer of 8.7."""
    resources = _resources("4.0.1")
    item = next(r for r in resources if r["code"]["coding"][0]["code"] == "srs.2")
    item["valueQuantity"]["comparator"] = "<"
    index = resources.index(item)
    with pytest.raises(MappingError) as caught:
        from_observations(resources)
    assert caught.value.element.startswith(f"Bundle.entry[{index}].resource.valueQuantity"), (
        caught.value.element
    )
