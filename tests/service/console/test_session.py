"""Console sessions over time, through Flask's test client: the idle timeout
(``FHIR_ALLIANCE_CONSOLE_IDLE_MINUTES``), activity extending a session up to its absolute 8 hours,
sign-out of a refreshed session, and a new sign-in in the same browser ending the old session."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fhir_alliance_service.console import session as console_session
from fhir_alliance_service.console.session import SESSION_COOKIE
from fhir_alliance_service.store.tables import ended_sessions
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests.service.console.conftest import EHR
from tests.service.console.test_views import csrf_of, sign_in


class Clock:
    """The console's clock (``session._clock``), moved by hand."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, *, minutes: float) -> None:
        self.now += minutes * 60


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr(console_session, "_clock", moved, raising=False)
    return moved


def _cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(SESSION_COOKIE, path="/console")
    assert cookie is not None
    return cookie.value


def _copy(app: Flask, value: str) -> FlaskClient:
    """Another browser (or whoever read the cookie off a shared PC or a log) holding ``value``."""
    other = app.test_client()
    other.set_cookie(SESSION_COOKIE, value, path="/console")
    return other


def _session_cookie_set(answer: TestResponse) -> str | None:
    found = [c for c in answer.headers.getlist("Set-Cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    return found[0] if found else None


def _max_age(set_cookie: str) -> int:
    found = re.search(r"Max-Age=(\d+)", set_cookie)
    assert found is not None
    return int(found.group(1))


@pytest.mark.usefixtures("clock")
def test_the_idle_timeout_is_fifteen_minutes_by_default(console_app: Flask) -> None:
    """Without the setting, sessions end after 15 minutes without a request."""
    assert console_app.extensions["fhir_alliance"].settings.console_idle_minutes == 15


def test_a_session_not_used_for_the_idle_time_must_sign_in_again(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str], clock: Clock
) -> None:
    """A session untouched for longer than the idle timeout (15 minutes) opens nothing, in the
    browser that signed in and in a copy of its cookie; 14 minutes are fine. The browser is told
    to drop the cookie after the idle time too (its Max-Age)."""
    answer = sign_in(console_client, console_keys["read"])
    set_cookie = _session_cookie_set(answer)
    assert set_cookie is not None and _max_age(set_cookie) == 15 * 60
    clock.advance(minutes=14)
    assert console_client.get("/console/").status_code == 200
    copied = _copy(console_app, _cookie(console_client))
    clock.advance(minutes=15.5)
    for browser in (console_client, copied):
        answer = browser.get("/console/")
        assert answer.status_code == 302
        assert answer.headers["Location"].endswith("/console/sign-in")


def test_activity_extends_a_session_and_a_stale_copy_of_its_cookie_expires(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str], clock: Clock
) -> None:
    """Each request re-issues the cookie signed as of now, so a session used every 10 minutes
    stays open for an hour; the cookie as it was at sign-in (a copy read off the PC or a log)
    still ends 15 minutes after sign-in."""
    sign_in(console_client, console_keys["read"])
    copied = _copy(console_app, _cookie(console_client))
    for _ in range(6):
        clock.advance(minutes=10)
        answer = console_client.get("/console/")
        assert answer.status_code == 200
        set_cookie = _session_cookie_set(answer)
        assert set_cookie is not None and _max_age(set_cookie) == 15 * 60
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert copied.get("/console/").status_code == 302


def test_the_absolute_eight_hours_stay_whatever_the_activity(
    console_client: FlaskClient, console_keys: dict[str, str], clock: Clock
) -> None:
    """A session used every 14 minutes still ends 8 hours after sign-in; near the end the
    cookie's Max-Age is what is left of the 8 hours, not the idle time."""
    sign_in(console_client, console_keys["read"])
    elapsed = 0.0
    while elapsed + 14 <= 8 * 60 - 5:
        clock.advance(minutes=14)
        elapsed += 14
        assert console_client.get("/console/").status_code == 200
    clock.advance(minutes=8 * 60 - 5 - elapsed)  # 5 minutes left
    answer = console_client.get("/console/")
    assert answer.status_code == 200
    set_cookie = _session_cookie_set(answer)
    assert set_cookie is not None and _max_age(set_cookie) == 5 * 60
    clock.advance(minutes=6)
    assert console_client.get("/console/").status_code == 302


