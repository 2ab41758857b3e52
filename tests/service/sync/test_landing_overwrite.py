"""An overwrite (``CONFLICT_POLICY=overwrite``) whose answer was lost, and whose read-back at once
failed too, is recorded as the overwrite once it is found to have landed: ``conflict:
overwritten``, counted, and its one conflict AuditEvent, in the transaction that records it SENT,
whether a later read-back finds it (the item held or superseded meanwhile) or its retry's 412
does. One that did not land is not recorded as an overwrite: its retry meets the 412 again and
overwrites then, audited once. Faults from pytest-httpserver (``fake_fhir.FakeFhir``, checking
``If-Match``): the overwrite's Bundle is applied (or not) and its answer comes after the client
gave up, while reads answer 503."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.store.tables import outbox
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.leases import LeaseLedger
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from werkzeug import Response

from fhir_alliance.client import BundleRequest, FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, decide_flagged, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir, Fault, status
from tests.service.sync.test_landing_unknown import FailsFirstRecording, Killed, _answer_lost
from tests.service.sync.test_superseded_in_hand import Rig as InHandRig
from tests.service.sync.test_superseded_in_hand import sent_consent


class Rig(InHandRig):
    """A worker settling conflicts by overwriting, with a clock that can run ahead."""

    def worker(  # type: ignore[override]
        self, *, later: float = 0.0, policy: str = "overwrite"
    ) -> Worker:
        settings = sync_settings(
            self.fake.base_url, self.sqlite_url, fhir_version="4.0.1", conflict_policy=policy
        )
        client = FhirClient(self.fake.base_url, retry=QUICK_RETRY, timeout=(1.0, 0.3))

        def clock() -> datetime:
            return now() + timedelta(seconds=later)

        return Worker(settings, self.store, client, clock=clock)

    def conflict_events(self, record_id: str, action: str = "conflict") -> list[str]:
        """The outcomes of the record's ``conflict`` AuditEvents (or ``action``'s), in order."""
        return [
            str(e.resource.get("outcomeDesc"))
            for e in self.store.list_audit(record_id=record_id)
            if e.action == action
        ]

    def actions(self, record_id: str) -> list[str]:
        return [e.action for e in self.store.list_audit(record_id=record_id)]

    def conflicts(self, record_id: str) -> dict[int, str | None]:
        """Every outbox item of ``record_id``: record version → its conflict note."""
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(outbox.c.record_version, outbox.c.conflict).where(
                    outbox.c.record_id == record_id
                )
            )
            return {version: conflict for version, conflict in rows}


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[Rig]:
    """The patient's sharing consent sent already; the server checks If-Match."""
    fake = FakeFhir(httpserver, check_if_match=True).install()
    yield from sent_consent(Rig(fake, sync_store, sqlite_url, R.run_token()))


def _overwritten() -> float:
    value = REGISTRY.get_sample_value("fhir_alliance_conflicts_total", {"outcome": "overwritten"})
    return value or 0.0


def _passes(bundle: dict[str, Any]) -> None:
    """No fault: the Bundle is handled as usual (If-Match checked)."""


