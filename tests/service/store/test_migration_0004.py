"""Migration 0004 (audit reads by time, the audit push queue, lost leases apart from failed
sends): upgrades from 0003 with rows in place and downgrades back, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhir_alliance_service.store import current_revision, upgrade
from fhir_alliance_service.store.engine import make_engine
from sqlalchemy import inspect, text

from .builders import T0
from .migrating import downgrade_to


@pytest.fixture
def url_at_0003(database_url: str) -> Iterator[str]:
    """``database_url`` (migrated to head by its fixture) taken back to revision 0003."""
    downgrade_to(database_url, "0003")
    yield database_url


def _indexes(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {str(ix["name"]) for ix in inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


def _columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {str(c["name"]) for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_0004_upgrades_rows_in_place_and_downgrades(url_at_0003: str) -> None:
    """At 0003 the audit table has no index on ``at`` and no push queue; upgrading adds both
    (audit rows pushed before are ``pushed``, the others stay local) and ``outbox.lost_leases``;
    downgrading removes them again and a second upgrade works."""
    url = url_at_0003
    assert current_revision(url) == "0003"
    assert "ix_audit_at" not in _indexes(url, "audit")
    assert "push_state" not in _columns(url, "audit")
    assert "lost_leases" not in _columns(url, "outbox")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for pushed in (True, False):
                connection.execute(
                    text(
                        "INSERT INTO audit (action, resource, at, pushed)"
                        " VALUES ('disclose', '{}', :at, :pushed)"
                    ),
                    {"at": T0.replace(tzinfo=None), "pushed": pushed},
                )
    finally:
        engine.dispose()

    upgrade(url, "0004")
    assert current_revision(url) == "0004"
    assert {"ix_audit_at", "ix_audit_unsettled_push_state_id"} <= _indexes(url, "audit")
    assert "lost_leases" in _columns(url, "outbox")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT pushed, push_state, push_attempts FROM audit ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert [(bool(p), s, n) for p, s, n in rows] == [(True, "pushed", 0), (False, None, 0)]

    downgrade_to(url, "0003")
    assert current_revision(url) == "0003"
    assert not {"ix_audit_at", "ix_audit_unsettled_push_state_id"} & _indexes(url, "audit")
    assert not {"push_state", "push_attempts", "push_next_at", "push_outcome"} & _columns(
        url, "audit"
    )
    assert "lost_leases" not in _columns(url, "outbox")
    upgrade(url, "0004")
    assert current_revision(url) == "0004"
