"""The client against a real FHIR server (the suite's Medplum-based one, or FHIR_ALLIANCE_TEST_BASE_URL).

Client-facing: where the FHIR specification lets servers answer differently (200 or 201 for an
update that creates, 404 or 412 for If-Match on a missing resource, 404 or 410 after delete), the
tests accept every allowed answer.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fhir_alliance.client import (
    BundleRequest,
    FhirClient,
    WriteStrategy,
    deterministic_id,
    search_token,
)
from fhir_alliance.errors import (
    InputError,
    MultipleMatchesError,
    NotFoundError,
    UnprocessableError,
    VersionConflictError,
)
from fhir_alliance.model.common import Identifier
from fhir_alliance.terminology import IDENTIFIER_SYSTEM_BASE, LABEL_TEST_DATA
from tests.fhir_server.plugin import FhirTestServer

SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/client-test"
#: An update that creates: R4 says 201, and some servers answer 200; both are fine for the client.
UPDATE_CREATED = (200, 201)


@pytest.fixture
def client(fhir_server: FhirTestServer) -> Iterator[FhirClient]:
    fhir_server.track("Observation")
    with FhirClient(fhir_server.base_url) as c:
        yield c


def observation(server: FhirTestServer, value: str | None = None, **extra: Any) -> dict[str, Any]:
    """A base-R4 Observation tagged with this test's run tag and HTEST, with a business identifier."""
    resource = {
        "resourceType": "Observation",
        "meta": {"security": [{"system": LABEL_TEST_DATA[0], "code": LABEL_TEST_DATA[1]}]},
        "identifier": [{"system": SYSTEM, "value": value or str(uuid.uuid4())}],
        "status": "final",
        "code": {"text": "client integration test"},
    } | extra
    return server.tagged(resource)


def test_capabilities(client: FhirClient) -> None:
    """The CapabilityStatement is read: an R4/R5 version, Observation writes, a write strategy."""
    caps = client.capabilities()
    assert caps.release in ("R4", "R5")
    assert caps.resource("Observation").supports("create")
    assert caps.write_strategy("Observation") is not None
    assert client.capabilities() is caps  # cached


def test_create_and_read(client: FhirClient, fhir_server: FhirTestServer) -> None:
    """POST gives 201 with id and version; a read returns the same resource at that version."""
    result = client.create(observation(fhir_server) | {"id": "client-chosen"})
    assert result.created and result.id and result.version_id
    assert result.id != "client-chosen"  # the id we sent was dropped
    assert result.etag == f'W/"{result.version_id}"'
    read = client.read("Observation", result.id)
    assert read["meta"]["versionId"] == result.version_id


def test_conditional_create_finds_the_existing(
    client: FhirClient, fhir_server: FhirTestServer
) -> None:
    """If-None-Exist on an existing identifier answers 200 with the same resource, not a copy."""
    resource = observation(fhir_server)
    ident = resource["identifier"][0]
    cond = {"identifier": search_token(ident["system"], ident["value"])}
    first = client.create(resource, if_none_exist=cond)
    second = client.create(resource, if_none_exist=cond)
    assert first.created and not second.created and second.status == 200
    assert second.id == first.id
    assert len(client.find_by_identifier("Observation", Identifier(**ident))) == 1


def test_conditional_create_with_multiple_matches(
    client: FhirClient, fhir_server: FhirTestServer
) -> None:
    """Two resources already share the identifier: conditional create → MultipleMatchesError."""
    resource = observation(fhir_server)
    client.create(resource)
    client.create(resource)
    ident = resource["identifier"][0]
    with pytest.raises(MultipleMatchesError) as caught:
        client.create(
            resource, if_none_exist={"identifier": search_token(ident["system"], ident["value"])}
        )
    assert caught.value.status == 412


def test_update_with_if_match_and_stale_version(
    client: FhirClient, fhir_server: FhirTestServer
) -> None:
    """If-Match with the current version updates; the same (now stale) version → VersionConflictError."""
    created = client.create(observation(fhir_server))
    assert created.resource is not None
    amended = created.resource | {"status": "amended"}
    updated = client.update(amended, if_match=created.etag)
    assert updated.status == 200 and updated.version_id != created.version_id
    with pytest.raises(VersionConflictError) as caught:
        client.update(amended | {"status": "corrected"}, if_match=created.version_id)
    assert caught.value.status in (409, 412)  # R4 says 412; STU3-era servers answer 409
    assert client.read("Observation", created.id or "")["status"] == "amended"


