"""Collection Bundles: fullUrl per entry, references resolvable inside, and read back to Type/id."""

from __future__ import annotations

import pytest

from fhir_alliance.errors import InputError
from fhir_alliance.mapping.collection import bundle_resources, collection_bundle

PANEL_ID = "0b7f4a52-52c2-5b4e-9d39-8a8f6d3f0c11"
ITEM_ID = "not-a-uuid"


def _resources() -> list[dict]:
    return [
        {
            "resourceType": "Observation",
            "id": PANEL_ID,
            "subject": {"reference": "Patient/p1"},
            "hasMember": [{"reference": f"Observation/{ITEM_ID}"}],
        },
        {"resourceType": "Observation", "id": ITEM_ID, "subject": {"reference": "Patient/p1"}},
    ]


def test_urn_full_urls_and_references_rewritten_only_inside() -> None:
    """UUID ids become urn:uuid fullUrls, other ids a stable derived UUID; external refs stay."""
    resources = _resources()
    bundle = collection_bundle(resources)
    panel = bundle["entry"][0]["resource"]
    assert bundle["entry"][0]["fullUrl"] == f"urn:uuid:{PANEL_ID}"
    item_url = bundle["entry"][1]["fullUrl"]
    assert (
        item_url.startswith("urn:uuid:")
        and item_url == collection_bundle(resources)["entry"][1]["fullUrl"]
    )
    assert panel["hasMember"] == [{"reference": item_url}]
    assert panel["subject"] == {"reference": "Patient/p1"}
    assert resources[0]["hasMember"] == [{"reference": f"Observation/{ITEM_ID}"}]  # not mutated


def test_reading_back_restores_relative_references() -> None:
    """bundle_resources turns references to entries back into Type/id, for either fullUrl style."""
    assert bundle_resources(collection_bundle(_resources())) == _resources()
    restful = collection_bundle(_resources(), base_url="https://ehr.example/fhir")
    restful["entry"][0]["resource"]["hasMember"] = [
        {"reference": f"https://ehr.example/fhir/Observation/{ITEM_ID}"}
    ]
    assert bundle_resources(restful) == _resources()


def test_resource_without_id_is_refused() -> None:
    """A resource without an id cannot get a fullUrl: an InputError names its entry."""
    with pytest.raises(InputError) as caught:
        collection_bundle([{"resourceType": "Observation"}])
    assert caught.value.issues[0].path == "entry[0]"


def test_non_list_entry_is_an_input_error() -> None:
    """A Bundle whose entry is not an array is refused with its path."""
    with pytest.raises(InputError) as caught:
        bundle_resources({"resourceType": "Bundle", "entry": {}}, source="in.json")
    assert caught.value.issues[0].path == "in.json.entry"


@pytest.mark.parametrize(
    "base_url", ["ehr.example/fhir", "ftp://ehr.example/fhir", "https://e/f?x=1"]
)
def test_base_url_must_be_an_absolute_http_url(base_url: str) -> None:
    """A base that would give fullUrls that are not RESTful URLs is refused."""
    with pytest.raises(InputError) as caught:
        collection_bundle(_resources(), base_url=base_url)
    assert caught.value.issues[0].path == "base_url"


def test_entry_without_a_resource_is_named() -> None:
    """An entry that holds no resource object is an InputError at its path, not a later surprise."""
    bundle = {"resourceType": "Bundle", "entry": [{"resource": _resources()[0]}, {"fullUrl": "x"}]}
    with pytest.raises(InputError) as caught:
        bundle_resources(bundle, source="in.json")
    assert caught.value.issues[0].path == "in.json.entry[1].resource"
