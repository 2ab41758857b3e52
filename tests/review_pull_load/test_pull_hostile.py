"""Outside review of the two-way sync's pull against a hostile or broken FHIR server
(pytest-httpserver as the server): what the server answers is untrusted. A pulled consent never
widens sharing beyond what the server's newest content says, and a bad answer ends the pass with
an error in its report (the notification route answers with an OperationOutcome, never a 500)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.sync.pull import Puller, foreign_record_id
from fhir_alliance_service.usecases.consents import load_patient_consents
from fhir_alliance_service.usecases.intake import intake_records
from flask import Flask
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import FhirClient
from fhir_alliance.model.consent import ConsentStatus
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.remote import pcf_consent

PATIENT = "Patient/hostile-1"
EARLIER = "2026-12-01T10:00:00.000Z"
LATER = "2026-12-01T11:00:00.000Z"
#: Requests a looping server answers before it fails (the current code would go on to 100,000).
LOOP_GUARD = 40


def _consent(version: str | None, stamp: str, status: str = "active") -> dict[str, Any]:
    """A PCF-shaped permit of PATIENT written on the server by someone else."""
    meta = {"lastUpdated": stamp} | ({"versionId": version} if version is not None else {})
    return {"id": "c1", "meta": meta, **pcf_consent(PATIENT, status=status)}


def _searchset(*resources: dict[str, Any], next_url: str | None = None) -> Response:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return Response(json.dumps(bundle), content_type="application/fhir+json")


def _server(httpserver: HTTPServer, answer: Callable[[Request], Response]) -> str:
    """A server without a CapabilityStatement (deletions by listing) whose Consent searches
    ``answer`` gives; its base URL."""
    httpserver.expect_request("/fhir/metadata").respond_with_data("no", status=404)
    httpserver.expect_request("/fhir/Consent").respond_with_handler(answer)
    return httpserver.url_for("/fhir")


def _in_turn(*answers: Response) -> Callable[[Request], Response]:
    queue = list(answers)
    return lambda request: queue.pop(0)


def _notify(app: Flask, focus: str) -> Any:
    """POST an R5 event notification naming ``focus`` to ``app``; its answer."""
    key = create_api_key(app.extensions["fhir_alliance"].store, "notifications", ["write"])
    event = {"eventNumber": 1, "focus": {"reference": focus}}
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "notificationEvent": [event],
    }
    notification = {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [{"resource": status}],
    }
    return app.test_client().post(
        "/v1/fhir/notifications", json=notification, headers={"Authorization": f"Bearer {key}"}
    )


def _active_consents(store: SqlStore) -> list[ConsentStatus]:
    statuses = [r.status for r in load_patient_consents(store, PATIENT).records]
    return [s for s in statuses if s is ConsentStatus.ACTIVE]


@pytest.fixture
def known(sync_store: SqlStore) -> SqlStore:
    """The store, with PATIENT known (a rating of theirs taken in)."""
    intake_records(sync_store, [R.rating("hostile", 1, PATIENT)], at=now())
    return sync_store


def test_an_older_version_read_after_a_withdrawal_never_puts_the_permit_back(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """A permit pulled at version 1, withdrawn at version 2 (status inactive), then a stale
    answer (a lagging replica, a cache, an overlap page) gives version 1 again, older stamp and
    all: the withdrawal stands. Found: the old version is merged as a new local version, the
    permit is active again and the patient's held records are released (fail open)."""
    base = _server(
        httpserver,
        _in_turn(
            _searchset(_consent("1", EARLIER)),
            _searchset(_consent("2", LATER, status="inactive")),
            _searchset(_consent("1", EARLIER)),
        ),
    )
    with FhirClient(base, retry=QUICK_RETRY) as client:
        puller = Puller(sync_settings(base, sqlite_url), known, client)
        assert puller.pull().merged == 1
        assert puller.pull().merged == 1
        assert _active_consents(known) == []  # the withdrawal was adopted
        stale = puller.pull()
        stored = known.get_record(foreign_record_id(client.base.url, "c1"))
    assert stored is not None
    assert (stored.version, stored.body.get("status")) == (2, "revoked")
    assert _active_consents(known) == []
    assert stale.merged == 0


