"""Contract of ``Store.audit_counts_by_day``: distinct records per UTC day and audit action, in
one aggregate query; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from fhir_alliance_service.store import SqlStore, open_store

from .builders import audit_entry

DAY_1 = datetime(2026, 3, 1, tzinfo=UTC)
SINCE = DAY_1
UNTIL = DAY_1 + timedelta(days=3)


def _on(day: int, hours: float) -> datetime:
    """``hours`` into day ``day`` (1, 2, …) of the test window."""
    return DAY_1 + timedelta(days=day - 1, hours=hours)


def test_counts_distinct_records_per_utc_day_and_action(store: SqlStore) -> None:
    """Two entries about one record on one day count once; a day ends at midnight UTC; other
    actions, entries without a record and entries outside ``[since, until)`` are left out."""
    store.add_audit(
        [
            audit_entry("intake", "rec-1", when=_on(1, 9)),
            audit_entry("intake", "rec-1", when=_on(1, 10)),  # a second version, same day
            audit_entry("intake", "rec-2", when=_on(1, 23.9999)),
            audit_entry("intake", "rec-3", when=_on(2, 0)),  # midnight belongs to day 2
            audit_entry("disclose", "rec-1", when=_on(2, 8)),
            audit_entry("hold", "rec-2", when=_on(2, 8)),
            audit_entry("hold", "rec-2", when=_on(3, 8)),  # held again on a later day
            audit_entry("dead-letter", "rec-3", when=_on(3, 12)),
            audit_entry("provenance", "rec-1", when=_on(2, 8)),  # not asked for
            audit_entry("hold", None, when=_on(2, 9)),  # about no record
            audit_entry("intake", "rec-9", when=SINCE - timedelta(microseconds=1)),
            audit_entry("intake", "rec-9", when=UNTIL),  # the end is excluded
        ]
    )
    counts = store.audit_counts_by_day(
        ["intake", "disclose", "hold", "dead-letter"], since=SINCE, until=UNTIL
    )
    assert counts == {
        date(2026, 3, 1): {"intake": 2},
        date(2026, 3, 2): {"intake": 1, "disclose": 1, "hold": 1},
        date(2026, 3, 3): {"hold": 1, "dead-letter": 1},
    }


def test_an_entry_given_in_another_zone_counts_on_its_utc_day(store: SqlStore) -> None:
    """A time written with an offset is filed under its UTC day, not the local one."""
    local = datetime.fromisoformat("2026-03-02T01:30:00+02:00")  # 2026-03-01 23:30 UTC
    store.add_audit([audit_entry("intake", "rec-1", when=local)])
    assert store.audit_counts_by_day(["intake"], since=SINCE, until=UNTIL) == {
        date(2026, 3, 1): {"intake": 1}
    }


def test_no_actions_or_no_entries_give_nothing(store: SqlStore) -> None:
    """Asking for no action, or a window without entries, gives an empty mapping."""
    store.add_audit([audit_entry("intake", "rec-1", when=_on(1, 9))])
    assert store.audit_counts_by_day([], since=SINCE, until=UNTIL) == {}
    assert store.audit_counts_by_day(["intake"], since=UNTIL, until=UNTIL + timedelta(days=1)) == {}


@pytest.mark.postgres
def test_a_postgresql_session_in_another_time_zone_still_counts_utc_days(
    postgres_url: str,
) -> None:
    """A connection whose session time zone is not UTC (here UTC+14) files entries under their
    UTC day all the same."""
    store = open_store(f"{postgres_url}%20-ctimezone%3DPacific/Kiritimati")
    try:
        store.add_audit([audit_entry("intake", "rec-1", when=_on(1, 20))])  # day 2 at UTC+14
        assert store.audit_counts_by_day(["intake"], since=SINCE, until=UNTIL) == {
            date(2026, 3, 1): {"intake": 1}
        }
    finally:
        store.close()
