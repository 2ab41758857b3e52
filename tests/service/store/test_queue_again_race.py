"""``queue_again`` (the pull's remote edit, ``mark_sent_late``'s older-over-newer repair) racing
an intake on PostgreSQL (found by an outside review). ``_queue_newest`` reads the record's head
without a lock; an intake that has written the next version but not committed is not seen, so the
new item carries the older version under a larger ``item_id``. Newer-ness was by ``item_id`` alone,
so the claim superseded the intake's item and sent the older version: the record's newest version
never left. It is by version first now, and the status shows the newest version's item."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fhir_alliance_service.store import SentResource, open_store
from fhir_alliance_service.store.interface import SyncState

from tests.service.store.builders import at, consent


@pytest.mark.postgres
def test_queue_again_racing_an_intake_never_leaves_the_newest_version_unsent(
    postgres_url: str,
) -> None:
    """An intake of version 3 commits just after ``queue_again`` (another process) queued the
    record again: the item the claim takes is version 3, not the older version 2."""
    intake_store = open_store(postgres_url)
    pull_store = open_store(postgres_url)
    try:
        intake_store.put_records([consent(1)], audit=[], at=at(0))
        intake_store.put_records([consent(1, status="revoked")], audit=[], at=at(1))
        [item] = intake_store.claim("w", limit=1, lease_seconds=30, now=at(2))
        assert item.record_version == 2
        assert intake_store.mark_sent(
            item.item_id, "w", sent=[SentResource("Consent", "c1", "2")], audit=[], at=at(3)
        )

        original = intake_store.raw.transaction

        @contextmanager
        def transaction_then_pull() -> Iterator[None]:
            with original():
                yield
                # The intake has written version 3 and its item; before it commits, the pull
                # (another process) sees a remote edit and queues the record again.
                pull_store.queue_again("rec-000001", conflict="remote-edited", audit=[], at=at(4))

        intake_store.raw.transaction = transaction_then_pull  # type: ignore[method-assign]
        intake_store.put_records([consent(1, status="active")], audit=[], at=at(4))
        intake_store.raw.transaction = original  # type: ignore[method-assign]

        claimed = intake_store.claim("w2", limit=10, lease_seconds=30, now=at(5), per_patient=10)
        assert [c.record_version for c in claimed] == [3], (
            "the claim took "
            f"{[(c.item_id, c.record_version) for c in claimed]}; the record's head is version 3"
        )
        status = intake_store.sync_status("rec-000001")
        assert status is not None and status.state is not SyncState.SUPERSEDED
    finally:
        intake_store.close()
        pull_store.close()
