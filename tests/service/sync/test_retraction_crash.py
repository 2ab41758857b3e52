"""A retraction's record in the store is one write: the versions its marks wrote on the server,
what the policy did, its AuditEvent and the Provenance of each version written go in one
transaction, and only while no other pass has recorded a retraction of the same send. A worker
that dies, or loses the database, after writing on the server and before that write leaves its
patient noted in the store (under its lease, before its first write), and the next pass of any
worker finds its marks: a resource the server holds entered-in-error with our content, at a version
not recorded, is recorded with its Provenance, not skipped. It used to be two writes (the versions,
then the outcome and audit): a crash or a database error between or before them lost the
Provenances of what was written (the next pass found the resources marked and attested nothing),
left the versions the server no longer holds on the send (the next update then took our own mark
for someone else's edit), and, for a patient whose consents had changed, nothing checked it again
until the full pass after a restart. Against the test FHIR server (one refused write from a
pytest-httpserver proxy), on SQLite and PostgreSQL; the faults from a store wrapper."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import AuditEntry, SyncStatus
from fhir_alliance_service.sync.retract import Retractor
from pytest_httpserver import HTTPServer
from sqlalchemy.exc import OperationalError

from fhir_alliance.client import FhirClient
from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, SyncHarness, now, sync_settings
from tests.service.sync.test_landing_unknown import Killed
from tests.service.sync.test_write_provenance import (
    RefusingProxy,
    _held_by_server,
    _last_audit_id,
    _provenances,
    _reference,
    _shared,
    _since,
)

LEASE = 30.0  # the rig's settings (sync_settings)

#: The store writes a retraction's record may go through (before: the versions, then the
#: outcome with the audit (``mark_retraction``, since removed), or on a failure the audit alone;
#: now: one).
RECORDING = ("record_retraction", "record_sent_versions", "add_audit")


def _outage() -> OperationalError:
    return OperationalError("UPDATE outbox", {}, Exception("server closed the connection"))


class FailsAtRecording:
    """The real store, except that the first write recording a retraction (of the send
    ``item_id``, or of any) raises ``error``: what the retraction wrote is on the server, none of
    its record in the store."""

    def __init__(self, store: SqlStore, error: BaseException, item_id: int | None = None) -> None:
        self._store = store
        self.error: BaseException | None = error
        self.item_id = item_id

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name not in RECORDING:
            return method

        def recording(*args: Any, **kwargs: Any) -> Any:
            item_id = kwargs.get("item_id", args[0] if args else None)
            ours = name != "add_audit" and (self.item_id is None or item_id == self.item_id)
            if ours and self.error is not None:
                error, self.error = self.error, None
                raise error
            return method(*args, **kwargs)

        return recording


@pytest.fixture
def rig(database_url: str, fhir_server: FhirTestServer) -> Iterator[SyncHarness]:
    """A harness on ``database_url`` (SQLite, then PostgreSQL), retracting entered-in-error."""
    store = open_store(database_url)
    settings = sync_settings(
        fhir_server.base_url, database_url, retraction_policy="entered-in-error"
    )
    try:
        with FhirClient(fhir_server.base_url, retry=QUICK_RETRY) as client:
            yield SyncHarness(store, settings, client, fhir_server, R.run_token())
    finally:
        store.close()


def _retractor(rig: SyncHarness, store: Any, *, later: float = 0.0, **overrides: Any) -> Retractor:
    def clock() -> datetime:
        return now() + timedelta(seconds=later)

    settings = replace(rig.settings, **overrides) if overrides else rig.settings
    return Retractor(settings, store, rig.client, clock=clock)


def _status(rig: SyncHarness, record_id: str) -> SyncStatus:
    status = rig.store.sync_status(record_id)
    assert status is not None
    return status


def _check_recorded(rig: SyncHarness, record_id: str, before: int, sent_before: SyncStatus) -> None:
    """The send is recorded entered-in-error once: one AuditEvent, the versions the server holds
    (each entered-in-error), and one Provenance of each, revising the version sent before."""
    new = _since(rig, record_id, before)
    assert [e.action for e in new if e.action.startswith("retract-")] == [
        "retract-entered-in-error"
    ]
    status = _status(rig, record_id)
    assert status.retraction == "entered-in-error"
    for sent in status.sent:
        held = _held_by_server(rig, sent)
        assert (held["status"], held["meta"]["versionId"]) == ("entered-in-error", sent.version_id)
    provenances = _provenances(new)
    targets = sorted(p.resource["target"][0]["reference"] for p in provenances)
    assert targets == sorted(_reference(s) for s in status.sent)  # each once
    revised = {s.id: s.version_id for s in sent_before.sent}
    for provenance in provenances:
        reference = provenance.resource["target"][0]["reference"]
        rtype, rid, _, _version = reference.split("/")
        assert {
            "role": "revision",
            "what": {"reference": f"{rtype}/{rid}/_history/{revised[rid]}"},
        } in provenance.resource["entity"]


def _no_checks_left(rig: SyncHarness) -> None:
    later = now() + timedelta(seconds=10 * LEASE)
    assert rig.store.claim_retraction_checks(limit=10, lease_seconds=LEASE, now=later) == []


def test_a_database_error_after_the_marks_loses_none_of_their_record(rig: SyncHarness) -> None:
    """The rating is marked entered-in-error on the server, and the store write recording it
    fails (the database gone for a moment). The pass raises, the patient is noted; the next pass
    finds the rating marked, at a version not recorded, with our content: it records that
    version, its Provenance (revising the version sent) and the AuditEvent, and marks the SRS.
    Before, the first write recorded the versions and the second the outcome and audit: the
    next pass found the mark and attested nothing, and a failure of the first write left the
    sent versions the server no longer holds."""
    shared = _shared(rig)
    records = [shared["rating"].record_id, shared["srs"].record_id]
    sent = {r: _status(rig, r) for r in records}
    before = {r: _last_audit_id(rig, r) for r in records}
    rig.intake([R.revocation(rig.run)])
    failing = FailsAtRecording(rig.store, _outage())
    retractor = _retractor(rig, failing)
    with pytest.raises(OperationalError):
        retractor.run_pass()
    rating = sent[records[0]].sent[0]
    assert _held_by_server(rig, rating)["status"] == "entered-in-error"  # written, unrecorded
    assert _status(rig, records[0]).retraction is None

    retractor.store = rig.store  # the database is back
    report = retractor.run_pass()
    assert (report.entered_in_error, report.failed) == (2, 0)
    for record_id in records:
        _check_recorded(rig, record_id, before[record_id], sent[record_id])
    _no_checks_left(rig)


@pytest.mark.parametrize("policy", ["entered-in-error", "delete"])
def test_a_worker_dead_after_its_writes_has_them_recorded_by_the_next_worker(
    rig: SyncHarness, policy: str
) -> None:
    """The worker's pass marks (or deletes) the rating and dies before its store write: nothing
    of it is recorded, and the patient's consents changed before the pass, so a worker started
    anew takes them as checked. The patient was noted in the store, under the pass's lease,
    before its first write on the server: the new worker's first pass after the lease retracts
    and records it (found marked: its version and Provenance; deleted: gone already). Before,
    nothing checked the patient again until the full pass."""
    shared = _shared(rig)
    record_id = shared["rating"].record_id
    sent = _status(rig, record_id)
    before = _last_audit_id(rig, record_id)
    rig.intake([R.revocation(rig.run)])
    dying = _retractor(rig, FailsAtRecording(rig.store, Killed()), retraction_policy=policy)
    with pytest.raises(Killed):
        dying.run_pass()
    if policy == "delete":
        assert rig.server.http.get(
            rig.server.url(f"Observation/{sent.sent[0].id}")
        ).status_code in (
            404,
            410,
        )
    assert _status(rig, record_id).retraction is None

    early = _retractor(rig, rig.store, retraction_policy=policy)
    early.seed()  # a worker started anew: the consents as they are taken as checked
    assert early.run_pass().patients == 0  # the dead worker's lease still runs
    restarted = _retractor(rig, rig.store, later=LEASE + 1, retraction_policy=policy)
    restarted.seed()
    report = restarted.run_pass()
    assert report.failed == 0
    if policy == "delete":
        assert report.deleted == 2
        status = _status(rig, record_id)
        assert status.retraction == "deleted" and status.sent[0].version_id is None
        actions = [e.action for e in _since(rig, record_id, before)]
        assert actions == ["retract-delete"]
    else:
        assert report.entered_in_error == 2
        _check_recorded(rig, record_id, before, sent)
    _no_checks_left(rig)


@pytest.fixture
def refusing(httpserver: HTTPServer, fhir_server: FhirTestServer) -> Iterator[RefusingProxy]:
    """The retraction's third write refused: the rating's mark, the SRS's first, then this."""
    yield RefusingProxy(httpserver, fhir_server, refuse=3)


