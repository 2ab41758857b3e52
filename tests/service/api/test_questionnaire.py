"""/v1/questionnaire-responses: a FHIR QuestionnaireResponse in, alliance records out."""

from __future__ import annotations

from typing import Any

import pytest
from fhir_alliance_service.store.interface import Store
from flask.testing import FlaskClient

from tests.service.usecases.payloads import srs_questionnaire_response

Headers = dict[str, dict[str, str]]
URL = "/v1/questionnaire-responses"


def test_questionnaire_response_is_extracted_and_stored(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """An SRS response becomes one instrument administration of the answered items, queued."""
    response = client.post(
        URL,
        json=srs_questionnaire_response("Patient/p3"),
        headers={**auth_headers["write"], "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 201, response.json
    [entry] = response.json["records"]
    assert (entry["kind"], entry["identifier"]) == (
        "instrument-administration",
        "https://clinic.example.org/qr|qr-1",
    )
    stored = store.get_record(entry["id"])
    assert stored is not None
    assert stored.patient == "Patient/p3"
    assert sorted(stored.body["responses"]) == ["1", "2", "4"]


def test_the_same_response_twice_is_200_unchanged(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """Re-posting the same QuestionnaireResponse changes nothing."""
    qr = srs_questionnaire_response()
    assert client.post(URL, json=qr, headers=auth_headers["write"]).status_code == 201
    again = client.post(URL, json=qr, headers=auth_headers["write"])
    assert again.status_code == 200
    assert again.json["records"][0]["outcome"] == "unchanged"


def test_a_bad_answer_names_its_element_and_stores_nothing(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A text answer to a numeric SRS item: 422 at the answer's element path; nothing stored."""
    qr = srs_questionnaire_response()
    qr["item"][0]["answer"] = [{"valueString": "great"}]
    response = client.post(URL, json=qr, headers=auth_headers["write"])
    assert response.status_code == 422
    expressions = [e for issue in response.json["issue"] for e in issue["expression"]]
    assert expressions == ["QuestionnaireResponse.item[0].answer[0]"]
    assert store.list_records() == []


def test_a_response_of_an_unknown_questionnaire_is_refused(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A response to a questionnaire that is not ours yields no records: 422, nothing stored."""
    qr = srs_questionnaire_response()
    qr["questionnaire"] = "https://example.org/Questionnaire/phq-9"
    response = client.post(URL, json=qr, headers=auth_headers["write"])
    assert response.status_code == 422
    assert store.list_records() == []


def test_a_response_without_answers_is_422_at_its_items(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """No item of the SRS answered: 422 at ``QuestionnaireResponse.item``, an element path as
    every other issue of a response (it was plain ``item``); nothing stored."""
    qr = srs_questionnaire_response()
    qr["item"] = [{"linkId": str(n)} for n in range(1, 5)]
    response = client.post(URL, json=qr, headers=auth_headers["write"])
    assert response.status_code == 422
    expressions = [e for issue in response.json["issue"] for e in issue["expression"]]
    assert expressions == ["QuestionnaireResponse.item"]
    assert store.list_records() == []


def test_posting_a_response_needs_the_write_scope(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """A read key may not post a QuestionnaireResponse."""
    response = client.post(URL, json=srs_questionnaire_response(), headers=auth_headers["read"])
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("element", "value", "path"),
    [
        ("authored", "2099-01-01T00:00:00+00:00", "QuestionnaireResponse.authored"),
        ("subject", {"reference": "<b>x</b>"}, "QuestionnaireResponse.subject.reference"),
        ("identifier", {"system": "urn:x", "value": "a b"}, "QuestionnaireResponse.identifier"),
    ],
)
def test_problems_of_the_extracted_records_name_the_response_element(
    client: FlaskClient, auth_headers: Headers, store: Store, element: str, value: Any, path: str
) -> None:
    """A future authored time, a hostile subject or a bad identifier is reported at the
    QuestionnaireResponse element it came from, not at the extracted record's field."""
    qr = srs_questionnaire_response()
    qr[element] = value
    response = client.post(URL, json=qr, headers=auth_headers["write"])
    assert response.status_code == 422
    assert [e for issue in response.json["issue"] for e in issue["expression"]] == [path]
    assert store.list_records() == []


def test_an_item_number_too_long_to_convert_is_422_at_its_link_id(
    client: FlaskClient, auth_headers: Headers, store: Store
) -> None:
    """A numeric ``linkId`` of 5000 digits (more than Python makes an int of) is no item of the
    instrument: 422 at that ``linkId`` like any unknown item, not a 500; nothing stored."""
    qr = srs_questionnaire_response()
    qr["item"][1]["linkId"] = "9" * 5000
    response = client.post(URL, json=qr, headers=auth_headers["write"])
    assert response.status_code == 422
    [issue] = response.json["issue"]
    assert issue["expression"] == ["QuestionnaireResponse.item[1].linkId"]
    assert issue["details"]["text"] == "no such item in the instrument"
    assert store.list_records() == []