def test_create_once_is_idempotent(client: FhirClient, fhir_server: FhirTestServer) -> None:
    """Sending the same record twice with the server's strategy leaves exactly one resource."""
    resource = observation(fhir_server)
    ident = Identifier(**resource["identifier"][0])
    first = client.create_once(resource)
    second = client.create_once(resource)
    assert second.id == first.id
    assert len(client.find_by_identifier("Observation", ident)) == 1
    if client.capabilities().write_strategy("Observation") is WriteStrategy.PUT_DETERMINISTIC_ID:
        assert first.id == deterministic_id("Observation", ident)
        assert first.status in UPDATE_CREATED and second.status == 200


@pytest.mark.parametrize("strategy", list(WriteStrategy))
def test_each_write_strategy_works(
    client: FhirClient, fhir_server: FhirTestServer, strategy: WriteStrategy
) -> None:
    """Each strategy, forced, writes once and finds the same resource on the second send."""
    caps = client.capabilities().resource("Observation")
    needed = {
        WriteStrategy.PUT_DETERMINISTIC_ID: caps.update_create,
        WriteStrategy.CONDITIONAL_CREATE: caps.conditional_create,
        WriteStrategy.SEARCH_THEN_CREATE: True,
    }[strategy]
    if not needed:
        pytest.skip(f"server does not declare what {strategy.value} needs")
    resource = observation(fhir_server)
    first = client.create_once(resource, strategy=strategy)
    second = client.create_once(resource, strategy=strategy)
    assert first.id == second.id and second.status == 200
    if strategy is WriteStrategy.PUT_DETERMINISTIC_ID:
        assert first.status in UPDATE_CREATED
    else:
        assert first.created


def test_if_match_on_a_missing_resource_is_refused(
    client: FhirClient, fhir_server: FhirTestServer
) -> None:
    """PUT with If-Match to an id that does not exist: refused (404 or 412, both allowed), nothing made."""
    resource = observation(fhir_server) | {
        "id": deterministic_id("Observation", Identifier(SYSTEM, str(uuid.uuid4())))
    }
    with pytest.raises((NotFoundError, VersionConflictError)) as caught:
        client.update(resource, if_match="1")
    assert caught.value.status in (404, 412)
    with pytest.raises(NotFoundError):
        client.read("Observation", resource["id"])


def test_relative_locations_in_bundle_answers_are_read(
    client: FhirClient, fhir_server: FhirTestServer
) -> None:
    """Each transaction entry's location (absolute or relative to the base) gives type, id and
    version that read back the stored resource."""
    outcomes = client.transaction([BundleRequest.create(observation(fhir_server))])
    (outcome,) = outcomes
    assert outcome.location and outcome.resource_type == "Observation" and outcome.id
    assert client.read("Observation", outcome.id)["meta"]["versionId"] == outcome.version_id


def test_delete_then_read_is_gone(client: FhirClient, fhir_server: FhirTestServer) -> None:
    """After DELETE, a read raises NotFoundError (410 Gone or 404)."""
    created = client.create(observation(fhir_server))
    assert client.delete("Observation", created.id or "") in (200, 202, 204)
    with pytest.raises(NotFoundError) as caught:
        client.read("Observation", created.id or "")
    assert caught.value.status in (404, 410)


def test_search_pages_through_next_links(client: FhirClient, fhir_server: FhirTestServer) -> None:
    """Seven tagged resources, _count=3: three pages followed by next links, seven results."""
    outcomes = client.transaction(
        [BundleRequest.create(observation(fhir_server)) for _ in range(7)]
    )
    assert all(o.ok for o in outcomes)
    params = {"_tag": fhir_server.run_tag_param, "_count": "3"}
    pages = list(client.search_pages("Observation", params))
    assert len(pages) == 3
    found = list(client.search("Observation", params))
    assert sorted(r["id"] for r in found) == sorted(o.id for o in outcomes)