def _edited_elsewhere(rig: Rig) -> tuple[str, str]:
    """Version 1 of a rating sent (server version 1), someone else's edit on the server over it
    (version 2), and version 2 of the rating taken in: its send If-Match 1 meets a 412, and the
    policy overwrites. The record id and the resource's ``Type/id``."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    assert rig.worker().run_once().sent == 1
    [key] = [k for k in rig.fake.resources if k.startswith("Observation/")]
    theirs = copy.deepcopy(rig.fake.resources[key])
    theirs["status"] = "amended"
    rig.fake.apply({"entry": [{"request": {"method": "PUT", "url": key}, "resource": theirs}]})
    rig.intake(R.rating(rig.run, 1, value=5))
    return record_id, key


def _lost_overwrite(rig: Rig, *meanwhile: dict[str, Any], applied: bool) -> None:
    """Run a worker whose overwrite's answer is lost (``meanwhile`` taken in while it is on its
    way; the Bundle applied if ``applied``) and whose read-back at once fails (503): the item is
    left noted *landing unknown*. The server answers reads again afterwards."""
    rig.fake.faults = [_passes, _answer_lost(rig, *meanwhile, applied=applied, reads_down=True)]
    rig.worker().run_once()
    assert rig.fake.requests >= 3  # the consent, version 1, the 412, the overwrite
    rig.fake.read_status = None
    assert rig.store.landing_unknown_count() == 1


@pytest.mark.parametrize("ends", ["held", "superseded"])
def test_a_lost_overwrite_found_by_a_later_read_back_is_recorded_as_the_overwrite(
    rig: Rig, ends: str
) -> None:
    """The overwrite lands, its answer is lost and the read-back at once fails; meanwhile the
    patient revokes the sharing (its retry is held) or version 3 is taken in (it is superseded):
    nothing will send it again, so a later read-back finds it. It is recorded SENT, noted
    ``overwritten``, counted, with exactly one conflict AuditEvent (it used to be recorded as a
    plain send: the overwrite of someone else's edit left no audit trail)."""
    record_id, key = _edited_elsewhere(rig)
    newer = R.revocation(rig.run) if ends == "held" else R.rating(rig.run, 1, value=1)
    before = _overwritten()
    _lost_overwrite(rig, newer, applied=True)
    assert rig.fake.resources[key]["meta"]["versionId"] == "3"  # ours, over theirs
    if ends == "held":
        rig.worker(later=10).run_once()  # the retry: held by the gate
        assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}
    else:
        assert rig.items(record_id) == {
            1: SyncState.SENT,
            2: SyncState.SUPERSEDED,
            3: SyncState.QUEUED,
        }
    assert rig.conflict_events(record_id) == []
    assert _overwritten() == before

    rig.worker(later=60).run_once()  # read back: it landed
    assert rig.items(record_id)[2] is SyncState.SENT
    assert rig.conflicts(record_id)[2] == "overwritten"
    assert rig.conflict_events(record_id) == ["overwritten"]
    assert _overwritten() == before + 1
    assert rig.store.landing_unknown_count() == 0
    if ends == "superseded":  # sent If-Match the overwrite's version: no conflict of its own
        assert rig.items(record_id)[3] is SyncState.SENT
        assert rig.conflicts(record_id)[3] is None
    rig.worker(later=200).run_once()
    assert rig.conflict_events(record_id) == ["overwritten"]


def test_a_lost_overwrite_found_by_the_newer_versions_412_is_recorded_as_the_overwrite(
    rig: Rig,
) -> None:
    """The overwrite lands, its answer is lost and the read-back at once fails; version 3 is
    taken in meanwhile (it supersedes it) and goes out before the superseded item's read-back is
    due. Its send, If-Match our last recorded version, meets a 412: the server holds version 2,
    the overwrite that landed. That 412 records it, as the overwrite (SENT, ``overwritten``,
    counted, its one conflict AuditEvent, its disclosure), before version 3 is sent again over
    it. (It used to be sent over it unrecorded: the later read-back then found version 3 there
    and dropped the note with the conflict AuditEvent, the overwrite of someone's edit never
    audited.)"""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    _lost_overwrite(rig, R.rating(rig.run, 1, value=1), applied=True)
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SUPERSEDED, 3: SyncState.QUEUED}
    disclosed = rig.actions(record_id).count("disclose")

    assert rig.worker(later=10).run_once().sent == 1  # before version 2's read-back is due
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SENT, 3: SyncState.SENT}
    assert rig.conflicts(record_id) == {1: None, 2: "overwritten", 3: None}
    assert rig.conflict_events(record_id) == ["overwritten"]
    assert _overwritten() == before + 1
    assert rig.actions(record_id).count("disclose") == disclosed + 2  # versions 2 and 3
    assert rig.store.landing_unknown_count() == 0
    assert rig.fake.resources[key]["meta"]["versionId"] == "4"  # version 3, over ours
    last = rig.store.last_sent(record_id)
    assert last is not None and (last.record_version, last.sent[0].version_id) == (3, "4")
    rig.worker(later=200).run_once()
    assert rig.conflict_events(record_id) == ["overwritten"]


