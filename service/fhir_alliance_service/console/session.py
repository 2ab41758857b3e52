"""Console sign-in: an API key with the ``read`` scope becomes a signed session cookie.

The cookie holds the key's public id, a random session id, a CSRF token and the time of sign-in,
signed with itsdangerous (Flask's own signer) under a random key kept in the store (``set_meta``),
so that every ``serve`` process and every machine sharing the database accepts it. It never holds
the key's secret. Each request looks the key up again: a revoked key ends its sessions at once
(within the API-key cache time). A session ends when it was not used for the idle timeout
(``Settings.console_idle_minutes``): each request re-issues the cookie signed as of now
(:func:`refresh_session`), and a cookie signed longer ago than that opens nothing. Whatever the
activity, it ends :data:`SESSION_SECONDS` after sign-in. It also ends when it signs out, or when
the browser signs in again: the session id goes into the store's ended sessions
(``Store.end_session``), which every request checks (one primary-key read), so a copy of the
cookie stops working too, in every process.

Cookies are ``HttpOnly`` and ``SameSite=Strict``. Over TLS they are ``__Host-`` cookies
(``Secure``, ``Path=/``, no ``Domain``): no other host of the site, a sibling subdomain included,
can set one, so none can plant a session of its own key or a sign-in token pair of its own in a
clinic browser (cookie tossing); over TLS only those are read. Over plain HTTP (development) they
are plain cookies with ``Path=/console``. Forms carry a CSRF token (:func:`csrf_token`), compared
in constant time. The sign-in form, which has no session yet, is protected by a double-submit
token in a cookie of its own.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from flask import g, request
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from fhir_alliance_service.auth import authenticate, grants
from fhir_alliance_service.config import CONSOLE_SESSION_MINUTES
from fhir_alliance_service.errors import ApiError
from fhir_alliance_service.store.interface import ApiKey, Store

__all__ = [
    "COOKIE_PATH",
    "SECURE_COOKIE_PREFIX",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "SIGN_IN_COOKIE",
    "ConsoleSession",
    "check_csrf",
    "cookie_name",
    "csrf_token",
    "current_session",
    "end_session",
    "no_session",
    "refresh_session",
    "session_api_key",
    "sign_in",
    "sign_in_token",
]

SESSION_COOKIE: Final = "fa_console"
SIGN_IN_COOKIE: Final = "fa_console_sign_in"
COOKIE_PATH: Final = "/console"
#: Over TLS the cookies' names carry this prefix: browsers then accept them only with ``Secure``,
#: ``Path=/`` and no ``Domain``, set by this host itself.
SECURE_COOKIE_PREFIX: Final = "__Host-"
#: A session lasts a working day at most, however busy; then the key is asked for again.
SESSION_SECONDS: Final = CONSOLE_SESSION_MINUTES * 60
SIGN_IN_SECONDS: Final = 3600
#: The store's meta entry holding the signing key (created on first use).
META_SIGNING_KEY: Final = "console.signing_key"
#: How long past its 8 hours an ended session is kept: a machine whose clock runs behind
#: accepts the cookie a little longer.
_ENDED_KEPT_LONGER: Final = timedelta(hours=1)
_SALT_SESSION: Final = "fhir-alliance console session"
_SALT_SIGN_IN: Final = "fhir-alliance console sign-in"
#: How far ahead of this machine's clock another machine's signature time may be.
_CLOCK_AHEAD_SECONDS: Final = 60
#: The console's clock, seconds since the epoch (tests move it).
_clock: Callable[[], float] = time.time


class _Signer(TimestampSigner):
    """itsdangerous' timestamp signer, on the console's clock."""

    def get_timestamp(self) -> int:
        return int(_clock())


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in browser: the stored API key it signed in with, its session id, its CSRF token
    and when it signed in (seconds since the epoch)."""

    key: ApiKey
    session_id: str
    csrf: str
    signed_in: int

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def may(self, scope: str) -> bool:
        return grants(self.key.scopes, scope)


def _absolute_end(signed_in: int) -> datetime:
    return datetime.fromtimestamp(signed_in + SESSION_SECONDS, UTC)


def _store() -> Store:
    from fhir_alliance_service.app import current_service

    return current_service().store


def _signing_key(store: Store) -> str:
    """The signing key, created once per database. Two processes creating it at the same moment:
    the last write wins, and the sessions signed under the other key just ask to sign in again."""
    key = store.get_meta(META_SIGNING_KEY)
    if key is None:
        store.set_meta(META_SIGNING_KEY, secrets.token_urlsafe(48))
        key = store.get_meta(META_SIGNING_KEY)
    assert key is not None
    return key