def test_transaction_maps_outcomes_back(client: FhirClient, fhir_server: FhirTestServer) -> None:
    """Transaction in chunks of 2: every outcome names its input's index and the resource made from it."""
    resources = [observation(fhir_server) for _ in range(5)]
    requests = [
        BundleRequest.put(
            r | {"id": deterministic_id("Observation", Identifier(**r["identifier"][0]))}
        )
        if i % 2
        else BundleRequest.create(r)
        for i, r in enumerate(resources)
    ]
    outcomes = client.transaction(requests, chunk_size=2)
    assert [o.index for o in outcomes] == [0, 1, 2, 3, 4]
    for outcome, sent in zip(outcomes, resources, strict=True):
        allowed = UPDATE_CREATED if outcome.request.method == "PUT" else (201,)
        assert outcome.ok and outcome.status in allowed and outcome.version_id
        stored = client.read("Observation", outcome.id or "")
        assert stored["identifier"] == sent["identifier"]


def test_failed_transaction_chunk_writes_nothing(
    client: FhirClient, fhir_server: FhirTestServer
) -> None:
    """A bad entry fails its whole chunk (each entry carries the error); the other chunk commits."""
    good = [observation(fhir_server) for _ in range(3)]
    bad = observation(fhir_server)
    del bad["status"]  # Observation.status is required
    requests = [BundleRequest.create(r) for r in [good[0], good[1], bad, good[2]]]
    outcomes = client.transaction(requests, chunk_size=2)
    assert [o.ok for o in outcomes] == [True, True, False, False]
    assert isinstance(outcomes[2].error, UnprocessableError)
    assert outcomes[3].error is outcomes[2].error
    ident = Identifier(**good[2]["identifier"][0])
    assert client.find_by_identifier("Observation", ident) == []


def test_batch_maps_each_entry(client: FhirClient, fhir_server: FhirTestServer) -> None:
    """Batch: a create, an invalid resource, a stale If-Match and a delete each get their own outcome."""
    existing = client.create(observation(fhir_server))
    updated = client.update((existing.resource or {}) | {"status": "amended"})
    bad = observation(fhir_server)
    del bad["code"]
    outcomes = client.batch(
        [
            BundleRequest.create(observation(fhir_server)),
            BundleRequest.create(bad),
            BundleRequest.put(
                (updated.resource or {}) | {"status": "corrected"}, if_match=existing.version_id
            ),
            BundleRequest.delete("Observation", existing.id or ""),
        ]
    )
    assert [o.index for o in outcomes] == [0, 1, 2, 3]
    assert outcomes[0].ok and outcomes[0].status == 201 and outcomes[0].id
    assert isinstance(outcomes[1].error, UnprocessableError) and outcomes[1].outcome
    assert isinstance(outcomes[2].error, VersionConflictError)
    assert outcomes[3].ok
    with pytest.raises(NotFoundError):
        client.read("Observation", existing.id or "")


def test_return_minimal_still_reports_ids_and_versions(fhir_server: FhirTestServer) -> None:
    """With Prefer return=minimal, writes and transactions still yield id and version from headers."""
    fhir_server.track("Observation")
    with FhirClient(fhir_server.base_url, return_preference="minimal") as client:
        created = client.create(observation(fhir_server))
        assert created.created and created.id and created.version_id
        updated = client.update(
            client.read("Observation", created.id) | {"status": "amended"},
            if_match=created.version_id,
        )
        assert updated.id == created.id and updated.version_id != created.version_id
        outcomes = client.transaction([BundleRequest.create(observation(fhir_server))] * 3)
        assert all(o.ok and o.id and o.version_id for o in outcomes)
        if fhir_server.is_local:  # our server honours the preference: no bodies echoed back
            assert created.resource is None and updated.resource is None
            assert all(o.resource is None for o in outcomes)


def test_unknown_return_preference_is_refused() -> None:
    """A Prefer value outside the FHIR list is a settings error naming the field."""
    with pytest.raises(InputError) as caught:
        FhirClient("http://127.0.0.1:9/fhir", return_preference="everything")
    assert caught.value.issues[0].path == "return_preference"
