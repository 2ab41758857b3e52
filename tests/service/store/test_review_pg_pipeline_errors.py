"""PostgreSQL's pipelined intake transaction after an error (``store/raw.py``).

psycopg prepares a statement on its sixth execution on a connection. In pipeline mode the
``Parse`` of a statement queued after a failing one is skipped by the server (the pipeline is
aborted), yet psycopg kept the statement's name in its cache: every later use of that statement
on the connection then failed with ``prepared statement "_pg3_…" does not exist``
(``ProgrammingError``), the intake's retry after a lost race included, until a restart.

A lost race must surface as ``IntegrityError`` (so that the use case runs the intake again),
nothing of the failed transaction may remain, and the thread's next intakes must be stored,
whatever statements were being prepared at the time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store import PutOutcome, SqlStore, SyncState, open_store
from fhir_alliance_service.usecases.intake import RecordIntake, intake_records
from sqlalchemy.exc import IntegrityError

from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.model.common import Identifier
from tests.service.usecases.payloads import OBSERVATION_PATIENT, for_patient, observation

from .builders import T0, at, record

pytestmark = pytest.mark.postgres

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _on_one_thread(function: Callable[[], None]) -> None:
    """``function()`` on a thread of its own (the store's raw connection is per thread)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(function).result(timeout=120)


def test_after_lost_races_the_same_thread_stores_its_next_intakes(postgres_url: str) -> None:
    """Another connection stores the same new record between this thread's lookup and its
    write, after 0 to 11 earlier intakes on the thread's connection (so that each of the
    intake's statements is, in some round, prepared inside the transaction that fails): the
    loser gets IntegrityError, keeps nothing of its batch, and its retry and its next new
    record are stored on the same thread."""
    loser, winner = open_store(postgres_url), open_store(postgres_url)
    racing: list[int] = []

    def store_it_first(statement: str) -> None:
        if racing and statement.lstrip().upper().startswith("INSERT INTO RECORDS "):
            number = racing.pop()
            winner.put_records([record(number, score="first")], audit=[], at=T0)

    loser.raw.statement_listeners.append(store_it_first)

    def run() -> None:
        for n in range(12):
            racing.append(1000 + n)
            batch = [record(1000 + n, score="second"), record(3000 + n)]
            with pytest.raises(IntegrityError):
                loser.put_records(batch, audit=[], at=at(n))
            assert loser.get_records([f"rec-{3000 + n:06d}"]) == {}  # nothing half-written
            retried = loser.put_records(batch, audit=[], at=at(n))
            assert [(r.version, r.outcome) for r in retried] == [
                (2, PutOutcome.UPDATED),
                (1, PutOutcome.CREATED),
            ]
            [later] = loser.put_records([record(2000 + n)], audit=[], at=at(n))
            assert (later.version, later.outcome) == (1, PutOutcome.CREATED)

    try:
        _on_one_thread(run)
        assert len(winner.list_records()) == 36
        for n in range(12):
            first = winner.get_record(f"rec-{1000 + n:06d}", version=1)
            assert first is not None and first.body["score"] == "first"  # the winner's, whole
        counts = winner.counts_by_state()
        assert (counts[SyncState.QUEUED], counts[SyncState.SUPERSEDED]) == (36, 12)
    finally:
        loser.close()
        winner.close()


def test_many_threads_posting_one_new_record_all_get_an_answer(postgres_url: str) -> None:
    """Two stores (two worker processes) of four threads each, their connections warmed up,
    get 30 posts of the same new identifier at once, each with a different ``responses.1``,
    in several rounds: every post is stored (created once, then updated; docs/service.md),
    each content is exactly one version, and ordinary intakes afterwards are all stored."""
    stores = [open_store(postgres_url), open_store(postgres_url)]
    base = observation("srs-administration")
    posts_per_round, rounds = 30, 4
    try:
        with ThreadPoolExecutor(4) as first, ThreadPoolExecutor(4) as second:
            pools = [first, second]

            def post(n: int, payload: dict[str, Any]) -> RecordIntake:
                future = pools[n % 2].submit(
                    intake_records, stores[n % 2], [payload], at=AT + timedelta(seconds=n)
                )
                [result] = future.result(timeout=120)
                return result

            # Every thread's connection runs the intake's statements often enough to prepare them.
            warm = [for_patient(base, OBSERVATION_PATIENT, suffix=f"-warm-{n}") for n in range(48)]
            assert {r.outcome for r in _all_at_once(post, warm)} == {PutOutcome.CREATED}
            for round_ in range(rounds):
                contents = []
                for n in range(posts_per_round):
                    payload = for_patient(base, OBSERVATION_PATIENT, suffix=f"-race-{round_}")
                    payload["responses"]["1"] = n / 10
                    contents.append(payload)
                results = _all_at_once(post, contents)
                record_id = resource_id(Identifier.parse(contents[0]["id"]))
                assert {r.record_id for r in results} == {record_id}
                outcomes = [r.outcome for r in results]
                assert outcomes.count(PutOutcome.CREATED) == 1
                assert outcomes.count(PutOutcome.UPDATED) == posts_per_round - 1
                assert sorted(r.version for r in results) == list(range(1, posts_per_round + 1))
                _one_version_per_content(stores[0], record_id, [n / 10 for n in range(30)])
            after = [
                for_patient(base, OBSERVATION_PATIENT, suffix=f"-after-{n}") for n in range(20)
            ]
            for n, payload in enumerate(after):  # one after another, every thread in turn
                assert post(n, payload).outcome is PutOutcome.CREATED
    finally:
        for store in stores:
            store.close()


def _all_at_once(
    post: Callable[[int, dict[str, Any]], RecordIntake], payloads: list[dict[str, Any]]
) -> list[RecordIntake]:
    start = threading.Barrier(len(payloads))

    def one(n: int) -> RecordIntake:
        start.wait(timeout=60)
        return post(n, payloads[n])

    with ThreadPoolExecutor(len(payloads)) as callers:
        return list(callers.map(one, range(len(payloads))))


def _one_version_per_content(store: SqlStore, record_id: str, posted: list[float]) -> None:
    newest = store.get_record(record_id)
    assert newest is not None and newest.version == len(posted)
    stored = [store.get_record(record_id, version=v) for v in range(1, len(posted) + 1)]
    assert sorted(s.body["responses"]["1"] for s in stored if s is not None) == sorted(posted)
    assert len({s.content_hash for s in stored if s is not None}) == len(posted)
    status = store.sync_status(record_id)
    assert status is not None
    assert (status.record_version, status.state) == (len(posted), SyncState.QUEUED)
    counts = store.counts_by_state()
    assert counts[SyncState.SUPERSEDED] >= len(posted) - 1
