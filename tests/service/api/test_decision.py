"""/v1/patients/<ref>/decision: permit, deny and no-consent from the stored consents, explained."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.service.usecases.payloads import EHR, plain_restriction, plain_sharing

Headers = dict[str, dict[str, str]]
AT = "2025-06-01T00:00:00+00:00"


def _decide(client: FlaskClient, headers: Headers, patient: str, **query: str) -> Any:
    params = {"recipient": EHR, "purpose": "TREAT", "at": AT, **query}
    return client.get(
        f"/v1/patients/{patient}/decision", query_string=params, headers=headers["read"]
    )


def test_permit_with_the_deciding_consent_and_explanation(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """A sharing consent permits the EHR for TREAT: basis names the consent and provision."""
    client.post("/v1/consents", json=plain_sharing(), headers=auth_headers["write"])
    response = _decide(client, auth_headers, "Patient/p1")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["decision"] == "permit"
    assert body["basis"] == [
        {
            "consent": "https://clinic.example.org/consents|c-plain-1",
            "provision": "root",
            "decision": "permit",
            "consent_date": body["basis"][0]["consent_date"],
        }
    ]
    assert body["explanation"].startswith("decision: permit")
    assert body["unreadable_consents"] == 0


def test_deny_when_a_restriction_names_the_recipient(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """A restriction of the recipient denies, and the explanation names the restriction."""
    client.post(
        "/v1/consents", json=[plain_sharing(), plain_restriction()], headers=auth_headers["write"]
    )
    response = _decide(client, auth_headers, "Patient/p1")
    assert response.status_code == 200
    assert response.json["decision"] == "deny"
    assert "r-plain-1" in response.json["explanation"]


def test_no_consent_for_a_patient_without_consents(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """A patient with no stored consent gets ``no-consent``."""
    client.post("/v1/consents", json=plain_sharing(), headers=auth_headers["write"])
    response = _decide(client, auth_headers, "Patient/p2")
    assert response.status_code == 200
    assert response.json["decision"] == "no-consent"
    assert response.json["basis"] == []


def test_a_patient_named_by_identifier_token(client: FlaskClient, auth_headers: Headers) -> None:
    """A patient filed under ``system|value`` is found when the token is percent-encoded in the path."""
    sharing = plain_sharing()
    sharing["patient"] = {"identifier": "urn:oid:1.2.3|mrn-77"}
    sharing["grantor"] = {"identifier": "urn:oid:1.2.3|mrn-77"}
    client.post("/v1/consents", json=sharing, headers=auth_headers["write"])
    response = _decide(client, auth_headers, "urn:oid:1.2.3%7Cmrn-77")
    assert response.status_code == 200, response.json
    assert response.json["decision"] == "permit"


def test_unknown_purpose_action_and_missing_recipient_name_their_parameter(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """Bad query parameters answer 422 with the parameter as the issue's expression."""
    cases = [
        ({"purpose": "SELL"}, {"purpose"}),
        ({"action": "sell"}, {"action"}),
        ({"recipient": "<script>alert(1)</script>"}, {"recipient"}),
        ({"at": "yesterday"}, {"at"}),
        ({"at": "2025-06-01T00:00:00"}, {"at"}),
        ({"colour": "blue"}, {"colour"}),
    ]
    for query, paths in cases:
        response = _decide(client, auth_headers, "Patient/p1", **query)
        assert response.status_code == 422, query
        assert {e for i in response.json["issue"] for e in i["expression"]} == paths, query
    missing = client.get(
        "/v1/patients/Patient/p1/decision?purpose=TREAT", headers=auth_headers["read"]
    )
    assert missing.status_code == 422
    assert missing.json["issue"][0]["expression"] == ["recipient"]


def test_decision_needs_the_read_scope(client: FlaskClient, auth_headers: Headers) -> None:
    """A consult key (for the CDS consult only) cannot call the decision route."""
    response = client.get(
        "/v1/patients/Patient/p1/decision",
        query_string={"recipient": EHR, "purpose": "TREAT"},
        headers=auth_headers["consult"],
    )
    assert response.status_code == 403


def test_a_decision_before_a_revocation_of_a_consent_without_history_still_permits(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """A sharing consent stored without a history (active since its date, 2025-03-01), revoked
    through the API on 2025-07-01: asked at 2025-06-01 the answer is still permit, naming the
    consent; asked after the revocation it is no-consent."""
    sharing = plain_sharing()
    del sharing["history"]
    posted = client.post("/v1/consents", json=sharing, headers=auth_headers["write"])
    assert posted.status_code == 201, posted.json
    consent_id = posted.json["records"][0]["id"]
    assert _decide(client, auth_headers, "Patient/p1").json["decision"] == "permit"
    revoked = client.post(
        f"/v1/consents/{consent_id}/revoke",
        json={"at": "2025-07-01T00:00:00+00:00"},
        headers=auth_headers["write"],
    )
    assert revoked.status_code == 200, revoked.json
    before = _decide(client, auth_headers, "Patient/p1")
    assert before.status_code == 200, before.json
    assert before.json["decision"] == "permit"
    assert [b["consent"] for b in before.json["basis"]] == [sharing["id"]]
    after = _decide(client, auth_headers, "Patient/p1", at="2025-07-02T00:00:00+00:00")
    assert (after.json["decision"], after.json["basis"]) == ("no-consent", [])
