"""A FHIR server that quotes the note it refuses (HAPI-style validators quote values in
``diagnostics``): the real worker stores the refusal, and neither the stored outcome, the status
API nor the console (read key) carries the note's text. The service's own outcomes are kept."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from fhir_alliance_service.auth import SCOPES, create_api_key
from fhir_alliance_service.config import Settings
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import sync_once
from fhir_alliance_service.sync.outcomes import (
    SERVER_TEXT_NOT_KEPT,
    outcome_to_store,
    strip_server_text,
)
from fhir_alliance_service.sync.target import client_from_settings
from fhir_alliance_service.sync.worker import worker_stopped_outcome
from flask import Flask
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import RetryPolicy
from fhir_alliance.errors import InputError, Issue, UnprocessableError
from tests.service.conftest import answer_metadata
from tests.service.console.conftest import EHR, NOTE_TEXT_MARKER, demo_notes, load_clinic
from tests.service.sync.conftest import sync_store  # noqa: F401  (the rig's fixture)
from tests.service.sync.test_audit_push import AuditRig, refuse
from tests.service.sync.test_audit_push import rig as _rig_fixture

FHIR_JSON = "application/fhir+json"
DETAILS_TEXT = "details-text-from-the-server"


def _quoted_note(body: dict[str, Any]) -> str:
    """The first attachment's text in what was sent (a transaction Bundle or a resource)."""
    resources = [e.get("resource", {}) for e in body.get("entry", [])] or [body]
    for resource in resources:
        for content in resource.get("content") or []:
            return base64.b64decode(content["attachment"]["data"]).decode()[:80]
    return NOTE_TEXT_MARKER


def _quoting_server(server: HTTPServer) -> None:
    def refuse(request: Request) -> Response:
        quoted = _quoted_note(json.loads(request.get_data()))
        body = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "processing",
                    "diagnostics": f"HAPI-0450: attachment.data value '{quoted}' failed validation",
                    "details": {
                        "coding": [{"system": "http://example.org/codes", "code": "HAPI-0450"}],
                        "text": f"{DETAILS_TEXT} '{quoted}'",
                    },
                    "expression": ["DocumentReference.content[0].attachment.data"],
                    "extension": [{"url": "http://example.org/x", "valueString": quoted}],
                }
            ],
        }
        return Response(json.dumps(body), status=422, content_type=FHIR_JSON)

    answer_metadata(server)
    server.expect_request(re.compile("/fhir.*")).respond_with_handler(refuse)


@pytest.fixture
def app(make_app: Callable[..., Flask], httpserver: HTTPServer) -> Flask:
    _quoting_server(httpserver)
    return make_app(recipients=EHR, fhir_base_url=httpserver.url_for("/fhir"), fhir_version="4.0.1")


def _sign_in(client: FlaskClient, key: str) -> None:
    page = client.get("/console/sign-in").get_data(as_text=True)
    token = re.search(r'name="sign_in_token" value="([^"]+)"', page)
    assert token is not None
    answer = client.post("/console/sign-in", data={"sign_in_token": token.group(1), "api_key": key})
    assert answer.status_code in (302, 303)


