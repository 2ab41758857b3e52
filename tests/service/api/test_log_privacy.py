"""The logs of a run hold no PHI: no patient names, identifiers, free text or keys, whatever the
requests carried and however they failed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fhir_alliance_service.auth import require_scope
from fhir_alliance_service.logs import JsonFormatter
from flask import Flask
from flask.testing import FlaskClient

NAME = "Jolene Quarrington"
MRN = "MRN-88412-QX"
PATIENT_REF = "Patient/jolene-q-88412"
RECORD_ID = "https://clinic.example.org/alliance-records|rupture-jq-88412"
NARRATIVE = "Jolene cried when we talked about her brother Tobias"
CONSENT_ID = "https://clinic.example.org/consents|c-jq-88412"


def _rupture(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "rupture",
        "id": RECORD_ID,
        "rupture_type": "withdrawal",
        "markers": ["minimal-response"],
        "tension": 3,
        "repaired": False,
        "patient": {
            "reference": PATIENT_REF,
            "identifier": f"https://clinic.example.org/mrn|{MRN}",
        },
        "effective": "2026-11-20T15:30:00+00:00",
        "rater": {"role": "observer", "who": {"reference": "Practitioner/t-jq-1"}},
        "narrative": NARRATIVE,
        **changes,
    }


def _consent() -> dict[str, Any]:
    return {
        "kind": "consent",
        "id": CONSENT_ID,
        "consent_kind": "sharing",
        "patient": {"identifier": f"https://clinic.example.org/mrn|{MRN}"},
        "status": "active",
        "decision": "permit",
        "date": "2025-03-01T10:00:00+00:00",
        "policy_basis": [{"uri": "https://clinic.example.org/policies/sharing-v2"}],
    }


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Every log record of every logger at DEBUG, rendered by the service's JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_no_phi_or_key_in_logs(
    app: Flask,
    client: FlaskClient,
    api_keys: dict[str, str],
    captured_logs: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run of accepted, refused and failing requests carrying names, identifiers, free text and
    keys leaves none of them in the log output (formatted lines or raw record attributes)."""

    @app.get("/test/crash")
    @require_scope("read")
    def crash() -> str:
        raise RuntimeError(f"{NAME} {MRN} {NARRATIVE}")

    write = {"Authorization": f"Bearer {api_keys['write']}"}
    read = {"X-API-Key": api_keys["read"]}
    consult = {"X-API-Key": api_keys["consult"]}
    posted = client.post("/v1/records", json=_rupture(), headers=write)
    assert posted.status_code == 201, posted.json
    assert client.post("/v1/consents", json=_consent(), headers=write).status_code == 201
    refused = [
        client.post("/v1/records", json=_rupture(tension=NAME), headers=write),  # 422
        client.post("/v1/records", json={**_rupture(), NAME: MRN}, headers=write),  # unknown field
        client.post(
            "/v1/records",
            data=f'{{"name": "{NAME}", "name": "{MRN}"}}',
            headers=write,
            content_type="application/json",
        ),  # duplicate key
        client.post("/v1/records", data=f"{NAME} {MRN}", headers=write, content_type="text/plain"),
        client.get(f"/v1/patients/{PATIENT_REF}/records?after={MRN}", headers=read),
        client.get(
            f"/v1/patients/{PATIENT_REF}/decision?recipient={NAME}&purpose=TREAT", headers=read
        ),
        client.get(f"/v1/{NAME}/{MRN}", headers=read),  # unknown route
        client.get("/metrics", headers={"X-API-Key": api_keys["write"]}),  # wrong scope
        client.get("/metrics", headers={"X-API-Key": api_keys["read"][:-4] + "AAAA"}),  # bad key
        client.get("/test/crash", headers=read),
        client.post(
            "/cds-services/patient-consent-consult",
            json={
                "context": {
                    "patientId": [{"system": "https://clinic.example.org/mrn", "value": MRN}],
                    "actor": [{"system": "urn:ietf:rfc:3986", "value": NAME}],
                    "purposeOfUse": ["TREAT"],
                }
            },
            headers=consult,
        ),
    ]
    assert all(r.status_code != 201 for r in refused)
    assert any(r.status_code == 500 for r in refused)
    output = captured_logs.getvalue()
    assert output.count("\n") >= len(refused)  # one request line each, at least
    for line in output.splitlines():
        json.loads(line)  # every line is one JSON object
    raw = "\n".join(
        f"{r.getMessage()} {r.args!r} {sorted(map(str, r.__dict__.items()))}"
        for r in caplog.records
    )
    secrets = [NAME, MRN, "jolene", NARRATIVE, "Tobias", "rupture-jq", "c-jq-88412"]
    secrets += [key.split("_", 2)[2] for key in api_keys.values()]  # the secret part of each key
    for secret in secrets:
        assert secret.lower() not in output.lower(), secret
        assert secret.lower() not in raw.lower(), secret


def test_request_line_has_the_documented_fields(
    client: FlaskClient, captured_logs: io.StringIO
) -> None:
    """The request line carries time, level, logger, message, request id, method, rule, status,
    duration, and the route is the rule, not the path."""
    client.get(
        "/v1/records/0f8fad5b-d9cb-469f-a165-70867728950e",
        headers={"X-Request-ID": "a3ce929d0e0e4736"},
    )
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    (request_line,) = [line for line in lines if line["message"] == "request"]
    assert request_line["request_id"] == "a3ce929d0e0e4736"
    assert request_line["method"] == "GET"
    assert request_line["route"] == "/v1/records/<record_id>"
    assert request_line["status"] == 401
    assert {"time", "level", "logger", "duration_ms"} <= set(request_line)