def test_a_lost_send_found_by_the_newer_versions_412_is_recorded_with_its_disclosure(
    rig: Rig,
) -> None:
    """The same for a plain update (no conflict): version 2 lands, its answer is lost and the
    read-back fails, version 3 supersedes it and meets a 412 against it. Version 2 is recorded
    SENT with its disclosure (it used to be dropped by its later read-back, which found
    version 3), and no conflict is noted or audited."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    assert rig.worker().run_once().sent == 1
    rig.intake(R.rating(rig.run, 1, value=5))
    newer = R.rating(rig.run, 1, value=1)
    rig.fake.faults = [_answer_lost(rig, newer, applied=True, reads_down=True)]
    rig.worker().run_once()
    rig.fake.read_status = None
    assert rig.store.landing_unknown_count() == 1
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SUPERSEDED, 3: SyncState.QUEUED}
    disclosed = rig.actions(record_id).count("disclose")

    assert rig.worker(later=10).run_once().sent == 1
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SENT, 3: SyncState.SENT}
    assert rig.actions(record_id).count("disclose") == disclosed + 2
    assert rig.conflicts(record_id) == {1: None, 2: None, 3: None}
    assert rig.conflict_events(record_id) == []
    assert rig.store.landing_unknown_count() == 0


def test_a_lost_overwrite_found_by_its_retry_is_recorded_as_the_overwrite(rig: Rig) -> None:
    """The overwrite lands, its answer is lost and the read-back at once fails: the item is
    retried. The retry goes If-Match our last send's version and meets a 412; the server holds
    our content, the overwrite that landed: recorded SENT as that overwrite, ``overwritten``,
    counted, with exactly one conflict AuditEvent (it used to be recorded as our own lost
    answer, the overwrite neither noted nor audited)."""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    _lost_overwrite(rig, applied=True)
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.FAILED}

    assert rig.worker(later=10).run_once().sent == 1
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SENT}
    assert rig.conflicts(record_id)[2] == "overwritten"
    assert rig.conflict_events(record_id) == ["overwritten"]
    assert _overwritten() == before + 1
    assert rig.store.landing_unknown_count() == 0
    assert rig.fake.writes[key] == 3  # nothing written again
    last = rig.store.last_sent(record_id)
    assert last is not None and [s.version_id for s in last.sent] == ["3"]


def test_a_lost_overwrite_that_did_not_land_is_overwritten_by_its_retry_once(rig: Rig) -> None:
    """The overwrite never reached the server (its answer lost, the read-back failed): the retry
    meets the 412 against someone else's version again and overwrites it then, recorded and
    audited once (the lost attempt adds no second conflict AuditEvent)."""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    _lost_overwrite(rig, applied=False)
    assert rig.fake.resources[key]["status"] == "amended"

    assert rig.worker(later=10).run_once().sent == 1
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SENT}
    assert rig.fake.resources[key]["status"] != "amended"
    assert rig.conflicts(record_id)[2] == "overwritten"
    assert rig.conflict_events(record_id) == ["overwritten"]
    assert _overwritten() == before + 1
    assert rig.store.landing_unknown_count() == 0


def test_a_lost_overwrite_that_did_not_land_and_is_held_is_not_audited(rig: Rig) -> None:
    """The overwrite never reached the server and the patient revokes meanwhile (the retry is
    held): the read-back finds someone else's version, the note is dropped, and no overwrite is
    noted, counted or audited."""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    _lost_overwrite(rig, R.revocation(rig.run), applied=False)
    rig.worker(later=10).run_once()
    rig.worker(later=60).run_once()
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}
    assert rig.store.landing_unknown_count() == 0
    assert rig.conflicts(record_id)[2] is None
    assert rig.conflict_events(record_id) == []
    assert _overwritten() == before
    assert rig.fake.resources[key]["status"] == "amended"


def _edited_again(rig: Rig, key: str) -> None:
    """Someone else's edit over whatever the server holds of ``key`` now."""
    theirs = copy.deepcopy(rig.fake.resources[key])
    theirs["status"] = "corrected"
    rig.fake.apply({"entry": [{"request": {"method": "PUT", "url": key}, "resource": theirs}]})


