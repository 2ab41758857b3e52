"""Two intakes racing on one database (``conftest.two_stores``): a staged write that lets the
other intake run first."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.store.interface import (
    AuditEntry,
    IntakeEvents,
    IntakeResult,
    NewRecord,
)


def write_after(
    monkeypatch: pytest.MonkeyPatch,
    store: SqlStore,
    meanwhile: Callable[[], object],
    *,
    once: bool = False,
) -> None:
    """Stage the race: ``store``'s next ``put_records`` (the use case has read the store, checked
    the patient and built its audit events) first lets ``meanwhile`` run to its end (the other
    intake, committed), then writes. ``once``: only before the first write (a retry of the use
    case then writes straight away)."""
    original = store.put_records
    staged: list[bool] = []

    def put_records(
        records: Sequence[NewRecord], *, audit: Sequence[AuditEntry] | IntakeEvents, at: datetime
    ) -> list[IntakeResult]:
        if not (once and staged):
            staged.append(True)
            meanwhile()
        return original(records, audit=audit, at=at)

    monkeypatch.setattr(store, "put_records", put_records)
