"""Tests of auth: API keys (hashed, scoped, revocable), 401/403, and deny by default on every route."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime

import pytest
from fhir_alliance_service import auth
from fhir_alliance_service.app import ServiceState, create_app
from fhir_alliance_service.auth import (
    PUBLIC,
    SCOPES,
    ApiKeyCache,
    create_api_key,
    declared_scope,
    grants,
    parse_api_key,
    require_scope,
)
from fhir_alliance_service.store.interface import Store
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st

PUBLIC_PATHS = {"/healthz", "/readyz"}
#: The console's sign-in form and stylesheet need no session; its other pages answer a request
#: without one by sending the browser to the sign-in form (the console's 401).
CONSOLE_PUBLIC_PATHS = {"/console/sign-in", "/console/static/<path:filename>"}


def _concrete_path(rule: str) -> str:
    """A URL for a rule: every ``<converter:name>`` filled with a syntactically plausible value."""
    return re.sub(r"<[^>]+>", "0f8fad5b-d9cb-469f-a165-70867728950e", rule)


def test_key_format_and_only_the_hash_is_stored(store: Store) -> None:
    """A new key is fa_<hex id>_<secret>; the store holds the SHA-256 of the secret, not the secret."""
    key = create_api_key(store, "ehr bridge", ["read", "write"])
    parsed = parse_api_key(key)
    assert parsed is not None
    key_id, secret = parsed
    assert re.fullmatch(r"fa_[0-9a-f]{12}", key_id)
    assert len(secret) >= 43  # token_urlsafe(32): 256 bits
    stored = store.find_api_key(key_id)
    assert stored is not None
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(stored)
    assert stored.scopes == {"read", "write"}


@pytest.mark.parametrize("scopes", [[], ["read", "superuser"]])
def test_create_api_key_refuses_bad_scopes(store: Store, scopes: list[str]) -> None:
    """No scope, or an unknown one, is refused before anything is stored."""
    with pytest.raises(ValueError, match="scope"):
        create_api_key(store, "x", scopes)


def test_scope_implications() -> None:
    """admin implies read, write and notify, not consult; write implies notify (the key a
    Subscription carried before notify existed keeps working); other scopes imply nothing."""
    assert grants({"admin"}, "read") and grants({"admin"}, "write") and grants({"admin"}, "admin")
    assert not grants({"admin"}, "consult")
    assert not grants({"write"}, "read")
    assert not grants({"consult"}, "read")
    assert grants({"admin"}, "notify") and grants({"write"}, "notify")
    assert not grants({"read"}, "notify") and not grants({"consult"}, "notify")
    assert [s for s in sorted(SCOPES) if grants({"notify"}, s)] == ["notify"]


def test_missing_key_is_401_with_challenge(client: FlaskClient) -> None:
    """Without a key a protected route answers 401, WWW-Authenticate and an OperationOutcome."""
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.mimetype == "application/fhir+json"
    assert response.json["issue"][0]["code"] == "login"


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_both_key_headers_are_accepted(
    client: FlaskClient, api_keys: dict[str, str], header: str
) -> None:
    """A valid key works as a Bearer token and as X-API-Key."""
    value = api_keys["read"] if header == "X-API-Key" else f"Bearer {api_keys['read']}"
    assert client.get("/metrics", headers={header: value}).status_code == 200


@pytest.mark.parametrize(
    "presented",
    [
        "nonsense",
        "fa_",
        "fa_zz_secret",
        "fa_0123456789ab_wrong-secret",
    ],
)
def test_malformed_or_unknown_key_is_401(client: FlaskClient, presented: str) -> None:
    """Keys that do not parse or name no stored key are refused with 401."""
    response = client.get("/metrics", headers={"X-API-Key": presented})
    assert response.status_code == 401


def test_wrong_secret_of_a_real_key_is_401(client: FlaskClient, api_keys: dict[str, str]) -> None:
    """The right key id with a different secret is refused."""
    key_id, _ = parse_api_key(api_keys["read"]) or ("", "")
    response = client.get("/metrics", headers={"X-API-Key": f"{key_id}_{'A' * 43}"})
    assert response.status_code == 401


def test_wrong_scope_is_403(client: FlaskClient, auth_headers: dict[str, dict[str, str]]) -> None:
    """A valid key without the route's scope gets 403 and an OperationOutcome."""
    response = client.get("/metrics", headers=auth_headers["consult"])
    assert response.status_code == 403
    assert response.json["issue"][0]["code"] == "forbidden"
    assert client.get("/metrics", headers=auth_headers["admin"]).status_code == 200


def test_revoked_key_is_401_at_once_without_cache(
    sqlite_url: str, store: Store, api_keys: dict[str, str]
) -> None:
    """With api_key_cache_seconds=0, a revoked key is refused on the very next request."""
    app = create_app({"database_url": sqlite_url, "api_key_cache_seconds": 0})
    try:
        client = app.test_client()
        headers = {"X-API-Key": api_keys["read"]}
        assert client.get("/metrics", headers=headers).status_code == 200
        key_id, _ = parse_api_key(api_keys["read"]) or ("", "")
        assert store.revoke_api_key(key_id, at=datetime.now(UTC))
        assert client.get("/metrics", headers=headers).status_code == 401
    finally:
        app.extensions["fhir_alliance"].store.close()


