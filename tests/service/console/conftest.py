"""Fixtures for the console's tests.

* ``console_app``, ``console_client``, ``console_keys``: the app on a fresh SQLite store, Flask's
  test client, and one raw API key per scope (for the test-client tests).
* ``clinic`` (module): the demo clinic (``examples/demo/clinic``) and client 1's session notes
  (``demo_notes``) posted through the HTTP API of a live service, synced by the real worker to the
  FHIR test server (or ``FHIR_ALLIANCE_TEST_BASE_URL``, every resource tagged and deleted
  afterwards), plus one record the server refuses (pytest-httpserver as the target: a 422 with an OperationOutcome), so that a
  dead letter exists to replay.
* ``browser`` (module): Debian's Chromium, headless, driven by Selenium through Debian's
  chromedriver. Nothing is downloaded: both come from ``make browser`` (apt).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir_alliance_service.app import create_app
from fhir_alliance_service.auth import SCOPES, create_api_key
from fhir_alliance_service.config import Settings
from fhir_alliance_service.store import SqlStore, open_store, upgrade
from fhir_alliance_service.sync import sync_once
from fhir_alliance_service.sync.target import client_from_settings
from fhir_alliance_service.sync.worker import Worker
from flask import Flask
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from werkzeug import Request, Response
from werkzeug.serving import BaseWSGIServer, make_server

from fhir_alliance.client import RetryPolicy
from tests.fhir_server.plugin import BASE_URL_ENV, RUN_TAG_SYSTEM, FhirTestServer

ROOT = Path(__file__).resolve().parents[3]
CLINIC = ROOT / "examples" / "demo" / "clinic"
ARTIFACTS = ROOT / "test-artifacts" / "console"
AXE_SCRIPT = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: How the demo clinic's consents name its EHR.
EHR = "Organization/demo-ehr"
#: The record the fault server refuses: a third SRS of client 1.
REFUSED = {
    "kind": "instrument-administration",
    "id": "https://demo-clinic.example.org/alliance-records|srs-client-1-session-3",
    "instrument": "srs",
    "patient": {"reference": "Patient/demo-client-1"},
    "counterpart": {"reference": "Practitioner/demo-therapist-1"},
    "encounter": {"reference": "Encounter/demo-client-1-session-3"},
    "effective": "2026-11-19T15:50:00+00:00",
    "rater": {"role": "client"},
    "responses": {"1": 7.0, "2": 6.5, "3": 8.0, "4": 7.5},
}
SERVER_MESSAGE = "Observation.valueQuantity: unit not accepted by this server"


def load_clinic(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((CLINIC / name).read_text(encoding="utf-8"))
    return data


#: Words in every demo note's text: no console page may show them (nor their base64).
NOTE_TEXT_MARKER = "private-session-words"
THERAPIST = {"reference": "Practitioner/demo-therapist-1", "type": "Practitioner"}


def demo_notes() -> list[dict[str, Any]]:
    """Client 1's recording/AI-notes consent and four notes of session 2: a signed progress note
    (sent), a signed AI-drafted one (held: the sharing consent denies AIAST), signed
    psychotherapy-note content (held: PSYTHPN) and an AI-drafted draft (held until signed)."""
    consent = json.loads((ROOT / "examples" / "consent" / "recording-ai-notes.json").read_text())
    client = {"reference": "Patient/demo-client-1", "type": "Patient"}
    consent |= {
        "id": "https://demo-clinic.example.org/consents|recording-client-1",
        "patient": client,
        "grantor": client,
        "date": "2026-11-02T09:00:00+00:00",
        "period": {"start": "2026-11-02T00:00:00+00:00"},
    }
    consent["verification"][0] |= {"verified_at": "2026-11-02T09:00:00+00:00", "witness": THERAPIST}
    consent["verification"][0]["verified_with"] = client
    base = {
        "kind": "session-note",
        "patient": client,
        "encounter": {"reference": "Encounter/demo-client-1-session-2", "type": "Encounter"},
        "author": THERAPIST,
        "session_at": "2026-11-12T15:00:00+00:00",
        "written_at": "2026-11-12T16:00:00+00:00",
        "format": "text/plain",
        "text": f"Session 2: {NOTE_TEXT_MARKER}.",
        "sections": [{"title": f"Plan {NOTE_TEXT_MARKER}", "text": NOTE_TEXT_MARKER}],
    }
    signed = {"status": "final", "signed_by": THERAPIST, "signed_at": "2026-11-12T17:30:00+00:00"}
    scribe = {"tool": "session-scribe", "version": "2.3", "inputs": ["recording"]}
    notes = [
        base | signed | {"id": "https://demo-clinic.example.org/notes|client-1-progress"},
        base
        | signed
        | {"id": "https://demo-clinic.example.org/notes|client-1-ai", "ai_drafting": scribe},
        base
        | signed
        | {
            "id": "https://demo-clinic.example.org/notes|client-1-process",
            "category": "psychotherapy-note",
            "session_at": "2026-11-12T15:01:00+00:00",
        },
        base
        | {
            "id": "https://demo-clinic.example.org/notes|client-1-draft",
            "ai_drafting": scribe,
            "session_at": "2026-11-12T15:02:00+00:00",
        },
    ]
    for note in notes:
        note.setdefault("category", "progress-note")
    return [consent, *notes]


# -- the app and the test client ------------------------------------------------------------


@pytest.fixture
def console_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(recipients=EHR)


@pytest.fixture
def console_client(console_app: Flask) -> FlaskClient:
    return console_app.test_client()


@pytest.fixture
def console_keys(console_app: Flask) -> dict[str, str]:
    store = console_app.extensions["fhir_alliance"].store
    return {scope: create_api_key(store, f"test {scope}", [scope]) for scope in sorted(SCOPES)}


# -- a live service with the demo clinic ----------------------------------------------------


@dataclass
class Clinic:
    """A live service holding the synced demo clinic and one dead letter."""

    base_url: str
    store: SqlStore
    keys: dict[str, str]
    refused_record_id: str
    fhir_base_url: str
    refusing_settings: Settings

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def sync_to_refusing_server(self) -> None:
        """Run the worker against the server that refuses everything: what is queued is
        dead-lettered (as the refused record was when the clinic was loaded)."""
        with client_from_settings(
            self.refusing_settings, retry=RetryPolicy(max_attempts=1)
        ) as client:
            sync_once(self.refusing_settings, self.store, client)


def _refusing_server(server: HTTPServer) -> None:
    """Answer every transaction with a 422 OperationOutcome (a permanent refusal)."""

    def refuse(request: Request) -> Response:
        body = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "processing",
                    "details": {"text": SERVER_MESSAGE},
                    "expression": ["Bundle.entry[0].resource.valueQuantity"],
                }
            ],
        }
        return Response(json.dumps(body), status=422, content_type="application/fhir+json")

    server.expect_request("/fhir", method="POST").respond_with_handler(refuse)


@pytest.fixture(scope="module")
def clinic(fhir_base_url: str) -> Iterator[Clinic]:
    workdir = Path(tempfile.mkdtemp(prefix="console-test-"))
    database_url = f"sqlite:///{workdir / 'console.db'}"
    upgrade(database_url)
    settings = Settings(
        database_url=database_url,
        fhir_base_url=fhir_base_url,
        recipients=(EHR,),
        worker_batch_size=50,
        poll_interval_seconds=0.05,
    )
    store = open_store(database_url)
    app = create_app(settings, store=store)
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    remote = bool(os.environ.get(BASE_URL_ENV, "").strip())
    fhir = FhirTestServer(
        base_url=fhir_base_url,
        is_local=not remote,
        run_tag={"system": RUN_TAG_SYSTEM, "code": str(uuid.uuid4())},
    )
    refusing = HTTPServer(host="127.0.0.1", port=0)
    refusing.start()
    try:
        keys = {s: create_api_key(store, f"console {s}", [s]) for s in ("read", "write", "admin")}
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {keys['write']}"
            for name, path in (
                ("1-consents.json", "/v1/consents"),
                ("2-sessions.json", "/v1/records"),
            ):
                http.post(
                    f"{base_url}{path}", json=load_clinic(name), timeout=30
                ).raise_for_status()
            http.post(f"{base_url}/v1/records", json=demo_notes(), timeout=30).raise_for_status()
            client = client_from_settings(settings, retry=RetryPolicy(max_attempts=1))
            worker = Worker(settings, store, client, tags=[fhir.run_tag])
            for _ in range(20):
                if worker.run_once().claimed == 0:
                    break
            client.close()
            answer = http.post(f"{base_url}/v1/records", json=[REFUSED], timeout=30)
            answer.raise_for_status()
            refused_id = answer.json()["records"][0]["id"]
        _refusing_server(refusing)
        refusing_settings = Settings(
            database_url=database_url,
            fhir_base_url=refusing.url_for("/fhir"),
            fhir_version="4.0.1",
            recipients=(EHR,),
        )
        loaded = Clinic(base_url, store, keys, refused_id, fhir_base_url, refusing_settings)
        loaded.sync_to_refusing_server()
        yield loaded
    finally:
        refusing.clear()
        refusing.stop()
        server.shutdown()
        thread.join(timeout=10)
        store.close()
        if remote:
            fhir.delete_tagged()
        fhir.http.close()
        shutil.rmtree(workdir, ignore_errors=True)


# -- the browser ------------------------------------------------------------------------------


def _chromium_options(profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    return options


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile; fails (never skips) when it is not installed."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(
                f"{path} is missing: run `make browser` (Debian's chromium, chromium-driver)"
            )
    if not AXE_SCRIPT.exists():
        pytest.fail(f"{AXE_SCRIPT} is missing: run `make install` (npm ci in its folder)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    profile = Path(tempfile.mkdtemp(prefix="console-chromium-"))
    driver = webdriver.Chrome(
        options=_chromium_options(profile), service=ChromeService(executable_path=CHROMEDRIVER)
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
