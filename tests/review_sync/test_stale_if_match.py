"""Sync review, a stale ``withdrawn`` pulled row: the worker's If-Match is the newer of the
version the pull adopted (someone withdrew, or put back in force, our consent on the server) and
the version our own last write left, whichever of the two was recorded first."""

from __future__ import annotations

from fhir_alliance_service.store.interface import PulledResource, SentResource, SyncState

from tests.review_sync.steps import conflict_events, consent_on_server
from tests.service.store.builders import at, record
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, puller


def _draft_consent_put_in_force(harness: SyncHarness) -> str:
    """Our consent taken in as a draft and sent (server version 1); someone sets it active on the
    server (version 2); the pull notes that version ``withdrawn`` and queues our draft to be
    written back: the record id."""
    payload = R.sharing_consent(harness.run)
    payload["status"] = "draft"
    payload["history"] = [{"status": "draft", "at": payload["date"], "by": payload["grantor"]}]
    [draft] = harness.intake([payload])
    assert draft.version == 1 and harness.drain().sent == 1
    remote.update(harness.server, consent_on_server(harness), status="active")
    assert puller(harness).pull(full_listing=True).reasserted == 1
    return draft.record_id


def test_a_change_after_our_write_back_and_before_the_next_pull_is_no_conflict(
    harness: SyncHarness,
) -> None:
    """The pull's row says version 2 (``withdrawn``); our write-back then made version 3. A change
    of ours before the next pull goes If-Match 3 (our write), not 2: sent, no conflict, nothing
    held for a person."""
    record_id = _draft_consent_put_in_force(harness)
    harness.drain(conflict_policy="flag")
    assert consent_on_server(harness)["meta"]["versionId"] == "3"
    payload = R.sharing_consent(harness.run)
    payload["history"] = [
        {"status": "draft", "at": payload["date"], "by": payload["grantor"]},
        {"status": "active", "at": "2026-11-02T09:00:00+00:00", "by": payload["grantor"]},
    ]
    [active] = harness.intake([payload])
    assert active.version == 2
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(record_id)
    assert status is not None
    assert (status.state, status.conflict) == (SyncState.SENT, None)
    assert status.sent[0].version_id == "4"
    assert conflict_events(harness, record_id) == ["withdrawal-reasserted"]
    assert consent_on_server(harness)["status"] == "active"


def test_a_withdrawal_pulled_after_our_last_write_is_the_if_match(harness: SyncHarness) -> None:
    """The other order: our write (version 1) recorded, then someone withdraws our consent on the
    server (version 2) and the pull adopts it: the revocation goes If-Match 2, no conflict."""
    [consent] = harness.intake([R.sharing_consent(harness.run)])
    assert harness.drain().sent == 1
    remote.update(harness.server, consent_on_server(harness), status="inactive")
    assert puller(harness).pull().withdrawn == 1
    harness.drain(conflict_policy="flag")
    status = harness.store.sync_status(consent.record_id)
    assert status is not None
    assert (status.state, status.conflict) == (SyncState.SENT, None)
    assert consent_on_server(harness)["meta"]["versionId"] == "3"
    assert conflict_events(harness, consent.record_id) == []


def _if_match_with(
    harness: SyncHarness, *, ours: str, theirs: str, pulled_first: bool
) -> dict[tuple[str, str], str]:
    """The worker's If-Match for a record whose last send left ``ours`` and whose resource the
    pull noted ``withdrawn`` at ``theirs``, the pull recorded before or after our send."""
    store = harness.store
    [stored] = store.put_records([record(1)], audit=[], at=at(0))
    pulled = PulledResource(
        server=harness.client.base.url,
        resource_type="Observation",
        resource_id="obs-1",
        version_id=theirs,
        last_updated=None,
        patient="Patient/p1",
        record_id=stored.record_id,
        origin="ours",
        state="withdrawn",
    )
    if pulled_first:
        store.save_pulled([pulled], at=at(1))
    [item] = store.claim("w", limit=1, lease_seconds=60, now=at(2))
    sent = [SentResource("Observation", "obs-1", ours)]
    assert store.mark_sent(item.item_id, "w", sent=sent, audit=[], at=at(3))
    if not pulled_first:
        store.save_pulled([pulled], at=at(4))
    store.put_records([record(1, score=2)], audit=[], at=at(5))
    [next_item] = store.claim("w", limit=1, lease_seconds=60, now=at(6))
    sent_before = frozenset(store.records_sent([next_item.record_id]))
    return harness.worker()._if_match(next_item, sent_before)


def test_numeric_versions_are_compared_as_numbers_whatever_was_recorded_first(
    harness: SyncHarness,
) -> None:
    """Server versions counted up decide, not the order the rows were written here: a stale
    pulled row re-saved after our write does not win."""
    key = ("Observation", "obs-1")
    assert _if_match_with(harness, ours="3", theirs="2", pulled_first=False) == {key: "3"}


def test_opaque_versions_go_by_when_each_was_recorded(harness: SyncHarness) -> None:
    """Versions that are not numbers: the one recorded here last is the newer."""
    key = ("Observation", "obs-1")
    assert _if_match_with(harness, ours="b", theirs="a", pulled_first=True) == {key: "b"}


def test_opaque_pulled_version_recorded_after_ours_wins(harness: SyncHarness) -> None:
    """Versions that are not numbers, the withdrawal pulled after our send: the pulled one."""
    key = ("Observation", "obs-1")
    assert _if_match_with(harness, ours="b", theirs="a", pulled_first=False) == {key: "a"}