@pytest.mark.parametrize("applied", [True, False])
def test_a_lost_overwrite_changed_again_before_its_read_back_is_audited_landing_unknown(
    rig: Rig, applied: bool
) -> None:
    """The overwrite's answer is lost and the read-back at once fails; the patient revokes (the
    retry is held), and someone edits the resource again before the later read-back. That
    read-back finds neither ours nor the version the overwrite was written over: the overwrite
    may have landed (and been changed since) or not, and nothing can tell now. Its conflict
    AuditEvent is recorded all the same, at the time of the overwrite, with the outcome
    ``overwrite-landing-unknown``, once; nothing is recorded sent, noted ``overwritten`` or
    counted as an overwrite. (It used to be dropped with the note: an overwrite of someone's
    edit that did land left no audit trail.)"""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    _lost_overwrite(rig, R.revocation(rig.run), applied=applied)
    rig.worker(later=10).run_once()  # the retry: held by the gate
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}
    _edited_again(rig, key)

    rig.worker(later=60).run_once()  # read back: someone else's version, not the one overwritten
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown"]
    assert _conflict_times(rig, record_id)[0] < now() + timedelta(seconds=10)
    assert rig.conflicts(record_id)[2] is None
    assert _overwritten() == before
    assert rig.store.landing_unknown_count() == 0
    assert _kept_overwrite(rig, record_id, 2) is None
    rig.worker(later=200).run_once()
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown"]


@pytest.mark.parametrize("policy", ["overwrite", "keep-remote", "flag"])
def test_a_lost_overwrite_changed_again_before_its_retry_is_audited_landing_unknown(
    rig: Rig, policy: str
) -> None:
    """The overwrite lands, its answer is lost and the read-back at once fails; someone edits the
    resource again before the retry. The retry's 412 finds neither ours nor the version the
    overwrite was written over: the lost overwrite's conflict AuditEvent is recorded with the
    outcome ``overwrite-landing-unknown`` (it used to be dropped, or replaced by the new
    overwrite's), and then the policy settles the new edit as a conflict of its own, audited
    once; a later read-back (the flag holds the item) records nothing more."""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    _lost_overwrite(rig, applied=True)
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.FAILED}
    _edited_again(rig, key)

    rig.worker(later=10, policy=policy).run_once()
    settled = {"overwrite": "overwritten", "keep-remote": "kept-remote", "flag": "flagged"}[policy]
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown", settled]
    assert rig.conflicts(record_id)[2] == settled
    assert _overwritten() == before + (policy == "overwrite")
    assert _kept_overwrite(rig, record_id, 2) is None
    assert (rig.fake.resources[key]["status"] == "corrected") is (policy != "overwrite")
    rig.worker(later=200, policy=policy).run_once()
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown", settled]
    assert rig.store.landing_unknown_count() == 0


def _held_back(rig: Rig, held: list[dict[str, Any]], *meanwhile: dict[str, Any]) -> Fault:
    """The overwrite's Bundle reaches a slow server, which has not applied it yet (``held``
    keeps it, for the test to apply later) when its answer is lost; reads answer 503.
    ``meanwhile`` is taken in while it is on its way."""

    def fault(bundle: dict[str, Any]) -> Response:
        rig.intake(*meanwhile)
        held.append(copy.deepcopy(bundle))
        rig.fake.read_status = 503
        time.sleep(0.45)
        return Response("{}", status=200, content_type="application/fhir+json")

    return fault


