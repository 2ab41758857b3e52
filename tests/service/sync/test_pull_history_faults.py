"""The history read under faults (pytest-httpserver as a server that offers ``history-type``):
a history answer that cannot be read makes the pass list everything instead (so the deletion is
still noticed) and turns history off for that puller; a transient failure stops the pass and
keeps the history cursor where it was."""

from __future__ import annotations

import json
from typing import Any

from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.sync.pull import (
    DELETIONS_HISTORY,
    DELETIONS_LISTING,
    DELETIONS_NONE,
    HISTORY_CURSOR,
    Puller,
)
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.remote import pcf_consent

PATIENT = "Patient/hf1"
STAMP = "2026-12-01T10:00:00.000Z"
DELETED_AT = "2026-12-01T11:00:00.000Z"


def _consent() -> dict[str, Any]:
    return {"id": "c1", "meta": {"versionId": "1", "lastUpdated": STAMP}, **pcf_consent(PATIENT)}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/fhir+json")


class HistoryServer:
    """Metadata offering ``history-type`` for Consent; a Consent search answering what
    ``listed`` holds; ``Consent/_history`` answering ``history`` (a Bundle or a Response)."""

    def __init__(self, httpserver: HTTPServer) -> None:
        self.listed: list[dict[str, Any]] = [_consent()]
        self.history: dict[str, Any] | Response = {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [_written_entry()],
        }
        self.history_queries: list[dict[str, str]] = []
        statement = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "Consent",
                            "interaction": [
                                {"code": c} for c in ("read", "search-type", "history-type")
                            ],
                        }
                    ],
                }
            ],
        }
        httpserver.expect_request("/fhir/metadata").respond_with_json(statement)
        httpserver.expect_request("/fhir/Consent/_history").respond_with_handler(self._history)
        httpserver.expect_request("/fhir/Consent").respond_with_handler(self._search)
        self.base = httpserver.url_for("/fhir")

    def _search(self, request: Request) -> Response:
        entries = [{"resource": r, "search": {"mode": "match"}} for r in self.listed]
        return _json({"resourceType": "Bundle", "type": "searchset", "entry": entries})

    def _history(self, request: Request) -> Response:
        self.history_queries.append(dict(request.args))
        if isinstance(self.history, Response):
            return self.history
        return _json(self.history)


def _written_entry() -> dict[str, Any]:
    return {
        "resource": _consent(),
        "request": {"method": "PUT", "url": "Consent/c1"},
        "response": {"status": "201 Created", "etag": 'W/"1"', "lastModified": STAMP},
    }


def _deleted_entry() -> dict[str, Any]:
    return {
        "fullUrl": "http://elsewhere.example/fhir/Consent/c1",
        "request": {"method": "DELETE", "url": "Consent/c1"},
        "response": {"status": "204", "etag": 'W/"2"', "lastModified": DELETED_AT},
    }


def _first_pull(sync_store: SqlStore, sqlite_url: str, server: HistoryServer) -> FhirClient:
    intake_records(sync_store, [R.rating("hf", 1, PATIENT)], at=now())
    client = FhirClient(server.base, retry=QUICK_RETRY)
    first = Puller(sync_settings(server.base, sqlite_url), sync_store, client).pull()
    assert (first.merged, first.deletions, first.error) == (1, {"Consent": DELETIONS_LISTING}, None)
    return client


