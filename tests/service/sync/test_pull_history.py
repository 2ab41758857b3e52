"""Deletions noticed through the server's type-level ``_history`` where its CapabilityStatement
offers ``history-type`` (the report says which method ran), and through the full listing where it
does not or ``pull_deletions`` is ``listing``. On a server without ``history-type`` (another one
under FHIR_ALLIANCE_TEST_BASE_URL) the same tests check that the listing is what ran."""

from __future__ import annotations

from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.sync.pull import (
    DELETIONS_HISTORY,
    DELETIONS_LISTING,
    DELETIONS_NONE,
    HISTORY_CURSOR,
)

from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, known_patient, puller, rating_state


def _offers_history(harness: SyncHarness, resource_type: str = "Consent") -> bool:
    return harness.client.capabilities().resource(resource_type).supports("history-type")


def test_a_consent_deleted_on_the_server_is_noticed_through_history(
    harness: SyncHarness,
) -> None:
    """First pass: the full listing (nothing seen yet), which notes where history stands. After
    a deletion on the server, the next (incremental) pass reads ``Consent/_history``, finds the
    DELETE and revokes the consent: later records are held. The pass after re-reads the DELETE
    (the overlap) and does not count it again."""
    patient = known_patient(harness)
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    first = puller(harness).pull()
    assert first.deletions == {"Consent": DELETIONS_LISTING} and first.merged == 1
    assert rating_state(harness, 1, patient) is SyncState.SENT

    remote.delete(harness.server, consent)
    report = puller(harness).pull()
    if not _offers_history(harness):  # another server: only the listing notices it
        assert (report.deletions, report.deleted, report.history_pages) == (
            {"Consent": DELETIONS_NONE},
            0,
            0,
        )
        assert puller(harness).pull(full_listing=True).deleted == 1
        assert rating_state(harness, 2, patient) is SyncState.HELD
        return
    assert report.deletions == {"Consent": DELETIONS_HISTORY}
    assert not report.full_listing and report.history_pages >= 1
    assert (report.deleted, report.error, report.history_failed) == (1, None, None)
    assert rating_state(harness, 2, patient) is SyncState.HELD
    pulled = harness.store.pulled(harness.client.base.url, "Consent", [consent["id"]])
    assert pulled[consent["id"]].state == "deleted"

    again = puller(harness).pull()
    assert again.deletions == {"Consent": DELETIONS_HISTORY}
    assert again.history_entries >= 1 and again.deleted == 0  # re-read, deduplicated


def test_with_pull_deletions_listing_only_the_full_listing_notices_a_deletion(
    harness: SyncHarness,
) -> None:
    """``pull_deletions=listing``: history is never read, whatever the server offers; an
    incremental pass misses the deletion and the full listing finds it."""
    patient = known_patient(harness)
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    assert puller(harness, pull_deletions="listing").pull().merged == 1
    assert rating_state(harness, 1, patient) is SyncState.SENT

    remote.delete(harness.server, consent)
    missed = puller(harness, pull_deletions="listing").pull()
    assert (missed.deletions, missed.deleted, missed.history_pages) == (
        {"Consent": DELETIONS_NONE},
        0,
        0,
    )
    assert rating_state(harness, 2, patient) is SyncState.SENT  # not noticed yet
    listed = puller(harness, pull_deletions="listing").pull(full_listing=True)
    assert (listed.deletions, listed.deleted) == ({"Consent": DELETIONS_LISTING}, 1)
    assert rating_state(harness, 3, patient) is SyncState.HELD


def test_the_safety_listing_still_runs_when_history_is_used(harness: SyncHarness) -> None:
    """With history, the listing is due every ``pull_safety_listing_seconds`` (not every
    ``pull_full_listing_seconds``): a zero-length interval makes every pass a listing."""
    patient = known_patient(harness)
    remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    puller(harness).pull()
    hourly = puller(harness, pull_full_listing_seconds=1e-9).pull()
    safety = puller(harness, pull_safety_listing_seconds=1e-9).pull()
    if _offers_history(harness):
        assert (hourly.full_listing, safety.full_listing) == (False, True)
        assert hourly.deletions == {"Consent": DELETIONS_HISTORY}
    else:
        assert (hourly.full_listing, safety.full_listing) == (True, False)
    cursor = harness.store.get_pull_cursor(
        harness.client.base.url, HISTORY_CURSOR.format("Consent")
    )
    assert (cursor is not None) == _offers_history(harness)


def test_a_consent_deleted_and_written_again_is_not_a_deletion(harness: SyncHarness) -> None:
    """A Consent deleted and then written again at the same id before the pass: history holds
    the DELETE and the newer write; the newer one says what the resource is now."""
    patient = known_patient(harness)
    consent = remote.create(harness.server, remote.foreign_consent(harness.server, patient))
    puller(harness).pull()
    capabilities = harness.client.capabilities().resource("Consent")
    if not (_offers_history(harness) and capabilities.update_create):
        return  # another server: nothing to tell apart
    remote.delete(harness.server, consent)
    remote.update(harness.server, consent)  # update-as-create at the same id
    report = puller(harness).pull()
    assert report.deletions == {"Consent": DELETIONS_HISTORY}
    assert report.history_entries >= 2 and report.deleted == 0
    assert rating_state(harness, 1, patient) is SyncState.SENT


def test_an_observation_deleted_on_the_server_is_noticed_through_history(
    harness: SyncHarness,
) -> None:
    """With ``pull_observations``, Observations are tracked too: a deleted one is marked deleted
    by the history read (or, on a server without history, by the listing)."""
    patient = known_patient(harness)
    theirs = remote.create(
        harness.server,
        harness.server.tagged(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "72133-2"}]},
                "subject": {"reference": patient},
                "valueInteger": 12,
            }
        ),
    )
    first = puller(harness, pull_observations=True).pull()
    assert first.observations == 1
    remote.delete(harness.server, theirs)
    history = _offers_history(harness, "Observation")
    report = puller(harness, pull_observations=True).pull(full_listing=None if history else True)
    assert report.deletions["Observation"] == (DELETIONS_HISTORY if history else DELETIONS_LISTING)
    assert report.deleted == 1
    pulled = harness.store.pulled(harness.client.base.url, "Observation", [theirs["id"]])
    assert pulled[theirs["id"]].state == "deleted"