def test_a_server_quoting_the_note_leaves_no_note_text_anywhere(
    app: Flask, sqlite_url: str, httpserver: HTTPServer
) -> None:
    store: SqlStore = app.extensions["fhir_alliance"].store
    keys = {s: create_api_key(store, f"test {s}", [s]) for s in sorted(SCOPES)}
    api = app.test_client()
    consent, progress = load_clinic("1-consents.json"), demo_notes()[1]
    posted = api.post(
        "/v1/records",
        json=[*consent, progress],
        headers={"Authorization": f"Bearer {keys['write']}"},
    )
    assert posted.status_code in (200, 201), posted.get_data(as_text=True)
    note_id = posted.get_json()["records"][-1]["id"]

    settings = Settings(
        database_url=sqlite_url,
        fhir_base_url=httpserver.url_for("/fhir"),
        fhir_version="4.0.1",
        recipients=(EHR,),
    )
    with client_from_settings(settings, retry=RetryPolicy(max_attempts=1)) as client:
        sync_once(settings, store, client)
    # the server did see the note and quoted it back
    assert any(b"attachment" in request.get_data() for request, _ in httpserver.log)

    status = store.sync_status(note_id)
    assert status is not None and status.state is SyncState.DEAD_LETTERED
    stored = json.dumps(status.last_outcome)
    assert NOTE_TEXT_MARKER not in stored and DETAILS_TEXT not in stored
    issue = status.last_outcome["issue"][0] if status.last_outcome else {}
    assert issue == {
        "severity": "error",
        "code": "processing",
        "details": {"coding": [{"system": "http://example.org/codes", "code": "HAPI-0450"}]},
        "diagnostics": SERVER_TEXT_NOT_KEPT,
        "expression": ["DocumentReference.content[0].attachment.data"],
    }

    answer = api.get(
        f"/v1/records/{note_id}/status", headers={"Authorization": f"Bearer {keys['read']}"}
    )
    assert answer.status_code == 200
    assert NOTE_TEXT_MARKER not in answer.get_data(as_text=True)
    assert SERVER_TEXT_NOT_KEPT in answer.get_data(as_text=True)

    console = app.test_client()
    _sign_in(console, keys["read"])
    for path in ("/console/", f"/console/records/{note_id}"):
        page = console.get(path)
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert NOTE_TEXT_MARKER not in text and DETAILS_TEXT not in text, path
        assert "the server&#39;s text is not kept" in text or SERVER_TEXT_NOT_KEPT in text, path


def test_the_services_own_outcomes_are_kept_intact() -> None:
    ours = InputError("invalid record", issues=[Issue(path="items.0.text", message="too long")])
    own = ours.to_operation_outcome()
    assert outcome_to_store(ours, own) == own
    stopped = worker_stopped_outcome(3)
    assert outcome_to_store(InputError("x"), stopped) == stopped
    # a ServerError without the server's OperationOutcome: the library's own words
    bare = UnprocessableError("the server refused the Bundle", status=422)
    assert outcome_to_store(bare, bare.to_operation_outcome()) == bare.to_operation_outcome()


def test_a_servers_outcome_keeps_only_coded_parts() -> None:
    server = {
        "resourceType": "OperationOutcome",
        "text": {"div": "<div>secret</div>"},
        "issue": [
            {"severity": "warning", "code": "value", "location": ["x"], "diagnostics": "secret"},
            "not an issue",
            {"code": ["x"], "details": {"coding": [{"code": "c", "display": "secret"}]}},
        ],
    }
    error = UnprocessableError("refused", status=422, outcome=server)
    kept = outcome_to_store(error, error.to_operation_outcome())
    assert "secret" not in json.dumps(kept)
    assert kept["issue"] == [
        {
            "severity": "warning",
            "code": "value",
            "diagnostics": SERVER_TEXT_NOT_KEPT,
            "location": ["x"],
        },
        {
            "severity": "error",
            "code": "processing",
            "details": {"coding": [{"code": "c"}]},
            "diagnostics": SERVER_TEXT_NOT_KEPT,
        },
    ]
    assert strip_server_text({"issue": "x"})["issue"][0]["diagnostics"] == SERVER_TEXT_NOT_KEPT


rig = _rig_fixture  # the audit push rig of test_audit_push.py (pytest-httpserver as the server)


def test_an_audit_push_refusal_keeps_no_server_text(rig: AuditRig) -> None:
    """The audit push path: a 422 on the audit batch quoting a name; the stored push outcome
    keeps only the codes."""
    rig.batch_faults = [refuse(422)]
    rig.worker.run_once()  # sends the record, queues its audit rows
    rig.worker.run_once()  # the push: refused for good
    entries = rig.audit()
    assert entries and all(e.push_outcome is not None for e in entries)
    for entry in entries:
        assert "Jane Roe" not in json.dumps(entry.push_outcome)
        assert entry.push_outcome is not None
        assert entry.push_outcome["issue"][0]["code"] == "processing"
        assert entry.push_outcome["issue"][0]["diagnostics"] == SERVER_TEXT_NOT_KEPT
