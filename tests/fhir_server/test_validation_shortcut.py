"""The test server's validation shortcut (claimed profiles alone, no separate base R4 pass) refuses
exactly what the full validation refuses.

Mutated variants of every golden R4 resource that claims one of our profiles (elements removed,
wrong JSON types, empty strings, unknown codes, unknown elements) go into one transaction, once as
usual and once with ``X-Validate: full`` (base R4 first, then each profile, as before the shortcut).
Both answers must list the same errors for the same entries. Local only: the header is ours.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fhir_server.plugin import FhirTestServer

pytestmark = [pytest.mark.server_conformance, pytest.mark.local_fhir_server]

FHIR_JSON = {"Content-Type": "application/fhir+json"}
GOLDEN = Path(__file__).parents[1] / "golden"
PER_RESOURCE = 12


def golden_resources() -> list[dict[str, Any]]:
    found = []
    for path in sorted(GOLDEN.glob("*/r4/*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for resource in data if isinstance(data, list) else [data]:
            if resource.get("meta", {}).get("profile"):
                found.append(resource)
    return found


def paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if at == () and key in ("resourceType", "id", "meta"):
                continue
            yield (*at, key)
            yield from paths(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*at, i)
            yield from paths(item, (*at, i))


def mutated(resource: dict[str, Any], at: tuple[Any, ...], how: str) -> dict[str, Any] | None:
    out = copy.deepcopy(resource)
    parent: Any = out
    for step in at[:-1]:
        parent = parent[step]
    last = at[-1]
    value = parent[last]
    if how == "remove":
        del parent[last]
    elif how == "wrong type":
        parent[last] = 7 if isinstance(value, str) else "7" if not isinstance(value, dict) else [1]
    elif how == "empty" and isinstance(value, str):
        parent[last] = ""
    elif how == "unknown code" and isinstance(value, str) and last in ("code", "status"):
        parent[last] = "not-a-known-code"
    elif how == "unknown element" and isinstance(value, dict):
        value["notAnElement"] = True
    else:
        return None
    return out


def variants() -> list[dict[str, Any]]:
    chosen: list[dict[str, Any]] = []
    pick = random.Random(20261206)  # the same variants on every run
    for resource in golden_resources():
        mine = [resource]
        for at in paths(resource):
            for how in ("remove", "wrong type", "empty", "unknown code", "unknown element"):
                variant = mutated(resource, at, how)
                if variant is not None:
                    mine.append(variant)
        chosen += [resource, *pick.sample(mine[1:], min(PER_RESOURCE, len(mine) - 1))]
    return chosen


def errors(server: FhirTestServer, bundle: dict[str, Any], headers: dict[str, str]) -> Any:
    response = server.http.post(server.base_url, json=bundle, headers={**FHIR_JSON, **headers})
    assert response.status_code == 400, response.text[:500]
    issues = response.json()["issue"]
    return sorted(
        (tuple(i.get("expression", [])), i.get("code"), i.get("details", {}).get("text"))
        for i in issues
        if i["severity"] in ("error", "fatal")
    )


def test_shortcut_refuses_exactly_what_full_validation_refuses(
    fhir_server: FhirTestServer,
) -> None:
    """Every variant: the same errors (path, code, text) with the shortcut as with base-then-profile validation."""
    entries = []
    for n, variant in enumerate(variants()):
        body = {**variant, "id": f"variant-{n}"}
        rtype = body["resourceType"]
        entries.append(
            {"resource": body, "request": {"method": "PUT", "url": f"{rtype}/{body['id']}"}}
        )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    usual = errors(fhir_server, bundle, {})
    full = errors(fhir_server, bundle, {"X-Validate": "full"})
    assert usual == full
    refused = {path[0].split(".resource")[0] for path, _, _ in full if path}
    assert 100 < len(refused) < len(entries) - 20  # many refused, many accepted: not vacuous
