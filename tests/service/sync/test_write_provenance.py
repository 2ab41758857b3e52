"""Every write of a record's resource on the FHIR server has a Provenance, not only the worker's
sends: a retraction marking a resource entered-in-error and ``reconcile --fix`` writing one again
record a Provenance of the version written (the server's), stored with the step's AuditEvent and,
with ``push_audit``, queued and pushed as a disclosure's Provenances are. Deletes write no version:
their AuditEvent is the record, no Provenance. Against the test FHIR server; one refused write is
injected by a pytest-httpserver proxy in front of it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service import audit
from fhir_alliance_service.store.interface import AuditEntry, AuditPushState, SentResource
from fhir_alliance_service.sync.reconcile import Reconciler
from fhir_alliance_service.sync.retract import Retractor
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import FhirClient
from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import QUICK_RETRY, SyncHarness

RECORD = R.RECORD_SYSTEM
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


def _last_audit_id(harness: SyncHarness, record_id: str) -> int:
    entries = harness.store.list_audit(record_id=record_id, limit=1000)
    return max(e.id for e in entries if e.id is not None)


def _since(harness: SyncHarness, record_id: str, after: int) -> list[AuditEntry]:
    return harness.store.list_audit(record_id=record_id, after=after, limit=1000)


def _provenances(entries: list[AuditEntry]) -> list[AuditEntry]:
    return [e for e in entries if e.action == "provenance"]


def _reference(sent: SentResource) -> str:
    return f"{sent.resource_type}/{sent.id}/_history/{sent.version_id}"


def _held_by_server(harness: SyncHarness, sent: SentResource) -> dict[str, Any]:
    response = harness.server.http.get(harness.server.url(f"{sent.resource_type}/{sent.id}"))
    response.raise_for_status()
    resource: dict[str, Any] = response.json()
    return resource


def _activity(entry: AuditEntry) -> str:
    [coding] = entry.resource["activity"]["coding"]
    assert coding["system"] == DATA_OPERATION
    return str(coding["code"])


def _check_shape(entry: AuditEntry, record_id: str) -> None:
    """Agent the service (as a disclosure's Provenance), the source record an entity."""
    resource = entry.resource
    assert resource["resourceType"] == "Provenance"
    assert [a["who"] for a in resource["agent"]] == [audit.SYNC_DEVICE]
    assert {
        "role": "source",
        "what": {"identifier": {"system": audit.RECORD_IDENTIFIER_SYSTEM, "value": record_id}},
    } in resource["entity"]


def _pushed_provenances(harness: SyncHarness) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in harness.tagged("Provenance")}


def _shared(harness: SyncHarness) -> dict[str, Any]:
    """A consent, a rating and an SRS (a panel and five members) of Patient/p1, all sent."""
    consent, rating, srs = harness.intake(
        [R.sharing_consent(harness.run), R.rating(harness.run, 1), R.srs(harness.run, 2)]
    )
    assert harness.drain().sent == 3
    return {"consent": consent, "rating": rating, "srs": srs}


# ---------------------------------------------------------------------------- retraction


@pytest.mark.parametrize("push", [False, True], ids=["push-off", "push-on"])
def test_an_entered_in_error_retraction_records_a_provenance_of_each_version_it_writes(
    harness: SyncHarness, push: bool
) -> None:
    """Each resource marked entered-in-error gets a Provenance (activity UPDATE) of the version
    the server holds now, stored with the retraction's AuditEvent; with push_audit it is queued
    and the worker's next batch pushes it (its target the server's version); without, it stays
    local."""
    shared = _shared(harness)
    records = [shared["rating"].record_id, shared["srs"].record_id]
    before = {r: _last_audit_id(harness, r) for r in records}
    harness.intake([R.revocation(harness.run)])
    settings = replace(harness.settings, retraction_policy="entered-in-error", push_audit=push)
    report = Retractor(settings, harness.store, harness.client).run_pass()
    assert (report.entered_in_error, report.failed) == (2, 0)

    written: dict[str, AuditEntry] = {}
    for record_id in records:
        new = _since(harness, record_id, before[record_id])
        [event] = [e for e in new if e.action == "retract-entered-in-error"]
        provenances = _provenances(new)
        status = harness.store.sync_status(record_id)
        assert status is not None and status.retraction == "entered-in-error"
        # One per resource written, each targeting the version the retraction wrote.
        assert sorted(p.resource["target"][0]["reference"] for p in provenances) == sorted(
            _reference(s) for s in status.sent
        )
        for entry, sent in zip(
            sorted(provenances, key=lambda p: p.resource["target"][0]["reference"]),
            sorted(status.sent, key=_reference),
            strict=True,
        ):
            held = _held_by_server(harness, sent)
            assert held["status"] == "entered-in-error"
            assert held["meta"]["versionId"] == sent.version_id
            _check_shape(entry, record_id)
            assert _activity(entry) == "UPDATE"
            assert entry.at == event.at and entry.patient == event.patient
            assert entry.push_state is (AuditPushState.PENDING if push else None)
            written[entry.resource["id"]] = entry
    assert len(written) == 1 + 6  # the rating, and the SRS panel with its five members
    # Never the id of the disclosure's Provenance of the same resource: both are kept.
    every = [e.resource["id"] for r in records for e in harness.store.list_audit(record_id=r)]
    assert len(every) == len(set(every))

    harness.drain(push_audit=push)
    on_server = _pushed_provenances(harness)
    if not push:
        assert on_server == {}
        return
    assert set(written) <= set(on_server)
    for provenance_id, entry in written.items():
        [target] = on_server[provenance_id]["target"]
        assert target == entry.resource["target"][0]
        rtype, rid, _, version = target["reference"].split("/")
        assert _held_by_server(harness, SentResource(rtype, rid))["meta"]["versionId"] == version
    pushed = {
        e.resource["id"]: e.push_state
        for r in records
        for e in harness.store.list_audit(record_id=r)
    }
    assert {pushed[i] for i in written} == {AuditPushState.PUSHED}


