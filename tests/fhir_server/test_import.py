"""The test server's Bulk Data ``$import``: kick-off, status polling, cancel, per-line outcomes.

The NDJSON files are served by a real HTTP server on loopback in the test process (the test server
fetches only http URLs on loopback), so these tests are ``local_fhir_server``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fhir_alliance.terminology import CANONICAL_BASE
from tests.fhir_server.plugin import FhirTestServer

pytestmark = [pytest.mark.server_conformance, pytest.mark.local_fhir_server]

FHIR_JSON = {"Content-Type": "application/fhir+json"}
NDJSON = "application/fhir+ndjson"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SOURCE = "urn:uuid:5b7e1f2a-0000-4000-8000-000000000001"


class Files(ThreadingHTTPServer):
    """Serves ``files`` (path → bytes) on 127.0.0.1; a path in ``held`` sends its first line,
    then waits for ``release`` before the rest."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.files: dict[str, bytes] = {}
        self.held: set[str] = set()
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _FileHandler(BaseHTTPRequestHandler):
    server: Files
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", NDJSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.server.held:
            first, _, rest = body.partition(b"\n")
            self.wfile.write(first + b"\n")
            self.wfile.flush()
            self.server.release.wait(30)
            body = rest
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def files() -> Iterator[Files]:
    server = Files()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def ndjson(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines
    )


def consent(server: FhirTestServer, cid: str, **extra: Any) -> dict[str, Any]:
    return server.tagged(
        {
            "resourceType": "Consent",
            "id": cid,
            "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/import-test"},
            "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
            **extra,
        }
    )


def observation(server: FhirTestServer, oid: str, **extra: Any) -> dict[str, Any]:
    return server.tagged(
        {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"coding": [{"system": f"{CANONICAL_BASE}/CodeSystem/test", "code": "probe"}]},
            "valueInteger": 3,
            **extra,
        }
    )


def kick_off_body(*inputs: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "inputFormat", "valueCode": NDJSON},
            {"name": "inputSource", "valueUri": SOURCE},
            {"name": "storageDetail", "part": [{"name": "type", "valueCode": "https"}]},
            *(
                {
                    "name": "input",
                    "part": [
                        {"name": "type", "valueCode": rtype},
                        {"name": "url", "valueUrl": url},
                    ],
                }
                for rtype, url in inputs
            ),
        ],
    }


def kick_off(server: FhirTestServer, *inputs: tuple[str, str]) -> str:
    response = server.http.post(
        server.url("$import"),
        json=kick_off_body(*inputs),
        headers={**FHIR_JSON, "Prefer": "respond-async"},
    )
    assert response.status_code == 202, response.text
    status_url: str = response.headers["Content-Location"]
    assert status_url.startswith(server.base_url + "/")
    return status_url


