"""A send whose answer was lost (a timeout, a reset) may have landed: it is never left untracked.
When the worker cannot tell at once whether it landed (its read-back fails too, or the item is
held or dead-lettered before its own retry lands), the item is noted *landing unknown* and read
back later, until it is known: landed and ours, it is recorded SENT with its disclosure AuditEvent
and Provenance, and the retraction policy then sees it; not there, the note is dropped and no
disclosure is audited. Faults from pytest-httpserver (``fake_fhir.FakeFhir``): the transaction is
applied (or not) and its answer comes after the client gave up, and reads answer 503 while the
server is down."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.metrics import render_metrics
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.leases import LeaseLedger
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer
from sqlalchemy.exc import OperationalError
from werkzeug import Response

from fhir_alliance.cli import main
from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir, Fault, malformed, status
from tests.service.sync.test_superseded_in_hand import Rig as InHandRig
from tests.service.sync.test_superseded_in_hand import sent_consent

#: The rig's clients read answers up to this many bytes (``max_response_bytes``).
ANSWER_CAP = 64 * 1024


class Rig(InHandRig):
    """The superseded-in-hand tests' rig, with a worker that retracts by deleting and a clock
    that can run ahead."""

    def worker(self, *, later: float = 0.0) -> Worker:  # type: ignore[override]
        """A worker retracting by deleting; ``later``: seconds its clock runs ahead."""
        settings = replace(
            sync_settings(self.fake.base_url, self.sqlite_url, fhir_version="4.0.1"),
            retraction_policy="delete",
        )
        client = FhirClient(
            self.fake.base_url,
            retry=QUICK_RETRY,
            timeout=(1.0, 0.3),
            max_response_bytes=ANSWER_CAP,
        )

        def clock() -> datetime:
            return now() + timedelta(seconds=later)

        return Worker(settings, self.store, client, clock=clock)

    def actions(self, record_id: str) -> list[str]:
        return [e.action for e in self.store.list_audit(record_id=record_id)]

    def observations(self) -> list[str]:
        return [key for key in self.fake.resources if key.startswith("Observation/")]


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[Rig]:
    """The patient's sharing consent sent already: ratings of Patient/p1 may go."""
    yield from sent_consent(
        Rig(FakeFhir(httpserver).install(), sync_store, sqlite_url, R.run_token())
    )


def _answer_lost(rig: Rig, *payloads: dict[str, Any], applied: bool, reads_down: bool) -> Fault:
    """While the Bundle is on its way: ``payloads`` are taken in, the server stops answering
    reads (503) if ``reads_down``, the Bundle is applied if ``applied``; its answer then comes
    after the client gave up (read timeout 0.3 s): lost."""

    def fault(bundle: dict[str, Any]) -> Response:
        rig.intake(*payloads)
        if reads_down:
            rig.fake.read_status = 503
        if applied:
            rig.fake.apply(bundle)
        time.sleep(0.45)
        return Response("{}", status=200, content_type="application/fhir+json")

    return fault


def test_a_landed_send_whose_read_back_failed_is_found_later_and_retracted(rig: Rig) -> None:
    """Version 1 of a rating is on its way when version 2 is taken in and the patient revokes
    the sharing (version 2 will be held); version 1 lands, its answer is lost and the read-back
    fails (503). Version 1 is superseded with its landing unknown (not forgotten: it used to
    end there, the copy on the server untracked and never retracted). Once the server answers
    again it is read back: ours, so recorded SENT with its disclosure and Provenance, and the
    retraction policy (delete) removes it from the server."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    newer = (R.rating(rig.run, 1, value=5), R.revocation(rig.run))
    rig.fake.faults = [_answer_lost(rig, *newer, applied=True, reads_down=True)]
    report = rig.worker().run_once()
    assert (report.sent, report.superseded) == (0, 1)
    [key] = rig.observations()
    assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.QUEUED}
    assert rig.store.landing_unknown_count() == 1

    rig.worker(later=60).run_once()  # reads still fail: version 2 is held, 1 still unknown
    assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 1
    assert "disclose" not in rig.actions(record_id)

    rig.fake.read_status = None  # the server is back
    # The read-back that failed at 60 s waits as long as the item had waited: due at 120 s.
    rig.worker(later=125).run_once()
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 0
    actions = rig.actions(record_id)
    assert (actions.count("disclose"), actions.count("provenance")) == (1, 1)
    assert actions.count("retract-delete") == 1
    assert key not in rig.fake.resources
    last = rig.store.last_sent(record_id)
    assert last is not None and (last.record_version, last.retraction) == (1, "deleted")


def test_a_lost_send_that_never_landed_is_forgotten_without_a_disclosure(rig: Rig) -> None:
    """The same, but the Bundle was never applied: landing unknown while the server cannot be
    read; once it can, nothing is there, the note is dropped, and no disclosure is audited."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    newer = (R.rating(rig.run, 1, value=5), R.revocation(rig.run))
    rig.fake.faults = [_answer_lost(rig, *newer, applied=False, reads_down=True)]
    rig.worker().run_once()
    assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.QUEUED}
    assert rig.store.landing_unknown_count() == 1
    rig.fake.read_status = None
    rig.worker(later=60).run_once()
    assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 0
    assert rig.observations() == []
    assert rig.store.last_sent(record_id) is None
    actions = rig.actions(record_id)
    assert "disclose" not in actions and "provenance" not in actions


