"""Base-FHIR validation of the resources we build, with ``fhir.resources`` models (R4B for 4.0.1,
R5 for 5.0.0): missing required elements, wrong types, bad dates, unknown elements.

Errors become :class:`~fhir_alliance.errors.ProfileViolation` with one issue per element path and
pydantic's message only (never the offending value, which may be patient data).
"""

from __future__ import annotations

import importlib
import importlib.resources
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Final

from pydantic import ValidationError

from fhir_alliance.errors import Issue, ProfileViolation
from fhir_alliance.mapping._fhir_values import check_version

__all__ = [
    "R4_ONLY_RESOURCE_TYPES",
    "is_known_resource_type",
    "model_class",
    "validate_resource",
    "validate_resources",
]

_PACKAGES = {"4.0.1": "fhir.resources.R4B", "5.0.0": "fhir.resources"}

#: The resource types of R4 (4.0.1) that R4B, whose models stand for R4 here, no longer has: the
#: codes of R4's CodeSystem ``http://hl7.org/fhir/resource-types`` (hl7.fhir.r4.core 4.0.1) that
#: neither ``fhir.resources.R4B`` nor ``fhir.resources`` (R5) models (a test checks the latter).
R4_ONLY_RESOURCE_TYPES: Final = frozenset(
    {
        "EffectEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "RiskEvidenceSynthesis",
        "SubstanceSpecification",
    }
)

#: Abstract types the models have classes for, which no resource is of.
_ABSTRACT_RESOURCE_TYPES: Final = frozenset(
    {"Resource", "DomainResource", "CanonicalResource", "MetadataResource"}
)


@cache
def model_class(resource_type: str, version: str) -> Any:
    """The ``fhir.resources`` model class for ``resource_type`` in ``version``."""
    module = importlib.import_module(f"{_PACKAGES[version]}.{resource_type.lower()}")
    return getattr(module, resource_type)


@cache
def _model_modules(package: str) -> frozenset[str]:
    """The module names of a ``fhir.resources`` package (``provenance``, ``address``): listed from
    its directory once, no model imported."""
    return frozenset(
        entry.name.removesuffix(".py")
        for entry in importlib.resources.files(package).iterdir()
        if entry.name.endswith(".py")
    )


@cache
def is_known_resource_type(name: str) -> bool:
    """Whether ``name``, exactly as spelt (case counts), is a resource type of FHIR R4 or R5.

    Not a data type (``Address``), a backbone element (``ConsentProvision``) or an abstract type
    (``Resource``). Only the model of ``name`` is imported, and only when its package has a module
    of that name: ``Consnet`` imports nothing."""
    if name in R4_ONLY_RESOURCE_TYPES:
        return True
    if name in _ABSTRACT_RESOURCE_TYPES or not (name.isascii() and name[:1].isupper()):
        return False
    for version, package in _PACKAGES.items():
        if not name.isalpha() or name.lower() not in _model_modules(package):
            continue
        try:
            cls = model_class(name, version)
        except (ImportError, AttributeError):
            continue
        base = importlib.import_module(f"{package}.resource").Resource
        if isinstance(cls, type) and issubclass(cls, base):
            return True
    return False


def _path(resource_type: str, loc: Iterable[int | str]) -> str:
    path = resource_type
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate_resource(resource: Mapping[str, Any], *, version: str = "4.0.1") -> None:
    """Raise :class:`ProfileViolation` unless ``resource`` is valid base FHIR of ``version``."""
    check_version(version)
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type.isalpha():
        raise ProfileViolation("not a FHIR resource", element="resourceType")
    try:
        cls = model_class(resource_type, version)
    except (ImportError, AttributeError):
        raise ProfileViolation("unknown resource type", element="resourceType") from None
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        issues = [
            Issue(path=_path(resource_type, err["loc"]), message=err["msg"], code="structure")
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise ProfileViolation(
            f"{resource_type} is not valid FHIR {version}", issues=issues
        ) from None


def validate_resources(resources: Iterable[Mapping[str, Any]], *, version: str = "4.0.1") -> None:
    for resource in resources:
        validate_resource(resource, version=version)