def test_a_database_error_after_a_refused_write_loses_none_of_the_marks(
    rig: SyncHarness, refusing: RefusingProxy
) -> None:
    """The server refuses the SRS's second write, and the store write recording the failure
    (the first resource's new version, its Provenance, the retract-failed AuditEvent) fails
    too. The next pass finds the first resource marked and records it with its Provenance, and
    marks the rest: six Provenances, the first included. Before, the versions and the audit were
    two writes, and a failure of the first lost the first resource's Provenance for good."""
    shared = _shared(rig)
    srs = shared["srs"].record_id
    sent = _status(rig, srs)
    before = _last_audit_id(rig, srs)
    rig.intake([R.revocation(rig.run)])
    assert sent.item_id is not None
    with FhirClient(refusing.base_url, retry=QUICK_RETRY) as client:
        failing = FailsAtRecording(rig.store, _outage(), item_id=sent.item_id)
        retractor = Retractor(rig.settings, failing, client)  # type: ignore[arg-type]
        with pytest.raises(OperationalError):
            retractor.run_pass()
        assert _status(rig, shared["rating"].record_id).retraction == "entered-in-error"
        assert _status(rig, srs).retraction is None
        retractor.store = rig.store
        assert retractor.run_pass().entered_in_error == 1
    _check_recorded(rig, srs, before, sent)
    assert refusing.puts == 1 + 2 + 5  # the rating, the SRS's first and refused, the other five
    _no_checks_left(rig)