@pytest.mark.parametrize("retry", ["retried", "superseded"])
@pytest.mark.parametrize("policy", ["keep-remote", "flag"])
def test_a_lost_overwrite_applied_after_its_retrys_412_is_audited_landing_unknown(
    rig: Rig, policy: str, retry: str
) -> None:
    """The overwrite's answer is lost (its read-back at once fails) while the server has not yet
    applied it; within a lease, under a worker whose policy writes nothing (``keep-remote`` or
    ``flag``: the setting changed, or another worker's), its retry, or version 3 taken in
    meanwhile (``superseded``: its 412 reads version 2's item back, not due yet), meets a 412
    and finds the server still holding the version the overwrite was written over. The server
    then applies the overwrite: our content is there. That 412 could not tell whether it would
    land, so the overwrite's conflict AuditEvent is recorded ``overwrite-landing-unknown`` (it
    used to be dropped as one that never landed: our write reached the server and the audit
    trail said nothing of it), once, with no disclosure claimed; the policy's own conflict
    follows."""
    record_id, key = _edited_elsewhere(rig)
    held: list[dict[str, Any]] = []
    newer = [R.rating(rig.run, 1, value=1)] if retry == "superseded" else []
    rig.fake.faults = [_passes, _held_back(rig, held, *newer)]
    rig.worker().run_once()
    rig.fake.read_status = None
    assert len(held) == 1 and rig.store.landing_unknown_count() == 1
    assert rig.fake.resources[key]["status"] == "amended"  # theirs, still
    disclosed = rig.actions(record_id).count("disclose")

    rig.worker(later=10, policy=policy).run_once()  # the retry's 412: theirs still there
    rig.fake.apply(held[0])  # the slow server applies the overwrite now
    assert rig.fake.resources[key]["status"] != "amended"  # ours reached the server
    settled = {"keep-remote": "kept-remote", "flag": "flagged"}[policy]
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown", settled]
    assert _conflict_times(rig, record_id)[0] < now() + timedelta(seconds=10)
    assert rig.actions(record_id).count("disclose") == disclosed
    rig.worker(later=200, policy=policy).run_once()
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown", settled]
    assert rig.store.landing_unknown_count() == 0


@pytest.mark.parametrize("meanwhile", ["did-not-land", "changed-again"])
def test_a_superseded_lost_overwrite_not_found_by_the_newer_versions_412(
    rig: Rig, meanwhile: str
) -> None:
    """Version 2's overwrite is lost and version 3 supersedes it; version 3's 412 comes before
    version 2's read-back is due, and the server holds someone else's version. Version 2 is
    read back there and then: still the version it was written over (it never landed), it is
    dropped with nothing audited; changed again since (it landed, then someone edited), it is
    audited ``overwrite-landing-unknown``. Version 3 overwrites what is there, audited once."""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    changed = meanwhile == "changed-again"
    _lost_overwrite(rig, R.rating(rig.run, 1, value=1), applied=changed)
    if changed:
        _edited_again(rig, key)

    assert rig.worker(later=10).run_once().sent == 1
    assert rig.items(record_id) == {
        1: SyncState.SENT,
        2: SyncState.SUPERSEDED,
        3: SyncState.SENT,
    }
    unknown = ["overwrite-landing-unknown"] if changed else []
    assert rig.conflict_events(record_id) == [*unknown, "overwritten"]
    assert rig.conflicts(record_id)[3] == "overwritten"
    assert _overwritten() == before + 1
    assert rig.store.landing_unknown_count() == 0
    rig.worker(later=200).run_once()
    assert rig.conflict_events(record_id) == [*unknown, "overwritten"]


def test_a_persons_overwrite_whose_answer_was_lost_stays_decided_and_audited_once(
    rig: Rig,
) -> None:
    """``CONFLICT_POLICY=flag``: a person decides the flagged conflict with ``overwrite``
    (audited then, ``conflict-decision``); its send, If-Match the flagged version, lands but
    its answer is lost and the read-back fails. The retry's 412 finds ours: recorded SENT, still
    ``decided-overwrite``, the decision audited once and no overwrite of the policy's noted."""
    record_id, key = _edited_elsewhere(rig)
    rig.worker(policy="flag").run_once()
    decide_flagged(rig.store, record_id, "overwrite")
    rig.fake.faults = [_answer_lost(rig, applied=True, reads_down=True)]
    rig.worker(policy="flag").run_once()
    rig.fake.read_status = None
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.FAILED}
    assert rig.store.landing_unknown_count() == 1

    assert rig.worker(later=10, policy="flag").run_once().sent == 1
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SENT}
    assert rig.conflicts(record_id)[2] == "decided-overwrite"
    assert rig.conflict_events(record_id) == ["flagged"]
    assert len(rig.conflict_events(record_id, "conflict-decision")) == 1
    assert rig.store.landing_unknown_count() == 0
    assert rig.fake.resources[key]["status"] != "amended"


