"""The fast path from records to wire bytes: map, validate every resource, serialise with orjson.

Validation is real: Observations and Provenances go through the compiled FHIR JSON-schema
validator of the target version, R4 or R5 (:mod:`fhir_alliance.mapping.fast_validation`),
everything else (consents, notes) through the ``fhir.resources`` model of the target version
(:mod:`fhir_alliance.mapping.validation`). What is
saved compared with building models and calling ``model_dump_json`` is both the model construction
and the serialisation through the models. ``benchmarks/bench_observations.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from fhir_alliance.instruments.scoring import DEFAULT_RULES, ScoringRules
from fhir_alliance.mapping.fast_validation import FAST_RESOURCE_TYPES, FAST_VERSIONS, validate_fast
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.mapping.validation import validate_resource
from fhir_alliance.model.observations import AllianceRecord

__all__ = ["dumps_validated", "records_to_ndjson", "validate_fastest"]


def validate_fastest(resource: Mapping[str, Any], *, version: str = "4.0.1") -> None:
    """Raise ProfileViolation unless ``resource`` is valid base FHIR of ``version``: with the
    compiled validator where it covers the resource type (Observation, Provenance; R4 and R5),
    else with the ``fhir.resources`` model."""
    if resource.get("resourceType") in FAST_RESOURCE_TYPES and version in FAST_VERSIONS:
        validate_fast(resource, version=version)
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
            validate_fastest(resource, version=version)
            yield orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE)
