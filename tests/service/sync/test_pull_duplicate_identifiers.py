"""Two Consents on the FHIR server (two resource ids) with one business identifier, compared as
URIs as ``decide`` compares them: the same consent twice is read once; two that say otherwise
(an older, active version beside the newer, revoked one) hold the patient's records as a consent
that cannot be read, never let the older permit answer, until the server holds one of them. A
foreign copy of a consent of ours (our identifier under another resource id) is compared with
ours: one that says otherwise holds the same way; one that says the same is not read, so that
it never answers after our revocation. Two versions filed under two alias keys of one patient,
which the pull compares apart, are held by the consent loader."""

from __future__ import annotations

from typing import Any

import pytest
from fhir_alliance_service.store.interface import SyncState

from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import SyncHarness, known_patient, now, puller

UNREADABLE = "a consent for this patient could not be read"


def _with_identifier(
    harness: SyncHarness, patient: str, system: str, *, status: str = "active"
) -> dict[str, Any]:
    consent = remote.foreign_consent(harness.server, patient, status=status)
    consent["identifier"] = [{"system": system, "value": f"consent-{harness.run}"}]
    return consent


def _rating_held_why(harness: SyncHarness, n: int, patient: str) -> str | None:
    """Take in rating ``n`` of ``patient``, drain the worker: its hold reason (None: sent)."""
    [rating] = harness.intake([R.rating(harness.run, n, patient)])
    harness.drain()
    status = harness.store.sync_status(rating.record_id)
    assert status is not None
    if status.state is SyncState.SENT:
        return None
    assert status.state is SyncState.HELD
    return status.held_reason


@pytest.mark.parametrize("revoked_first", [False, True])
def test_an_active_and_a_revoked_copy_of_one_consent_hold_and_never_permit(
    harness: SyncHarness, revoked_first: bool
) -> None:
    """The server holds the active version of a consent and, under another resource id, its
    revoked version (the identifier's system spelled another way): the patient's records are held
    as for an unreadable consent, in whichever order the two were written and read."""
    patient = known_patient(harness)
    active = _with_identifier(harness, patient, "urn:oid:1.2.3.4")
    revoked = _with_identifier(harness, patient, "URN:OID:1.2.3.4", status="inactive")
    for consent in [revoked, active] if revoked_first else [active, revoked]:
        remote.create(harness.server, consent)
    report = puller(harness).pull()
    assert _rating_held_why(harness, 1, patient) == UNREADABLE
    assert report.error is None and report.unreadable == 1


