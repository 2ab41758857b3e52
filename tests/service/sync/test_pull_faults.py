"""The pull under FHIR-server faults (pytest-httpserver as the server): a failed pass keeps no
cursor and no new patient links, so the next pass reads those patients in full again."""

from __future__ import annotations

from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.sync.pull import Puller
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings


def test_a_failed_pass_saves_no_cursor_and_no_links(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """503 on the Consent search: the pass reports the error; the patient is still new and the
    cursor unset, so nothing the failed pass should have read is skipped later."""
    intake_records(sync_store, [R.rating("faults", 1, "Patient/f1")], at=now())
    httpserver.expect_request("/fhir/Consent").respond_with_data(
        "busy", status=503, content_type="text/plain"
    )
    base = httpserver.url_for("/fhir")
    settings = sync_settings(base, sqlite_url)
    with FhirClient(base, retry=QUICK_RETRY) as client:
        report = Puller(settings, sync_store, client).pull()
        assert report.error is not None and "503" in report.error
        assert sync_store.remote_patients(client.base.url) == {}
        assert sync_store.get_pull_cursor(client.base.url, "Consent") is None
