"""Login CSRF in a real browser (Debian's Chromium, headless): a page on a sibling subdomain of the
console plants the sign-in cookie with a token pair of its own (cookie tossing) and posts the
sign-in form with the attacker's key. The console must not sign the browser in; its own sign-in
form still works. Host names are mapped to 127.0.0.1 by Chromium's resolver rules."""

from __future__ import annotations

import html
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fhir_alliance_service.app import create_app
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.config import Settings
from fhir_alliance_service.console.session import SESSION_COOKIE, SIGN_IN_COOKIE
from fhir_alliance_service.store import open_store, upgrade
from flask import Flask
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait
from werkzeug import Request, Response
from werkzeug.serving import BaseWSGIServer, make_server

from tests.service.console.conftest import CHROMEDRIVER, CHROMIUM, EHR, _chromium_options

pytestmark = pytest.mark.slow
#: The console and the attacker's page: two hosts of one site (``clinic.test``).
CONSOLE_HOST = "console.clinic.test"
ATTACKER_HOST = "evil.clinic.test"


@dataclass
class Sites:
    console: str  # base URL of the console's service
    attacker: str  # base URL of the attacker's page
    keys: dict[str, str]  # "victim" (admin), "attacker" (read)


def _serve(app: object) -> tuple[BaseWSGIServer, threading.Thread]:
    """``app`` over HTTPS (a throwaway self-signed certificate): browsers send ``Sec-Fetch-Site``
    only to secure origins, as a clinic's console is served."""
    server: BaseWSGIServer = make_server(
        "127.0.0.1",
        0,
        app,  # type: ignore[arg-type]
        threaded=True,
        ssl_context="adhoc",
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def _sign_in_pair(app: Flask) -> tuple[str, str]:
    """A fresh sign-in form's cookie value and token, as the attacker fetches them for itself."""
    client = app.test_client()
    form = client.get("/console/sign-in")
    token = re.search(r'name="sign_in_token" value="([^"]+)"', form.text)
    cookie = client.get_cookie(SIGN_IN_COOKIE, path="/console")
    assert token is not None and cookie is not None
    return cookie.value, token.group(1)


def _session_of(app: Flask, key: str) -> str:
    """The session cookie's value of a sign-in with ``key``, as the attacker gets it for itself."""
    client = app.test_client()
    cookie, token = _sign_in_pair(app)
    client.set_cookie(SIGN_IN_COOKIE, cookie, path="/console")
    client.post("/console/sign-in", data={"api_key": key, "sign_in_token": token})
    session = client.get_cookie(SESSION_COOKIE, path="/console")
    assert session is not None
    return session.value


def _attacker_page(console: str, app: Flask, attacker_key: str) -> object:
    """The attacker's pages, each planting a cookie of the console's for the whole site
    (``Domain=clinic.test``): ``/post`` a fresh sign-in form's cookie, with a copy of the form
    (its token and the attacker's key) posted to ``console`` at once; ``/plant`` a session of the
    attacker's key, with a link to the console."""

    @Request.application  # type: ignore[misc]
    def page(request: Request) -> Response:
        if request.path == "/post":
            name, (cookie, token) = SIGN_IN_COOKIE, _sign_in_pair(app)
            body = (
                "<!doctype html><title>x</title>"
                f'<form method="post" action="{console}/console/sign-in">'
                f'<input name="api_key" value="{html.escape(attacker_key)}">'
                f'<input name="sign_in_token" value="{html.escape(token)}"></form>'
                "<script>document.forms[0].submit()</script>"
            )
        else:
            name, cookie = SESSION_COOKIE, _session_of(app, attacker_key)
            body = f'<!doctype html><title>x</title><a href="{console}/console/">console</a>'
        response = Response(body, content_type="text/html")
        for path in ("/console", "/"):
            response.set_cookie(
                name, cookie, domain="clinic.test", path=path, secure=True, samesite="Lax"
            )
        return response

    return page


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    workdir = Path(tempfile.mkdtemp(prefix="console-csrf-"))
    database_url = f"sqlite:///{workdir / 'console.db'}"
    upgrade(database_url)
    store = open_store(database_url)
    app = create_app(Settings(database_url=database_url, recipients=(EHR,)), store=store)
    keys = {
        "victim": create_api_key(store, "victim", ["admin"]),
        "attacker": create_api_key(store, "attacker", ["read"]),
    }
    console_server, console_thread = _serve(app)
    console = f"https://{CONSOLE_HOST}:{console_server.server_port}"
    attacker_server, attacker_thread = _serve(_attacker_page(console, app, keys["attacker"]))
    try:
        yield Sites(console, f"https://{ATTACKER_HOST}:{attacker_server.server_port}", keys)
    finally:
        for server, thread in (
            (attacker_server, attacker_thread),
            (console_server, console_thread),
        ):
            server.shutdown()
            thread.join(timeout=10)
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def site_browser() -> Iterator[webdriver.Chrome]:
    """Chromium resolving both host names to 127.0.0.1, with a fresh profile."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: run `make browser`")
    profile = Path(tempfile.mkdtemp(prefix="console-csrf-chromium-"))
    options = _chromium_options(profile)
    options.add_argument("--ignore-certificate-errors")  # the servers' self-signed certificates
    options.add_argument(
        f"--host-resolver-rules=MAP {CONSOLE_HOST} 127.0.0.1, MAP {ATTACKER_HOST} 127.0.0.1"
    )
    driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _heading(browser: webdriver.Chrome) -> str:
    return str(browser.find_element(By.TAG_NAME, "h1").text)


def _wait(browser: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    """A wait that reads the page while it is being replaced: its heading may not be there yet,
    or belong to the page just left (stale)."""
    return WebDriverWait(
        browser,
        15,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def _sign_in_as_staff(browser: webdriver.Chrome, sites: Sites) -> None:
    """The console's own sign-in form, with the staff member's key: it must work whatever the
    attacker planted."""
    browser.get(f"{sites.console}/console/")
    assert _heading(browser) == "Sign in"
    browser.find_element(By.ID, "api_key").send_keys(sites.keys["victim"])
    browser.find_element(By.CSS_SELECTOR, "form.sign-in button").click()
    _wait(browser).until(lambda b: _heading(b) != "Sign in")
    assert _heading(browser) == "Sync overview"
    assert "“victim”" in browser.find_element(By.CSS_SELECTOR, ".who").text


def test_a_sibling_subdomain_cannot_post_the_sign_in_form_with_its_key(
    sites: Sites, site_browser: webdriver.Chrome
) -> None:
    """The attacker's page posts the console's sign-in form with the attacker's key and a planted
    sign-in cookie: the console answers 403 and the browser has no session. The console's own
    sign-in form, in the same browser, then signs the staff member in."""
    site_browser.get(f"{sites.attacker}/post")
    _wait(site_browser).until(
        lambda b: b.current_url.startswith(sites.console) and bool(_heading(b))
    )
    assert _heading(site_browser).startswith("403")
    site_browser.get(f"{sites.console}/console/")
    assert _heading(site_browser) == "Sign in"
    _sign_in_as_staff(site_browser, sites)


def test_a_session_cookie_planted_by_a_sibling_subdomain_opens_nothing(
    sites: Sites, site_browser: webdriver.Chrome
) -> None:
    """A session cookie of the attacker's key planted for the whole site does not sign the browser
    in (the console's cookies are ``__Host-`` cookies over HTTPS, which no other host can set),
    and does not stand in the way of the staff member's own sign-in."""
    site_browser.get(f"{sites.attacker}/plant")
    site_browser.get(f"{sites.console}/console/")
    assert _heading(site_browser) == "Sign in"
    _sign_in_as_staff(site_browser, sites)
