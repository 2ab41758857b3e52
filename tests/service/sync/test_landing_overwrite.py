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
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.metrics import REGISTRY
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.store.tables import outbox
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.conflicts import decide_conflict
from pytest_httpserver import HTTPServer
from sqlalchemy import select

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir
from tests.service.sync.test_landing_unknown import _answer_lost
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


def test_a_persons_overwrite_whose_answer_was_lost_stays_decided_and_audited_once(
    rig: Rig,
) -> None:
    """``CONFLICT_POLICY=flag``: a person decides the flagged conflict with ``overwrite``
    (audited then, ``conflict-decision``); its send, If-Match the flagged version, lands but
    its answer is lost and the read-back fails. The retry's 412 finds ours: recorded SENT, still
    ``decided-overwrite``, the decision audited once and no overwrite of the policy's noted."""
    record_id, key = _edited_elsewhere(rig)
    rig.worker(policy="flag").run_once()
    status = rig.store.sync_status(record_id)
    assert status is not None and status.conflict == "flagged"
    decide_conflict(
        rig.store,
        record_id,
        "overwrite",
        against=status.conflict_versions,
        record_version=status.record_version,
        decided_by="cli",
        at=now(),
    )
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
