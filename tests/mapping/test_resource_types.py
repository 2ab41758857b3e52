"""``is_known_resource_type``: the resource types of FHIR R4 and R5, read from the installed
``fhir.resources`` models (R4B for R4, plus the R4 types R4B dropped), spelt exactly."""

from __future__ import annotations

import importlib.util

import pytest

from fhir_alliance.mapping.validation import R4_ONLY_RESOURCE_TYPES, is_known_resource_type


@pytest.mark.parametrize(
    "name",
    [
        "Consent",
        "Bundle",
        "Provenance",
        "OperationOutcome",
        "Parameters",
        "Binary",
        "Permission",  # R5
        "Requirements",  # R5
        "SubscriptionTopic",  # R4B and R5
        "MedicinalProduct",  # R4 only
        "SubstanceSpecification",  # R4 only
    ],
)
def test_resource_types_of_either_version_are_known(name: str) -> None:
    """A resource type of R4 (4.0.1, R4B's models and the types R4B dropped) or R5."""
    assert is_known_resource_type(name)


@pytest.mark.parametrize(
    "name",
    [
        "Consnet",
        "Consents",
        "consent",
        "PROVENANCE",
        "Provenance ",
        "Address",  # a data type
        "Coding",
        "PermissionRule",  # a backbone element
        "Resource",  # abstract
        "DomainResource",
        "CanonicalResource",
        "MetadataResource",
        "Fhirtypes",  # a module of the package, not a type
        "",
        "C\u043ensent",
    ],
)
def test_other_names_are_not(name: str) -> None:
    """Misspellings, other cases, data types, backbone elements, abstract types, other names."""
    assert not is_known_resource_type(name)


@pytest.mark.parametrize("package", ["fhir.resources", "fhir.resources.R4B"])
def test_the_r4_only_types_are_modelled_by_neither_package(package: str) -> None:
    """The short list of R4 types is only what the models lack (R4's CodeSystem
    resource-types less R4B's and R5's models): none of them has a model module."""
    modelled = [
        n for n in R4_ONLY_RESOURCE_TYPES if importlib.util.find_spec(f"{package}.{n.lower()}")
    ]
    assert modelled == []
