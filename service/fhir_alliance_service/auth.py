"""API keys with scopes, and the deny-by-default check every request goes through.

A key is ``fa_<key_id hex>_<secret>``; the store keeps its public ``key_id`` (``fa_<hex>``), name,
scopes and the SHA-256 of the secret, never the secret. Clients send it as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The clinic console (``console/``) signs a browser in with a key that has ``read`` and keeps it in a
session cookie; such a cookie counts only on the console's own pages.

Scopes: ``read``, ``write`` (implies ``notify``), ``admin`` (implies ``read``, ``write`` and
``notify``), ``consult`` (the CDS consult only), ``notify`` (the FHIR Subscriptions notification
endpoint only: the key a Subscription on the clinic's FHIR server carries, readable by whoever can
read that Subscription; ``write`` implies it so that Subscriptions registered with a write key
before it existed keep working). Every view declares its scope with :func:`require_scope` (or :func:`public` for the
two health checks); a ``before_request`` hook refuses any endpoint that declared nothing, so a
forgotten decorator closes a route instead of opening it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, Final, TypeVar

from flask import Flask, current_app, g, request

from fhir_alliance_service.errors import ApiError
from fhir_alliance_service.store.interface import ApiKey, Store

__all__ = [
    "PUBLIC",
    "SESSION_AUTHENTICATOR",
    "ApiKeyCache",
    "SCOPES",
    "create_api_key",
    "grants",
    "hash_secret",
    "parse_api_key",
    "public",
    "register_auth",
    "require_scope",
]

SCOPES: Final = frozenset({"read", "write", "admin", "consult", "notify"})
#: What a scope grants beyond itself.
_IMPLIED: Final = {
    "admin": frozenset({"read", "write", "notify"}),
    "write": frozenset({"notify"}),
}
#: The marker a view carries when it needs no key (only the health checks).
PUBLIC: Final = "public"
_SCOPE_ATTRIBUTE: Final = "fhir_alliance_scope"
#: ``app.extensions`` entry of a callable giving the key of the request's console session, if any
#: (``console/session.py``); requests without an API key header are checked against it.
SESSION_AUTHENTICATOR: Final = "fhir_alliance_console_session"
_KEY_PREFIX: Final = "fa_"
_REALM: Final = 'Bearer realm="fhir-alliance"'
#: Compared against when the key id is unknown, so that both paths hash and compare once.
_DUMMY_HASH: Final = hashlib.sha256(b"no such key").hexdigest()

log = logging.getLogger(__name__)
View = TypeVar("View", bound=Callable[..., Any])


def hash_secret(secret: str) -> str:
    # SHA-256, not a slow password hash: the secret is 256 bits from secrets.token_urlsafe(32),
    # so there is nothing to brute-force and a fast hash keeps each request cheap.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_api_key(
    store: Store, name: str, scopes: Iterable[str], *, now: datetime | None = None
) -> str:
    """Create and store a key; returns the full key, which is shown once and never stored."""
    wanted = frozenset(scopes)
    if not name.strip():
        raise ValueError("an API key needs a name")
    if not wanted:
        raise ValueError(f"an API key needs at least one scope of {', '.join(sorted(SCOPES))}")
    unknown = wanted - SCOPES
    if unknown:
        raise ValueError(
            f"unknown scope {', '.join(sorted(unknown))}; expected {', '.join(sorted(SCOPES))}"
        )
    key_id = f"{_KEY_PREFIX}{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(32)
    store.add_api_key(
        ApiKey(
            key_id=key_id,
            name=name.strip(),
            scopes=wanted,
            secret_hash=hash_secret(secret),
            created_at=now or datetime.now(UTC),
        )
    )
    return f"{key_id}_{secret}"


#: ``fa_<key_id hex>_<secret>``: the id's hex digits end at the first ``_``; the secret is the rest.
_WELL_FORMED_KEY: Final = re.compile(r"(fa_[0-9a-f]+)_(.+)", re.DOTALL)


def parse_api_key(raw: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = _WELL_FORMED_KEY.fullmatch(raw)
    return None if match is None else (match[1], match[2])


def grants(scopes: Iterable[str], needed: str) -> bool:
    """Whether a key with ``scopes`` may use a route that needs ``needed``."""
    return any(s == needed or needed in _IMPLIED.get(s, ()) for s in scopes)


def require_scope(scope: str) -> Callable[[View], View]:
    """Declare the scope a view needs. The ``before_request`` hook enforces it; the wrapper checks
    again, so a view is safe even if the hook were missing."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorate(view: View) -> View:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            key: ApiKey | None = g.get("api_key")
            if key is None or not grants(key.scopes, scope):
                raise ApiError(403, f"this route needs the {scope!r} scope")
            return view(*args, **kwargs)

        setattr(checked, _SCOPE_ATTRIBUTE, scope)
        return checked  # type: ignore[return-value]

    return decorate


