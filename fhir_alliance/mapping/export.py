"""The fast path from records to wire bytes: map, validate every resource, serialise with orjson.

Validation is real: R4 Observations and Provenances go through the compiled FHIR R4 JSON-schema
validator (:mod:`fhir_alliance.mapping.fast_validation`), everything else (R5) through the
``fhir.resources`` model of the target version (:mod:`fhir_alliance.mapping.validation`). What is
saved compared with building models and calling ``model_dump_json`` is both the model construction
and the serialisation through the models. ``benchmarks/bench_observations.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from fhir_alliance.instruments.scoring import DEFAULT_RULES, ScoringRules
from fhir_alliance.mapping.fast_validation import FAST_RESOURCE_TYPES, validate_r4_fast
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.mapping.validation import validate_resource
from fhir_alliance.model.observations import AllianceRecord

__all__ = ["dumps_validated", "records_to_ndjson", "validate_fastest"]


def validate_fastest(resource: Mapping[str, Any], *, version: str = "4.0.1") -> None:
    """Raise ProfileViolation unless ``resource`` is valid base FHIR of ``version``: with the
    compiled validator where it covers the resource type (R4 Observation, Provenance), else with
    the ``fhir.resources`` model. (No R5 JSON schema is available offline to compile one for R5.)"""
    if version == "4.0.1" and resource.get("resourceType") in FAST_RESOURCE_TYPES:
        validate_r4_fast(resource)
    else:
        validate_resource(resource, version=version)


def dumps_validated(resource: Mapping[str, Any], *, version: str = "4.0.1") -> bytes:
    """``resource`` as compact JSON bytes, after it passed validation (else ProfileViolation)."""
    validate_fastest(resource, version=version)
    return orjson.dumps(resource)


def records_to_ndjson(
    records: Iterable[AllianceRecord],
    *,
    version: str = "4.0.1",
    rules: ScoringRules = DEFAULT_RULES,
) -> Iterator[bytes]:
    """One validated NDJSON line per resource of every record, in order."""
    for record in records:
        for resource in to_observations(record, version=version, rules=rules):
            yield dumps_validated(resource, version=version) + b"\n"