def test_a_malformed_history_bundle_falls_back_to_the_listing(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """The Consent is gone from the server; its history answer is a Bundle whose entry names no
    resource. The pass lists everything instead and the deletion is noticed; the same puller
    then stops asking for history."""
    server = HistoryServer(httpserver)
    with _first_pull(sync_store, sqlite_url, server) as client:
        server.listed = []
        server.history = {"resourceType": "Bundle", "type": "history", "entry": [{"fullUrl": 7}]}
        puller = Puller(sync_settings(server.base, sqlite_url), sync_store, client)
        report = puller.pull()
        assert (report.deletions, report.deleted) == ({"Consent": DELETIONS_LISTING}, 1)
        assert report.history_failed == "InvalidResponseError" and report.error is None
        asked = len(server.history_queries)
        later = puller.pull()
        assert later.deletions == {"Consent": DELETIONS_NONE}
        assert len(server.history_queries) == asked  # history is off for this puller
    [consent] = sync_store.consents_for_patient(PATIENT)
    assert consent.body["status"] == "revoked"


def test_a_search_set_instead_of_a_history_bundle_is_not_read_as_history(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """A server answering ``_history`` with a search set (a proxy or a misrouted path) is not
    taken as "nothing was deleted": the pass lists instead."""
    server = HistoryServer(httpserver)
    with _first_pull(sync_store, sqlite_url, server) as client:
        server.listed = []
        server.history = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        report = Puller(sync_settings(server.base, sqlite_url), sync_store, client).pull()
    assert (report.deletions, report.deleted) == ({"Consent": DELETIONS_LISTING}, 1)


def test_a_delete_entry_in_history_is_the_deletion(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """History naming the deleted Consent only by URL (no resource, a bare status) is read as
    its deletion. The read starts at the stamp the listing noted (the newest in history) less
    the overlap; the history cursor then moves to the DELETE's stamp and the next read starts
    there less the overlap."""
    server = HistoryServer(httpserver)
    with _first_pull(sync_store, sqlite_url, server) as client:
        server.history = {"resourceType": "Bundle", "type": "history", "entry": [_deleted_entry()]}
        settings = sync_settings(server.base, sqlite_url, pull_overlap_seconds=10.0)
        report = Puller(settings, sync_store, client).pull()
        assert server.history_queries[-1]["_since"] == "2026-12-01T09:59:50.000Z"
        assert (report.deletions, report.deleted) == ({"Consent": DELETIONS_HISTORY}, 1)
        cursor = sync_store.get_pull_cursor(client.base.url, HISTORY_CURSOR.format("Consent"))
        assert cursor is not None and cursor.last_updated == DELETED_AT
        Puller(settings, sync_store, client).pull()
    assert server.history_queries[-1]["_since"] == "2026-12-01T10:59:50.000Z"


def test_a_transient_history_failure_stops_the_pass_and_keeps_the_cursor(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """503 on ``_history``: the pass reports the error, nothing is taken as deleted, the cursors
    stay as they were, and the next pass reads history again."""
    server = HistoryServer(httpserver)
    with _first_pull(sync_store, sqlite_url, server) as client:
        key = HISTORY_CURSOR.format("Consent")
        before = sync_store.get_pull_cursor(client.base.url, key)
        server.listed = []
        server.history = _json({"resourceType": "OperationOutcome", "issue": []}, status=503)
        settings = sync_settings(server.base, sqlite_url)
        report = Puller(settings, sync_store, client).pull()
        assert report.error is not None and "503" in report.error
        assert report.deleted == 0
        assert sync_store.get_pull_cursor(client.base.url, key) == before
        server.history = {"resourceType": "Bundle", "type": "history", "entry": [_deleted_entry()]}
        retried = Puller(settings, sync_store, client).pull()
    assert (retried.deletions, retried.deleted) == ({"Consent": DELETIONS_HISTORY}, 1)


def test_without_a_history_start_the_pass_lists_instead_of_reading_all_history(
    httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str
) -> None:
    """History was empty when the listing looked (no stamp to start from): the next pass lists
    again rather than read the server's whole history; history is only ever asked for its
    newest entry until it has one."""
    server = HistoryServer(httpserver)
    server.history = {"resourceType": "Bundle", "type": "history"}
    with _first_pull(sync_store, sqlite_url, server) as client:
        server.listed = []
        report = Puller(sync_settings(server.base, sqlite_url), sync_store, client).pull()
    assert (report.deletions, report.deleted) == ({"Consent": DELETIONS_LISTING}, 1)
    assert server.history_queries == [{"_count": "1"}, {"_count": "1"}]