def _serializer(salt: str) -> URLSafeTimedSerializer:
    # The key is read once per request: re-issuing the cookie reads nothing more.
    key: str | None = g.get("console_signing_key")
    if key is None:
        key = g.console_signing_key = _signing_key(_store())
    return URLSafeTimedSerializer(key, salt=salt, signer=_Signer)


def _idle_seconds() -> int:
    from fhir_alliance_service.app import current_service

    return current_service().settings.console_idle_minutes * 60


def cookie_name(name: str) -> str:
    """The name cookie ``name`` (:data:`SESSION_COOKIE`, :data:`SIGN_IN_COOKIE`) has on this
    request: ``__Host-`` prefixed over TLS."""
    return f"{SECURE_COOKIE_PREFIX}{name}" if request.is_secure else name


def _cookie_path() -> str:
    # A __Host- cookie must have Path=/; the API ignores the cookie (session_api_key).
    return "/" if request.is_secure else COOKIE_PATH


def _set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        cookie_name(name),
        value,
        max_age=max_age,
        path=_cookie_path(),
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def _delete_cookie(response: Response, name: str) -> None:
    response.delete_cookie(
        cookie_name(name),
        path=_cookie_path(),
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def _load(cookie: str, salt: str, max_age: int) -> tuple[Any, datetime] | None:
    """The signed value of ``cookie`` and when it was signed; None when the signature is wrong,
    older than ``max_age`` seconds, or more than :data:`_CLOCK_AHEAD_SECONDS` in the future (the
    cookie is re-signed on every request, maybe by another machine whose clock runs ahead;
    itsdangerous' own check refuses any signature from the future)."""
    try:
        loaded: tuple[Any, datetime] = _serializer(salt).loads(cookie, return_timestamp=True)
    except BadSignature:
        return None
    age = _clock() - loaded[1].timestamp()
    if age > max_age or age < -_CLOCK_AHEAD_SECONDS:
        return None
    return loaded


def session_api_key() -> ApiKey | None:
    """The API key of the console session this request carries, or None. Answers only for the
    console's own routes: the API never accepts a cookie (``auth.SESSION_AUTHENTICATOR``)."""
    if request.blueprint != "console":
        return None
    session = current_session()
    return session.key if session is not None else None


def current_session() -> ConsoleSession | None:
    """The valid session of this request (looked up once per request), else None."""
    if "console_session" in g:
        found: ConsoleSession | None = g.console_session
        return found
    session = _read_session()
    g.console_session = session
    return session


def no_session() -> None:
    """This request goes on as if it had no session: nothing looks its cookie up in the store
    (an error page answered before any console view, the store's schema changed) and
    :func:`refresh_session` does not re-issue it."""
    g.console_session = None


@dataclass(frozen=True, slots=True)
class _SessionCookie:
    """What a session cookie's signed payload says."""

    key_id: str
    session_id: str
    csrf: str
    signed_in: int


def _session_cookie(max_age: int) -> _SessionCookie | None:
    """The session cookie of this request when its signature is good, it was signed (issued or
    re-issued) at most ``max_age`` seconds ago, and it is within :data:`SESSION_SECONDS` of its
    sign-in; else None. Neither the key nor the ended sessions are looked at."""
    cookie = request.cookies.get(cookie_name(SESSION_COOKIE))
    if not cookie:
        return None
    loaded = _load(cookie, _SALT_SESSION, max_age)
    if loaded is None or not isinstance(loaded[0], dict):
        return None
    payload = loaded[0]
    key_id, session_id, csrf = payload.get("key"), payload.get("sid"), payload.get("csrf")
    signed_in = payload.get("since")
    # A cookie without a session id (signed before sessions could end) cannot be signed out;
    # one without its sign-in time (signed before the idle timeout) cannot be held to 8 hours.
    if not (isinstance(key_id, str) and isinstance(session_id, str) and isinstance(csrf, str)):
        return None
    if not (key_id and session_id and csrf):
        return None
    if not isinstance(signed_in, int) or isinstance(signed_in, bool):
        return None
    if int(_clock()) - signed_in > SESSION_SECONDS:
        return None
    return _SessionCookie(key_id, session_id, csrf, signed_in)


def _read_session() -> ConsoleSession | None:
    cookie = _session_cookie(_idle_seconds())
    if cookie is None:
        return None
    from fhir_alliance_service.app import current_service

    service = current_service()
    stored = service.api_keys.find(service.store, cookie.key_id)
    if stored is None or stored.revoked_at is not None or not grants(stored.scopes, "read"):
        return None
    if service.store.session_ended(cookie.session_id):
        return None
    return ConsoleSession(
        key=stored, session_id=cookie.session_id, csrf=cookie.csrf, signed_in=cookie.signed_in
    )


def _set_session_cookie(response: Response, session: _SessionCookie | ConsoleSession) -> None:
    """Set the session cookie, signed as of now. The browser keeps it for the idle time, or for
    what is left of the session's 8 hours when that is less."""
    payload = {
        "key": session.key_id,
        "sid": session.session_id,
        "csrf": session.csrf,
        "since": session.signed_in,
    }
    left = session.signed_in + SESSION_SECONDS - int(_clock())
    _set_cookie(
        response,
        SESSION_COOKIE,
        _serializer(_SALT_SESSION).dumps(payload),
        max(0, min(_idle_seconds(), left)),
    )


def refresh_session(response: Response) -> None:
    """Re-issue the cookie of this request's session (if it has one), signed as of now: using
    the console keeps the session from going idle. Not after a sign-in or a sign-out: those
    set or delete the cookie themselves."""
    session: ConsoleSession | None = g.get("console_session")
    if session is not None:
        _set_session_cookie(response, session)


def _end(session_id: str, signed_in: int) -> None:
    """Record the session as ended in the store, kept a little past its absolute end."""
    _store().end_session(
        session_id,
        expires_at=_absolute_end(signed_in) + _ENDED_KEPT_LONGER,
        at=datetime.fromtimestamp(_clock(), UTC),
    )


def sign_in_token(response: Response) -> str:
    """A fresh token for the sign-in form, also set as a cookie (double submit)."""
    token = secrets.token_urlsafe(24)
    _set_cookie(response, SIGN_IN_COOKIE, _serializer(_SALT_SIGN_IN).dumps(token), SIGN_IN_SECONDS)
    return token


def sign_in(raw_key: str, form_token: str, response: Response) -> ApiKey:
    """Check the sign-in form and the key; on success set the session cookie on ``response``.
    Raises :class:`ApiError` 403 (stale form) or 401 (a key that is not valid or lacks ``read``);
    the messages never say which part of the key was wrong."""
    loaded = _load(
        request.cookies.get(cookie_name(SIGN_IN_COOKIE), ""), _SALT_SIGN_IN, SIGN_IN_SECONDS
    )
    cookie_token = loaded[0] if loaded is not None else None
    if not isinstance(cookie_token, str) or not _same_token(cookie_token, form_token):
        raise ApiError(403, "the sign-in form has expired; please try again")
    from fhir_alliance_service.app import current_service

    service = current_service()
    key = authenticate(service.store, raw_key.strip(), service.api_keys)
    if key is None or not grants(key.scopes, "read"):
        raise ApiError(401, "this key cannot sign in (it needs the read scope)")
    # A session this browser had (even gone idle here: a copy of its cookie may still be in
    # use elsewhere) ends on the server; the new one replaces it.
    previous = _session_cookie(SESSION_SECONDS)
    if previous is not None:
        _end(previous.session_id, previous.signed_in)
    g.console_session = None  # nothing left for refresh_session to re-issue
    new = _SessionCookie(
        key.key_id, secrets.token_urlsafe(24), secrets.token_urlsafe(24), int(_clock())
    )
    _set_session_cookie(response, new)
    _delete_cookie(response, SIGN_IN_COOKIE)
    return key


def end_session(response: Response) -> None:
    """Sign this request's session out: its id goes into the store's ended sessions (so that no
    copy of its cookie opens anything any more, in any process) and the cookie is deleted."""
    session = current_session()
    if session is not None:
        _end(session.session_id, session.signed_in)
        g.console_session = None
    _delete_cookie(response, SESSION_COOKIE)


def _same_token(sent: str, expected: str) -> bool:
    """Whether a form's token is the expected one, in constant time. Compared as UTF-8 bytes:
    ``hmac.compare_digest`` raises on text that is not ASCII, which a tampered form may send."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def csrf_token() -> str:
    """The CSRF token for forms of the signed-in session ('' when there is none)."""
    session = current_session()
    return session.csrf if session is not None else ""


def check_csrf() -> None:
    """Refuse a POST whose form token does not match the session's (403)."""
    session = current_session()
    sent = request.form.get("csrf_token", "")
    if session is None or not sent or not _same_token(sent, session.csrf):
        raise ApiError(403, "the form's security token is missing or stale; reload the page")
