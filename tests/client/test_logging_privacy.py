"""No token, identifier, name, free text or diagnostics reaches the logs or our error messages."""

import logging
import socket

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance.client import BearerTokenAuth, BundleRequest, FhirClient, RetryPolicy
from fhir_alliance.errors import FhirAllianceError
from fhir_alliance.model.common import Identifier
from fhir_alliance.terminology import IDENTIFIER_SYSTEM_BASE
from tests.fhir_server.plugin import FhirTestServer

TOKEN = "tok-PRIVATE-9f8e7d6c"
MRN = "MRN-778899"
NAME = "Jane Quincy Public"
NOTE = "client disclosed thoughts of self-harm"
SECRETS = (TOKEN, MRN, NAME, NOTE, "Quincy", "778899")


def phi_observation(server: FhirTestServer, **extra: object) -> dict:
    return server.tagged(
        {
            "resourceType": "Observation",
            "identifier": [{"system": f"{IDENTIFIER_SYSTEM_BASE}/mrn", "value": MRN}],
            "status": "final",
            "code": {"text": "alliance"},
            "subject": {"display": NAME},
            "note": [{"text": NOTE}],
        }
        | extra
    )


def assert_clean(caplog: pytest.LogCaptureFixture, errors: list[FhirAllianceError]) -> None:
    # werkzeug is the fault-injection server's own access log, not the client's
    records = [r for r in caplog.records if r.name != "werkzeug"]
    text = "\n".join(f"{r.getMessage()} {r.args}" for r in records)
    text += "\n".join(f"{e} {e.message} {e.issues}" for e in errors)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked"


def test_full_run_against_the_server_logs_no_phi(
    fhir_server: FhirTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Create, search by identifier, update, stale update, bad batch entry, delete: logs stay clean."""
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 included
    errors: list[FhirAllianceError] = []
    fhir_server.track("Observation")
    with FhirClient(fhir_server.base_url, auth=BearerTokenAuth(TOKEN)) as client:
        created = client.create(phi_observation(fhir_server))
        client.create_once(phi_observation(fhir_server))
        found = client.find_by_identifier(
            "Observation", Identifier(f"{IDENTIFIER_SYSTEM_BASE}/mrn", MRN)
        )
        assert found
        client.update((created.resource or {}) | {"status": "amended"}, if_match=created.etag)
        try:
            client.update(created.resource or {}, if_match=created.etag)
        except FhirAllianceError as exc:
            errors.append(exc)
        invalid = phi_observation(fhir_server, effectiveDateTime=NAME)  # not a date
        outcomes = client.batch([BundleRequest.create(invalid)])
        errors.extend(o.error for o in outcomes if o.error)
        try:
            client.create(invalid)
        except FhirAllianceError as exc:
            errors.append(exc)
        client.delete("Observation", created.id or "")
    assert len(errors) == 3
    assert any(r.name == "fhir_alliance.client" for r in caplog.records)
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert_clean(caplog, errors)


def test_faults_log_no_phi(httpserver: HTTPServer, caplog: pytest.LogCaptureFixture) -> None:
    """Retries, an outcome with PHI in diagnostics and a hostile link: logs and errors stay clean."""
    caplog.set_level(logging.DEBUG)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "transient", "diagnostics": f"{NAME} {MRN}"},
        ],
    }
    path = f"/fhir/Observation/{MRN}"
    httpserver.expect_request(path).respond_with_json(outcome, status=503)
    hostile = f"http://evil.example/{MRN}?name={NAME}"
    httpserver.expect_request("/fhir/Observation").respond_with_json(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": hostile}],
        }
    )
    errors: list[FhirAllianceError] = []
    policy = RetryPolicy(max_attempts=3, sleep=lambda s: None)
    with FhirClient(
        httpserver.url_for("/fhir"), auth=BearerTokenAuth(TOKEN), retry=policy
    ) as client:
        try:
            client.read("Observation", MRN)
        except FhirAllianceError as exc:
            errors.append(exc)
        try:
            list(client.search("Observation", {"identifier": MRN, "name": NAME}))
        except FhirAllianceError as exc:
            errors.append(exc)
    assert len(errors) == 2
    assert NAME in str(errors[0].to_operation_outcome())  # kept for the caller, not logged
    assert "retrying" in caplog.text
    assert_clean(caplog, errors)


LETTERS_ID = "quincypublicjane"  # an id of letters only: it looks like a path word


def below_the_client(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records of the libraries under the client (urllib3, requests), not of the test server."""
    return [r for r in caplog.records if not r.name.startswith(("werkzeug", "fhir_alliance"))]


def test_letters_only_id_and_query_never_reach_the_logs(
    httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    """DEBUG on for every logger: urllib3's lines carry neither the id, nor any path or query."""
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request(f"/fhir/Observation/{LETTERS_ID}").respond_with_json(
        {"resourceType": "Observation", "id": LETTERS_ID}
    )
    httpserver.expect_request("/fhir/Observation").respond_with_json(
        {"resourceType": "Bundle", "type": "searchset"}
    )
    with FhirClient(httpserver.url_for("/fhir")) as client:
        client.read("Observation", LETTERS_ID)
        list(client.search("Observation", {"subject": LETTERS_ID}))
    records = below_the_client(caplog)
    assert records, "urllib3 logged nothing: the test would prove nothing"
    for record in records:
        text = record.getMessage()
        assert LETTERS_ID not in text, f"{record.name}: {text}"
        assert "/fhir" not in text and "Observation" not in text and "?" not in text


def test_connect_retry_warnings_carry_no_path(caplog: pytest.LogCaptureFixture) -> None:
    """urllib3's 'Retrying … after connection broken' warning (it quotes the URL) is redacted."""
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = FhirClient(
        f"http://127.0.0.1:{port}/fhir", connect_retries=1, retry=RetryPolicy(max_attempts=1)
    )
    with pytest.raises(FhirAllianceError):
        client.read("Observation", LETTERS_ID)
    client.close()
    records = below_the_client(caplog)
    assert any("Retrying" in r.getMessage() for r in records)
    for record in records:
        assert LETTERS_ID not in record.getMessage() and "/fhir" not in record.getMessage()
