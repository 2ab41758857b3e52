"""Building Bundles and reading their answers back onto the requests that caused them."""

import pytest

from fhir_alliance.client.bundles import (
    BundleRequest,
    build_bundle,
    entry_outcomes,
    parse_location,
    search_token,
)
from fhir_alliance.client.links import BaseUrl
from fhir_alliance.client.retry import Replay
from fhir_alliance.errors import InputError, InvalidResponseError, ServerError

OBS = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}
BASE = BaseUrl.parse("https://h/fhir")


def test_build_bundle_entries() -> None:
    """create drops the id and gets a urn:uuid fullUrl; put carries If-Match as a weak ETag."""
    bundle = build_bundle(
        "transaction",
        [
            BundleRequest.create(OBS, if_none_exist={"identifier": "urn:x|1"}),
            BundleRequest.put(OBS, if_match="3"),
            BundleRequest.delete("Observation", "o2"),
        ],
    )
    create, put, delete = bundle["entry"]
    assert "id" not in create["resource"] and create["fullUrl"].startswith("urn:uuid:")
    assert create["request"] == {
        "method": "POST",
        "url": "Observation",
        "ifNoneExist": "identifier=urn%3Ax%7C1",
    }
    assert put["request"] == {"method": "PUT", "url": "Observation/o1", "ifMatch": 'W/"3"'}
    assert delete == {"request": {"method": "DELETE", "url": "Observation/o2"}}


def test_bad_requests_name_the_field() -> None:
    """A PUT without id or a resource without resourceType is an InputError with the path."""
    with pytest.raises(InputError) as caught:
        BundleRequest.put({"resourceType": "Observation"})
    assert caught.value.issues[0].path == "id"
    with pytest.raises(InputError) as caught:
        BundleRequest.create({"status": "final"})
    assert caught.value.issues[0].path == "resourceType"


def test_replay_of_bundle_entries() -> None:
    """PUT/DELETE are idempotent, conditional create only if refused, plain POST never."""
    assert BundleRequest.put(OBS).replay is Replay.IDEMPOTENT
    assert (
        BundleRequest.create(OBS, if_none_exist={"identifier": "a|b"}).replay is Replay.IF_REFUSED
    )
    assert BundleRequest.create(OBS).replay is Replay.NEVER
    assert Replay.weakest([Replay.IDEMPOTENT, Replay.NEVER]) is Replay.NEVER


def test_entry_outcomes_map_in_order() -> None:
    """Each response entry lands on its request: ids and versions from location or etag; errors typed."""
    requests = [BundleRequest.create(OBS), BundleRequest.put(OBS, if_match="1")]
    response = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {
                "response": {
                    "status": "201 Created",
                    "location": "https://h/fhir/Observation/n1/_history/1",
                }
            },
            {
                "response": {
                    "status": "412 Precondition Failed",
                    "outcome": {"resourceType": "OperationOutcome", "issue": []},
                }
            },
        ],
    }

    def error_for(status: int, outcome: object, request: BundleRequest) -> ServerError:
        return ServerError(f"{status} {request.method}", status=status)

    outcomes = entry_outcomes(response, requests, base=BASE, offset=10, error_for=error_for)
    assert [o.index for o in outcomes] == [10, 11]
    assert outcomes[0].ok and (outcomes[0].id, outcomes[0].version_id) == ("n1", "1")
    assert outcomes[0].etag == 'W/"1"'
    assert not outcomes[1].ok and outcomes[1].error is not None
    assert outcomes[1].error.message == "412 PUT" and outcomes[1].outcome is not None


def test_entry_count_mismatch_is_refused() -> None:
    """An answer with fewer entries than sent cannot be mapped back: InvalidResponseError."""
    response = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    with pytest.raises(InvalidResponseError):
        entry_outcomes(response, [BundleRequest.create(OBS)], base=BASE)
    with pytest.raises(InvalidResponseError):
        entry_outcomes({"resourceType": "Bundle", "type": "searchset"}, [], base=BASE)


def test_parse_location_and_search_token() -> None:
    """Locations give type/id/version (relative to the base or absolute inside it); a path of
    another shape names no resource; token search escapes \\ , $ and |."""
    assert parse_location("Observation/1/_history/2", BASE, source="x") == ("Observation", "1", "2")
    assert parse_location("https://h/fhir/Consent/abc", BASE, source="x") == (
        "Consent",
        "abc",
        None,
    )
    assert parse_location("https://H:443/fhir/Consent/abc?x#y", BASE, source="x") == (
        "Consent",
        "abc",
        None,
    )
    assert parse_location("Consent?identifier=a", BASE, source="x") is None
    assert parse_location("https://h/fhir/Consent", BASE, source="x") is None
    assert search_token("urn:a", "x|y,z$\\") == "urn:a|x\\|y\\,z\\$\\\\"