def test_a_retraction_that_deletes_records_no_provenance(harness: SyncHarness) -> None:
    """A delete leaves no version to attest: its AuditEvent (retract-delete) is the record,
    and no Provenance is written for it, pushed or not."""
    shared = _shared(harness)
    record_id = shared["srs"].record_id
    before = _last_audit_id(harness, record_id)
    harness.intake([R.revocation(harness.run)])
    settings = replace(harness.settings, retraction_policy="delete", push_audit=True)
    assert Retractor(settings, harness.store, harness.client).run_pass().deleted == 2
    assert [e.action for e in _since(harness, record_id, before)] == ["retract-delete"]


class RefusingProxy:
    """Forwards every request to the test FHIR server, except that it answers the ``refuse``-th
    ``PUT`` with a 503 (nothing written)."""

    def __init__(self, httpserver: HTTPServer, server: FhirTestServer, refuse: int) -> None:
        self.server = server
        self.refuse = refuse
        self.puts = 0
        self.base_url = httpserver.url_for("/fhir").rstrip("/")
        httpserver.expect_request(re.compile(r"^/fhir(/.*)?$")).respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        if request.method == "PUT":
            self.puts += 1
            if self.puts == self.refuse:
                body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
                return Response(json.dumps(body), status=503, content_type="application/fhir+json")
        path = request.path.removeprefix("/fhir")
        headers = {
            name: request.headers[name]
            for name in ("Content-Type", "If-Match", "Prefer", "Accept")
            if name in request.headers
        }
        answer = self.server.http.request(
            request.method,
            self.server.base_url + path,
            params=list(request.args.items(multi=True)),
            data=request.get_data(),
            headers=headers,
        )
        upstream, ours = self.server.base_url.encode(), self.base_url.encode()
        kept = {
            name: answer.headers[name].replace(self.server.base_url, self.base_url)
            for name in ("Content-Type", "ETag", "Location", "Last-Modified")
            if name in answer.headers
        }
        return Response(
            answer.content.replace(upstream, ours), status=answer.status_code, headers=kept
        )


@pytest.fixture
def refusing_client(
    httpserver: HTTPServer, fhir_server: FhirTestServer
) -> Iterator[tuple[RefusingProxy, FhirClient]]:
    # The rating's write is the first PUT, the SRS's first resource the second.
    proxy = RefusingProxy(httpserver, fhir_server, refuse=3)
    with FhirClient(proxy.base_url, retry=QUICK_RETRY) as client:
        yield proxy, client


def test_a_retraction_refused_half_way_keeps_the_provenance_of_what_it_wrote(
    harness: SyncHarness, refusing_client: tuple[RefusingProxy, FhirClient]
) -> None:
    """The server refuses the second of an SRS's six writes: the first resource, marked already,
    has its Provenance, stored with the retract-failed AuditEvent; the next pass marks the rest,
    each with its own Provenance, and none twice."""
    proxy, client = refusing_client
    shared = _shared(harness)
    record_id = shared["srs"].record_id
    before = _last_audit_id(harness, record_id)
    harness.intake([R.revocation(harness.run)])
    settings = replace(harness.settings, retraction_policy="entered-in-error", push_audit=True)
    retractor = Retractor(settings, harness.store, client)
    report = retractor.run_pass()
    assert (report.failed, report.entered_in_error) == (1, 1)
    first = _since(harness, record_id, before)
    [failed] = [e for e in first if e.action == "retract-failed"]
    [marked] = _provenances(first)
    assert marked.at == failed.at and marked.push_state is AuditPushState.PENDING
    status = harness.store.sync_status(record_id)
    assert status is not None and status.retraction is None
    [written] = [s for s in status.sent if s.version_id == "2"]
    assert marked.resource["target"] == [{"reference": _reference(written)}]

    assert retractor.run_pass().entered_in_error == 1
    provenances = _provenances(_since(harness, record_id, before))
    status = harness.store.sync_status(record_id)
    assert status is not None and status.retraction == "entered-in-error"
    targets = [p.resource["target"][0]["reference"] for p in provenances]
    assert sorted(targets) == sorted(_reference(s) for s in status.sent)
    assert len(targets) == 6 and proxy.puts == 1 + 6 + 1  # the rating, the SRS, the refused


