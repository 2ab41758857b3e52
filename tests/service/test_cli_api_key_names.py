"""``create-api-key`` relies on the database for unique names (concurrent runs included), and an
operator whose database already holds keys not revoked sharing a name gets one line from
``db upgrade`` and can revoke them with ``revoke-api-key`` before upgrading; on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fhir_alliance_service.auth import parse_api_key
from fhir_alliance_service.store import current_revision, head_revision, open_store
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.interface import ApiKey
from sqlalchemy import text

from fhir_alliance.cli import main
from tests.service.store.builders import T0
from tests.service.store.migrating import downgrade_to
from tests.service.store.test_api_key_names import insert_keys_at_0004

FHIR_ALLIANCE_BIN = Path(sys.executable).with_name("fhir-alliance")


@pytest.fixture
def cli_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``database_url`` as FHIR_ALLIANCE_DATABASE_URL, and no other FHIR_ALLIANCE_* setting."""
    for name in list(os.environ):
        if name.startswith("FHIR_ALLIANCE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", database_url)
    return database_url


def _key_id(raw_key: str) -> str:
    parsed = parse_api_key(raw_key)
    assert parsed is not None
    return parsed[0]


def test_create_api_key_is_refused_in_one_line_for_a_name_the_store_already_holds(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key added straight through the store (no command ran): `create-api-key` with its name in
    another case is refused by the database, exit 2, one line pointing at revoke-api-key."""
    store = open_store(cli_url)
    try:
        store.add_api_key(ApiKey("fa_0a", "Front-Desk", frozenset({"read"}), "ab" * 32, T0))
        assert main(["create-api-key", " front-desk ", "--scope", "write"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            "error: an API key named 'Front-Desk' already exists (fa_0a); revoke it first "
            "(fhir-alliance revoke-api-key fa_0a) or choose another name\n"
        )
        assert [key.key_id for key in store.list_api_keys()] == ["fa_0a"]
    finally:
        store.close()


def test_concurrent_create_api_key_runs_add_one_key(cli_url: str) -> None:
    """Four `create-api-key front-desk` processes at once: one prints its key (exit 0), the
    others exit 2 with one line naming that key; one key is stored."""
    runs = [
        subprocess.Popen(
            [str(FHIR_ALLIANCE_BIN), "create-api-key", "front-desk", "--scope", "read"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(run.wait(timeout=120), *run.communicate()) for run in runs]
    [winner] = [out.strip() for code, out, _ in results if code == 0]
    key_id = _key_id(winner)
    losers = [err for code, _, err in results if code != 0]
    assert [code for code, _, _ in results].count(2) == 3
    for err in losers:
        assert err.count("\n") == 1, err
        assert err.startswith(f"error: an API key named 'front-desk' already exists ({key_id})")
    store = open_store(cli_url)
    try:
        assert [key.key_id for key in store.list_api_keys()] == [key_id]
    finally:
        store.close()


def test_db_upgrade_names_shared_keys_and_revoke_api_key_clears_the_way(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 0004 with two keys not revoked named 'front-desk': `db upgrade` exits 2 with one line
    naming both ids and revoke-api-key, changing nothing; `list-api-keys` and `revoke-api-key`
    work on the database at 0004; then `db upgrade` succeeds and the name is guarded."""
    downgrade_to(cli_url, "0004")
    insert_keys_at_0004(cli_url, ("fa_01", "front-desk", False), ("fa_02", "Front-Desk", False))

    assert main(["db", "upgrade"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: the database was not upgraded: API keys that are not")
    assert "'front-desk': fa_01, fa_02" in captured.err
    assert "fhir-alliance revoke-api-key KEY_ID" in captured.err
    assert current_revision(cli_url) == "0004"

    assert main(["list-api-keys"]) == 0
    listing = capsys.readouterr().out
    assert "fa_01" in listing and "fa_02" in listing
    assert main(["revoke-api-key", "fa_02"]) == 0
    assert capsys.readouterr().out.startswith("revoked API key fa_02 ('Front-Desk')")
    assert main(["create-api-key", "billing", "--scope", "read"]) == 2  # needs the upgrade
    assert 'run "fhir-alliance db upgrade"' in capsys.readouterr().err

    assert main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out == f"database upgraded from 0004 to {head_revision()}\n"
    assert main(["create-api-key", "FRONT-DESK", "--scope", "read"]) == 2
    assert "revoke-api-key fa_01" in capsys.readouterr().err


def test_list_and_revoke_refuse_a_database_of_newer_code(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only revisions this code knows are opened by list/revoke: a database at a revision of
    newer code is refused with one line, as every other command refuses it."""
    engine = make_engine(cli_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    for arguments in (["list-api-keys"], ["revoke-api-key", "fa_01"]):
        assert main(arguments) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith("error: database schema is at 9999, expected ")
