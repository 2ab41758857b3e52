"""Every audit event pushed to the FHIR server (``push_audit``) keeps an id of its own: a record
version written to the server twice (here, queued again after someone else's edit, as a pull
queues it, and written over that edit by ``CONFLICT_POLICY=overwrite``) is two disclosures and two
server versions, each with its AuditEvent and its Provenance there. The audit pushes are ``PUT``s
to the resources' ids, so two events under one id would leave only the later on the server.
Fault injection with pytest-httpserver (``fake_fhir.FakeFhir``, checking ``If-Match``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import AuditPushState
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.pull import REMOTE_EDITED
from pytest_httpserver import HTTPServer

from fhir_alliance.client import FhirClient
from tests.service.sync import records as R
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings
from tests.service.sync.fake_fhir import FakeFhir
from tests.service.sync.test_superseded_in_hand import Rig as InHandRig
from tests.service.sync.test_superseded_in_hand import sent_consent


class Rig(InHandRig):
    """Workers that push the audit trail and settle conflicts by overwriting."""

    def worker(self, *, later: float = 0.0) -> Worker:  # type: ignore[override]
        settings = sync_settings(
            self.fake.base_url,
            self.sqlite_url,
            fhir_version="4.0.1",
            conflict_policy="overwrite",
            push_audit=True,
        )
        client = FhirClient(self.fake.base_url, retry=QUICK_RETRY, timeout=(1.0, 2.0))

        def clock() -> datetime:
            return now() + timedelta(seconds=later)

        return Worker(settings, self.store, client, clock=clock)


@pytest.fixture
def rig(httpserver: HTTPServer, sync_store: SqlStore, sqlite_url: str) -> Iterator[Rig]:
    """The patient's sharing consent sent already; the server checks If-Match."""
    fake = FakeFhir(httpserver, check_if_match=True).install()
    yield from sent_consent(Rig(fake, sync_store, sqlite_url, R.run_token()))


def test_a_record_version_written_twice_has_both_disclosures_and_provenances_on_the_server(
    rig: Rig,
) -> None:
    """Version 1 of a rating is sent (server version 1), edited on the server by someone else
    (version 2), queued again and written over the edit (version 3). Both disclosures are stored
    and pushed under ids of their own, and so are the Provenances of server versions 1 and 3:
    the second push used to replace the first AuditEvent and Provenance on the server."""
    [record_id] = rig.intake(R.rating(rig.run, 1, value=2))
    assert rig.worker().run_once().sent == 1
    [key] = [k for k in rig.fake.resources if k.startswith("Observation/")]
    theirs = copy.deepcopy(rig.fake.resources[key])
    theirs["status"] = "amended"
    rig.fake.apply({"entry": [{"request": {"method": "PUT", "url": key}, "resource": theirs}]})
    # What a pull does on reading someone else's version of ours: our newest version queued again.
    assert rig.store.queue_again(record_id, conflict=REMOTE_EDITED, audit=[], at=now()) is not None
    assert rig.worker(later=1).run_once().sent == 1
    assert rig.fake.resources[key]["meta"]["versionId"] == "3"  # ours, over theirs
    rig.worker(later=2).run_once()  # pushes the audit rows still pending

    mine = rig.store.list_audit(record_id=record_id, limit=1000)
    disclosures = [e for e in mine if e.action == "disclose"]
    provenances = [e for e in mine if e.action == "provenance"]
    assert len(disclosures) == 2 and len(provenances) == 2
    assert all(e.push_state is AuditPushState.PUSHED for e in disclosures + provenances)
    event_ids = {str(e.resource["id"]) for e in disclosures}
    provenance_ids = {str(e.resource["id"]) for e in provenances}
    assert len(event_ids) == 2 and len(provenance_ids) == 2
    on_server = rig.fake.resources
    assert all(f"AuditEvent/{i}" in on_server for i in event_ids)
    assert {on_server[f"Provenance/{i}"]["target"][0]["reference"] for i in provenance_ids} == {
        f"{key}/_history/1",
        f"{key}/_history/3",
    }
