"""Review findings on API keys (clinic operator): keys can be listed and revoked from the command
line (``list-api-keys``, ``revoke-api-key``), a revoked key stops working, and a second active key
with the same name is refused."""

from __future__ import annotations

import json

import pytest
from fhir_alliance_service.app import create_app
from fhir_alliance_service.auth import ApiKeyCache, authenticate, parse_api_key
from fhir_alliance_service.store.interface import Store

from fhir_alliance.cli import main


def _create(capsys: pytest.CaptureFixture[str], name: str, *scopes: str) -> str:
    """``create-api-key NAME --scope …``; the raw key it printed."""
    arguments = ["create-api-key", name]
    for scope in scopes or ("read",):
        arguments += ["--scope", scope]
    assert main(arguments) == 0
    return capsys.readouterr().out.strip()


def _key_id(raw_key: str) -> str:
    parsed = parse_api_key(raw_key)
    assert parsed is not None
    return parsed[0]


def test_list_api_keys_shows_ids_names_scopes_and_dates_never_a_secret(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list-api-keys` (text and --json): id, name, scopes, created, revoked; no secret, no hash."""
    assert main(["list-api-keys"]) == 0
    assert capsys.readouterr().out.startswith("no API keys")
    assert main(["list-api-keys", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    front = _create(capsys, "front-desk", "read", "write")
    billing = _create(capsys, "billing", "read")
    assert main(["revoke-api-key", _key_id(billing)]) == 0
    capsys.readouterr()

    assert main(["list-api-keys", "--json"]) == 0
    out = capsys.readouterr().out
    listing = json.loads(out)
    assert [entry["key_id"] for entry in listing] == [_key_id(front), _key_id(billing)]
    assert set(listing[0]) == {"key_id", "name", "scopes", "created_at", "revoked_at"}
    assert listing[0]["name"] == "front-desk"
    assert listing[0]["scopes"] == ["read", "write"]
    assert listing[0]["created_at"] and listing[0]["revoked_at"] is None
    assert listing[1]["revoked_at"] is not None

    assert main(["list-api-keys"]) == 0
    text = capsys.readouterr().out
    header, first, second = text.splitlines()
    assert header.split() == ["KEY", "ID", "SCOPES", "CREATED", "REVOKED", "NAME"]
    assert first.startswith(_key_id(front)) and first.endswith("front-desk")
    assert "read,write" in first and " - " in first
    assert second.startswith(_key_id(billing)) and second.endswith("billing")
    for raw in (front, billing):
        secret = raw.split("_", 2)[2]
        stored = opened.find_api_key(_key_id(raw))
        assert stored is not None
        for shown in (out, text):
            assert secret not in shown
            assert stored.secret_hash not in shown


def test_revoke_api_key_revokes_once_and_is_idempotent(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 and the key is revoked; a second revoke says it already was, exit 0, no change."""
    key_id = _key_id(_create(capsys, "front-desk"))
    assert main(["revoke-api-key", key_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"revoked API key {key_id} ('front-desk')")
    assert "FHIR_ALLIANCE_API_KEY_CACHE_SECONDS" in out
    stored = opened.find_api_key(key_id)
    assert stored is not None and stored.revoked_at is not None

    assert main(["revoke-api-key", key_id]) == 0
    assert "already revoked" in capsys.readouterr().out
    again = opened.find_api_key(key_id)
    assert again is not None and again.revoked_at == stored.revoked_at


def test_revoke_api_key_refuses_unknown_ids_and_whole_keys_in_one_line(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown id, a malformed one, or the whole key (secret): one line, exit 2, never echoed."""
    raw = _create(capsys, "front-desk")
    assert main(["revoke-api-key", "fa_000000000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no API key fa_000000000000")

    assert main(["revoke-api-key", "front-desk"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an API key id" in err

    assert main(["revoke-api-key", raw]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the whole key" in err
    assert raw.split("_", 2)[2] not in err
    stored = opened.find_api_key(_key_id(raw))
    assert stored is not None and stored.revoked_at is None


def test_a_second_active_key_with_the_same_name_is_refused(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names identify keys: a name an active key has (in any case) is refused with one line,
    exit 2, pointing at revoke-api-key; once the old key is revoked the name can be used again."""
    first = _key_id(_create(capsys, "front-desk"))
    for name in ("front-desk", " Front-Desk "):
        assert main(["create-api-key", name, "--scope", "write"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1
        assert f"revoke-api-key {first}" in captured.err
    assert [key.key_id for key in opened.list_api_keys()] == [first]

    assert main(["revoke-api-key", first]) == 0
    capsys.readouterr()
    second = _key_id(_create(capsys, "front-desk", "write"))
    assert [key.key_id for key in opened.list_api_keys()] == [first, second]


def test_a_revoked_key_is_refused_by_the_api_at_once_with_cache_zero(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through Flask's test client with FHIR_ALLIANCE_API_KEY_CACHE_SECONDS 0: the key works,
    `revoke-api-key` runs (another process, in effect), the next request is 401."""
    raw = _create(capsys, "front-desk", "read")
    app = create_app({"database_url": database, "api_key_cache_seconds": 0})
    app.testing = True
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {raw}"}
        assert client.get("/metrics", headers=headers).status_code == 200
        assert main(["revoke-api-key", _key_id(raw)]) == 0
        assert client.get("/metrics", headers=headers).status_code == 401
    finally:
        app.extensions["fhir_alliance"].store.close()


def test_a_revoked_key_stops_working_once_the_cache_time_has_passed(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a cache of 5 s a process may trust the key it looked up for up to 5 s, no longer."""
    raw = _create(capsys, "front-desk", "read")
    now = [100.0]
    cache = ApiKeyCache(5, clock=lambda: now[0])
    assert authenticate(opened, raw, cache) is not None
    assert main(["revoke-api-key", _key_id(raw)]) == 0
    now[0] += 4.9
    assert authenticate(opened, raw, cache) is not None  # still within the cache time
    now[0] += 0.2
    assert authenticate(opened, raw, cache) is None
