"""One consent, one record, however its identifier is spelt: a revoked version posted under
another spelling of the consent's identifier (an http(s) host in another case, ``URN:OID:``) is a
new version of the stored consent, not a second consent beside it. Before, each spelling was a
record of its own and the older, active version's permit still answered (fail open)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir_alliance_service.store.interface import NewRecord, PulledResource, Store
from fhir_alliance_service.sync.pull import foreign_record_id
from fhir_alliance_service.usecases.intake import content_hash
from flask.testing import FlaskClient

from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from tests.service.usecases.payloads import EHR, plain_sharing

Headers = dict[str, dict[str, str]]
AT = "2025-06-01T00:00:00+00:00"
REVOKED_AT = "2025-05-01T00:00:00+00:00"
PULLED_AT = datetime(2025, 4, 1, tzinfo=UTC)


def _revoked(sharing: dict[str, Any], identifier: str) -> dict[str, Any]:
    """``sharing``'s next version under ``identifier``: revoked on 2025-05-01 by the patient."""
    out = dict(sharing, id=identifier, status="revoked")
    out["history"] = [
        *sharing["history"],
        {
            "status": "revoked",
            "at": REVOKED_AT,
            "by": {"reference": "Patient/p1", "type": "Patient"},
        },
    ]
    return out


SERVER = "https://ehr.example.org/fhir"


def _pulled(
    store: Store,
    body: dict[str, Any],
    state: str | None,
    *,
    resource: str = "c1",
    patient: str = "Patient/p1",
    server: str = SERVER,
) -> str:
    """``body`` stored as the pull stores Consent ``resource`` of ``server`` (filed under
    ``patient`` and the record id the pull gives it, not its identifier's), its pulled row in
    ``state`` (None: no row); its record id."""
    dumped = CONSENT_MAPPER.dump(CONSENT_MAPPER.load(body))
    record = NewRecord(
        record_id=foreign_record_id(server, resource),
        identifier=body["id"],
        kind="consent",
        family="consent",
        patient=patient,
        body=dumped,
        content_hash=content_hash(dumped),
    )
    store.put_remote_records([record], origin=server, audit=[], at=PULLED_AT)
    if state is not None:
        row = PulledResource(
            server=server,
            resource_type="Consent",
            resource_id=resource,
            version_id="1",
            last_updated="2026-11-01T09:00:00.000Z",
            patient=patient,
            record_id=record.record_id,
            origin="foreign",
            state=state,
        )
        store.save_pulled([row], at=PULLED_AT)
    return record.record_id


def _decide(client: FlaskClient, headers: Headers) -> Any:
    return client.get(
        "/v1/patients/Patient/p1/decision",
        query_string={"recipient": EHR, "purpose": "TREAT", "at": AT},
        headers=headers["read"],
    )


#: (the identifier the active consent is posted under, its revoked version's): spellings of one URI.
SPELLINGS = [
    pytest.param(
        "https://clinic.example.org/consents|c-plain-1",
        "HTTPS://Clinic.Example.ORG/consents|c-plain-1",
        id="host-case",
    ),
    pytest.param(
        "URN:OID:2.16.840.1.113883.3.9999.7|c-plain-1",
        "urn:oid:2.16.840.1.113883.3.9999.7|c-plain-1",
        id="oid-case",
    ),
]


@pytest.mark.parametrize(("first", "second"), SPELLINGS)
def test_a_revoked_version_under_another_spelling_never_leaves_the_permit_answering(
    client: FlaskClient, auth_headers: Headers, first: str, second: str
) -> None:
    """An active sharing consent, then its revoked version posted under another spelling of its
    identifier: the decision is no permit."""
    sharing = dict(plain_sharing(), id=first)
    posted = client.post("/v1/consents", json=sharing, headers=auth_headers["write"])
    assert posted.status_code == 201, posted.json
    assert _decide(client, auth_headers).json["decision"] == "permit"
    client.post("/v1/consents", json=_revoked(sharing, second), headers=auth_headers["write"])
    decided = _decide(client, auth_headers)
    assert decided.status_code == 200, decided.json
    assert decided.json["decision"] != "permit", decided.json


