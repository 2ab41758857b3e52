"""Base-FHIR validation of the resources we build, with ``fhir.resources`` models (R4B for 4.0.1,
R5 for 5.0.0): missing required elements, wrong types, bad dates, unknown elements.

Errors become :class:`~fhir_alliance.errors.ProfileViolation` with one issue per element path and
pydantic's message only (never the offending value, which may be patient data).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from pydantic import ValidationError

from fhir_alliance.errors import Issue, ProfileViolation
from fhir_alliance.mapping._fhir_values import check_version

__all__ = ["model_class", "validate_resource", "validate_resources"]

_PACKAGES = {"4.0.1": "fhir.resources.R4B", "5.0.0": "fhir.resources"}


@cache
def model_class(resource_type: str, version: str) -> Any:
    """The ``fhir.resources`` model class for ``resource_type`` in ``version``."""
    module = importlib.import_module(f"{_PACKAGES[version]}.{resource_type.lower()}")
    return getattr(module, resource_type)


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