# -- a worker that stops between the overwrite and its record --------------------------------


def _worker_on(rig: Rig, store: Any, *, policy: str = "overwrite") -> Worker:
    """A worker of ``policy`` whose store calls go through ``store`` (a wrapper of the rig's)."""
    worker = rig.worker(policy=policy)
    worker.leases = LeaseLedger(store)
    worker.store = worker.leases.as_store()
    return worker


def _kept_overwrite(rig: Rig, record_id: str, version: int) -> dict[str, Any] | None:
    """The ``lost_overwrite`` column of the record's item of ``version`` (None: SQL NULL)."""
    with rig.store.engine.connect() as connection:
        kept, value = connection.execute(
            select(outbox.c.lost_overwrite.is_(None), outbox.c.lost_overwrite).where(
                outbox.c.record_id == record_id, outbox.c.record_version == version
            )
        ).one()
    return None if kept else dict(value)


def _conflict_times(rig: Rig, record_id: str) -> list[datetime]:
    return [e.at for e in rig.store.list_audit(record_id=record_id) if e.action == "conflict"]


@pytest.mark.parametrize("ends", ["retried", "held", "database-outage"])
def test_an_overwrite_whose_worker_died_before_recording_it_is_recorded_as_the_overwrite(
    rig: Rig, ends: str
) -> None:
    """The policy overwrites someone else's edit, the server applies it, and the worker dies
    (SIGKILL) before recording it, or loses the database there. Its conflict AuditEvent was
    noted on the item before the send, so whoever finds ours on the server records the
    overwrite: the takeover's 412 (``retried``), the read-back of the item the takeover held
    (the patient revoked meanwhile: ``held``), or the same worker's retry of the items it handed
    back after the outage. SENT, ``conflict: overwritten``, counted, exactly one conflict
    AuditEvent (the event lived only in the dead worker's memory, and the overwrite of
    someone's edit was recorded as a plain send)."""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    if ends == "database-outage":
        error: BaseException = OperationalError("UPDATE outbox", {}, Exception("gone"))
    else:
        error = Killed()
    worker = _worker_on(rig, FailsFirstRecording(rig.store, error))
    with pytest.raises(type(error)):
        worker.run_once()
    assert rig.fake.resources[key]["meta"]["versionId"] == "3"  # ours, over theirs
    assert rig.fake.resources[key]["status"] != "amended"
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.QUEUED}
    assert rig.conflict_events(record_id) == []
    assert _kept_overwrite(rig, record_id, 2) is not None  # noted before the send

    if ends == "database-outage":
        worker.leases.abandon(error)  # what ``run_forever`` does with a failed batch
        assert worker.run_once().sent == 1  # handed back noted, claimed again: its 412
    elif ends == "retried":
        assert rig.worker(later=40).run_once().sent == 1  # the lease expired: taken over
    else:
        rig.intake(R.revocation(rig.run))
        rig.worker(later=40).run_once()  # taken over and held by the gate
        assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}
        assert rig.conflict_events(record_id) == []
        rig.worker(later=50).run_once()  # read back: it landed

    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SENT}
    assert rig.conflicts(record_id)[2] == "overwritten"
    assert rig.conflict_events(record_id) == ["overwritten"]
    assert _overwritten() == before + 1
    assert rig.store.landing_unknown_count() == 0
    assert _kept_overwrite(rig, record_id, 2) is None
    assert rig.fake.writes[key] == 3  # nothing written again
    last = rig.store.last_sent(record_id)
    assert last is not None and [s.version_id for s in last.sent] == ["3"]
    rig.worker(later=200).run_once()
    assert rig.conflict_events(record_id) == ["overwritten"]


