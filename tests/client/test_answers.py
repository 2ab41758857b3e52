"""Answers that are not what the request asked for become the documented error or outcome."""

import logging

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance.client import BundleRequest, FhirClient, RetryPolicy
from fhir_alliance.errors import InvalidResponseError

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


@pytest.fixture
def client(httpserver: HTTPServer) -> FhirClient:
    return FhirClient(httpserver.url_for("/fhir"), retry=RetryPolicy(max_attempts=1))


@pytest.mark.parametrize("entry", [7, "entries", {"resource": OBS}, True])
def test_search_bundle_with_a_non_list_entry_is_invalid(
    httpserver: HTTPServer, client: FhirClient, entry: object
) -> None:
    """Bundle.entry that is not a list: InvalidResponseError naming it, never a TypeError."""
    httpserver.expect_request("/fhir/Observation").respond_with_json(
        {"resourceType": "Bundle", "type": "searchset", "entry": entry}
    )
    with pytest.raises(InvalidResponseError) as caught:
        list(client.search("Observation"))
    assert "Bundle.entry" in caught.value.message


@pytest.mark.parametrize("item", [7, {"resource": OBS, "search": "match"}])
def test_search_bundle_with_a_malformed_entry_is_invalid(
    httpserver: HTTPServer, client: FhirClient, item: object
) -> None:
    """An entry that is not an object, or whose search is not an object: InvalidResponseError."""
    httpserver.expect_request("/fhir/Observation").respond_with_json(
        {"resourceType": "Bundle", "type": "searchset", "entry": [item]}
    )
    with pytest.raises(InvalidResponseError) as caught:
        list(client.search("Observation"))
    assert "Bundle.entry[0]" in caught.value.message


def test_read_answered_with_another_type_is_invalid(
    httpserver: HTTPServer, client: FhirClient
) -> None:
    """read("Observation", id) answered with a Patient: InvalidResponseError, not the Patient."""
    httpserver.expect_request("/fhir/Observation/o1").respond_with_json(
        {"resourceType": "Patient", "id": "o1"}
    )
    with pytest.raises(InvalidResponseError) as caught:
        client.read("Observation", "o1")
    assert "Patient" in caught.value.message and "Observation" in caught.value.message


@pytest.mark.parametrize("body", ['{"resourceType": "Observ', "<html>Created</html>", "[1, 2]"])
def test_201_with_an_unreadable_body_is_still_created(
    httpserver: HTTPServer, client: FhirClient, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A create answered 201 with a broken body: created, id and version from Location, a warning."""
    location = httpserver.url_for("/fhir/Observation/new-1/_history/3")
    httpserver.expect_request("/fhir/Observation", method="POST").respond_with_data(
        body, status=201, headers={"Location": location}, content_type="application/fhir+json"
    )
    caplog.set_level(logging.WARNING, logger="fhir_alliance.client")
    result = client.create(OBS)
    assert result.created and result.id == "new-1" and result.version_id == "3"
    assert result.resource is None and result.warnings
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_update_answered_with_an_unreadable_body_keeps_its_id(
    httpserver: HTTPServer, client: FhirClient
) -> None:
    """A PUT answered 200 with a broken body and an ETag: updated, with the id sent and the ETag's version."""
    httpserver.expect_request("/fhir/Observation/o1", method="PUT").respond_with_data(
        "not json", status=200, headers={"ETag": 'W/"4"'}
    )
    result = client.update(OBS | {"id": "o1"})
    assert result.status == 200 and result.id == "o1" and result.version_id == "4"
    assert result.warnings


def test_200_with_an_unreadable_body_and_no_location_is_still_an_error(
    httpserver: HTTPServer, client: FhirClient
) -> None:
    """A conditional create answered 200 with no Location and a broken body names no resource: error."""
    httpserver.expect_request("/fhir/Observation", method="POST").respond_with_data(
        "not json", status=200
    )
    with pytest.raises(InvalidResponseError):
        client.create(OBS, if_none_exist={"identifier": "urn:x|1"})


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("http://evil.example/fhir/Patient/o1/_history/2", "names a Patient, not the Observation"),
        ("/fhir/Observation/../Patient/p1/_history/2", "dot or encoded-slash"),
        ("/fhir/Patient/p1/_history/2", "names a Patient, not the Observation sent"),
        ("/fhir/Observation/p1/_history/2", "names another Observation than the one sent"),
        ("/fhir/Observation/o1/_history/2;junk", "invalid versionId"),
    ],
)
def test_a_write_answered_with_a_hostile_location_is_invalid(
    httpserver: HTTPServer, client: FhirClient, location: str, why: str
) -> None:
    """update() answered 200 with a Location outside the base, of another type or id, or with a
    junk version: InvalidResponseError, and nothing else is requested."""
    if location.startswith("/"):
        location = httpserver.url_for(location)
    httpserver.expect_request("/fhir/Observation/o1", method="PUT").respond_with_json(
        OBS | {"id": "o1", "meta": {"versionId": "2"}}, headers={"Location": location}
    )
    with pytest.raises(InvalidResponseError) as caught:
        client.update(OBS | {"id": "o1"})
    assert why in caught.value.message and "write answer's location" in caught.value.message
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Observation/o1"]


def test_a_write_answered_with_a_proxied_location_reads_its_version(
    httpserver: HTTPServer, client: FhirClient
) -> None:
    """A server behind a proxy answers with a Location under its internal address: the version
    is read from it (the resource sent, checked as usual) and nothing is requested there."""
    httpserver.expect_request("/fhir/Observation/o1", method="PUT").respond_with_json(
        OBS | {"id": "o1"},
        headers={"Location": "http://fhir-internal:8080/fhir/Observation/o1/_history/7"},
    )
    written = client.update(OBS | {"id": "o1"})
    assert (written.resource_type, written.id, written.version_id) == ("Observation", "o1", "7")
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Observation/o1"]


def test_a_transaction_entry_with_a_hostile_location_is_an_error_not_an_id(
    httpserver: HTTPServer, client: FhirClient
) -> None:
    """A transaction-response whose entry names another resource than the one PUT: it carries an
    InvalidResponseError and no id; the entry beside it is read as usual."""
    entries = [
        {"response": {"status": "200 OK", "location": "https://evil.example/fhir/Observation/z"}},
        {"response": {"status": "201 Created", "location": "Observation/b/_history/1"}},
    ]
    httpserver.expect_request("/fhir", method="POST").respond_with_json(
        {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    )
    bad, good = client.transaction(
        [BundleRequest.put(OBS | {"id": "a"}), BundleRequest.put(OBS | {"id": "b"})]
    )
    assert isinstance(bad.error, InvalidResponseError) and bad.id is None and not bad.ok
    assert good.ok and (good.id, good.version_id) == ("b", "1")