def public(view: View) -> View:
    """Mark a view as needing no key (the health checks only)."""
    setattr(view, _SCOPE_ATTRIBUTE, PUBLIC)
    return view


def declared_scope(view: Callable[..., Any] | None) -> str | None:
    return getattr(view, _SCOPE_ATTRIBUTE, None)


def _presented_key() -> str | None:
    # From the WSGI environ directly (what ``request.headers`` reads, without building its view).
    environ = request.environ
    scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
    if scheme.lower() == "bearer" and (value := value.strip()):
        return value
    api_key = str(environ.get("HTTP_X_API_KEY", "")).strip()
    return api_key or None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": _REALM})


class ApiKeyCache:
    """Stored keys by id, trusted for ``ttl`` seconds, so that most requests check their key
    without a query. Only the stored record is cached: the secret is still hashed and compared on
    every request. A key revoked by another process keeps working here for at most ``ttl``
    seconds; ``ttl`` 0 looks the key up every time."""

    MAX_ENTRIES: Final = 1024

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[ApiKey, float]] = {}

    def find(self, store: Store, key_id: str) -> ApiKey | None:
        if self.ttl <= 0:
            return store.find_api_key(key_id)
        now = self._clock()
        cached = self._entries.get(key_id)  # one dict read: atomic, no lock needed
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        stored = store.find_api_key(key_id)
        with self._lock:
            if stored is None:
                self._entries.pop(key_id, None)
            else:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
                self._entries[key_id] = (stored, now)
        return stored


_NO_CACHE: Final = ApiKeyCache(0)


def authenticate(store: Store, raw: str, cache: ApiKeyCache | None = None) -> ApiKey | None:
    """The stored key for ``raw`` if it is valid and not revoked. Unknown ids, wrong secrets and
    revoked keys take the same path: one hash, one constant-time comparison."""
    parsed = parse_api_key(raw)
    key_id, secret = parsed if parsed else ("", raw)
    lookup = cache or _NO_CACHE
    stored = lookup.find(store, key_id) if parsed else None
    expected = stored.secret_hash if stored is not None else _DUMMY_HASH
    matches = hmac.compare_digest(hash_secret(secret), expected)
    if stored is None or not matches or stored.revoked_at is not None:
        return None
    return stored


def _session_key() -> ApiKey | None:
    """The key of a signed-in console session, when the app has a console that recognises this
    request (``SESSION_AUTHENTICATOR``: it answers for console pages only, never for the API)."""
    authenticator = current_app.extensions.get(SESSION_AUTHENTICATOR)
    if authenticator is None:
        return None
    key: ApiKey | None = authenticator()
    return key


def _check_request() -> None:
    """Deny by default: the endpoint must have declared a scope, and the key must grant it."""
    if request.endpoint is None:  # no route matched: let routing answer 404 / 405
        return
    view = current_app.view_functions.get(request.endpoint)
    scope = declared_scope(view)
    if scope == PUBLIC:
        return
    if scope is None:
        log.warning("route without a declared scope refused", extra={"endpoint": request.endpoint})
        raise ApiError(403, "this route declares no scope and is closed")
    raw = _presented_key()
    if raw is None:
        key = _session_key()
        if key is None:
            raise _unauthorized("an API key is required (Authorization: Bearer, or X-API-Key)")
    else:
        from fhir_alliance_service.app import current_service

        service = current_service()
        key = authenticate(service.store, raw, service.api_keys)
        if key is None:
            raise _unauthorized("the API key is not valid")
    if not grants(key.scopes, scope):
        raise ApiError(403, f"this route needs the {scope!r} scope")
    g.api_key = key


def register_auth(app: Flask) -> None:
    app.before_request(_check_request)