@pytest.mark.parametrize(
    "location",
    [
        "https://internal.example:8080/fhir/Observation/o1/_history/3",
        "http://h/fhir/Observation/o1/_history/3",
        "https://h:8443/fhir/Observation/o1/_history/3",
        "https://h/other/base/Observation/o1/_history/3",
        "//internal.example/fhir/Observation/o1/_history/3",
    ],
)
def test_a_location_under_another_origin_gives_its_trailing_type_id_and_version(
    location: str,
) -> None:
    """A server behind a proxy names itself by its internal address: the location is only read,
    never requested, so its trailing Type/id/_history/vid is taken, checked like any other (the
    type and id sent); another shape there names nothing."""
    assert parse_location(
        location, BASE, source="x", resource_type="Observation", resource_id="o1"
    ) == ("Observation", "o1", "3")
    assert parse_location("https://internal.example/fhir/Observation", BASE, source="x") is None


#: Locations a hostile or broken server could answer a write of ``Observation/o1`` with, and
#: what the refusal says.
HOSTILE_LOCATIONS = [
    ("../Patient/p1", "refused: dot or encoded-slash"),
    ("Observation/../Patient/p1", "refused: dot or encoded-slash"),
    ("https://h/fhir/Observation/%2e%2e/Patient/p1", "refused: dot or encoded-slash"),
    ("https://evil.example/fhir/Patient/p1/_history/1", "names a Patient, not the Observation"),
    ("https://evil.example/fhir/Observation/o2", "names another Observation than the one sent"),
    ("https://evil.example/fhir/Observation/../Patient/p1", "refused: dot or encoded-slash"),
    ("https://u:pw@evil.example/fhir/Observation/o1", "refused: it carries credentials"),
    ("//evil.example/fhir/Observation/o1%2Fx", "refused: dot or encoded-slash"),
    ("Patient/o1/_history/1", "names a Patient, not the Observation sent"),
    ("https://h/fhir/Observation/o%201", "invalid FHIR id"),
    ("Observation/o1;x=1/_history/1", "invalid FHIR id"),
    ("Observation/" + "x" * 65, "invalid FHIR id"),
    ("Observation/o2/_history/1", "names another Observation than the one sent"),
    ("Observation/o1/_history/1%0d%0aX-Injected:%201", "invalid versionId"),
    ("Observation/o1/_history/1%20junk", "invalid versionId"),
    ("observation/o1", "names no resource type"),
]


@pytest.mark.parametrize(("location", "why"), HOSTILE_LOCATIONS)
def test_parse_location_refuses_what_is_not_the_resource_sent(location: str, why: str) -> None:
    """A location outside the base, of another type or id than the request's, or with an id
    or version that is not FHIR's id syntax: InvalidResponseError naming where it came from,
    never quoting it."""
    with pytest.raises(InvalidResponseError) as caught:
        parse_location(
            location,
            BASE,
            source="the answer's location",
            resource_type="Observation",
            resource_id="o1",
        )
    message = caught.value.message
    assert message.startswith("the answer's location ") and why in message, message
    assert "evil" not in message and "junk" not in message and "p1" not in message


@pytest.mark.parametrize(("location", "why"), HOSTILE_LOCATIONS)
def test_a_hostile_location_fails_its_entry_and_names_no_id(location: str, why: str) -> None:
    """A 2xx batch entry whose location is refused: the entry is not ok, its error is that
    InvalidResponseError and it carries no id or version; the other entries are read as usual."""
    requests = [BundleRequest.put(OBS), BundleRequest.put(OBS | {"id": "o3"})]
    response = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"response": {"status": "200 OK", "location": location, "etag": 'W/"1"'}},
            {"response": {"status": "201 Created", "location": "Observation/o3/_history/1"}},
        ],
    }
    bad, good = entry_outcomes(response, requests, base=BASE)
    assert not bad.ok and isinstance(bad.error, InvalidResponseError) and why in bad.error.message
    assert (bad.resource_type, bad.id, bad.version_id, bad.etag) == (None, None, None, None)
    assert good.ok and (good.id, good.version_id) == ("o3", "1")


def _ok_entry(resource: dict[str, object] | None = None, etag: str | None = None) -> object:
    response = {"status": "200 OK"} | ({"etag": etag} if etag else {})
    return {"response": response} | ({"resource": resource} if resource else {})


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (_ok_entry({"resourceType": "Patient", "id": "o1"}), "another type than the Observation"),
        (_ok_entry({"resourceType": "Observation", "id": "../p"}), "invalid FHIR id"),
        (_ok_entry({"resourceType": "Observation", "id": "o9"}), "another Observation"),
        (
            _ok_entry({"resourceType": "Observation", "meta": {"versionId": "1 x"}}),
            "invalid versionId",
        ),
        (_ok_entry(etag='W/"1\r\nX: y"'), "invalid versionId"),
    ],
)
def test_a_hostile_body_or_etag_fails_its_entry(entry: object, why: str) -> None:
    """Without a location the id and version come from the entry's resource or etag: checked
    the same way."""
    response = {"resourceType": "Bundle", "type": "batch-response", "entry": [entry]}
    [outcome] = entry_outcomes(response, [BundleRequest.put(OBS)], base=BASE)
    assert isinstance(outcome.error, InvalidResponseError) and why in outcome.error.message
    assert outcome.id is None and outcome.version_id is None