def test_a_send_refused_before_it_was_sent_is_not_noted(rig: Rig) -> None:
    """Nothing listens at the server's port (connection refused): the Bundle never left, so the
    item fails for a retry without a *landing unknown* note (nothing to read back, no count
    inflated through an outage). Once the server listens again the retry sends it."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/fhir"
    settings = sync_settings(closed, rig.sqlite_url, fhir_version="4.0.1")
    client = FhirClient(closed, retry=QUICK_RETRY, timeout=(1.0, 0.3), connect_retries=0)
    report = Worker(settings, rig.store, client).run_once()
    assert (report.sent, report.failed) == (0, 1)
    assert rig.items(record_id) == {1: SyncState.FAILED}
    assert rig.store.landing_unknown_count() == 0
    assert rig.worker(later=3600).run_once().sent == 1


def test_a_copy_a_later_send_of_ours_wrote_is_not_taken_for_the_lost_one(rig: Rig) -> None:
    """Version 1's answer is lost and its read-back fails; version 2 is sent, then version 3,
    whose content is version 1's again. The server's copy then has version 1's content, but
    version 3's send wrote it (its server version is recorded): the read-back says nothing of
    version 1's own send, so the note is dropped and no disclosure of version 1 is audited."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    rig.fake.faults = [
        _answer_lost(rig, R.rating(rig.run, 1, value=5), applied=True, reads_down=True)
    ]
    rig.worker().run_once()
    rig.fake.read_status = None
    assert rig.worker().run_once().sent == 1  # version 2
    rig.intake(R.rating(rig.run, 1, value=2))
    assert rig.worker().run_once().sent == 1  # version 3: version 1's content
    rig.worker(later=60).run_once()
    assert rig.items(record_id) == {
        1: SyncState.SUPERSEDED,
        2: SyncState.SENT,
        3: SyncState.SENT,
    }
    assert rig.store.landing_unknown_count() == 0
    assert rig.actions(record_id).count("disclose") == 2


def oversized(bundle: dict[str, Any]) -> Response:
    """A 200 larger than the rig's clients read (``ANSWER_CAP``): a transaction-response padded
    (a server answering with every resource in full, or a proxy's page); nothing applied."""
    padding = "x" * (ANSWER_CAP + 1)
    body = {"resourceType": "Bundle", "type": "transaction-response", "id": padding}
    return Response(json.dumps(body), status=200, content_type="application/fhir+json")


def _applied_then(rig: Rig, answer: Fault, *payloads: dict[str, Any]) -> Fault:
    """While the Bundle is on its way ``payloads`` are taken in; the Bundle is applied and a
    proxy answers ``answer`` for it: a page that cannot be read (200), an answer larger than the
    client reads, or the gateway's 504."""

    def fault(bundle: dict[str, Any]) -> Response | str | None:
        rig.intake(*payloads)
        rig.fake.apply(bundle)
        return answer(bundle)

    return fault