def test_the_same_consent_under_two_spellings_is_read_once(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """The same consent posted under two spellings of its identifier permits, and the basis names
    it once."""
    first, second = SPELLINGS[0].values
    sharing = dict(plain_sharing(), id=first)
    for identifier in (first, second):
        posted = client.post(
            "/v1/consents", json=dict(sharing, id=identifier), headers=auth_headers["write"]
        )
        assert posted.status_code in (200, 201), posted.json
    decided = _decide(client, auth_headers).json
    assert (decided["decision"], decided["unreadable_consents"]) == ("permit", 0)
    assert len(decided["basis"]) == 1
    assert decided["basis"][0]["consent"] in (first, second)


@pytest.mark.parametrize(("first", "second"), SPELLINGS)
def test_a_version_under_another_spelling_is_a_new_version_of_the_stored_consent(
    client: FlaskClient, auth_headers: Headers, first: str, second: str
) -> None:
    """The revoked version posted under another spelling of the identifier is version 2 of the
    consent's record, kept under the spelling it was first posted with: the revocation decides."""
    sharing = dict(plain_sharing(), id=first)
    posted = client.post("/v1/consents", json=sharing, headers=auth_headers["write"])
    revoked = client.post(
        "/v1/consents", json=_revoked(sharing, second), headers=auth_headers["write"]
    )
    assert revoked.status_code == 201, revoked.json
    [record] = revoked.json["records"]
    assert (record["id"], record["version"]) == (posted.json["records"][0]["id"], 2)
    assert record["identifier"] == first
    decided = _decide(client, auth_headers).json
    assert (decided["decision"], decided["unreadable_consents"]) == ("no-consent", 0)


def test_two_spellings_of_one_identifier_in_one_batch_are_refused(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """One batch holding a consent under two spellings of its identifier is one record twice:
    refused at the second one's id, nothing stored."""
    first, second = SPELLINGS[0].values
    sharing = dict(plain_sharing(), id=first)
    response = client.post(
        "/v1/consents", json=[sharing, _revoked(sharing, second)], headers=auth_headers["write"]
    )
    assert response.status_code == 422, response.json
    assert [i["expression"] for i in response.json["issue"]] == [["1.id"]]
    assert _decide(client, auth_headers).json["decision"] == "no-consent"


@pytest.mark.parametrize(("first", "second"), SPELLINGS)
def test_a_revoked_version_posted_of_a_pulled_consent_never_leaves_its_permit_answering(
    client: FlaskClient, auth_headers: Headers, store: Store, first: str, second: str
) -> None:
    """The EHR's active sharing consent pulled (stored as the pull stores it, its copy standing
    on the server), then its revoked version posted here: two versions of one consent, both
    unreadable, the decision is no permit. The same consent posted as it is permits."""
    sharing = dict(plain_sharing(), id=first)
    _pulled(store, sharing, "merged")
    assert _decide(client, auth_headers).json["decision"] == "permit"
    posted = client.post(
        "/v1/consents", json=_revoked(sharing, second), headers=auth_headers["write"]
    )
    assert posted.status_code == 201, posted.json
    decided = _decide(client, auth_headers)
    assert decided.status_code == 200, decided.json
    assert (decided.json["decision"], decided.json["unreadable_consents"]) == ("deny", 2)


@pytest.mark.parametrize(("first", "second"), SPELLINGS)
def test_two_pulled_versions_of_one_consent_never_leave_the_permit_answering(
    client: FlaskClient, auth_headers: Headers, store: Store, first: str, second: str
) -> None:
    """The EHR's active sharing consent and its revoked version, both pulled (stored as the pull
    stores them, both copies standing on the server): two versions of one consent, both
    unreadable, the decision is no permit."""
    sharing = dict(plain_sharing(), id=first)
    _pulled(store, sharing, "merged")
    assert _decide(client, auth_headers).json["decision"] == "permit"
    _pulled(store, _revoked(sharing, second), "merged", resource="c2")
    decided = _decide(client, auth_headers)
    assert decided.status_code == 200, decided.json
    assert (decided.json["decision"], decided.json["unreadable_consents"]) == ("deny", 2)