def wait(server: FhirTestServer, status_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = server.http.get(status_url, headers={"Accept": "application/json"})
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        assert response.status_code == 202, response.text
        time.sleep(0.05)
    raise AssertionError("import did not finish within 30 s")


def test_import_stores_each_resource_under_its_own_id(
    fhir_server: FhirTestServer, files: Files
) -> None:
    """Two inputs are fetched and stored under their ids (a second import updates: version 2); counts per input."""
    cids = [f"imp-{uuid.uuid4()}" for _ in range(3)]
    oid = f"imp-{uuid.uuid4()}"
    files.files["/consents.ndjson"] = ndjson(*(consent(fhir_server, c) for c in cids))
    files.files["/obs.ndjson"] = ndjson(observation(fhir_server, oid))
    inputs = (
        ("Consent", files.url("/consents.ndjson")),
        ("Observation", files.url("/obs.ndjson")),
    )
    done = wait(fhir_server, kick_off(fhir_server, *inputs))
    assert done["request"] == fhir_server.url("$import")
    assert done["transactionTime"]
    assert [(o["inputUrl"], o["count"]) for o in done["output"]] == [
        (inputs[0][1], 3),
        (inputs[1][1], 1),
    ]
    assert done["error"] == []
    stored = fhir_server.http.get(fhir_server.url(f"Consent/{cids[1]}")).json()
    assert stored["meta"]["versionId"] == "1"
    assert stored["meta"]["source"] == SOURCE
    assert fhir_server.http.get(fhir_server.url(f"Observation/{oid}")).json()["valueInteger"] == 3

    files.files["/obs.ndjson"] = ndjson(observation(fhir_server, oid, valueInteger=5))
    again = wait(fhir_server, kick_off(fhir_server, inputs[1]))
    assert again["output"][0]["count"] == 1
    updated = fhir_server.http.get(fhir_server.url(f"Observation/{oid}")).json()
    assert (updated["meta"]["versionId"], updated["valueInteger"]) == ("2", 5)


def test_failed_lines_get_an_operation_outcome_each_and_the_rest_is_stored(
    fhir_server: FhirTestServer, files: Files
) -> None:
    """Bad JSON, a wrong type, no id and an invalid code each fail with an outcome naming the line; valid lines are stored."""
    good = [f"imp-{uuid.uuid4()}" for _ in range(2)]
    bad_status = f"imp-{uuid.uuid4()}"
    no_id = consent(fhir_server, "x")
    del no_id["id"]
    files.files["/mixed.ndjson"] = ndjson(
        consent(fhir_server, good[0]),
        "{not json",
        observation(fhir_server, f"imp-{uuid.uuid4()}"),
        "",
        no_id,
        consent(fhir_server, bad_status, status="allowed"),
        consent(fhir_server, good[1]),
    )
    url = files.url("/mixed.ndjson")
    done = wait(fhir_server, kick_off(fhir_server, ("Consent", url)))
    assert done["output"] == [
        {"type": "OperationOutcome", "input": url, "inputUrl": url, "count": 2}
    ]
    (error,) = done["error"]
    assert (error["inputUrl"], error["count"], error["type"]) == (url, 4, "OperationOutcome")
    assert error["url"].startswith(fhir_server.base_url + "/")
    response = fhir_server.http.get(error["url"])
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(NDJSON)
    outcomes = [json.loads(line) for line in response.text.splitlines()]
    assert [o["resourceType"] for o in outcomes] == ["OperationOutcome"] * 4
    where = [o["issue"][-1]["details"]["text"] for o in outcomes]
    assert where == [f"input {url}, line {n}" for n in (2, 3, 5, 6)]
    paths = [e for o in outcomes for i in o["issue"] for e in i.get("expression", [])]
    assert {"Resource.resourceType", "Consent.id", "Consent.status"} <= set(paths)
    for cid in good:
        assert fhir_server.http.get(fhir_server.url(f"Consent/{cid}")).status_code == 200
    assert fhir_server.http.get(fhir_server.url(f"Consent/{bad_status}")).status_code == 404


def test_status_is_202_with_progress_while_running(
    fhir_server: FhirTestServer, files: Files
) -> None:
    """While an input is still being read, the status URL answers 202 with Retry-After and X-Progress."""
    cids = [f"imp-{uuid.uuid4()}" for _ in range(2)]
    files.files["/slow.ndjson"] = ndjson(*(consent(fhir_server, c) for c in cids))
    files.held.add("/slow.ndjson")
    status_url = kick_off(fhir_server, ("Consent", files.url("/slow.ndjson")))
    running = fhir_server.http.get(status_url)
    assert running.status_code == 202
    assert running.headers["Retry-After"] == "1"
    assert running.headers["X-Progress"].startswith("input 1 of 1")
    assert len(running.headers["X-Progress"]) < 100
    files.release.set()
    assert wait(fhir_server, status_url)["output"][0]["count"] == 2


def test_delete_cancels_a_running_import(fhir_server: FhirTestServer, files: Files) -> None:
    """DELETE on the status URL cancels: 202, then the status URL is 404 and the rest of the file is not stored."""
    cids = [f"imp-{uuid.uuid4()}" for _ in range(3)]
    files.files["/slow.ndjson"] = ndjson(*(consent(fhir_server, c) for c in cids))
    files.held.add("/slow.ndjson")
    status_url = kick_off(fhir_server, ("Consent", files.url("/slow.ndjson")))
    assert fhir_server.http.delete(status_url).status_code == 202
    files.release.set()
    time.sleep(0.3)
    gone = fhir_server.http.get(status_url)
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome"
    for cid in cids[1:]:
        assert fhir_server.http.get(fhir_server.url(f"Consent/{cid}")).status_code == 404


def test_an_unreadable_input_is_an_error_without_a_count(
    fhir_server: FhirTestServer, files: Files
) -> None:
    """An input answering 404 is reported as an error (count unknown); the other input is still imported."""
    cid = f"imp-{uuid.uuid4()}"
    files.files["/ok.ndjson"] = ndjson(consent(fhir_server, cid))
    missing = files.url("/missing.ndjson")
    done = wait(
        fhir_server,
        kick_off(fhir_server, ("Consent", missing), ("Consent", files.url("/ok.ndjson"))),
    )
    assert [o["count"] for o in done["output"]] == [0, 1]
    (error,) = done["error"]
    assert error["inputUrl"] == missing
    assert "count" not in error
    outcome = json.loads(fhir_server.http.get(error["url"]).text)
    assert "HTTP 404" in outcome["issue"][0]["details"]["text"]
    assert fhir_server.http.get(fhir_server.url(f"Consent/{cid}")).status_code == 200


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"url": "http://example.org/x.ndjson"}, "Parameters.parameter[3].part[1].valueUrl"),
        ({"url": "https://127.0.0.1/x.ndjson"}, "Parameters.parameter[3].part[1].valueUrl"),
        ({"url": "file:///etc/passwd"}, "Parameters.parameter[3].part[1].valueUrl"),
        ({"type": "Nonsense"}, "Parameters.parameter[3].part[0].valueCode"),
        ({"format": "application/json"}, "Parameters.parameter[0].valueCode"),
    ],
)
def test_unusable_kick_off_is_400_naming_the_parameter(
    fhir_server: FhirTestServer, change: dict[str, str], path: str
) -> None:
    """A URL off loopback or not http, an unknown type or another input format is a 400 naming the parameter; nothing starts."""
    body = kick_off_body(
        (change.get("type", "Consent"), change.get("url", "http://127.0.0.1:9/x.ndjson"))
    )
    if "format" in change:
        body["parameter"][0]["valueCode"] = change["format"]
    response = fhir_server.http.post(fhir_server.url("$import"), json=body, headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [path]
    assert "Content-Location" not in response.headers


def test_metadata_advertises_import(fhir_server: FhirTestServer) -> None:
    """The CapabilityStatement lists the system operation import."""
    rest = fhir_server.http.get(fhir_server.url("metadata")).json()["rest"][0]
    names = {o["name"]: o["definition"] for o in rest.get("operation", [])}
    assert names["import"].endswith("/OperationDefinition/import")
