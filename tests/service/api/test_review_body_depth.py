"""Review finding 7, service side: ``POST /v1/consents`` takes a consent at the nesting limit.

Each provision level costs two JSON levels (its object and its ``provisions`` array), so a consent
32 levels deep needs about 70 levels of JSON in a list; the body cap was 64, refusing consents from
about 31 levels with "JSON nested deeper than 64 levels". The cap is 128 now: still a hard cap.
"""

from __future__ import annotations

import json
from typing import Any

from fhir_alliance_service.api.body import MAX_DEPTH
from flask.testing import FlaskClient

from fhir_alliance.schemas.consent import MAX_PROVISION_DEPTH
from tests.schemas.test_review_depth import deep_consent

Headers = dict[str, dict[str, str]]


def _at_the_limit(levels: int) -> dict[str, Any]:
    """A consent ``levels`` deep whose deepest provision holds the deepest elements the form has
    (an actor's role and reference, a data reference)."""
    data = deep_consent(levels)
    deepest = data["provision"]
    while deepest.get("provisions"):
        deepest = deepest["provisions"][0]
    deepest["actors"] = [
        {
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP",
            },
            "reference": {"reference": "Organization/ehr"},
        }
    ]
    deepest["data"] = [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}]
    return data


def _post(client: FlaskClient, headers: Headers, body: bytes) -> Any:
    return client.post(
        "/v1/consents",
        data=body,
        headers={**headers["write"], "Content-Type": "application/json"},
    )


def test_a_consent_at_the_nesting_limit_is_taken(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """32 levels, in a list: 201 (was 400, JSON nested deeper than 64 levels)."""
    body = json.dumps([_at_the_limit(MAX_PROVISION_DEPTH)]).encode()
    response = _post(client, auth_headers, body)
    assert response.status_code == 201, response.json


def test_one_level_more_is_refused_where_it_is(client: FlaskClient, auth_headers: Headers) -> None:
    """33 levels: 422 at the provision too deep (a consent error, not a JSON one)."""
    body = json.dumps([_at_the_limit(MAX_PROVISION_DEPTH + 1)]).encode()
    response = _post(client, auth_headers, body)
    assert response.status_code == 422, response.json
    [issue] = response.json["issue"]
    assert issue["expression"] == ["0.provision" + ".provisions.0" * (MAX_PROVISION_DEPTH + 1)]


def test_the_cap_is_still_a_hard_cap(client: FlaskClient, auth_headers: Headers) -> None:
    """One level past the cap, and a consent 400 levels deep: 400 from the JSON reader."""
    assert MAX_DEPTH == 128
    past = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    response = _post(client, auth_headers, past)
    assert response.status_code == 400
    assert f"nested deeper than {MAX_DEPTH} levels" in response.json["issue"][0]["details"]["text"]
    response = _post(client, auth_headers, json.dumps(deep_consent(400)).encode())
    assert response.status_code == 400
