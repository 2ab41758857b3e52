"""POST /v1/consents and /v1/records take our JSON form only: a FHIR Consent (its ``resourceType``
spelt right or not) or a record of ours with a ``resourceType`` or a misspelt ``kind`` beside a
valid consent is 422 naming the field path, and nothing is stored. Nothing there is passed over."""

from __future__ import annotations

from typing import Any

import pytest
from fhir_alliance_service.store.interface import Store
from flask.testing import FlaskClient

from fhir_alliance.mapping.consent import to_consent
from fhir_alliance.schemas.consent import load_consent
from tests.service.usecases.payloads import plain_restriction, plain_sharing

Headers = dict[str, dict[str, str]]
ROUTES = ["/v1/consents", "/v1/records"]


def _fhir_restriction(resource_type: str) -> dict[str, Any]:
    """The restriction as an R4 FHIR Consent, its resourceType spelt ``resource_type``."""
    resource = to_consent(load_consent(plain_restriction()))
    resource["resourceType"] = resource_type
    return resource


def _refused(response: Any) -> set[str]:
    assert response.status_code == 422, (response.status_code, response.get_data(as_text=True))
    assert response.json["resourceType"] == "OperationOutcome"
    return {e for issue in response.json["issue"] for e in issue.get("expression", [])}


@pytest.mark.parametrize("url", ROUTES)
@pytest.mark.parametrize("spelling", ["Consent", "consent", "Consent ", "CONSENT"])
def test_a_fhir_consent_beside_ours_is_refused_at_kind(
    client: FlaskClient, auth_headers: Headers, store: Store, url: str, spelling: str
) -> None:
    """A FHIR Consent (the API reads none, whatever its resourceType) in a list with a sharing
    consent: 422 at ``1.kind``, and the sharing consent is not stored either."""
    body = [plain_sharing(), _fhir_restriction(spelling)]
    response = client.post(url, json=body, headers=auth_headers["write"])
    assert "1.kind" in _refused(response)
    assert store.list_records() == []


@pytest.mark.parametrize("url", ROUTES)
@pytest.mark.parametrize("spelling", ["Consent", "consent", "Consent "])
def test_a_resource_type_on_our_record_is_refused_at_its_path(
    client: FlaskClient, auth_headers: Headers, store: Store, url: str, spelling: str
) -> None:
    """Our restriction with a ``resourceType`` key added: an unknown field, 422 at
    ``1.resourceType``."""
    restriction = {**plain_restriction(), "resourceType": spelling}
    response = client.post(url, json=[plain_sharing(), restriction], headers=auth_headers["write"])
    assert _refused(response) == {"1.resourceType"}
    assert store.list_records() == []


@pytest.mark.parametrize("url", ROUTES)
@pytest.mark.parametrize("kind", ["Consent", "consent ", "CONSENT", "consent-Revocation"])
def test_a_misspelt_kind_is_refused_at_its_path(
    client: FlaskClient, auth_headers: Headers, store: Store, url: str, kind: str
) -> None:
    """Our restriction with its ``kind`` misspelt: 422 at ``1.kind``, never read as another kind
    nor passed over."""
    restriction = {**plain_restriction(), "kind": kind}
    response = client.post(url, json=[plain_sharing(), restriction], headers=auth_headers["write"])
    assert _refused(response) == {"1.kind"}
    assert store.list_records() == []