def test_the_idle_timeout_is_a_setting(
    make_app: Callable[..., Flask], console_keys: dict[str, str], clock: Clock
) -> None:
    """``console_idle_minutes=60``: 50 minutes without a request are fine, 61 are not."""
    del console_keys  # made on another app's store; this app has its own
    app = make_app(recipients=EHR, console_idle_minutes=60)
    from fhir_alliance_service.auth import create_api_key

    key = create_api_key(app.extensions["fhir_alliance"].store, "reception", ["read"])
    browser = app.test_client()
    sign_in(browser, key)
    clock.advance(minutes=50)
    assert browser.get("/console/").status_code == 200
    clock.advance(minutes=61)
    assert browser.get("/console/").status_code == 302


def test_signing_out_a_refreshed_session_ends_every_copy_until_its_absolute_end(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str], clock: Clock
) -> None:
    """After the cookie was re-issued, sign-out still ends the session on the server: a copy of
    the re-issued cookie opens nothing. The ended session is kept until an hour after the
    session's absolute end (sign-in + 8 hours), not its last activity."""
    signed_in_at = datetime.fromtimestamp(clock.now, UTC)
    sign_in(console_client, console_keys["read"])
    clock.advance(minutes=10)
    assert console_client.get("/console/").status_code == 200
    copied = _copy(console_app, _cookie(console_client))
    assert copied.get("/console/").status_code == 200
    token = csrf_of(console_client)
    assert console_client.post("/console/sign-out", data={"csrf_token": token}).status_code == 303
    assert copied.get("/console/").status_code == 302
    store = console_app.extensions["fhir_alliance"].store
    with store.engine.connect() as connection:
        expiries = list(connection.execute(select(ended_sessions.c.expires_at)).scalars())
    assert expiries == [signed_in_at + timedelta(hours=9)]


def test_signing_in_again_in_the_same_browser_ends_the_previous_session(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A new sign-in on top of a session (another key, or the same one) ends the old session on
    the server: a copy of the old cookie opens nothing, the new session works."""
    for first, second in (("read", "admin"), ("read", "read")):
        sign_in(console_client, console_keys[first])
        old = _copy(console_app, _cookie(console_client))
        assert old.get("/console/").status_code == 200
        assert sign_in(console_client, console_keys[second]).status_code == 303
        assert old.get("/console/").status_code == 302
        assert console_client.get("/console/").status_code == 200
        assert _cookie(console_client) != _cookie(old)


def test_signing_in_over_an_idle_cookie_ends_the_copies_still_in_use(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str], clock: Clock
) -> None:
    """The browser's own cookie went idle, but a copy of it kept being used elsewhere (and so
    kept the session alive): signing in again in the browser ends that session too."""
    sign_in(console_client, console_keys["read"])
    elsewhere = _copy(console_app, _cookie(console_client))
    for _ in range(3):
        clock.advance(minutes=10)
        assert elsewhere.get("/console/").status_code == 200
    assert console_client.get("/console/").status_code == 302  # this browser went idle
    assert sign_in(console_client, console_keys["read"]).status_code == 303
    assert elsewhere.get("/console/").status_code == 302


def test_a_failed_sign_in_leaves_the_session_as_it_was(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A key that cannot sign in (no read scope) changes nothing: the session signed in before
    stays signed in."""
    sign_in(console_client, console_keys["read"])
    assert sign_in(console_client, console_keys["write"]).status_code == 401
    assert console_client.get("/console/").status_code == 200


def test_an_old_cookie_without_a_sign_in_time_is_no_session(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A cookie signed before the idle timeout (no sign-in time: its 8 hours cannot be told
    once it is re-issued) opens nothing; its browser signs in again."""
    key_id = "_".join(console_keys["read"].split("_")[:2])
    with console_app.app_context():
        signer = console_session._serializer(console_session._SALT_SESSION)
        old = signer.dumps({"key": key_id, "sid": "session", "csrf": "token"})
    console_client.set_cookie(SESSION_COOKIE, old, path="/console")
    assert console_client.get("/console/").status_code == 302


def test_a_cookie_signed_by_a_machine_whose_clock_runs_ahead_still_opens(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str], clock: Clock
) -> None:
    """Several machines serve the console and re-sign the cookie on every request: one whose
    clock is 30 seconds ahead signs it "in the future" for the others, which still accept it;
    a signature time more than a minute ahead is refused."""
    clock.advance(minutes=0.5)  # the machine that signs runs ahead
    sign_in(console_client, console_keys["read"])
    cookie = _cookie(console_client)
    clock.advance(minutes=-0.5)  # the next request lands on a machine on time
    assert _copy(console_app, cookie).get("/console/").status_code == 200
    clock.advance(minutes=-2)
    assert _copy(console_app, cookie).get("/console/").status_code == 302
