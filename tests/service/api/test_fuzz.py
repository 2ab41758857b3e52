"""Fuzzing the API from its own OpenAPI document (schemathesis 4 on the WSGI app): no request,
valid or not, may make the service answer 5xx, and every error is an OperationOutcome.

Bounded: ``MAX_EXAMPLES`` per operation and generation mode keeps the run well under a minute.
Each operation is driven through its own Hypothesis strategy, so every route gets its share.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fhir_alliance_service.auth import SCOPES, create_api_key
from fhir_alliance_service.store.interface import Store
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

MAX_EXAMPLES = 10


def _header(response: Any, name: str) -> str:
    values = {k.lower(): v for k, v in response.headers.items()}.get(name, [""])
    return str(values[0] if isinstance(values, list) else values)


def _problem(case: schemathesis.Case, response: Any) -> str | None:
    """What is wrong with one answer, if anything."""
    where = f"{case.method} {case.formatted_path}"
    if response.status_code >= 500:
        return f"{where}: {response.status_code} body={case.body!r:.500} query={case.query!r}"
    if response.status_code >= 400:
        content_type = _header(response, "content-type")
        if not content_type.startswith("application/fhir+json"):
            return f"{where}: {response.status_code} as {content_type!r}"
        if response.json().get("resourceType") != "OperationOutcome":
            return f"{where}: {response.status_code} without an OperationOutcome"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_makes_a_5xx(app: Flask, store: Store, mode: GenerationMode) -> None:
    """Generated requests for every documented operation never get a 5xx, and each error body is
    an OperationOutcome."""
    key = create_api_key(store, "fuzz", SCOPES)  # every scope: reach the handlers, not just auth
    # Both ways of presenting the key, so that a generated header for one scheme cannot displace it.
    headers = {"Authorization": f"Bearer {key}", "X-API-Key": key}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=headers)
    problems: list[str] = []
    operations = fuzzed = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            problem = _problem(case, case.call(headers=headers))
            if problem is not None:
                problems.append(problem)

        try:
            call()
        except Unsatisfiable:  # nothing to make invalid (no parameters, no body): nothing to send
            assert mode is GenerationMode.NEGATIVE
            continue
        fuzzed += 1
    assert operations >= 10
    assert fuzzed >= 8
    assert problems == []