def test_revoked_key_is_refused_once_the_cache_expires(
    app: Flask, store: Store, api_keys: dict[str, str]
) -> None:
    """With a key cache, a key revoked elsewhere works for at most the cache's lifetime."""
    now = [1000.0]
    state = app.extensions["fhir_alliance"]
    app.extensions["fhir_alliance"] = ServiceState(
        settings=state.settings, store=state.store, api_keys=ApiKeyCache(5.0, clock=lambda: now[0])
    )
    client = app.test_client()
    headers = {"X-API-Key": api_keys["read"]}
    assert client.get("/metrics", headers=headers).status_code == 200
    key_id, _ = parse_api_key(api_keys["read"]) or ("", "")
    assert store.revoke_api_key(key_id, at=datetime.now(UTC))
    now[0] += 4.9
    assert client.get("/metrics", headers=headers).status_code == 200  # documented staleness
    now[0] += 0.2
    assert client.get("/metrics", headers=headers).status_code == 401
    wrong = {"X-API-Key": api_keys["consult"][:-4] + "AAAA"}
    assert client.get("/metrics", headers=wrong).status_code == 401  # secrets always compared


def test_every_check_path_hashes_and_compares_once(
    client: FlaskClient, api_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown id, malformed key, wrong secret and a good key all take one constant-time comparison
    (so the answer time does not tell which part was wrong)."""
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    key_id, _ = parse_api_key(api_keys["read"]) or ("", "")
    for presented in ("fa_0123456789ab_x", "garbage", f"{key_id}_wrong", api_keys["read"]):
        calls.clear()
        client.get("/metrics", headers={"X-API-Key": presented})
        assert len(calls) == 1, presented
        assert all(len(a) == len(b) == 64 for a, b in calls)


def test_every_route_but_health_refuses_without_a_key(app: Flask, client: FlaskClient) -> None:
    """Iterating app.url_map: every rule and method except the health checks is 401 without a key."""
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC_PATHS | CONSOLE_PUBLIC_PATHS:
            continue
        expected = 302 if rule.rule.startswith("/console/") else 401
        for method in sorted((rule.methods or set()) - {"HEAD"}):
            response = client.open(_concrete_path(rule.rule), method=method)
            assert response.status_code == expected, (rule.rule, method, response.status_code)
            checked += 1
    assert checked >= 6


def test_health_checks_are_public(client: FlaskClient) -> None:
    """/healthz and /readyz answer without a key."""
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_route_without_declared_scope_is_closed(app: Flask, api_keys: dict[str, str]) -> None:
    """A view someone forgot to decorate is refused even with an admin key."""

    @app.get("/forgotten")
    def forgotten() -> str:
        return "secret data"

    response = app.test_client().get("/forgotten", headers={"X-API-Key": api_keys["admin"]})
    assert response.status_code == 403
    assert b"secret data" not in response.data


def test_decorator_checks_scope_even_without_the_hook(app: Flask) -> None:
    """require_scope's wrapper refuses on its own when no key was authenticated."""

    @require_scope("read")
    def view() -> str:
        return "data"

    with app.test_request_context("/"), pytest.raises(Exception, match="scope"):
        view()


def test_every_route_refuses_a_key_without_its_scope(
    app: Flask, client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Iterating app.url_map: each protected rule answers 403 to a valid key of another scope."""
    checked = 0
    for rule in app.url_map.iter_rules():
        needed = declared_scope(app.view_functions[rule.endpoint])
        if needed == PUBLIC:
            continue
        assert needed in SCOPES, rule.rule
        other = next(s for s in sorted(SCOPES) if not grants({s}, needed))
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(
                _concrete_path(rule.rule), method=method, headers=auth_headers[other]
            )
            assert response.status_code == 403, (rule.rule, method, other, response.status_code)
            checked += 1
    assert checked >= 10


NOTIFICATIONS = "/v1/fhir/notifications"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/records"),
        ("POST", "/v1/consents"),
        ("POST", "/v1/notes"),
        ("GET", "/v1/records/0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("GET", "/v1/consents/0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/cds-services/patient-consent-consult"),
    ],
)
def test_a_notify_key_is_refused_elsewhere_with_403(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]], method: str, path: str
) -> None:
    """The key an EHR's Subscription carries cannot post records or consents, nor read anything:
    403 with the usual OperationOutcome."""
    response = client.open(path, method=method, headers=auth_headers["notify"], json={})
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    assert response.json["issue"][0]["code"] == "forbidden"


def test_a_notify_key_opens_the_notification_route_and_nothing_else(
    app: Flask, client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Iterating app.url_map: every protected rule but POST /v1/fhir/notifications answers 403 to
    a notify key (the console's pages too, with their HTML page); that route lets it through (to
    a 422 here: ``{}`` is no notification)."""
    checked = 0
    for rule in app.url_map.iter_rules():
        if declared_scope(app.view_functions[rule.endpoint]) == PUBLIC:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(
                _concrete_path(rule.rule), method=method, headers=auth_headers["notify"], json={}
            )
            if (method, rule.rule) == ("POST", NOTIFICATIONS):
                assert response.status_code == 422, response.get_data(as_text=True)
            else:
                assert response.status_code == 403, (rule.rule, method, response.status_code)
            checked += 1
    assert checked >= 10


def _parse_by_partition(raw: str) -> tuple[str, str] | None:
    """The key format as first written: prefix, hex id up to the first ``_``, the rest secret."""
    if not raw.startswith("fa_"):
        return None
    key_hex, sep, secret = raw[3:].partition("_")
    if not (sep and key_hex and secret) or not all(c in "0123456789abcdef" for c in key_hex):
        return None
    return f"fa_{key_hex}", secret


@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda key_id, secret: f"fa_{key_id}_{secret}",
            st.text(alphabet="0123456789abcdefABG_\n", max_size=14),
            st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
        ),
    )
)
def test_parse_api_key_accepts_exactly_the_keys_it_always_did(raw: str) -> None:
    """The regex parse gives what the prefix/partition/hex-check parse gave, for any text."""
    assert parse_api_key(raw) == _parse_by_partition(raw)
