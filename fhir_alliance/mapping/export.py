"""The fast path from records to wire bytes: map, validate every resource, serialise with orjson.

Validation is real (the ``fhir.resources`` model of the target version checks each dict, see
:mod:`fhir_alliance.mapping.validation`); what is saved compared with building models and calling
``model_dump_json`` is the serialisation through the models. ``benchmarks/bench_observations.py``
measures it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from fhir_alliance.instruments.scoring import DEFAULT_RULES, ScoringRules
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.mapping.validation import validate_resource
from fhir_alliance.model.observations import AllianceRecord

__all__ = ["dumps_validated", "records_to_ndjson"]


def dumps_validated(resource: Mapping[str, Any], *, version: str = "4.0.1") -> bytes:
    """``resource`` as compact JSON bytes, after it passed validation (else ProfileViolation)."""
    validate_resource(resource, version=version)
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