class DiesBeforeTheOverwrite:
    """The worker's FHIR client, except that the worker dies as an overwrite (a Bundle without
    any ``If-Match``) is about to go out: nothing of it reaches the server."""

    def __init__(self, client: FhirClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transaction(self, requests: Sequence[BundleRequest], **kwargs: Any) -> Any:
        if all(request.if_match is None for request in requests):
            raise Killed()
        return self._client.transaction(requests, **kwargs)


@pytest.mark.parametrize("then", ["overwrite", "held", "flag"])
def test_an_overwrite_whose_worker_died_before_sending_it_is_never_recorded(
    rig: Rig, then: str
) -> None:
    """The worker notes the overwrite on the item and dies before it goes out: someone else's
    edit is still on the server. The takeover's 412 finds theirs, and the policy settles it
    afresh: ``overwrite`` writes ours, audited once with a conflict AuditEvent of its own (the
    takeover's, not the dead worker's); ``flag`` holds it for a person, flagged, and nothing is
    noted overwritten. Held by the gate instead (the patient revoked), the read-back finds theirs
    and drops the noted overwrite: no conflict audited. Nothing of the dead worker's overwrite
    is recorded as one that happened."""
    record_id, key = _edited_elsewhere(rig)
    before = _overwritten()
    worker = rig.worker()
    worker.client = DiesBeforeTheOverwrite(worker.client)  # type: ignore[assignment]
    with pytest.raises(Killed):
        worker.run_once()
    assert rig.fake.resources[key]["status"] == "amended"  # theirs, untouched
    kept = _kept_overwrite(rig, record_id, 2)
    assert kept is not None and kept["action"] == "conflict"  # noted, not audited
    assert rig.conflict_events(record_id) == []

    if then == "held":
        rig.intake(R.revocation(rig.run))
    takeover = rig.worker(later=40, policy="flag" if then == "flag" else "overwrite")
    takeover.run_once()
    rig.worker(later=100, policy="flag").run_once()  # any read-back due
    assert rig.store.landing_unknown_count() == 0
    assert _kept_overwrite(rig, record_id, 2) is None
    if then == "overwrite":
        assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.SENT}
        assert rig.fake.resources[key]["status"] != "amended"
        assert rig.conflicts(record_id)[2] == "overwritten"
        assert rig.conflict_events(record_id) == ["overwritten"]
        assert _conflict_times(rig, record_id)[0] >= now() + timedelta(seconds=30)
        assert _overwritten() == before + 1
        return
    assert rig.fake.resources[key]["status"] == "amended"
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.HELD}
    assert rig.conflict_events(record_id) == ([] if then == "held" else ["flagged"])
    assert rig.conflicts(record_id)[2] == (None if then == "held" else "flagged")
    assert _overwritten() == before


def test_an_overwrite_refused_with_an_answer_keeps_nothing_noted(rig: Rig) -> None:
    """The overwrite is noted before its send and the server answers 503: it overwrote nothing,
    so the note goes with the failure (nothing landing unknown, nothing kept); the retry's 412
    overwrites then, audited once."""
    record_id, key = _edited_elsewhere(rig)
    rig.fake.faults = [_passes, status(503)]
    rig.worker().run_once()
    assert rig.items(record_id) == {1: SyncState.SENT, 2: SyncState.FAILED}
    assert _kept_overwrite(rig, record_id, 2) is None
    assert rig.store.landing_unknown_count() == 0
    assert rig.conflict_events(record_id) == []
    assert rig.worker(later=10).run_once().sent == 1
    assert rig.conflict_events(record_id) == ["overwritten"]
    assert rig.fake.resources[key]["status"] != "amended"


