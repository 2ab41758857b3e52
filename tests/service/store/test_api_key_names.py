"""API key names are unique among keys not revoked, enforced by the database (migration 0005):
through the store alone (no command's check), under concurrent adds, and across the upgrade of a
database whose keys already share a name; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fhir_alliance_service.store import SqlStore, current_revision, open_store, upgrade
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.interface import (
    ApiKey,
    ApiKeyNamesShared,
    ApiKeyNameTaken,
    api_key_name_folded,
)
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from .builders import at
from .migrating import downgrade_to


def _key(key_id: str, name: str, *, revoked: bool = False) -> ApiKey:
    return ApiKey(
        key_id=key_id,
        name=name,
        scopes=frozenset({"read"}),
        secret_hash="ab" * 32,
        created_at=at(int(key_id.removeprefix("fa_"), 16)),
        revoked_at=at(1000) if revoked else None,
    )


def test_names_are_compared_without_blanks_and_case() -> None:
    """' Front-Desk ' and 'front-desk' are one name; 'Straße' and 'STRASSE' too (casefold)."""
    assert api_key_name_folded(" Front-Desk ") == api_key_name_folded("front-desk")
    assert api_key_name_folded("Straße") == api_key_name_folded("STRASSE")
    assert api_key_name_folded("front desk") != api_key_name_folded("front-desk")


def test_a_second_active_key_of_one_name_added_through_the_store_is_refused(
    store: SqlStore,
) -> None:
    """No command checks first here: the database refuses the second key of a name (in another
    case and with blanks too) with ApiKeyNameTaken naming the key that has it; nothing is added."""
    store.add_api_key(_key("fa_01", "front-desk"))
    for name in ("front-desk", " FRONT-DESK "):
        with pytest.raises(ApiKeyNameTaken) as caught:
            store.add_api_key(_key("fa_02", name))
        assert (caught.value.name, caught.value.key_id) == ("front-desk", "fa_01")
        assert str(caught.value) == "an API key named 'front-desk' already exists (fa_01)"
    assert [key.key_id for key in store.list_api_keys()] == ["fa_01"]
    store.add_api_key(_key("fa_03", "billing"))  # other names still go in
    assert [key.key_id for key in store.list_api_keys()] == ["fa_01", "fa_03"]


def test_a_revoked_keys_name_can_be_used_again_once(store: SqlStore) -> None:
    """Revoked keys keep their names and do not count: after a revoke the name takes one new key
    (not two); a revoked key may even be added under an active key's name."""
    store.add_api_key(_key("fa_01", "front-desk"))
    assert store.revoke_api_key("fa_01", at=at(500))
    store.add_api_key(_key("fa_02", "Front-Desk"))
    with pytest.raises(ApiKeyNameTaken) as caught:
        store.add_api_key(_key("fa_03", "front-desk"))
    assert caught.value.key_id == "fa_02"
    store.add_api_key(_key("fa_04", "front-desk", revoked=True))
    names = [(key.key_id, key.name, key.revoked_at is None) for key in store.list_api_keys()]
    assert names == [
        ("fa_01", "front-desk", False),
        ("fa_02", "Front-Desk", True),
        ("fa_04", "front-desk", False),
    ]


def test_a_duplicate_key_id_stays_an_integrity_error(store: SqlStore) -> None:
    """A clash of key ids (not of names) is not reported as a taken name."""
    store.add_api_key(_key("fa_01", "front-desk"))
    with pytest.raises(IntegrityError):
        store.add_api_key(_key("fa_01", "billing"))