@pytest.mark.parametrize("answer", ["lost", "unreadable", "oversized", "gateway-timeout"])
def test_a_lost_send_held_at_its_retry_is_found_and_retracted(rig: Rig, answer: str) -> None:
    """No newer version this time: the rating lands, its answer is lost (or cannot be read, is
    larger than the client reads, or a gateway answers 504 for the server that applied it), and
    the patient revokes the sharing meanwhile. Its retry is held by the gate (it used to stay
    held, the copy on the server untracked and never retracted; an oversized answer used to
    dead-letter it at once, unnoted); it is read back, recorded SENT with its disclosure, and
    retracted."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    revoke = R.revocation(rig.run)
    if answer == "lost":
        fault = _answer_lost(rig, revoke, applied=True, reads_down=False)
    elif answer == "unreadable":
        fault = _applied_then(rig, malformed, revoke)
    elif answer == "oversized":
        fault = _applied_then(rig, oversized, revoke)
    else:
        fault = _applied_then(rig, status(504), revoke)
    rig.fake.faults = [fault]
    report = rig.worker().run_once()
    assert report.failed == 1
    [key] = rig.observations()
    assert rig.items(record_id) == {1: SyncState.FAILED}
    assert rig.store.landing_unknown_count() == 1
    rig.worker(later=10).run_once()  # the retry: held
    assert rig.items(record_id) == {1: SyncState.HELD}
    rig.worker(later=60).run_once()  # read back: it landed
    assert rig.items(record_id) == {1: SyncState.SENT}
    actions = rig.actions(record_id)
    assert (actions.count("disclose"), actions.count("provenance")) == (1, 1)
    assert actions.count("retract-delete") == 1
    assert key not in rig.fake.resources
    assert rig.store.landing_unknown_count() == 0


def test_an_oversized_answer_is_retried_into_the_same_resource(rig: Rig) -> None:
    """The server applies the Bundle and answers with more than the client reads: the send is
    retried (it used to be dead-lettered at once, permanent, and the copy it left untracked),
    noted *landing unknown* meanwhile. The retry PUTs the same resource again (a second version,
    never a second resource), is recorded SENT with one disclosure, and drops the note."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    rig.fake.faults = [_applied_then(rig, oversized)]
    report = rig.worker().run_once()
    assert (report.failed, report.dead) == (1, 0)
    [key] = rig.observations()
    assert rig.store.landing_unknown_count() == 1
    assert rig.worker(later=10).run_once().sent == 1
    assert rig.items(record_id) == {1: SyncState.SENT}
    assert rig.observations() == [key] and rig.fake.writes[key] == 2
    last = rig.store.last_sent(record_id)
    assert last is not None and [s.version_id for s in last.sent] == ["2"]
    assert rig.actions(record_id).count("disclose") == 1
    assert rig.store.landing_unknown_count() == 0


