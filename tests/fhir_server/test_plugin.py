"""The pytest plugin itself: fixtures, markers, cleanup by tag, the link rule and clear failures."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.fhir_server import plugin
from tests.fhir_server.plugin import RUN_TAG_SYSTEM, FhirTestServer, start_local_server

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def test_fixture_marks_the_test_and_hands_out_a_unique_run_tag(
    request: pytest.FixtureRequest, fhir_server: FhirTestServer
) -> None:
    """A test using `fhir_server` is marked `fhir_server` and gets a fresh tag in our test-run code system."""
    assert request.node.get_closest_marker("fhir_server") is not None
    assert fhir_server.run_tag["system"] == RUN_TAG_SYSTEM
    assert uuid.UUID(fhir_server.run_tag["code"])
    assert fhir_server.run_tag_param == f"{RUN_TAG_SYSTEM}|{fhir_server.run_tag['code']}"
    assert fhir_server.url("Observation") == f"{fhir_server.base_url}/Observation"
    assert fhir_server.http.default_timeout > 0


def test_tagged_adds_the_run_tag_without_touching_the_input() -> None:
    """tagged() returns a copy whose meta.tag keeps existing tags and adds the run tag."""
    server = FhirTestServer(
        "http://fhir.test/base", False, {"system": RUN_TAG_SYSTEM, "code": "c1"}
    )
    original: dict[str, Any] = {
        "resourceType": "Consent",
        "meta": {"tag": [{"system": "s", "code": "x"}]},
    }
    tagged = server.tagged(original)
    assert tagged["meta"]["tag"] == [
        {"system": "s", "code": "x"},
        {"system": RUN_TAG_SYSTEM, "code": "c1"},
    ]
    assert original["meta"]["tag"] == [{"system": "s", "code": "x"}]
    assert "Consent" in server.seen_types


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://ehr.example/fhir/Observation?_offset=20", True),
        ("https://ehr.example:443/fhir/Observation?page=2", True),
        ("https://evil.example/?x=https://ehr.example/fhir", False),
        ("http://ehr.example/fhir/Observation", False),
        ("https://ehr.example/fhirx/Observation", False),
        ("https://ehr.example.evil/fhir/Observation", False),
    ],
)
def test_cleanup_follows_only_links_within_the_base(url: str, inside: bool) -> None:
    """Cleanup paging follows a link only when scheme, host, port and path prefix match the base."""
    assert plugin._within(url, "https://ehr.example/fhir") is inside


@pytest.mark.parametrize(
    "location",
    [
        "Observation/o1/_history/2",
        "/base/Observation/o1/_history/2",
        "http://fhir.test/base/Observation/o1/_history/2",
    ],
)
def test_relative_and_absolute_locations_resolve_against_the_base(location: str) -> None:
    """A Location relative to the base (FHIR allows it in Bundle responses) becomes absolute."""
    server = FhirTestServer("http://fhir.test/base", False, {"system": RUN_TAG_SYSTEM, "code": "c"})
    assert server.resolve(location) == "http://fhir.test/base/Observation/o1/_history/2"


def test_cleanup_resolves_relative_locations_and_links(httpserver: HTTPServer) -> None:
    """A server answering with relative Location and next links: types are noticed, every page of
    tagged resources is found and deleted, nothing crashes (no MissingSchema)."""
    base = httpserver.url_for("/fhir")
    server = FhirTestServer(base, False, {"system": RUN_TAG_SYSTEM, "code": "c"})
    httpserver.expect_request("/fhir/Device", method="POST").respond_with_json(
        {"resourceType": "Device", "id": "d1"},
        status=201,
        headers={"Location": "Device/d1/_history/1"},
    )
    server.http.post(server.url("Device"), json={"resourceType": "Device"})
    assert "Device" in server.seen_types

    def page(ids: list[str], next_url: str | None) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Device", "id": i}} for i in ids],
        }
        if next_url:
            bundle["link"] = [{"relation": "next", "url": next_url}]
        return bundle

    empty = page([], None)
    httpserver.expect_request(
        "/fhir/Device", query_string={"_tag": server.run_tag_param, "_count": "100"}
    ).respond_with_json(page(["d1"], "Device?_tag=x&page=2"))
    httpserver.expect_request("/fhir/Device", query_string="_tag=x&page=2").respond_with_json(
        page(["d2"], None)
    )
    httpserver.expect_request(re.compile("/fhir/[A-Za-z]+$"), method="GET").respond_with_json(empty)
    httpserver.expect_request(re.compile("/fhir/Device/d[12]$"), method="DELETE").respond_with_data(
        "", status=204
    )
    assert server.delete_tagged() == []
    deleted = [r.path for r, _ in httpserver.log if r.method == "DELETE"]
    assert sorted(deleted) == ["/fhir/Device/d1", "/fhir/Device/d2"]
    server.http.close()


def test_load_profile_on_a_remote_server_fails_clearly() -> None:
    """load_profile() against a server that is not ours fails the test instead of skipping."""
    server = FhirTestServer("http://fhir.test/base", False, {"system": RUN_TAG_SYSTEM, "code": "c"})
    with pytest.raises(pytest.fail.Exception, match="local test server"):
        server.load_profile({"resourceType": "StructureDefinition"})


def test_missing_node_modules_fail_with_make_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without node_modules the server fixture fails, telling the user to run `make install`."""
    monkeypatch.setattr(plugin, "SERVER_DIR", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="make install"):
        start_local_server(tmp_path)


def test_delete_tagged_removes_only_this_tests_resources(fhir_server: FhirTestServer) -> None:
    """Remote-style cleanup deletes every resource with the run tag (across types and pages) and nothing else."""
    remote_view = FhirTestServer(
        base_url=fhir_server.base_url,
        is_local=False,
        run_tag={"system": RUN_TAG_SYSTEM, "code": str(uuid.uuid4())},
    )
    mine = []
    for i in range(105):  # more than one cleanup page of 100
        body = remote_view.tagged(
            {"resourceType": "Observation", "status": "final", "code": {"text": f"n{i}"}}
        )
        mine.append(body)
    mine.append(remote_view.tagged({"resourceType": "Patient", "active": True}))
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in mine
        ],
    }
    response = fhir_server.http.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200
    locations = [
        fhir_server.resolve(e["response"]["location"]).split("/_history/")[0]
        for e in response.json()["entry"]
    ]
    other = fhir_server.http.post(
        fhir_server.url("Patient"),
        json=fhir_server.tagged({"resourceType": "Patient", "active": False}),
        headers=FHIR_JSON,
    ).json()

    assert remote_view.delete_tagged() == []

    assert {fhir_server.http.get(url).status_code for url in locations} <= {404, 410}
    assert fhir_server.http.get(fhir_server.url(f"Patient/{other['id']}")).status_code == 200
    remote_view.http.close()


@pytest.mark.local_fhir_server
def test_server_exits_when_its_stdin_closes(tmp_path: Path) -> None:
    """The node server dies with its parent: closing its stdin ends the process."""
    server = start_local_server(tmp_path)
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.process.stdin is not None
        server.process.stdin.close()
        assert server.process.wait(timeout=10) == 0
    finally:
        server.stop()
