"""A running worker whose store another release's ``db upgrade`` migrated: it finishes the batch
in hand and claims nothing more (the real test FHIR server)."""

from __future__ import annotations

import threading

import pytest
from fhir_alliance_service.store import schema_watch
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.store.tables import outbox
from sqlalchemy import select

from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness
from tests.service.test_cli_schema_mismatch import NEWER, _set_revision


def test_run_forever_stops_claiming_once_the_schema_changed(
    harness: SyncHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records taken in after the store's revision changed stay queued, never claimed nor sent:
    run_forever returns by itself (no stop asked) and says why. It used to go on sending, filing
    new records the old way (migration 0009's patient keys, for one)."""
    monkeypatch.setattr(schema_watch, "SCHEMA_CHECK_SECONDS", 0.0)  # read before every claim
    [_consent, first] = harness.intake([R.sharing_consent(harness.run), R.rating(harness.run, 1)])
    worker = harness.worker()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        for _ in range(400):
            if harness.store.counts_by_state()[SyncState.SENT] == 2:
                break
            stop.wait(0.05)
        assert harness.state(first.record_id) is SyncState.SENT
        _set_revision(harness.settings.database_url, NEWER)
        [later] = harness.intake([R.rating(harness.run, 2)])
        thread.join(timeout=10)
        assert not thread.is_alive(), "the worker went on after the schema changed"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert harness.state(later.record_id) is SyncState.QUEUED
    with harness.store.engine.connect() as connection:
        owners = connection.execute(select(outbox.c.lease_owner, outbox.c.attempts)).all()
    assert [tuple(row) for row in owners] == [(None, 0)] * 3  # the later one never leased
    assert len(harness.tagged("Observation")) == 1
    mismatch = worker.schema.mismatch()
    assert mismatch is not None and mismatch.startswith(f"database schema is at {NEWER}, expected")