# ---------------------------------------------------------------------------- reconcile


def _reconciler(harness: SyncHarness, **overrides: Any) -> Reconciler:
    settings = replace(harness.settings, **overrides)
    return Reconciler(settings, harness.store, harness.client, tags=[harness.server.run_tag])


@pytest.mark.parametrize("push", [False, True], ids=["push-off", "push-on"])
def test_reconcile_fix_records_a_provenance_of_each_resource_it_writes(
    harness: SyncHarness, push: bool
) -> None:
    """A drifted resource written back (activity UPDATE, revising the version found) and a
    missing one written again (CREATE): each gets a Provenance of the version written, stored
    with its reconcile-write AuditEvent; with push_audit pushed by the worker's next batch,
    targeting the version the server holds."""
    shared = _shared(harness)
    rating_id, srs_id = shared["rating"].record_id, shared["srs"].record_id
    [rating] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    remote.delete(harness.server, rating)
    member = next(
        o
        for o in harness.tagged("Observation")
        if f"srs-{harness.run}-2" in o["identifier"][0]["value"] and "hasMember" not in o
    )
    edited = remote.update(harness.server, member, effectiveDateTime="2026-11-21T15:50:00+00:00")
    before = {r: _last_audit_id(harness, r) for r in (rating_id, srs_id)}

    report = _reconciler(harness, push_audit=push).run(fix=True)
    assert sorted((f.problem, f.fixed) for f in report.findings) == [
        ("drifted", True),
        ("missing", True),
    ]

    written: dict[str, AuditEntry] = {}
    for record_id, problem, activity, resource_id in (
        (rating_id, "missing", "CREATE", rating["id"]),
        (srs_id, "drifted", "UPDATE", edited["id"]),
    ):
        new = _since(harness, record_id, before[record_id])
        [event] = [e for e in new if e.action == "reconcile-write"]
        assert event.resource["outcomeDesc"] == problem
        [entry] = _provenances(new)
        status = harness.store.sync_status(record_id)
        assert status is not None
        [sent] = [s for s in status.sent if s.id == resource_id]
        held = _held_by_server(harness, sent)
        assert held["meta"]["versionId"] == sent.version_id
        assert entry.resource["target"] == [{"reference": _reference(sent)}]
        _check_shape(entry, record_id)
        assert _activity(entry) == activity
        assert entry.at == event.at
        assert entry.push_state is (AuditPushState.PENDING if push else None)
        written[entry.resource["id"]] = entry
    drifted = written[next(i for i, e in written.items() if _activity(e) == "UPDATE")]
    assert {
        "role": "revision",
        "what": {"reference": f"Observation/{edited['id']}/_history/{edited['meta']['versionId']}"},
    } in drifted.resource["entity"]

    harness.drain(push_audit=push)
    on_server = _pushed_provenances(harness)
    if not push:
        assert on_server == {}
        return
    for provenance_id, entry in written.items():
        [target] = on_server[provenance_id]["target"]
        assert target == entry.resource["target"][0]
        rtype, rid, _, version = target["reference"].split("/")
        assert _held_by_server(harness, SentResource(rtype, rid))["meta"]["versionId"] == version


def test_reconcile_deleting_a_duplicate_records_no_provenance(harness: SyncHarness) -> None:
    """A duplicate deleted by ``--fix``: its AuditEvent (reconcile-delete), no Provenance."""
    shared = _shared(harness)
    record_id = shared["rating"].record_id
    [ours] = harness.on_server("Observation", f"{RECORD}|trust-{harness.run}-1")
    duplicate = {k: v for k, v in ours.items() if k not in ("id", "meta")}
    remote.create(harness.server, harness.server.tagged(duplicate))
    before = _last_audit_id(harness, record_id)
    report = _reconciler(harness, push_audit=True).run(fix=True)
    assert [(f.problem, f.fixed) for f in report.findings] == [("duplicated", True)]
    assert [e.action for e in _since(harness, record_id, before)] == ["reconcile-delete"]