def test_an_oversized_answer_of_an_item_superseded_meanwhile_is_read_back_at_once(
    rig: Rig,
) -> None:
    """An oversized answer while version 2 is taken in (version 1 would be superseded, never
    retried): version 1 is read back at once, found landed, and recorded SENT with its
    disclosure (it used to be dead-lettered unnoted, then superseded, the copy untracked)."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    rig.fake.faults = [_applied_then(rig, oversized, R.rating(rig.run, 1, value=5))]
    report = rig.worker().run_once()
    assert (report.sent, report.dead, report.superseded) == (1, 0, 0)
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.QUEUED}
    assert rig.actions(record_id).count("disclose") == 1
    assert rig.store.landing_unknown_count() == 0


def test_status_and_metrics_count_sends_whose_landing_is_unknown(
    rig: Rig, database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a lost send cannot be read back, ``fhir-alliance status`` and
    ``fhir_alliance_landing_unknown`` say so."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    newer = (R.rating(rig.run, 1, value=5),)
    rig.fake.faults = [_answer_lost(rig, *newer, applied=True, reads_down=True)]
    rig.worker().run_once()
    assert rig.items(record_id)[1] is SyncState.SUPERSEDED
    assert "fhir_alliance_landing_unknown 1.0" in render_metrics(rig.store).decode()
    assert database == rig.sqlite_url  # the commands read the rig's store
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", rig.fake.base_url)
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["landing_unknown"] == 1
    assert main(["status"]) == 0
    assert "landing unknown: 1" in capsys.readouterr().out


class Killed(BaseException):
    """The worker process dies (SIGKILL, OOM, the machine lost): nothing of it runs on."""


class FailsFirstRecording:
    """The real store, except that recording the first send raises ``error`` (the worker dies
    there, or the database is gone): what was sent is on the server, the leases stay as they
    were in the database."""

    def __init__(self, store: SqlStore, error: BaseException) -> None:
        self._store = store
        self.error: BaseException | None = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def mark_sent_many(self, *args: Any, **kwargs: Any) -> Any:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self._store.mark_sent_many(*args, **kwargs)


def _worker_on(rig: Rig, store: FailsFirstRecording) -> Worker:
    worker = rig.worker()
    worker.leases = LeaseLedger(store)  # type: ignore[arg-type]
    worker.store = worker.leases.as_store()
    return worker


def _sent_then_killed(rig: Rig) -> Worker:
    """A worker whose Bundle lands on the server, and that dies before recording it."""
    worker = _worker_on(rig, FailsFirstRecording(rig.store, Killed()))
    with pytest.raises(Killed):
        worker.run_once()
    return worker


@pytest.mark.parametrize("newer", [None, "while-leased", "after-the-lease"])
def test_a_send_whose_worker_died_before_recording_it_is_found_and_retracted(
    rig: Rig, newer: str | None
) -> None:
    """A worker's Bundle lands, and the worker dies before recording it. The patient revokes
    the sharing meanwhile (and, but for ``None``, version 2 of the rating comes, taken in while
    the dead worker's lease still ran or after it expired). The next worker takes the item over
    and holds it, or the item is superseded (by that claim, or by intake), and version 2 is
    held: this used to leave the landed copy on the server untracked, no disclosure audited and
    nothing for the retraction to see. Taken from an expired lease, the item is noted *landing
    unknown*: it is read back, recorded SENT with its disclosure and Provenance, and retracted."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    _sent_then_killed(rig)
    [key] = rig.observations()
    assert rig.items(record_id) == {1: SyncState.QUEUED}  # still leased by the dead worker
    assert rig.store.landing_unknown_count() == 0
    later = [R.revocation(rig.run)]
    if newer is not None:
        later.insert(0, R.rating(rig.run, 1, value=5))
    if newer == "after-the-lease":  # the lease (30 s) has expired: intake supersedes it
        intake_records(rig.store, later, at=now() + timedelta(seconds=40))
        assert rig.items(record_id) == {1: SyncState.SUPERSEDED, 2: SyncState.QUEUED}
        assert rig.store.landing_unknown_count() == 1
    else:
        intake_records(rig.store, later, at=now())
        rig.worker(later=40).run_once()  # the lease has expired: taken over, or superseded
        held = {1: SyncState.HELD} if newer is None else {1: SyncState.SUPERSEDED}
        if newer is not None:
            held[2] = SyncState.HELD
        assert rig.items(record_id) == held
        assert rig.store.landing_unknown_count() == 1
    assert "disclose" not in rig.actions(record_id)

    rig.worker(later=50).run_once()  # read back: it landed
    expected = {1: SyncState.SENT}
    if newer is not None:
        expected[2] = SyncState.HELD
    assert rig.items(record_id) == expected
    assert rig.store.landing_unknown_count() == 0
    actions = rig.actions(record_id)
    assert (actions.count("disclose"), actions.count("provenance")) == (1, 1)
    assert actions.count("retract-delete") == 1
    assert key not in rig.fake.resources
    last = rig.store.last_sent(record_id)
    assert last is not None and (last.record_version, last.retraction) == (1, "deleted")


def test_a_send_whose_worker_died_before_it_went_out_is_forgotten_without_a_disclosure(
    rig: Rig,
) -> None:
    """The same takeover, but the dead worker died before its send (the store cannot tell): the
    note is read back, nothing is there, the note is dropped and no disclosure is audited."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    assert rig.store.claim("dead", limit=10, lease_seconds=30, now=now())  # then it dies
    rig.intake(R.revocation(rig.run))
    rig.worker(later=40).run_once()
    assert rig.items(record_id) == {1: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 1
    rig.worker(later=50).run_once()
    assert rig.items(record_id) == {1: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 0
    actions = rig.actions(record_id)
    assert "disclose" not in actions and "provenance" not in actions


def test_a_send_handed_back_after_a_database_outage_is_found_and_retracted(rig: Rig) -> None:
    """The worker's Bundle lands and recording it fails for want of the database: the worker
    gives the batch up and, at its next claim, hands the items back (no lease lost). The patient
    revokes meanwhile, and the item, claimed again, is held: what landed used to stay untracked.
    Its send had started, so it is handed back noted *landing unknown*, read back, recorded
    SENT with its disclosure, and retracted."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    outage = OperationalError("UPDATE outbox", {}, Exception("server closed the connection"))
    worker = _worker_on(rig, FailsFirstRecording(rig.store, outage))
    with pytest.raises(OperationalError):
        worker.run_once()
    worker.leases.abandon(outage)  # what ``run_forever`` does with a failed batch
    [key] = rig.observations()
    rig.intake(R.revocation(rig.run))

    worker.run_once()  # handed back, claimed again, held
    assert rig.items(record_id) == {1: SyncState.HELD}
    status = rig.store.sync_status(record_id)
    assert status is not None and (status.lost_leases, status.landing_unknown) == (0, True)
    worker.run_once()  # read back: it landed
    assert rig.items(record_id) == {1: SyncState.SENT}
    actions = rig.actions(record_id)
    assert (actions.count("disclose"), actions.count("provenance")) == (1, 1)
    assert actions.count("retract-delete") == 1
    assert key not in rig.fake.resources


class FailsFirstRetraction:
    """The real store, except that the first retraction check's read of what was sent raises
    ``error`` (the database gone for a moment, or a bug)."""

    def __init__(self, store: SqlStore, error: BaseException) -> None:
        self._store = store
        self.error: BaseException | None = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def sent_items(self, *args: Any, **kwargs: Any) -> Any:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self._store.sent_items(*args, **kwargs)


@pytest.mark.parametrize("error", ["outage", "bug"])
def test_a_landed_send_whose_retraction_check_failed_is_retracted_by_the_next_pass(
    rig: Rig, error: str
) -> None:
    """A lost send is held at its retry (the patient revoked meanwhile), and a retraction pass
    then finds nothing sent for the patient and takes them as checked. The read-back finds the
    send landed and records it SENT; its retraction check fails (the database gone for a moment,
    or anything but the server's own error). The patient's next retraction pass checks them
    again and retracts it (it used to skip them, their consents unchanged since: the copy stayed
    on the server, tracked but never retracted by this process; a bug also failed the batch):
    at once after a bug, and after the database outage once the worker's lease on the check has
    ended (the worker noted the check in the store before it began)."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    rig.fake.faults = [_answer_lost(rig, R.revocation(rig.run), applied=True, reads_down=False)]
    rig.worker().run_once()
    [key] = rig.observations()
    rig.worker(later=10).run_once()
    assert rig.items(record_id) == {1: SyncState.HELD}
    settings, client = rig.worker().settings, rig.worker().client
    later = 0.0  # seconds the pass's clock runs ahead

    def clock() -> datetime:
        return now() + timedelta(seconds=later)

    retractor = Retractor(settings, rig.store, client, clock=clock)
    assert retractor.run_pass().deleted == 0  # nothing sent yet: the patient is checked

    failure: BaseException = (
        OperationalError("SELECT outbox", {}, Exception("server closed the connection"))
        if error == "outage"
        else RuntimeError("a bug")
    )
    worker = rig.worker(later=60)
    worker.leases = LeaseLedger(FailsFirstRetraction(rig.store, failure))  # type: ignore[arg-type]
    worker.store = worker.leases.as_store()
    if error == "outage":
        with pytest.raises(OperationalError):
            worker.run_once()
    else:
        assert worker.run_once().error is None
    assert rig.items(record_id) == {1: SyncState.SENT}
    assert key in rig.fake.resources
    if error == "outage":
        assert retractor.run_pass().deleted == 0  # the worker's lease on the check runs
        later = 60 + settings.lease_seconds  # the worker's clock ran 60 s ahead
    assert retractor.run_pass().deleted == 1
    assert key not in rig.fake.resources
    assert rig.actions(record_id).count("retract-delete") == 1