class CountsOverwriteNotes:
    """The rig's store, counting the overwrites noted before their send."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self.noted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def note_overwrite(self, *args: Any, **kwargs: Any) -> Any:
        self.noted += 1
        return self._store.note_overwrite(*args, **kwargs)


def test_only_an_overwrite_is_noted_before_its_send(rig: Rig) -> None:
    """Sends that are not overwrites (a first send, an update If-Match our version) write
    nothing before they go; the overwrite writes its one note."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    counting = CountsOverwriteNotes(rig.store)
    assert _worker_on(rig, counting).run_once().sent == 1
    rig.intake(R.rating(rig.run, 1, value=3))
    assert _worker_on(rig, counting).run_once().sent == 1
    assert counting.noted == 0
    [key] = [k for k in rig.fake.resources if k.startswith("Observation/")]
    theirs = copy.deepcopy(rig.fake.resources[key])
    theirs["status"] = "amended"
    rig.fake.apply({"entry": [{"request": {"method": "PUT", "url": key}, "resource": theirs}]})
    rig.intake(R.rating(rig.run, 1, value=5))
    assert _worker_on(rig, counting).run_once().sent == 1
    assert counting.noted == 1
    assert rig.conflict_events(record_id) == ["overwritten"]


class TakenOverBeforeTheNote:
    """The rig's store, except that another worker takes the item over (the lease expired)
    just before the overwrite is noted."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def note_overwrite(self, *args: Any, **kwargs: Any) -> Any:
        self._store.claim("other", limit=10, lease_seconds=30, now=now() + timedelta(seconds=40))
        return self._store.note_overwrite(*args, **kwargs)


def test_an_overwrite_whose_lease_is_lost_before_its_note_is_not_sent(rig: Rig) -> None:
    """Another worker took the item over before the overwrite was noted: nothing is noted, and
    nothing sent (that worker settles the conflict); the lease is counted lost and no longer
    held by this worker."""
    record_id, key = _edited_elsewhere(rig)
    worker = _worker_on(rig, TakenOverBeforeTheNote(rig.store))
    report = worker.run_once()
    assert (report.sent, report.lease_lost) == (0, 1)
    assert worker.leases.held == frozenset()
    assert rig.fake.resources[key]["status"] == "amended"
    assert _kept_overwrite(rig, record_id, 2) is None
    assert rig.conflict_events(record_id) == []


def test_one_write_found_by_a_newer_version_of_identical_content_is_one_disclosure(
    rig: Rig,
) -> None:
    """Version 2 of a rating lands, its answer is lost and the read-back fails; versions 3 and
    4 are taken in meanwhile, 4 with version 2's content again. Version 4 goes out If-Match our
    last recorded version and meets a 412 against version 2's write. That one write is one
    disclosure: version 2 is recorded SENT with its AuditEvent and Provenance, and version 4,
    whose content the server holds already, is recorded SENT at that same server version
    without a second disclosure (it used to be audited again: two disclosures and two
    Provenances for one server version)."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    assert rig.worker().run_once().sent == 1
    rig.intake(R.rating(rig.run, 1, value=5))
    lost = _answer_lost(rig, R.rating(rig.run, 1, value=1), applied=True, reads_down=True)

    def answer_lost(bundle: dict[str, Any]) -> Response:
        answer = lost(bundle)  # version 3 taken in, version 2 applied, the answer late
        rig.intake(R.rating(rig.run, 1, value=5))  # version 4: version 2's content again
        return answer

    rig.fake.faults = [answer_lost]
    rig.worker().run_once()
    rig.fake.read_status = None
    assert rig.items(record_id) == {
        1: SyncState.SENT,
        2: SyncState.SUPERSEDED,
        3: SyncState.SUPERSEDED,
        4: SyncState.QUEUED,
    }
    disclosed = rig.actions(record_id).count("disclose")
    attested = rig.actions(record_id).count("provenance")
    [key] = [k for k in rig.fake.resources if k.startswith("Observation/")]
    assert rig.fake.writes[key] == 2

    rig.worker(later=10).run_once()
    assert rig.items(record_id)[2] is SyncState.SENT
    assert rig.items(record_id)[4] is SyncState.SENT
    assert rig.fake.writes[key] == 2  # nothing written again
    assert rig.actions(record_id).count("disclose") == disclosed + 1
    assert rig.actions(record_id).count("provenance") == attested + 1
    last = rig.store.last_sent(record_id)
    assert last is not None and (last.record_version, last.sent[0].version_id) == (4, "2")
    assert rig.store.landing_unknown_count() == 0
    rig.worker(later=200).run_once()
    assert rig.actions(record_id).count("disclose") == disclosed + 1