def test_a_withdrawal_on_a_server_that_gives_no_version_ids_is_merged(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """``meta.versionId`` is optional in FHIR (a server that does not version gives none). A
    permit pulled without one and later withdrawn (status inactive, a newer ``lastUpdated``) is
    withdrawn here too. Found: both copies dedupe as (c1, None): the withdrawal is counted a
    duplicate and skipped on every pass, the permit stays active for good (fail open)."""
    base = _server(
        httpserver,
        _in_turn(
            _searchset(_consent(None, EARLIER)),
            _searchset(_consent(None, LATER, status="inactive")),
        ),
    )
    with FhirClient(base, retry=QUICK_RETRY) as client:
        puller = Puller(sync_settings(base, sqlite_url), known, client)
        assert puller.pull().merged == 1
        assert len(_active_consents(known)) == 1
        withdrawn = puller.pull()
    assert (withdrawn.duplicates, withdrawn.merged) == (0, 1)
    assert _active_consents(known) == []


def test_a_next_link_that_repeats_itself_ends_the_pass(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """A server whose ``next`` link names the page just read (a paging loop): the pass stops
    with an error after reading that page again at most once, not after ``MAX_PAGES`` (100,000)
    round trips. Found: it follows the loop page after page (here until the server gives up)."""
    requests: list[str] = []

    def looping(request: Request) -> Response:
        requests.append(request.url)
        if len(requests) > LOOP_GUARD:
            return Response("enough", status=500)
        return _searchset(_consent("1", EARLIER), next_url=f"{base}/Consent?page=2")

    base = _server(httpserver, looping)
    with FhirClient(base, retry=QUICK_RETRY) as client:
        report = Puller(sync_settings(base, sqlite_url), known, client).pull()
    assert report.error is not None
    assert len(requests) <= 3, f"{len(requests)} pages read"


def test_a_next_link_off_the_server_ends_the_pass_with_an_error_in_its_report(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """A ``next`` link to another host is refused (never followed): the pass ends as any
    failed pass does, ``report.error`` saying why, and the cursor stays where it was. Found:
    ``UnsafeLinkError`` (not a ``ServerError``) escapes ``Puller.pull``: no report, no release
    of the patients the first page changed."""
    base = _server(
        httpserver,
        lambda request: _searchset(
            _consent("1", EARLIER), next_url="https://elsewhere.example/fhir/Consent?page=2"
        ),
    )
    with FhirClient(base, retry=QUICK_RETRY) as client:
        report = Puller(sync_settings(base, sqlite_url), known, client).pull()
        cursor = known.get_pull_cursor(client.base.url, "Consent")
    assert report.error is not None and "UnsafeLink" in report.error
    assert cursor is None


def test_a_notification_whose_pull_meets_a_link_off_the_server_is_not_a_500(
    httpserver: HTTPServer, make_app: Callable[..., Flask]
) -> None:
    """A notification whose focus is gone (404) runs a pull; the server's search answers with a
    ``next`` link to another host. The route answers as it does for any failed pull (its
    report, or an OperationOutcome saying the FHIR server's answer was refused), never
    "internal error". Found: 500 ("unexpected error" logged)."""
    base = _server(
        httpserver,
        lambda request: _searchset(
            _consent("1", EARLIER), next_url="https://elsewhere.example/fhir/Consent?page=2"
        ),
    )
    httpserver.expect_request("/fhir/Consent/gone").respond_with_data("", status=404)
    app = make_app(fhir_base_url=base, recipients=[R.EHR])
    store = app.extensions["fhir_alliance"].store
    intake_records(store, [R.rating("hostile", 1, PATIENT)], at=now())
    response = _notify(app, "Consent/gone")
    assert response.status_code in (200, 502, 503), (response.status_code, response.json)


@pytest.mark.parametrize("answer", ["too-large", "not-fhir"])
def test_a_notification_whose_focus_answer_is_refused_is_a_502(
    httpserver: HTTPServer, make_app: Callable[..., Flask], answer: str
) -> None:
    """The focus read answers with more than the client takes (``Content-Length`` over its
    bound) or with something that is not FHIR: the route answers 502, an OperationOutcome naming
    the error type only; never 413 (that would blame the notification) nor 500."""
    base = _server(httpserver, lambda request: _searchset())
    if answer == "too-large":
        focus = Response("{}", content_type="application/fhir+json")
        focus.headers["Content-Length"] = str(10**10)
    else:
        focus = Response("<html>login</html>", content_type="text/html")
    httpserver.expect_request("/fhir/Consent/big").respond_with_response(focus)
    app = make_app(fhir_base_url=base, recipients=[R.EHR])
    response = _notify(app, "Consent/big")
    assert response.status_code == 502, (response.status_code, response.json)
    assert response.json["resourceType"] == "OperationOutcome"
    error = "ResponseTooLargeError" if answer == "too-large" else "InvalidResponseError"
    assert error in response.json["issue"][0]["details"]["text"]


def test_a_copy_that_may_be_older_is_merged_only_when_it_withdraws(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """A server without version ids gives copies with the same ``lastUpdated`` (nothing says
    which is newer): a withdrawal among them is adopted (it narrows sharing), a permit after it
    is not (it would widen sharing on what may be the older copy) but holds the patient as an
    unreadable consent does, and the permit read again while it is what is stored counts as a
    duplicate."""
    base = _server(
        httpserver,
        _in_turn(
            _searchset(_consent(None, EARLIER)),
            _searchset(_consent(None, EARLIER)),
            _searchset(_consent(None, EARLIER, status="inactive")),
            _searchset(_consent(None, EARLIER)),
        ),
    )
    with FhirClient(base, retry=QUICK_RETRY) as client:
        puller = Puller(sync_settings(base, sqlite_url), known, client)
        assert puller.pull().merged == 1
        again = puller.pull()
        withdrawn = puller.pull()
        assert _active_consents(known) == []
        permit = puller.pull()
    assert (again.duplicates, again.merged) == (1, 0)
    assert (withdrawn.merged, withdrawn.stale) == (1, 0)
    assert (permit.merged, permit.unreadable, permit.stale) == (1, 1, 0)
    assert _active_consents(known) == []
    assert load_patient_consents(known, PATIENT).unreadable


def test_a_copy_that_may_be_older_is_merged_when_it_denies(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """On a server without version ids, the patient's permit is turned into an opt-out (still
    active; the root provision now denies) with the same ``lastUpdated``: the order is unsure,
    but a consent that permits nothing narrows sharing whichever copy is newer, so it is merged.
    Found: any active copy counted as one that may widen sharing and was skipped as stale, so the
    permit stayed in force after the patient opted out (fail open)."""
    deny = _consent(None, EARLIER)
    deny["provision"] = {**deny["provision"], "type": "deny"}
    base = _server(httpserver, _in_turn(_searchset(_consent(None, EARLIER)), _searchset(deny)))
    with FhirClient(base, retry=QUICK_RETRY) as client:
        puller = Puller(sync_settings(base, sqlite_url), known, client)
        assert puller.pull().merged == 1
        opted_out = puller.pull()
        stored = known.get_record(foreign_record_id(client.base.url, "c1"))
    assert (opted_out.merged, opted_out.stale) == (1, 0)
    assert stored is not None and stored.body["decision"] == "deny"


def test_a_narrowing_edit_of_unsure_order_holds_the_patient(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """On a server without version ids, the patient's permit gains a nested deny (no sharing for
    research any more) and keeps its ``lastUpdated``: the order is unsure and the copy still
    permits something. Skipping it as maybe older kept the wider permit in force (fail open);
    adopting it could put an older, wider copy back. Neither is safe, so it is stored as
    unreadable: the patient's records are held until a copy of sure order arrives (a later
    edit, a newer stamp), which is then merged."""
    narrowed = _consent(None, EARLIER)
    narrowed["provision"] = {
        **narrowed["provision"],
        "provision": [
            {
                "type": "deny",
                "purpose": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "HRESCH",
                    }
                ],
            }
        ],
    }
    later = {**narrowed, "meta": {"lastUpdated": LATER}}
    base = _server(
        httpserver,
        _in_turn(
            _searchset(_consent(None, EARLIER)),
            _searchset(narrowed),
            _searchset(narrowed),
            _searchset(later),
        ),
    )
    record_id = None
    with FhirClient(base, retry=QUICK_RETRY) as client:
        puller = Puller(sync_settings(base, sqlite_url), known, client)
        assert puller.pull().merged == 1
        record_id = foreign_record_id(client.base.url, "c1")
        unsure = puller.pull()
        assert _active_consents(known) == []
        assert load_patient_consents(known, PATIENT).unreadable == (record_id,)
        again = puller.pull()
        sure = puller.pull()
    assert (unsure.merged, unsure.unreadable, unsure.stale) == (1, 1, 0)
    assert again.merged == 0  # the same copy again: still unsure, still held, nothing new
    assert (sure.merged, sure.unreadable) == (1, 0)
    assert load_patient_consents(known, PATIENT).unreadable == ()
    assert _active_consents(known) == [ConsentStatus.ACTIVE]
    stored = known.get_record(record_id)
    assert stored is not None and stored.body["provision"]["provisions"][0]["type"] == "deny"


def test_a_consent_moved_to_a_patient_not_ours_no_longer_permits_for_the_first(
    httpserver: HTTPServer, known: SqlStore, sqlite_url: str
) -> None:
    """A foreign permit of PATIENT is moved on the server to a patient this service does not
    know (filed under the wrong patient, then corrected), and the moved copy is read (here as a
    notification's focus is). It no longer speaks for PATIENT: PATIENT is left without it and
    marked changed (the retraction pass looks at them). Found: the moved copy is ignored as not
    our patient and its pulled row loses the record it stood for, so neither it nor the full
    listing that no longer finds it under PATIENT ever withdraws the permit: PATIENT's records
    keep being shared under another person's consent (fail open)."""
    moved = _consent("2", LATER)
    moved["patient"] = {"reference": "Patient/someone-else"}
    base = _server(httpserver, _in_turn(_searchset(_consent("1", EARLIER)), _searchset()))
    with FhirClient(base, retry=QUICK_RETRY) as client:
        puller = Puller(sync_settings(base, sqlite_url), known, client)
        assert puller.pull().merged == 1
        assert len(_active_consents(known)) == 1
        notified = puller.merge("Consent", [moved])
        listed = puller.pull(full_listing=True)
    assert _active_consents(known) == []
    assert PATIENT in notified.changed_patients | listed.changed_patients