class RetractsMeanwhile:
    """The real store, except that right after the first read of a patient's sends another
    worker's pass retracts them all (``other``): this pass goes on with what it read."""

    def __init__(self, store: SqlStore, other: Retractor) -> None:
        self._store = store
        self.other: Retractor | None = other

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def sent_items(self, patient: str) -> list[SyncStatus]:
        items = self._store.sent_items(patient)
        other, self.other = self.other, None
        if other is not None:
            assert other.retract_patient(patient).entered_in_error == 2
        return items


def _retractions(entries: list[AuditEntry]) -> list[str]:
    return [e.action for e in entries if e.action.startswith("retract-")]


def test_two_passes_at_once_record_a_retraction_once(rig: SyncHarness) -> None:
    """Two workers check the patient at once (each saw the consents change): one marks and
    records every send while the other has read them as not retracted. The other finds them
    marked and records nothing: its record is made only while the send's retraction is still
    what it read. Before, it wrote a second retract-entered-in-error AuditEvent of each."""
    shared = _shared(rig)
    records = [shared["rating"].record_id, shared["srs"].record_id]
    sent = {r: _status(rig, r) for r in records}
    before = {r: _last_audit_id(rig, r) for r in records}
    rig.intake([R.revocation(rig.run)])
    first = _retractor(rig, rig.store)
    second = _retractor(rig, RetractsMeanwhile(rig.store, first))
    report = second.run_pass()
    assert (report.entered_in_error, report.failed) == (0, 0)
    for record_id in records:
        _check_recorded(rig, record_id, before[record_id], sent[record_id])
    _no_checks_left(rig)
