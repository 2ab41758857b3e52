"""Two intakes of the same record racing on PostgreSQL: the loser fails whole with an
IntegrityError (the use case retries it), never a second version 1 or a half-written batch."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fhir_alliance_service.store import PutOutcome, SyncState, open_store
from sqlalchemy.exc import IntegrityError

from .builders import T0, at, record


@pytest.mark.postgres
@pytest.mark.parametrize("second_score", [1, 2], ids=["same-content", "changed-content"])
def test_the_intake_that_loses_a_race_fails_whole(postgres_url: str, second_score: int) -> None:
    """A intake reads the newest versions, B stores the same record meanwhile, then A writes:
    A raises IntegrityError and nothing of A's batch (its other record included) remains."""
    first, second = open_store(postgres_url), open_store(postgres_url)
    looked_up, other_done = threading.Event(), threading.Event()

    def pause_before_writing(statement: str) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO RECORDS"):
            looked_up.set()
            assert other_done.wait(timeout=30)

    first.raw.statement_listeners.append(pause_before_writing)
    outcome: list[BaseException | list[Any]] = []

    def intake_first() -> None:
        try:
            outcome.append(first.put_records([record(1), record(2)], audit=[], at=T0))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=intake_first)
    try:
        thread.start()
        assert looked_up.wait(timeout=30)
        [won] = second.put_records([record(1, score=second_score)], audit=[], at=at(1))
        other_done.set()
        thread.join(timeout=30)
        assert won.outcome is PutOutcome.CREATED
        [lost] = outcome
        assert isinstance(lost, IntegrityError)
        assert [r.record_id for r in second.list_records()] == ["rec-000001"]
        stored = second.get_record("rec-000001")
        assert stored is not None and (stored.version, stored.body["score"]) == (1, second_score)
        assert second.counts_by_state()[SyncState.QUEUED] == 1
    finally:
        other_done.set()
        thread.join(timeout=30)
        first.close()
        second.close()
