"""A full intake + sync run with patient names, identifiers and a bearer token in the data and the
settings: no log line of the run (any logger, DEBUG and up) contains any of them."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker, client_from_settings
from fhir_alliance_service.sync.outcomes import SERVER_TEXT_NOT_KEPT
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer

from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir

TOKEN = "tok-7f3c9a1e5b2d4c8e9f0a1b2c3d4e5f60"
PATIENT_NAME = "Zelda Quixote-Marlowe"
MRN_SYSTEM = "https://clinic.example.org/mrn"
MRN = "MRN-44170-ZQ"


def _phi_payloads(run: str) -> tuple[list[dict[str, object]], list[str]]:
    patient = f"Patient/zq-{run}"
    consent = R.sharing_consent(run, patient)
    consent["patient"] = {
        "reference": patient,
        "identifier": f"{MRN_SYSTEM}|{MRN}",
        "type": "Patient",
        "display": PATIENT_NAME,
    }
    rating = R.rating(run, 1, patient)
    rating["patient"] = {"reference": patient, "display": PATIENT_NAME}
    unconsented = R.rating(run, 2, f"Patient/held-{run}")
    secrets = [
        TOKEN,
        PATIENT_NAME,
        MRN,
        patient,
        f"held-{run}",
        str(rating["id"]).split("|")[1],
        str(unconsented["id"]).split("|")[1],
        str(consent["id"]).split("|")[1],
    ]
    return [consent, rating, unconsented], secrets


def _assert_clean(caplog: pytest.LogCaptureFixture, secrets: list[str]) -> None:
    lines = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("batch done" in line for line in lines)  # the worker's lines were captured
    for secret in secrets:
        leaked = [line for line in lines if secret in line]
        assert leaked == [], f"{secret!r} leaked into the logs"


def test_a_full_sync_logs_no_names_identifiers_or_token(
    fhir_server: FhirTestServer,
    sync_store: SqlStore,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Intake and sync (sent and held records, bearer auth) against the test server: logs clean."""
    caplog.set_level(logging.DEBUG)
    run = R.run_token()
    payloads, secrets = _phi_payloads(run)
    settings = sync_settings(
        fhir_server.base_url, sqlite_url, fhir_auth="bearer", fhir_token=TOKEN, push_audit=True
    )
    intake_records(sync_store, payloads, at=now())
    with client_from_settings(settings, retry=QUICK_RETRY) as client:
        worker = Worker(settings, sync_store, client, tags=[fhir_server.run_tag])
        while worker.run_once().claimed:
            pass
    counts = sync_store.counts_by_state()
    assert counts[SyncState.SENT] == 2 and counts[SyncState.HELD] == 1
    _assert_clean(caplog, secrets)


def test_dead_letters_and_retries_log_no_server_diagnostics(
    httpserver: HTTPServer,
    sync_store: SqlStore,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that rejects with a diagnostic naming the patient: the dead letter keeps the
    OperationOutcome, the logs carry only its codes."""
    caplog.set_level(logging.DEBUG)
    fake = FakeFhir(httpserver).install()
    run = R.run_token()
    payloads, secrets = _phi_payloads(run)
    results = intake_records(sync_store, payloads, at=now())
    fake.rejected_ids = {results[1].record_id}  # the rating of the named patient
    settings = replace(
        sync_settings(fake.base_url, sqlite_url, fhir_version="4.0.1"),
        fhir_auth="bearer",
        fhir_token=TOKEN,
    )
    with client_from_settings(settings, retry=QUICK_RETRY) as client:
        worker = Worker(settings, sync_store, client)
        while worker.run_once().claimed:
            pass
    status = sync_store.sync_status(results[1].record_id)
    assert status is not None and status.state is SyncState.DEAD_LETTERED
    assert status.last_outcome is not None
    # The server's text is not kept, in the store either (it may quote patient data).
    assert "Jane Roe" not in str(status.last_outcome)
    assert status.last_outcome["issue"][0]["diagnostics"] == SERVER_TEXT_NOT_KEPT
    _assert_clean(caplog, [*secrets, "Jane Roe"])
