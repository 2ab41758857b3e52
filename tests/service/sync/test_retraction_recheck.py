"""A retraction check that failed, or that its worker never finished, is kept in the store until
one succeeds: a worker started anew (nothing of the one before in its memory) and any other
worker process sharing the store do it at their next retraction pass, without waiting for the
full pass (``PULL_FULL_LISTING_SECONDS``). It used to be kept in the memory of the process that
failed it only: after a restart (a worker starting up takes every patient's consents as checked)
or in another worker, a copy the patient had withdrawn their consent for stayed on the FHIR server
until the full pass. Faults from pytest-httpserver (``fake_fhir.FakeFhir``: deletes answer 503
while the server is down); the workers that take over run in processes of their own, as
``fhir-alliance worker`` runs (``Worker.run_forever`` with the two-way sync between batches)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.leases import LeaseLedger
from fhir_alliance_service.sync.pull import TwoWaySync
from fhir_alliance_service.sync.retract import Retractor
from pytest_httpserver import HTTPServer

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir
from tests.service.sync.test_landing_unknown import (
    FailsFirstRetraction,
    Killed,
    Rig,
    _answer_lost,
)
from tests.service.sync.test_superseded_in_hand import sent_consent
from tests.service.sync.workers import wait_until

#: How long a worker process may take to start (a fresh interpreter imports the service).
START_TIMEOUT = 60.0
FHIR_ALLIANCE_BIN = Path(sys.executable).with_name("fhir-alliance")


def _worker_process(
    database_url: str,
    base_url: str,
    later: float,
    started: Any,
    stop: Any,
) -> None:
    """A worker process retracting by deleting, its clock ``later`` seconds ahead of the test's,
    pulling (and running a retraction pass) every 0.2 s: ``started`` is set once its first
    two-way sync pass is done; it stops once ``stop`` is set."""
    settings = replace(
        sync_settings(base_url, database_url, fhir_version="4.0.1"),
        retraction_policy="delete",
        pull_interval_seconds=0.2,
    )

    def clock() -> datetime:
        return now() + timedelta(seconds=later)

    store = open_store(database_url)
    client = FhirClient(base_url, retry=QUICK_RETRY, timeout=(1.0, 1.0))
    two_way = TwoWaySync(settings, store, client, clock=clock)
    halt = threading.Event()

    def between_batches() -> None:
        two_way.tick()
        started.set()
        if stop.is_set():
            halt.set()

    worker = Worker(settings, store, client, clock=clock, between_batches=between_batches)
    try:
        worker.run_forever(halt)
    finally:
        client.close()
        store.close()


@contextmanager
def another_worker(rig: Rig, *, later: float = 0.0) -> Iterator[None]:
    """A worker in a process of its own on the rig's store and server, running once its first
    retraction pass is done (the patients' consents as they are then taken as checked)."""
    context = multiprocessing.get_context("spawn")
    started, stop = context.Event(), context.Event()
    process = context.Process(
        target=_worker_process,
        args=(rig.sqlite_url, rig.fake.base_url, later, started, stop),
        daemon=True,
    )
    process.start()
    try:
        assert started.wait(START_TIMEOUT), "the worker process did not start"
        yield
    finally:
        stop.set()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[Rig]:
    """The patient's sharing consent sent already: ratings of Patient/p1 may go."""
    yield from sent_consent(
        Rig(FakeFhir(httpserver).install(), sync_store, sqlite_url, R.run_token())
    )


def _landed_after_the_revocation(rig: Rig) -> tuple[str, str]:
    """A rating lands while the patient revokes the sharing, and its answer is lost; its retry
    is held. The record id, and the ``Type/id`` of its copy on the server (not recorded yet)."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    rig.fake.faults = [_answer_lost(rig, R.revocation(rig.run), applied=True, reads_down=False)]
    rig.worker().run_once()
    [key] = rig.observations()
    rig.worker(later=10).run_once()
    assert rig.items(record_id) == {1: SyncState.HELD}
    return record_id, key


def _retracted(rig: Rig, record_id: str, key: str) -> None:
    """The copy deleted from the server by one retraction, and no check left to do."""
    assert key not in rig.fake.resources
    assert rig.actions(record_id).count("retract-delete") == 1
    last = rig.store.last_sent(record_id)
    assert last is not None and last.retraction == "deleted"
    assert rig.store.claim_retraction_checks(limit=10, lease_seconds=30, now=now()) == []


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["landed-late", "revocation", "cut-short"])
def test_a_failed_retraction_check_is_done_by_the_worker_started_anew(
    rig: Rig, failure: str
) -> None:
    """The FHIR server answers 503 to deletes, and a retraction check fails: the one the worker
    makes once a read-back finds a send landed after the patient revoked (``landed-late``), or
    the retraction pass after the revocation itself (``revocation``); or the worker dies in the
    middle of the read-back's check (``cut-short``). The worker is restarted (a new process;
    under ``cut-short`` once the dead worker's lease on the check has ended), the server has
    recovered, and the new worker's first retraction pass deletes the copy: it used to take the
    patient's consents as checked at start, and leave the copy until the full pass."""
    if failure == "revocation":
        [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
        assert rig.worker().run_once().sent == 1
        [key] = rig.observations()
        worker = rig.worker()
        retractor = Retractor(worker.settings, rig.store, worker.client)
        retractor.seed()  # a worker running before the revocation
        rig.intake(R.revocation(rig.run))
        rig.fake.delete_status = 503
        assert retractor.run_pass().failed == 1
    else:
        record_id, key = _landed_after_the_revocation(rig)
        rig.fake.delete_status = 503
        worker = rig.worker(later=60)
        if failure == "cut-short":
            store = FailsFirstRetraction(rig.store, Killed())
            worker.leases = LeaseLedger(store)  # type: ignore[arg-type]
            worker.store = worker.leases.as_store()
            with pytest.raises(Killed):
                worker.run_once()  # read back, recorded SENT, then the worker dies
        else:
            assert worker.run_once().error is None  # read back, recorded SENT, check failed
            assert rig.actions(record_id).count("retract-failed") == 1
        assert rig.items(record_id) == {1: SyncState.SENT}
    assert key in rig.fake.resources

    rig.fake.delete_status = None  # the server is back; the worker process starts again
    with another_worker(rig, later=100 if failure == "cut-short" else 0):
        _retracted(rig, record_id, key)  # by its first pass


@pytest.mark.slow
def test_a_failed_retraction_check_is_done_by_another_worker_process(rig: Rig) -> None:
    """Another worker process shares the store and has run its retraction passes since before
    the send landed. This worker's check of the send fails (503); the other worker, which never
    learnt of it (it used to stay in this process's memory), deletes the copy once the server
    answers again, with no consent changed since and no full pass."""
    record_id, key = _landed_after_the_revocation(rig)
    with another_worker(rig):
        rig.fake.delete_status = 503
        assert rig.worker(later=60).run_once().error is None
        assert rig.items(record_id) == {1: SyncState.SENT}
        assert key in rig.fake.resources
        rig.fake.delete_status = None
        wait_until(lambda: key not in rig.fake.resources, timeout=20, what="the copy retracted")
    _retracted(rig, record_id, key)


@pytest.mark.slow
def test_a_worker_that_does_not_pull_makes_the_checks_noted_in_the_store(
    rig: Rig, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """A retraction check fails (503 to deletes) and is noted in the store. The only worker
    running is ``fhir-alliance worker --no-pull`` (push only: no pulls): it makes the noted
    check at its next retraction turn, and the copy the patient withdrew consent for is deleted.
    It used to run no retraction at all, so a check noted by its own read-backs or by a failure
    waited for a worker that pulls (or ``fhir-alliance pull``), which may never run. It still
    pulls nothing: no search reaches the server."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    assert rig.worker().run_once().sent == 1
    [key] = rig.observations()
    worker = rig.worker()
    retractor = Retractor(worker.settings, rig.store, worker.client)
    retractor.seed()
    rig.intake(R.revocation(rig.run))
    rig.fake.delete_status = 503
    assert retractor.run_pass().failed == 1
    assert rig.store.pending_retraction_checks(now=now()).due == 1
    rig.fake.delete_status = None

    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
    env.update(
        FHIR_ALLIANCE_DATABASE_URL=rig.sqlite_url,
        FHIR_ALLIANCE_FHIR_BASE_URL=rig.fake.base_url,
        FHIR_ALLIANCE_FHIR_VERSION="4.0.1",
        FHIR_ALLIANCE_RECIPIENTS=R.EHR,
        FHIR_ALLIANCE_RETRACTION_POLICY="delete",
        FHIR_ALLIANCE_POLL_INTERVAL_SECONDS="0.2",
        FHIR_ALLIANCE_PULL_INTERVAL_SECONDS="0.2",
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(FHIR_ALLIANCE_BIN), "worker", "--no-pull"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: key not in rig.fake.resources or process.poll() is not None,
                timeout=START_TIMEOUT,
                what="the copy retracted",
            )
            assert process.poll() is None, log.read_text(errors="replace")
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
    _retracted(rig, record_id, key)
    assert not [r for r, _ in httpserver.log if r.path.rstrip("/").endswith("/Consent")]


@pytest.mark.parametrize("pull", [False, True], ids=["no-pull", "pull"])
def test_a_backlog_of_noted_checks_is_worked_through_batch_after_batch(
    sync_store: SqlStore, sqlite_url: str, pull: bool
) -> None:
    """Intake notes the patient of every consent version it stores, so a bulk load of consents
    leaves one noted check per patient. A worker claims ``WORKER_BATCH_SIZE`` of them at a time;
    while a claim comes back full, each tick between its batches makes the next one, instead of
    one batch per ``PULL_INTERVAL_SECONDS`` (then 100 patients every 30 s: a revocation behind
    10,000 noted patients waited 50 minutes). Nothing reaches a server: the patients have
    nothing sent, and the FHIR version is set."""
    settings = sync_settings(
        "http://127.0.0.1:9/fhir", sqlite_url, fhir_version="4.0.1", worker_batch_size=2
    )
    frozen = now()
    sync_store.note_retraction_checks([f"Patient/backlog-{n}" for n in range(5)])
    with FhirClient(settings.fhir_base_url or "", retry=QUICK_RETRY) as client:
        two_way = TwoWaySync(settings, sync_store, client, clock=lambda: frozen, pull=pull)
        if pull:  # the first tick pulls: stand in for it (the server is not there)
            two_way.puller.pull = lambda: None  # type: ignore[method-assign,assignment,return-value]
        due = []
        for _ in range(4):  # the clock stands still: no interval ends between the ticks
            two_way.tick()
            due.append(sync_store.pending_retraction_checks(now=frozen).total)
    assert due == [3, 1, 0, 0]


def test_a_check_of_a_patient_with_nothing_sent_asks_the_server_nothing(
    sync_store: SqlStore, sqlite_url: str
) -> None:
    """Intake notes the patient of every consent stored, most of whom have nothing on the server
    yet. Their check is done from the store alone: it used to ask the server its FHIR version
    first, so while the server could not be reached (and no version was known) each such check
    failed and stayed due, and ``status`` showed checks pending with nothing to retract."""
    settings = sync_settings("http://127.0.0.1:9/fhir", sqlite_url)  # nothing listens there
    assert settings.fhir_version is None
    sync_store.note_retraction_checks(["Patient/nothing-sent"])
    with FhirClient(settings.fhir_base_url or "", retry=QUICK_RETRY, timeout=(0.5, 0.5)) as client:
        report = Retractor(settings, sync_store, client).run_noted()
    assert (report.patients, report.checked, report.failed) == (1, 0, 0)
    assert sync_store.pending_retraction_checks(now=now()).total == 0