def test_a_revoked_copy_read_after_the_active_one_holds(harness: SyncHarness) -> None:
    """The revoked copy written (and pulled) after the active one was merged and sent on:
    later records are held, the active copy's permit no longer answers."""
    patient = known_patient(harness)
    remote.create(harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4"))
    assert puller(harness).pull().merged == 1
    assert _rating_held_why(harness, 1, patient) is None

    revoked = _with_identifier(harness, patient, "urn:oid:1.2.3.4", status="inactive")
    remote.create(harness.server, revoked)
    report = puller(harness).pull()
    assert _rating_held_why(harness, 2, patient) == UNREADABLE
    assert (report.merged, report.unreadable) == (1, 1)


def test_the_same_consent_twice_is_read_once(harness: SyncHarness) -> None:
    """Two copies that say the same (an import made twice) are one consent: its permit answers."""
    patient = known_patient(harness)
    for system in ("urn:oid:1.2.3.4", "URN:OID:1.2.3.4"):
        remote.create(harness.server, _with_identifier(harness, patient, system))
    report = puller(harness).pull()
    assert (report.merged, report.unreadable) == (2, 0)
    assert _rating_held_why(harness, 1, patient) is None


@pytest.mark.parametrize("deleted", ["revoked", "active"])
def test_once_the_server_holds_one_copy_that_one_decides(
    harness: SyncHarness, deleted: str
) -> None:
    """The duplicate deleted on the server: after the listing that notices it, the copy left
    decides (an active permit releases the records; a revoked one leaves no consent)."""
    patient = known_patient(harness)
    copies = {
        "active": remote.create(
            harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4")
        ),
        "revoked": remote.create(
            harness.server,
            _with_identifier(harness, patient, "urn:oid:1.2.3.4", status="inactive"),
        ),
    }
    puller(harness).pull()
    assert _rating_held_why(harness, 1, patient) == UNREADABLE

    remote.delete(harness.server, copies[deleted])
    report = puller(harness).pull(full_listing=True)
    assert report.error is None and report.deleted == 1
    expected = "no consent to share with the clinic's EHR" if deleted == "active" else None
    assert _rating_held_why(harness, 2, patient) == expected


def _two_copies_pulled(harness: SyncHarness, patient: str, *, held: str) -> dict[str, Any]:
    """The active and the revoked copy of one consent, each created on the server and pulled in
    turn (no overlap window), the one named ``held`` second (it is the one held), then another
    patient's consent: the revoked copy as the server has it."""
    copies = {
        "active": _with_identifier(harness, patient, "urn:oid:1.2.3.4"),
        "revoked": _with_identifier(harness, patient, "urn:oid:1.2.3.4", status="inactive"),
    }
    first = "revoked" if held == "active" else "active"
    created = {}
    for name in (first, held):
        created[name] = remote.create(harness.server, copies[name])
        puller(harness, pull_overlap_seconds=0.0).pull()
    # Written later: the pull cursor moves past both copies, so no pass reads them again unasked.
    other = f"Patient/pull-b-{harness.run}"
    harness.intake([R.rating(harness.run, 99, other)])
    remote.create(harness.server, remote.foreign_consent(harness.server, other))
    puller(harness, pull_overlap_seconds=0.0).pull()
    return created["revoked"]


@pytest.mark.parametrize("held", ["active", "revoked"])
def test_a_deletion_read_from_history_settles_it_in_that_pass(
    harness: SyncHarness, held: str
) -> None:
    """Where deletions are read from ``_history``, the incremental pass that reads the deletion
    of the revoked copy reads the copy held again (no overlap window reads it): the active copy
    left decides at once, not at the next listing."""
    if not harness.client.capabilities().resource("Consent").supports("history-type"):
        pytest.skip("the server offers no Consent history")
    patient = known_patient(harness)
    revoked = _two_copies_pulled(harness, patient, held=held)
    assert _rating_held_why(harness, 1, patient) == UNREADABLE

    remote.delete(harness.server, revoked)
    report = puller(harness, pull_overlap_seconds=0.0).pull()
    assert (report.full_listing, report.deleted, report.error) == (False, 1, None)
    assert _rating_held_why(harness, 2, patient) is None


@pytest.mark.parametrize("held", ["active", "revoked"])
def test_copies_made_to_agree_on_the_server_are_read_once(harness: SyncHarness, held: str) -> None:
    """The revoked copy set active again on the server, so that both say the same: the next
    incremental pass reads the copy held again (no overlap window reads it): both are merged,
    and their permit answers."""
    patient = known_patient(harness)
    revoked = _two_copies_pulled(harness, patient, held=held)
    assert _rating_held_why(harness, 1, patient) == UNREADABLE

    remote.update(harness.server, revoked, status="active")
    report = puller(harness, pull_overlap_seconds=0.0).pull(full_listing=False)
    assert (report.error, report.unreadable) == (None, 0)
    assert _rating_held_why(harness, 2, patient) is None


def test_a_revoked_copy_arriving_by_notification_holds(harness: SyncHarness) -> None:
    """The revoked copy given to the pull outside a pass (a subscription notification's focus,
    ``Puller.merge``) is compared as in a pass: the active copy's permit no longer answers."""
    patient = known_patient(harness)
    remote.create(harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4"))
    puller(harness).pull()
    assert _rating_held_why(harness, 1, patient) is None

    revoked = remote.create(
        harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4", status="inactive")
    )
    report = puller(harness).merge("Consent", [revoked])
    assert (report.merged, report.unreadable) == (1, 1)
    assert _rating_held_why(harness, 2, patient) == UNREADABLE


NO_CONSENT = "no consent to share with the clinic's EHR"


@pytest.mark.parametrize("revoked_first", [False, True])
def test_two_versions_filed_under_two_alias_keys_of_one_patient_hold(
    harness: SyncHarness, revoked_first: bool
) -> None:
    """One person with two Patient resources on the server, linked here as aliases: the active
    version of a consent names one, its revoked version the other. The pull compares them under
    the key each is filed under and merges both; the consent loader reads every key of the
    patient and holds the records, never lets the older permit answer."""
    patient = known_patient(harness)
    other = f"Patient/pull-b-{harness.run}"
    harness.intake([R.rating(harness.run, 50, other)])  # known here too
    harness.store.add_patient_alias(patient, other, at=now())
    active = _with_identifier(harness, patient, "urn:oid:1.2.3.4")
    revoked = _with_identifier(harness, other, "URN:OID:1.2.3.4", status="inactive")
    for consent in [revoked, active] if revoked_first else [active, revoked]:
        remote.create(harness.server, consent)
    report = puller(harness).pull()
    assert (report.error, report.merged, report.unreadable) == (None, 2, 0)
    assert _rating_held_why(harness, 1, patient) == UNREADABLE
    assert _rating_held_why(harness, 2, other) == UNREADABLE


@pytest.mark.parametrize("deleted", ["revoked", "active"])
def test_once_one_of_two_under_alias_keys_is_deleted_the_other_decides(
    harness: SyncHarness, deleted: str
) -> None:
    """The two versions filed under two alias keys, one deleted on the server: the pull's own
    revoked copy of it is no version of the consent, and the one left decides (an active permit
    releases the records; a revoked one leaves no consent)."""
    patient = known_patient(harness)
    other = f"Patient/pull-b-{harness.run}"
    harness.intake([R.rating(harness.run, 50, other)])
    harness.store.add_patient_alias(patient, other, at=now())
    copies = {
        "active": remote.create(
            harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4")
        ),
        "revoked": remote.create(
            harness.server,
            _with_identifier(harness, other, "urn:oid:1.2.3.4", status="inactive"),
        ),
    }
    puller(harness).pull()
    assert _rating_held_why(harness, 1, patient) == UNREADABLE

    remote.delete(harness.server, copies[deleted])
    report = puller(harness).pull(full_listing=True)
    assert report.error is None and report.deleted == 1
    expected = "no consent to share with the clinic's EHR" if deleted == "active" else None
    assert _rating_held_why(harness, 2, patient) == expected


def _our_consent_pushed(harness: SyncHarness, patient: str) -> dict[str, Any]:
    """Our sharing consent of ``patient``, taken in and pushed: the server's copy."""
    harness.intake([R.sharing_consent(harness.run, patient)])
    harness.drain()
    [on_server] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    return on_server


def _copy_elsewhere(harness: SyncHarness, consent: dict[str, Any]) -> dict[str, Any]:
    """``consent`` created again on the server under another resource id (someone's import or
    copy, our business identifier included): the server's copy."""
    copy = {k: v for k, v in consent.items() if k not in ("id", "meta")}
    return remote.create(harness.server, harness.server.tagged(copy))


def _revoke_ours(harness: SyncHarness, patient: str) -> None:
    """The patient withdraws our consent here; the revoked version is pushed."""
    harness.intake([R.revocation(harness.run, patient)])
    harness.drain()


def test_an_active_copy_of_our_revoked_consent_holds_and_never_permits(
    harness: SyncHarness,
) -> None:
    """Our consent revoked here (and pushed as revoked), then its active version created again
    on the server under another resource id: the copy says otherwise than ours, so the patient's
    records are held as for an unreadable consent; its permit never answers after our
    revocation."""
    patient = known_patient(harness)
    active = _our_consent_pushed(harness, patient)
    assert _rating_held_why(harness, 1, patient) is None
    _revoke_ours(harness, patient)
    assert _rating_held_why(harness, 2, patient) == NO_CONSENT

    _copy_elsewhere(harness, active)
    report = puller(harness).pull()
    assert _rating_held_why(harness, 3, patient) == UNREADABLE
    assert report.error is None and report.unreadable == 1


def test_a_copy_that_says_what_ours_says_is_not_read_and_our_revocation_holds(
    harness: SyncHarness,
) -> None:
    """A copy of our active consent under another resource id says what ours says: not held
    (our permit answers), and not read as a consent of its own, so that our revocation later
    holds the patient's records: the copy left active on the server never permits."""
    patient = known_patient(harness)
    active = _our_consent_pushed(harness, patient)
    _copy_elsewhere(harness, active)
    report = puller(harness).pull()
    assert _rating_held_why(harness, 1, patient) is None
    assert (report.error, report.unreadable, report.merged, report.duplicates) == (None, 0, 0, 1)

    _revoke_ours(harness, patient)
    assert _rating_held_why(harness, 2, patient) == NO_CONSENT
    puller(harness).pull()
    assert _rating_held_why(harness, 3, patient) == NO_CONSENT


@pytest.mark.parametrize("settled", ["deleted", "made to agree"])
def test_once_the_copy_of_ours_is_gone_or_agrees_ours_decides(
    harness: SyncHarness, settled: str
) -> None:
    """The active copy of our revoked consent deleted on the server, or edited there to say what
    ours says (its revoked version): the hold is released and ours decides (no consent)."""
    patient = known_patient(harness)
    active = _our_consent_pushed(harness, patient)
    _revoke_ours(harness, patient)
    [revoked] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    copy = _copy_elsewhere(harness, active)
    puller(harness).pull()
    assert _rating_held_why(harness, 1, patient) == UNREADABLE

    if settled == "deleted":
        remote.delete(harness.server, copy)
        report = puller(harness).pull(full_listing=True)
        assert (report.error, report.deleted) == (None, 1)
    else:
        content = {k: v for k, v in revoked.items() if k not in ("id", "meta")}
        remote.update(harness.server, copy, **content)
        report = puller(harness).pull()
        assert (report.error, report.unreadable) == (None, 0)
        row = harness.store.pulled(harness.client.base.url, "Consent", [copy["id"]])[copy["id"]]
        assert row.state == "copy-of-ours"
    assert _rating_held_why(harness, 2, patient) == NO_CONSENT


def test_a_copy_held_is_read_again_when_ours_comes_to_agree(harness: SyncHarness) -> None:
    """A copy of a later version of our consent (one that also lets PSYTHPN through) held beside
    ours; ours then changed here to that version and pushed: the pass that reads our new version
    reads the copy held again (no overlap window reads it) and the hold is released."""
    patient = known_patient(harness)
    _our_consent_pushed(harness, patient)
    harness.intake([R.sharing_consent(harness.run, patient, permit_psythpn=True)])
    harness.drain()
    [later] = harness.on_server("Consent", R.consent_id(harness.run, patient))
    harness.intake([R.sharing_consent(harness.run, patient)])
    harness.drain()
    _copy_elsewhere(harness, later)
    puller(harness, pull_overlap_seconds=0.0).pull()
    # Written later: the pull cursor moves past the copy, so no pass reads it again unasked.
    other = f"Patient/pull-b-{harness.run}"
    harness.intake([R.rating(harness.run, 99, other)])
    remote.create(harness.server, remote.foreign_consent(harness.server, other))
    puller(harness, pull_overlap_seconds=0.0).pull()
    assert _rating_held_why(harness, 1, patient) == UNREADABLE

    harness.intake([R.sharing_consent(harness.run, patient, permit_psythpn=True)])
    harness.drain()
    report = puller(harness, pull_overlap_seconds=0.0).pull(full_listing=False)
    assert (report.error, report.unreadable) == (None, 0)
    assert _rating_held_why(harness, 2, patient) is None


def _pulled_consent_body(harness: SyncHarness, patient: str) -> dict[str, Any]:
    """The one consent of ``patient`` stored here (pulled), in our JSON form."""
    [stored] = harness.store.consents_for_patient(patient)
    return dict(stored.body)


def _revoked_version(body: dict[str, Any], patient: str) -> dict[str, Any]:
    """``body``'s next version: revoked by the patient."""
    revoked = dict(body, status="revoked")
    at = "2026-11-25T12:00:00+00:00"
    by = {"reference": patient, "type": "Patient"}
    revoked["history"] = [*body.get("history", []), {"status": "revoked", "at": at, "by": by}]
    return revoked


@pytest.mark.parametrize("system", ["urn:oid:1.2.3.4", "URN:OID:1.2.3.4"])
def test_a_revoked_version_posted_here_of_a_pulled_consent_holds_and_never_permits(
    harness: SyncHarness, system: str
) -> None:
    """The EHR's sharing consent pulled (it permits), then the clinic's app posts its revoked
    version (one identifier, compared as URIs) through the API: the pulled copy still stands on
    the server and says otherwise, so the patient's records are held as for an unreadable
    consent; its permit never answers after the revocation."""
    patient = known_patient(harness)
    remote.create(harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4"))
    assert puller(harness).pull().merged == 1
    assert _rating_held_why(harness, 1, patient) is None

    revoked = _revoked_version(_pulled_consent_body(harness, patient), patient)
    revoked["id"] = f"{system}|consent-{harness.run}"
    harness.intake([revoked])
    assert _rating_held_why(harness, 2, patient) == UNREADABLE
    report = puller(harness).pull()
    assert report.error is None
    assert _rating_held_why(harness, 3, patient) == UNREADABLE


def test_a_pulled_consent_posted_here_as_it_is_is_read_once(harness: SyncHarness) -> None:
    """The pulled consent posted here unchanged (the app keeps its own copy): one consent, its
    permit answers."""
    patient = known_patient(harness)
    remote.create(harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4"))
    puller(harness).pull()
    harness.intake([_pulled_consent_body(harness, patient)])
    assert _rating_held_why(harness, 1, patient) is None


def test_once_the_pulled_copy_is_deleted_the_version_posted_here_decides(
    harness: SyncHarness,
) -> None:
    """The EHR deletes its active copy: the pull's own revoked copy of it stands on no server,
    so the revoked version posted here decides alone (no consent), never held for good."""
    patient = known_patient(harness)
    active = remote.create(harness.server, _with_identifier(harness, patient, "urn:oid:1.2.3.4"))
    puller(harness).pull()
    harness.intake([_revoked_version(_pulled_consent_body(harness, patient), patient)])
    assert _rating_held_why(harness, 1, patient) == UNREADABLE

    remote.delete(harness.server, active)
    report = puller(harness).pull(full_listing=True)
    assert (report.error, report.deleted) == (None, 1)
    assert _rating_held_why(harness, 2, patient) == NO_CONSENT


def test_a_pulled_active_version_of_a_consent_revoked_here_holds(harness: SyncHarness) -> None:
    """The other order: the revoked version posted here first (never active here), then the
    EHR's active version pulled (one identifier spelt another way, another resource id): held,
    never a permit (the pull compares it with the consent taken in here)."""
    patient = known_patient(harness)
    harness.intake([_revoked_version(R.sharing_consent(harness.run, patient), patient)])
    harness.drain()
    assert _rating_held_why(harness, 1, patient) == NO_CONSENT

    system, value = R.consent_id(harness.run, patient).split("|")
    active = remote.foreign_consent(harness.server, patient)
    spelt = system.replace("clinic.example.org", "Clinic.Example.ORG")
    active["identifier"] = [{"system": spelt, "value": value}]
    remote.create(harness.server, active)
    report = puller(harness).pull()
    assert report.error is None and report.unreadable == 1
    assert _rating_held_why(harness, 2, patient) == UNREADABLE
