"""Building Bundles and reading their answers back onto the requests that caused them."""

import pytest

from fhir_alliance.client.bundles import (
    BundleRequest,
    build_bundle,
    entry_outcomes,
    parse_location,
    search_token,
)
from fhir_alliance.client.retry import Replay
from fhir_alliance.errors import InputError, InvalidResponseError, ServerError

OBS = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}


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

    outcomes = entry_outcomes(response, requests, offset=10, error_for=error_for)
    assert [o.index for o in outcomes] == [10, 11]
    assert outcomes[0].ok and (outcomes[0].id, outcomes[0].version_id) == ("n1", "1")
    assert outcomes[0].etag == 'W/"1"'
    assert not outcomes[1].ok and outcomes[1].error is not None
    assert outcomes[1].error.message == "412 PUT" and outcomes[1].outcome is not None


def test_entry_count_mismatch_is_refused() -> None:
    """An answer with fewer entries than sent cannot be mapped back: InvalidResponseError."""
    response = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    with pytest.raises(InvalidResponseError):
        entry_outcomes(response, [BundleRequest.create(OBS)])
    with pytest.raises(InvalidResponseError):
        entry_outcomes({"resourceType": "Bundle", "type": "searchset"}, [])


def test_parse_location_and_search_token() -> None:
    """Locations give type/id/version; token search escapes \\ , $ and |."""
    assert parse_location("Observation/1/_history/2") == ("Observation", "1", "2")
    assert parse_location("https://h/fhir/Consent/abc") == ("Consent", "abc", None)
    assert search_token("urn:a", "x|y,z$\\") == "urn:a|x\\|y\\,z\\$\\\\"