def test_concurrent_adds_of_one_name_leave_exactly_one_key(database_url: str) -> None:
    """Six stores (as six processes would) add a key of one name at once: one succeeds, the
    others get ApiKeyNameTaken naming it."""
    stores = [open_store(database_url) for _ in range(6)]
    start = threading.Barrier(len(stores))
    outcomes: dict[str, BaseException | None] = {}

    def add(store: SqlStore, key_id: str) -> None:
        start.wait()
        try:
            store.add_api_key(_key(key_id, "front-desk"))
            outcomes[key_id] = None
        except BaseException as error:
            outcomes[key_id] = error

    threads = [
        threading.Thread(target=add, args=(store, f"fa_{n:02x}"))
        for n, store in enumerate(stores, start=1)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        [added] = [key_id for key_id, error in outcomes.items() if error is None]
        refused = [error for error in outcomes.values() if error is not None]
        assert len(refused) == len(stores) - 1
        for error in refused:
            assert isinstance(error, ApiKeyNameTaken), repr(error)
            assert error.key_id == added
        assert [key.key_id for key in stores[0].list_api_keys()] == [added]
    finally:
        for store in stores:
            store.close()


# -- migration 0005 -------------------------------------------------------------------------------


@pytest.fixture
def url_at_0004(database_url: str) -> Iterator[str]:
    """``database_url`` (migrated to head by its fixture) taken back to revision 0004."""
    downgrade_to(database_url, "0004")
    yield database_url


def insert_keys_at_0004(url: str, *keys: tuple[str, str, bool]) -> None:
    """Rows ``(key_id, name, revoked)`` written as the code at 0004 wrote them."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for key_id, name, revoked in keys:
                connection.execute(
                    text(
                        "INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_at,"
                        " revoked_at) VALUES (:key_id, :name, '[\"read\"]', 'ab', :created,"
                        " :revoked)"
                    ),
                    {
                        "key_id": key_id,
                        "name": name,
                        "created": at(int(key_id.removeprefix("fa_"), 16)).replace(tzinfo=None),
                        "revoked": at(1000).replace(tzinfo=None) if revoked else None,
                    },
                )
    finally:
        engine.dispose()


def _rows(url: str) -> list[tuple[str, str, bool]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [
                (key_id, name, revoked_at is not None)
                for key_id, name, revoked_at in connection.execute(
                    text("SELECT key_id, name, revoked_at FROM api_keys ORDER BY key_id")
                )
            ]
    finally:
        engine.dispose()


def _columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {str(column["name"]) for column in inspect(engine).get_columns("api_keys")}
    finally:
        engine.dispose()


def test_0005_upgrades_keys_in_place_and_downgrades(url_at_0004: str) -> None:
    """Keys of distinct names (and revoked keys sharing a name with an active one) upgrade: each
    gets its folded name, the name is then refused for a second active key; downgrading drops
    the column and index and a second upgrade works."""
    url = url_at_0004
    assert "name_folded" not in _columns(url)
    keys = [
        ("fa_01", " Front-Desk ", True),
        ("fa_02", "front-desk", False),
        ("fa_03", "billing", False),
    ]
    insert_keys_at_0004(url, *keys)
    upgrade(url, "0005")
    assert current_revision(url) == "0005"
    assert _rows(url) == keys
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            folded = connection.execute(
                text("SELECT name_folded FROM api_keys ORDER BY key_id")
            ).scalars()
            assert list(folded) == ["front-desk", "front-desk", "billing"]
    finally:
        engine.dispose()
    upgrade(url)  # the later revisions too, for the store
    store = open_store(url)
    try:
        with pytest.raises(ApiKeyNameTaken, match=r"\(fa_02\)$"):
            store.add_api_key(_key("fa_04", "FRONT-DESK"))
    finally:
        store.close()

    downgrade_to(url, "0004")
    assert "name_folded" not in _columns(url)
    assert _rows(url) == keys
    upgrade(url, "0005")
    assert current_revision(url) == "0005"


def test_0005_refuses_keys_not_revoked_that_share_a_name_and_changes_nothing(
    url_at_0004: str,
) -> None:
    """Two active keys of one name (in any case) stop the upgrade with ApiKeyNamesShared: one
    line naming each shared name and its key ids and saying what to run; the database stays at
    0004 with every key as it was (none revoked, none lost). Revoking all but one lets it
    through."""
    url = url_at_0004
    keys = [
        ("fa_01", "front-desk", False),
        ("fa_02", "Front-Desk", False),
        ("fa_03", "front-desk", True),
        ("fa_04", "billing", False),
        ("fa_05", "BILLING ", False),
        ("fa_06", "billing", False),
        ("fa_07", "console", False),
    ]
    insert_keys_at_0004(url, *keys)
    with pytest.raises(ApiKeyNamesShared) as caught:
        upgrade(url, "0005")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "the database was not upgraded: API keys that are not revoked share a name (compared "
        "without case), and names must now be unique: 'front-desk': fa_01, fa_02; "
        "'billing': fa_04, fa_05, fa_06. Revoke all but one key of each name "
        "(fhir-alliance revoke-api-key KEY_ID), then run fhir-alliance db upgrade again"
    )
    assert caught.value.shared == (
        ("front-desk", ("fa_01", "fa_02")),
        ("billing", ("fa_04", "fa_05", "fa_06")),
    )
    assert current_revision(url) == "0004"
    assert _rows(url) == keys
    assert "name_folded" not in _columns(url)

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE api_keys SET revoked_at = created_at WHERE key_id IN "
                    "('fa_02', 'fa_05', 'fa_06')"
                )
            )
    finally:
        engine.dispose()
    upgrade(url, "0005")
    assert current_revision(url) == "0005"
