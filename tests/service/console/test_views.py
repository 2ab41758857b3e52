"""The console's routes through Flask's test client: sign-in, sessions, CSRF, CSP, cache headers,
scopes and opaque patient ids."""

from __future__ import annotations

import base64
import copy
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fhir_alliance_service import audit
from fhir_alliance_service.app import SCHEMA_CHANGED_MESSAGE
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.console import session as console_session
from fhir_alliance_service.console import views as console_views
from fhir_alliance_service.console.pages import TEXT_WITHHELD
from fhir_alliance_service.console.session import SESSION_COOKIE
from fhir_alliance_service.console.views import CONTENT_SECURITY_POLICY
from fhir_alliance_service.store import schema_watch
from fhir_alliance_service.store.interface import OutboxItem, SentResource, Store, SyncState
from fhir_alliance_service.usecases.intake import intake_records
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import event
from werkzeug.test import TestResponse

from tests.service.console.conftest import (
    EHR,
    NOTE_TEXT_MARKER,
    THERAPIST,
    demo_notes,
    load_clinic,
)
from tests.service.test_cli_schema_mismatch import NEWER, _set_revision
from tests.service.usecases.payloads import OBSERVATION_PATIENT, consent, observation

PAGES = ("/console/",)


def _sign_in_token(client: FlaskClient) -> str:
    page = client.get("/console/sign-in")
    found = re.search(r'name="sign_in_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def sign_in(client: FlaskClient, key: str) -> TestResponse:
    return client.post(
        "/console/sign-in", data={"api_key": key, "sign_in_token": _sign_in_token(client)}
    )


def patient_path(client: FlaskClient, patient: str) -> str:
    """The console URL of ``patient``: its token under the store's own secret."""
    store = client.application.extensions["fhir_alliance"].store
    return f"/console/patients/{store.patient_token(patient)}"


def csrf_of(client: FlaskClient) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/").text)
    assert found is not None
    return found.group(1)


def _load_demo(client: FlaskClient, keys: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {keys['write']}"}
    for name, path in (("1-consents.json", "/v1/consents"), ("2-sessions.json", "/v1/records")):
        assert client.post(path, json=load_clinic(name), headers=headers).status_code == 201


def _dead_letter(app: Flask) -> str:
    """Dead-letter one claimed item the way the worker does (claim, mark_dead); its record id."""
    store = app.extensions["fhir_alliance"].store
    now = datetime.now(UTC)
    item = store.claim("test-worker", limit=1, lease_seconds=60, now=now)[0]
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "details": {"text": "bad"}}],
    }
    assert store.mark_dead(item.item_id, "test-worker", outcome=outcome, audit=[], at=now)
    record_id: str = item.record_id
    return record_id


def test_a_signed_out_browser_is_sent_to_the_sign_in_page(console_client: FlaskClient) -> None:
    """Every console page without a session redirects to the sign-in form, never shows data."""
    for path in ("/console/", patient_path(console_client, "Patient/x")):
        answer = console_client.get(path)
        assert answer.status_code == 302
        assert answer.headers["Location"].endswith("/console/sign-in")


def test_a_read_key_signs_in_with_a_strict_http_only_cookie(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Signing in with a read key sets an HttpOnly, SameSite=Strict cookie scoped to /console that
    never holds the key's secret; the overview then opens."""
    answer = sign_in(console_client, console_keys["read"])
    assert answer.status_code == 303
    cookie = next(
        c for c in answer.headers.getlist("Set-Cookie") if c.startswith(f"{SESSION_COOKIE}=")
    )
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; behind TLS see the next test
    secret = console_keys["read"].split("_", 2)[2]
    assert secret not in cookie
    assert console_client.get("/console/").status_code == 200


def test_the_cookie_is_secure_behind_tls(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Over HTTPS the console's cookies are __Host- cookies (Secure, Path=/, no Domain), which no
    other host of the site can set; a plain-named cookie (planted by a sibling subdomain, or a
    copy of an HTTP session) opens nothing over HTTPS."""
    https = "https://clinic.example"
    page = console_client.get("/console/sign-in", base_url=https)
    sign_in_cookie = next(
        c for c in page.headers.getlist("Set-Cookie") if c.startswith("__Host-fa_console_sign_in=")
    )
    assert "Secure" in sign_in_cookie and "Path=/;" in sign_in_cookie
    token = re.search(r'name="sign_in_token" value="([^"]+)"', page.text)
    assert token is not None
    answer = console_client.post(
        "/console/sign-in",
        data={"api_key": console_keys["read"], "sign_in_token": token.group(1)},
        base_url=https,
    )
    cookie = next(
        c for c in answer.headers.getlist("Set-Cookie") if c.startswith(f"__Host-{SESSION_COOKIE}=")
    )
    assert "Secure" in cookie and "Path=/;" in cookie and "Domain" not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert console_client.get("/console/", base_url=https).status_code == 200

    session = console_client.get_cookie(f"__Host-{SESSION_COOKIE}", domain="clinic.example")
    assert session is not None
    planted = console_client.application.test_client()
    planted.set_cookie(SESSION_COOKIE, session.value, domain="clinic.example", path="/console")
    assert planted.get("/console/", base_url=https).status_code == 302
    planted.set_cookie(f"__Host-{SESSION_COOKIE}", session.value, domain="clinic.example")
    assert planted.get("/console/", base_url=https).status_code == 200

    csrf = re.search(
        r'name="csrf_token" value="([^"]+)"', console_client.get("/console/", base_url=https).text
    )
    assert csrf is not None
    out = console_client.post(
        "/console/sign-out", data={"csrf_token": csrf.group(1)}, base_url=https
    )
    assert out.status_code == 303
    deleted = next(
        c for c in out.headers.getlist("Set-Cookie") if c.startswith(f"__Host-{SESSION_COOKIE}=")
    )
    assert "Secure" in deleted and "Path=/;" in deleted and "Max-Age=0" in deleted


#: A staff PC on the clinic's network, asking for the console by the clinic's host name.
OTHER_MACHINE = {"base_url": "http://clinic.example", "environ_base": {"REMOTE_ADDR": "10.1.2.3"}}


def test_plain_http_from_another_machine_is_refused(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Over plain HTTP from another machine, every console page is refused (403, saying how to
    serve it over HTTPS) and a sign-in sets no session: the API key and the cookie would cross
    the network in clear."""
    for path in ("/console/sign-in", "/console/static/console.css"):
        page = console_client.get(path, **OTHER_MACHINE)
        assert page.status_code == 403, path
        assert "served only over HTTPS" in page.text
    # A session cookie taken over there opens nothing either.
    assert sign_in(console_client, console_keys["read"]).status_code == 303
    session = console_client.get_cookie(SESSION_COOKIE, domain="localhost", path="/console")
    assert session is not None
    elsewhere = console_client.application.test_client()
    elsewhere.set_cookie(SESSION_COOKIE, session.value, domain="clinic.example", path="/console")
    assert elsewhere.get("/console/", **OTHER_MACHINE).status_code == 403
    answer = console_client.post(
        "/console/sign-in",
        data={"api_key": console_keys["read"], "sign_in_token": "x"},
        **OTHER_MACHINE,
    )
    assert answer.status_code == 403
    assert not [c for c in answer.headers.getlist("Set-Cookie") if SESSION_COOKIE in c]
    # A proxy on this machine passing on another machine's request: loopback peer, clinic host.
    proxied = console_client.get(
        "/console/sign-in", base_url="http://clinic.example", environ_base={"REMOTE_ADDR": "::1"}
    )
    assert proxied.status_code == 403
    # The same machine by a loopback name (development, the demo), and TLS from anywhere.
    assert (
        console_client.get("/console/sign-in", base_url="http://127.0.0.1:8080").status_code == 200
    )
    https = {"base_url": "https://clinic.example", "environ_base": {"REMOTE_ADDR": "10.1.2.3"}}
    assert console_client.get("/console/sign-in", **https).status_code == 200


#: How a proxy on this machine says whose request it passes on (Apache's mod_proxy adds the
#: X-Forwarded-* three by default; nginx configurations add X-Real-IP or X-Forwarded-For).
FORWARDED_HEADERS = (
    {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Host": "clinic.example"},
    {"X-Forwarded-For": "10.1.2.3"},
    {"Forwarded": "for=10.1.2.3;host=clinic.example"},
    {"X-Real-IP": "10.1.2.3"},
)


@pytest.mark.parametrize("forwarded", FORWARDED_HEADERS)
def test_plain_http_passed_on_by_a_proxy_that_names_the_upstream_is_refused(
    console_client: FlaskClient, console_keys: dict[str, str], forwarded: dict[str, str]
) -> None:
    """A proxy on this machine that asks for the console by the upstream's loopback name
    (Apache's default, ProxyPreserveHost off) passes on another machine's plain-HTTP request
    from a loopback address to a loopback name: it says so in its forwarding headers, and such
    a request is refused (403) like any other from another machine, sign-in included, unless
    the proxy says the browser came over TLS (X-Forwarded-Proto, read by gunicorn)."""
    proxied = {
        "base_url": "http://127.0.0.1:8080",
        "environ_base": {"REMOTE_ADDR": "127.0.0.1"},
        "headers": forwarded,
    }
    page = console_client.get("/console/sign-in", **proxied)
    assert page.status_code == 403
    assert "served only over HTTPS" in page.text
    answer = console_client.post(
        "/console/sign-in",
        data={"api_key": console_keys["read"], "sign_in_token": "x"},
        **proxied,
    )
    assert answer.status_code == 403
    assert not [c for c in answer.headers.getlist("Set-Cookie") if SESSION_COOKIE in c]
    # The browser came to the proxy over TLS (gunicorn turned X-Forwarded-Proto into https).
    over_tls = {**proxied, "base_url": "https://127.0.0.1:8080"}
    assert console_client.get("/console/sign-in", **over_tls).status_code == 200
    # A browser on this machine, which sends none of those headers, is still served.
    assert (
        console_client.get("/console/sign-in", base_url="http://127.0.0.1:8080").status_code == 200
    )


def test_plain_http_passed_on_by_a_bare_proxy_is_refused_once_the_browser_names_its_page(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """nginx's bare ``proxy_pass http://127.0.0.1:8080`` adds no forwarding header and asks by
    the upstream's loopback name, so the request looks like one from a browser on this machine.
    The browser's own headers still say where its page is: a sign-in posted from the clinic's
    host name (``Origin``) or a page opened from one (``Referer``) is refused (403, no session),
    as from any other machine. A browser on this machine names a loopback page, and is served."""
    bare_proxy = {"base_url": "http://127.0.0.1:8080", "environ_base": {"REMOTE_ADDR": "127.0.0.1"}}
    answer = console_client.post(
        "/console/sign-in",
        data={"api_key": console_keys["read"], "sign_in_token": "x"},
        headers={"Origin": "http://clinic.example"},
        **bare_proxy,
    )
    assert answer.status_code == 403
    assert "served only over HTTPS" in answer.text
    assert not [c for c in answer.headers.getlist("Set-Cookie") if SESSION_COOKIE in c]
    page = console_client.get(
        "/console/static/console.css",
        headers={"Referer": "http://clinic.example/console/sign-in"},
        **bare_proxy,
    )
    assert page.status_code == 403
    # A browser on this machine: its page is on a loopback name.
    local = {"Referer": "http://127.0.0.1:8080/console/sign-in"}
    assert console_client.get("/console/sign-in", headers=local, **bare_proxy).status_code == 200
    signed_in = console_client.post(
        "/console/sign-in",
        data={"api_key": console_keys["read"], "sign_in_token": _sign_in_token(console_client)},
        headers={"Origin": "http://localhost"},
    )
    assert signed_in.status_code == 303


def test_plain_http_to_other_machines_is_a_setting(make_app: Callable[..., Flask]) -> None:
    """FHIR_ALLIANCE_CONSOLE_ALLOW_PLAIN_HTTP lets a clinic serve the console over plain HTTP on
    a network it trusts."""
    client = make_app(recipients=EHR, console_allow_plain_http=True).test_client()
    assert client.get("/console/sign-in", **OTHER_MACHINE).status_code == 200


def test_pages_over_tls_ask_browsers_to_keep_to_https(console_client: FlaskClient) -> None:
    """Over HTTPS a console page carries Strict-Transport-Security, so the browser never asks
    this host over plain HTTP again; over plain HTTP (where it would mean nothing) it does not."""
    over_tls = console_client.get("/console/sign-in", base_url="https://clinic.example")
    assert over_tls.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in console_client.get("/console/sign-in").headers


def test_keys_without_read_and_wrong_keys_cannot_sign_in(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A consult-only key, a write-only key, a notify-only key (the one an EHR's Subscription
    carries) and a made-up key are refused with 401 and no session."""
    for key in (
        console_keys["consult"],
        console_keys["write"],
        console_keys["notify"],
        "fa_0123456789ab_not-a-secret",
    ):
        answer = sign_in(console_client, key)
        assert answer.status_code == 401
        assert not any(
            c.startswith(f"{SESSION_COOKIE}=") for c in answer.headers.getlist("Set-Cookie")
        )
        assert console_client.get("/console/").status_code == 302


def test_sign_in_needs_the_form_token(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A sign-in post without the form's token (a cross-site login) is refused."""
    answer = console_client.post(
        "/console/sign-in", data={"api_key": console_keys["admin"], "sign_in_token": "forged"}
    )
    assert answer.status_code == 403
    assert console_client.get("/console/").status_code == 302


def test_a_revoked_key_ends_its_session(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Revoking the key a session signed in with signs the browser out at once."""
    console_app.extensions["fhir_alliance"].api_keys.ttl = 0
    sign_in(console_client, console_keys["read"])
    assert console_client.get("/console/").status_code == 200
    store = console_app.extensions["fhir_alliance"].store
    store.revoke_api_key("_".join(console_keys["read"].split("_")[:2]), at=datetime.now(UTC))
    assert console_client.get("/console/").status_code == 302


def test_a_tampered_cookie_is_no_session(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A session cookie whose signature does not match is ignored."""
    sign_in(console_client, console_keys["read"])
    cookie = console_client.get_cookie(SESSION_COOKIE, path="/console")
    assert cookie is not None
    # The signature's first character changed (every bit of it counts; a change at the end of
    # the base64 text may only touch padding bits, or match what was there).
    payload, _, signature = cookie.value.rpartition(".")
    tampered = ("B" if signature[0] == "A" else "A") + signature[1:]
    console_client.set_cookie(SESSION_COOKIE, f"{payload}.{tampered}", path="/console")
    assert console_client.get("/console/").status_code == 302


def test_the_api_never_accepts_the_console_cookie(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A browser's console session opens no /v1 route: the API wants its key in a header."""
    sign_in(console_client, console_keys["admin"])
    cookie = console_client.get_cookie(SESSION_COOKIE, path="/console")
    assert cookie is not None
    console_client.set_cookie(SESSION_COOKIE, cookie.value, path="/")
    assert console_client.get("/v1/patients/Patient/demo-client-1/records").status_code == 401


def test_pages_carry_a_script_free_csp_and_no_store(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Sign-in, overview and error pages: a CSP without scripts, no-store, nosniff, no framing."""
    answers = [console_client.get("/console/sign-in")]
    sign_in(console_client, console_keys["read"])
    answers += [
        console_client.get("/console/"),
        console_client.get("/console/records/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12),
    ]
    for answer in answers:
        policy = answer.headers["Content-Security-Policy"]
        assert policy == CONTENT_SECURITY_POLICY
        assert "script-src" not in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "<script" not in answer.text


def test_replay_needs_admin_and_a_csrf_token(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A read session gets 403 on replay (and sees no button); an admin session needs the CSRF
    token; with it the dead letter is queued again."""
    _load_demo(console_client, console_keys)
    store = console_app.extensions["fhir_alliance"].store
    record_id = _dead_letter(console_app)
    replay = f"/console/records/{record_id}/replay"

    sign_in(console_client, console_keys["read"])
    assert "Replay</button>" not in console_client.get(f"/console/records/{record_id}").text
    answer = console_client.post(replay, data={"csrf_token": csrf_of(console_client)})
    assert answer.status_code == 403
    assert store.sync_status(record_id).state is SyncState.DEAD_LETTERED

    sign_in(console_client, console_keys["admin"])
    assert "Replay</button>" in console_client.get(f"/console/records/{record_id}").text
    assert console_client.post(replay, data={}).status_code == 403
    assert console_client.post(replay, data={"csrf_token": "forged"}).status_code == 403
    assert store.sync_status(record_id).state is SyncState.DEAD_LETTERED

    answer = console_client.post(replay, data={"csrf_token": csrf_of(console_client)})
    assert answer.status_code == 303
    assert store.sync_status(record_id).state is SyncState.QUEUED
    again = console_client.post(replay, data={"csrf_token": csrf_of(console_client)})
    assert again.status_code == 409  # nothing dead-lettered any more


def test_sign_out_needs_the_csrf_token_and_ends_the_session(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Sign-out is a POST with the session's token; afterwards the overview asks to sign in."""
    sign_in(console_client, console_keys["read"])
    assert console_client.post("/console/sign-out", data={}).status_code == 403
    assert console_client.get("/console/").status_code == 200
    token = csrf_of(console_client)
    assert console_client.post("/console/sign-out", data={"csrf_token": token}).status_code == 303
    assert console_client.get("/console/").status_code == 302


def test_signing_out_ends_the_session_in_every_process(
    make_app: Callable[..., Flask], console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Sign-out ends the session on the server: another app on the same database (another
    gunicorn worker) refuses a copy of the signed-out cookie at once, while another session of
    the same key stays signed in."""
    other_worker = make_app(recipients=EHR)
    sign_in(console_client, console_keys["read"])
    cookie = console_client.get_cookie(SESSION_COOKIE, path="/console")
    assert cookie is not None
    copy_elsewhere = other_worker.test_client()
    copy_elsewhere.set_cookie(SESSION_COOKIE, cookie.value, path="/console")
    assert copy_elsewhere.get("/console/").status_code == 200
    second_browser = other_worker.test_client()
    sign_in(second_browser, console_keys["read"])

    token = csrf_of(console_client)
    assert console_client.post("/console/sign-out", data={"csrf_token": token}).status_code == 303
    refused = copy_elsewhere.get("/console/")
    assert refused.status_code == 302
    assert refused.headers["Location"].endswith("/console/sign-in")
    assert second_browser.get("/console/").status_code == 200


def test_a_cookie_without_a_session_id_is_no_session(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A cookie signed the way sessions were before they could end (no session id) could not be
    signed out, so it opens nothing: its browser signs in again. The same cookie with a session
    id opens the console."""
    key_id = "_".join(console_keys["read"].split("_")[:2])
    with console_app.app_context():
        signer = console_session._serializer(console_session._SALT_SESSION)
        old = signer.dumps({"key": key_id, "csrf": "token"})
        current = signer.dumps(
            {"key": key_id, "sid": "session", "csrf": "token", "since": int(time.time())}
        )
    console_client.set_cookie(SESSION_COOKIE, current, path="/console")
    assert console_client.get("/console/").status_code == 200
    console_client.set_cookie(SESSION_COOKIE, old, path="/console")
    assert console_client.get("/console/").status_code == 302


def test_urls_carry_no_patient_reference(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Links to patients use the opaque id; no href on any page names a patient or identifier."""
    _load_demo(console_client, console_keys)
    sign_in(console_client, console_keys["read"])
    overview = console_client.get("/console/").text
    patient_links = re.findall(r'href="(/console/patients/[^"]+)"', overview)
    assert patient_path(console_client, "Patient/demo-client-1") in patient_links
    pages = [overview, *(console_client.get(link).text for link in patient_links)]
    for page in pages:
        for href in re.findall(r'(?:href|action)="([^"]+)"', page):
            assert "demo-client" not in href and "demo-clinic" not in href


def test_patient_urls_cannot_be_computed_from_a_reference(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A patient's URL is keyed with the installation's secret: the UUIDv5 of the reference in
    the fixed public namespace (what anyone with a guessed MRN or id could compute and compare
    with browser history or a proxy log) is in no link and opens nothing (404). (Another
    installation's URLs differ: ``tests/service/store/test_patient_tokens.py``.)"""
    _load_demo(console_client, console_keys)
    sign_in(console_client, console_keys["read"])
    overview = console_client.get("/console/").text
    links = re.findall(r'href="(/console/patients/[^"]+)"', overview)
    assert len(links) == 3
    public = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir-alliance.org/console/patient")
    for number in (1, 2, 3):
        guessed = f"/console/patients/{uuid.uuid5(public, f'Patient/demo-client-{number}')}"
        assert guessed not in links
        assert console_client.get(guessed).status_code == 404
    for link in links:
        assert console_client.get(link).status_code == 200


def test_unknown_patients_and_records_are_404_pages(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """An opaque id that names no one answers 404 as a page, not a 500 or JSON."""
    sign_in(console_client, console_keys["read"])
    answer = console_client.get(patient_path(console_client, "Patient/nobody"))
    assert answer.status_code == 404 and "no such patient" in answer.text
    assert console_client.get("/console/patients/not-a-uuid").status_code == 404


def test_patient_page_puts_client_and_therapist_wai_sr_side_by_side(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """With both WAI-SR forms the page has a table for each and one chart of both panels."""
    _load_demo(console_client, console_keys)
    therapist = {
        "kind": "instrument-administration",
        "id": "https://demo-clinic.example.org/alliance-records|wai-sr-t-client-1-session-1",
        "instrument": "wai-sr-t",
        "patient": {"reference": "Patient/demo-client-1"},
        "effective": "2026-11-05T16:10:00+00:00",
        "rater": {"role": "therapist", "who": {"reference": "Practitioner/demo-therapist-1"}},
        "responses": {str(n): 4 for n in range(1, 13)},
    }
    headers = {"Authorization": f"Bearer {console_keys['write']}"}
    assert console_client.post("/v1/records", json=[therapist], headers=headers).status_code == 201
    sign_in(console_client, console_keys["read"])
    page = console_client.get(patient_path(console_client, "Patient/demo-client-1")).text
    assert 'id="wai-sr-table"' in page and 'id="wai-sr-t-table"' in page
    assert "client and therapist forms side by side" in page


def _post_notes(client: FlaskClient, keys: dict[str, str]) -> list[str]:
    """The demo clinic plus client 1's notes; the notes' record ids in the order posted."""
    _load_demo(client, keys)
    headers = {"Authorization": f"Bearer {keys['write']}"}
    answer = client.post("/v1/records", json=demo_notes(), headers=headers)
    assert answer.status_code == 201, answer.text
    return [r["id"] for r in answer.json["records"][1:]]


def _note_rows(page: str) -> dict[str, list[str]]:
    """The notes table's cells (tags stripped), by the record id its row links to."""
    table = re.search(r'<table id="notes">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert table is not None
    rows: dict[str, list[str]] = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S):
        link = re.search(r'href="/console/records/([^"]+)"', row)
        assert link is not None
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        rows[link.group(1)] = [" ".join(re.sub(r"<[^>]+>", "", c).split()) for c in cells]
    return rows


def test_patient_page_lists_notes_with_status_signer_ai_label_and_sync_state(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Each note of client 1 is a row linking to its record: session date, kind, status, who
    signed and when, the AI label in words, and the store's sync state (a held one with the
    store's reason)."""
    progress, ai, process, draft = _post_notes(console_client, console_keys)
    store = console_app.extensions["fhir_alliance"].store
    now = datetime.now(UTC)
    held: dict[str, str] = {}
    # Claim as the worker does (one item of a patient at a time): send the progress note, hold
    # every other item with a reason of its own.
    while items := store.claim("test-worker", limit=100, lease_seconds=60, now=now):
        for item in items:
            if item.record_id == progress:
                sent = [SentResource("DocumentReference", item.record_id, "1")]
                assert store.mark_sent(item.item_id, "test-worker", sent=sent, audit=[], at=now)
                continue
            reason = f"held for a test reason {item.record_id[:8]}"
            assert store.mark_held(item.item_id, "test-worker", reason=reason, audit=[], at=now)
            held[item.record_id] = reason
    assert {ai, process, draft} <= set(held)
    sign_in(console_client, console_keys["read"])
    page = console_client.get(patient_path(console_client, "Patient/demo-client-1")).text
    rows = _note_rows(page)
    assert list(rows) == [progress, ai, process, draft] or list(rows) == [
        ai,
        progress,
        process,
        draft,
    ]
    signed = "Practitioner/demo-therapist-1, 2026-11-12 17:30"
    assert rows[progress][:5] == ["2026-11-12 15:00", "progress note", "final", signed, "no"]
    assert rows[ai][4] == "AI-drafted by session-scribe 2.3, labelled AIAST"
    assert rows[process][1:3] == ["psychotherapy-note content", "final"]
    assert rows[draft][2:5] == [
        "draft",
        "not signed",
        "AI-drafted by session-scribe 2.3, labelled AIAST",
    ]
    for record_id in (ai, process, draft):
        assert store.sync_status(record_id).state is SyncState.HELD
        assert rows[record_id][5] == f"held: {held[record_id]}"
    assert store.sync_status(progress).state is SyncState.SENT
    assert rows[progress][5] == "sent (sent to the EHR)"


def test_note_text_is_shown_on_no_console_page(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Neither the patient view nor a note's record view (for an admin either) shows the note's
    text, section titles or their base64; the record view still shows the DocumentReference."""
    note_ids = _post_notes(console_client, console_keys)
    sign_in(console_client, console_keys["admin"])
    pages = [console_client.get(patient_path(console_client, "Patient/demo-client-1"))]
    pages += [console_client.get(f"/console/records/{record_id}") for record_id in note_ids]
    assert all(page.status_code == 200 for page in pages)
    encoded = [
        base64.b64encode(text.encode()).decode()
        for text in (f"Session 2: {NOTE_TEXT_MARKER}.", NOTE_TEXT_MARKER)
    ]
    for page in pages:
        assert NOTE_TEXT_MARKER not in page.text
        assert not any(text in page.text for text in encoded)
    for record_page in pages[1:]:
        assert "&#34;resourceType&#34;: &#34;DocumentReference&#34;" in record_page.text
        assert "withheld: the console never shows a session note" in record_page.text
        assert 'id="note-text-withheld"' in record_page.text


def test_session_narrative_is_shown_on_no_console_page(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A rupture's and a repair's narrative is psychotherapy-note content (labelled PSYTHPN): no
    session, ``admin`` included, sees it on the patient page or the record page, where the
    Observation's ``note`` reads the marker and the page says why. A rupture without narrative
    shows its Observation whole, with no such paragraph."""
    words = "private-narrative-words"
    rupture = observation("rupture") | {"narrative": f"Went quiet: {words}."}
    repair = observation("repair") | {"narrative": f"Named the shift: {words}."}
    plain = observation("rupture")
    plain["id"] += "-plain"
    del plain["narrative"]
    headers = {"Authorization": f"Bearer {console_keys['write']}"}
    answer = console_client.post("/v1/records", json=[rupture, repair, plain], headers=headers)
    assert answer.status_code == 201, answer.text
    narrated, repaired, whole = (r["id"] for r in answer.json["records"])
    patient = patient_path(console_client, rupture["patient"]["reference"])
    for scope in ("read", "admin"):
        sign_in(console_client, console_keys[scope])
        pages = [console_client.get(p) for p in (patient, f"/console/records/{narrated}")]
        pages.append(console_client.get(f"/console/records/{repaired}"))
        assert all(page.status_code == 200 for page in pages)
        for page in pages:
            assert words not in page.text, scope
        for page in pages[1:]:
            assert "&#34;note&#34;: [" in page.text and TEXT_WITHHELD in page.text.replace(
                "&#39;", "'"
            )
            assert 'id="note-text-withheld"' in page.text and "PSYTHPN" in page.text
        shown = console_client.get(f"/console/records/{whole}").text
        assert 'id="note-text-withheld"' not in shown and "withheld" not in shown


def test_a_rewritten_ai_note_and_an_entered_in_error_note_are_said_in_words(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A note the therapist stated they rewrote is "AI-drafted …, rewritten entirely by the
    therapist (not labelled AIAST)"; a note entered in error shows that status."""
    progress, *_ = _post_notes(console_client, console_keys)
    notes = {n["id"].rsplit("|", 1)[-1]: n for n in demo_notes()[1:]}
    rewritten = notes["client-1-ai"] | {
        "ai_label_removal": {
            "by": THERAPIST,
            "at": "2026-11-12T17:20:00+00:00",
            "statement": f"I rewrote it: {NOTE_TEXT_MARKER}",
        }
    }
    in_error = notes["client-1-progress"] | {"status": "entered-in-error"}
    headers = {"Authorization": f"Bearer {console_keys['write']}"}
    answer = console_client.post("/v1/records", json=[rewritten, in_error], headers=headers)
    assert answer.status_code == 201, answer.text
    rewritten_id = answer.json["records"][0]["id"]
    sign_in(console_client, console_keys["read"])
    page = console_client.get(patient_path(console_client, "Patient/demo-client-1")).text
    rows = _note_rows(page)
    assert rows[rewritten_id][4] == (
        "AI-drafted by session-scribe 2.3, rewritten entirely by the therapist (not labelled AIAST)"
    )
    assert rows[progress][2] == "entered-in-error"
    assert NOTE_TEXT_MARKER not in console_client.get(f"/console/records/{rewritten_id}").text


# -- the trend ------------------------------------------------------------------------------

TREND_NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)


def _days_ago(days: int, hour: int = 12) -> datetime:
    return (TREND_NOW - timedelta(days=days)).replace(hour=hour)


def _claim_one(store: Store, when: datetime) -> OutboxItem:
    return store.claim("test-worker", limit=1, lease_seconds=60, now=when)[0]


def _send_one(store: Store, when: datetime) -> None:
    item = _claim_one(store, when)
    sent = [SentResource("Observation", f"obs-{item.item_id}", "1")]
    event = audit.disclosure_event(
        item.record_id,
        item.patient,
        item.record_version,
        sent,
        when,
        recipient=EHR,
        purpose="TREAT",
    )
    assert store.mark_sent(item.item_id, "test-worker", sent=sent, audit=[event], at=when)


def _hold_one(store: Store, when: datetime) -> None:
    item = _claim_one(store, when)
    event = audit.hold_event(
        item.record_id,
        item.patient,
        item.record_version,
        "deny",
        when,
        recipient=EHR,
        purpose="TREAT",
    )
    assert store.mark_held(item.item_id, "test-worker", reason="a consent", audit=[event], at=when)


def _dead_letter_one(store: Store, when: datetime) -> None:
    item = _claim_one(store, when)
    event = audit.dead_letter_event(
        item.record_id, item.patient, item.record_version, when, recipient=EHR, purpose="TREAT"
    )
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    assert store.mark_dead(item.item_id, "test-worker", outcome=outcome, audit=[event], at=when)


def _trend_table(html: str) -> dict[str, dict[str, int]]:
    """The trend table's rows: day -> {line label: number}."""
    table = re.search(r'<table id="trend">(.*?)</table>', html, re.S)
    assert table is not None
    rows = re.findall(r'<tr><th scope="row">([0-9-]+)</th>(.*?)</tr>', table.group(1), re.S)
    return {
        day: {label: int(n) for label, n in re.findall(r'data-line="([^"]+)">(\d+)<', cells)}
        for day, cells in rows
    }


def test_the_trend_gives_each_days_figures_from_the_audit_trail_on_first_view(
    console_app: Flask,
    console_client: FlaskClient,
    console_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records taken in, sent, held (again after a release) and dead-lettered at known times over
    several days give exactly those daily figures, on the page's first view; every one of the 14
    days has a row, quiet days zeros; nothing is snapshotted into the store's meta."""
    monkeypatch.setattr(console_views, "_now", lambda: TREND_NOW)
    store: Store = console_app.extensions["fhir_alliance"].store
    sessions = load_clinic("2-sessions.json")
    intake_records(store, sessions[:4], at=_days_ago(6))  # client 1
    intake_records(store, sessions[8:10], at=_days_ago(5, hour=23))  # client 2
    changed = copy.deepcopy(sessions[8])
    changed["effective"] = "2026-11-01T10:00:00+00:00"
    intake_records(store, [changed], at=_days_ago(5, hour=23))  # same record, same day: once
    _send_one(store, _days_ago(3))
    _send_one(store, _days_ago(3))
    _hold_one(store, _days_ago(3))
    _dead_letter_one(store, _days_ago(2))
    assert store.release_held("Patient/demo-client-2", at=_days_ago(2)) == 0
    assert store.release_held("Patient/demo-client-1", at=_days_ago(2)) == 1
    _hold_one(store, _days_ago(2, hour=0))  # held again, just after midnight
    _send_one(store, TREND_NOW)
    sign_in(console_client, console_keys["read"])
    shown = _trend_table(console_client.get("/console/").text)
    zero = {"received": 0, "sent": 0, "held": 0, "dead-lettered": 0}
    expected = {(TREND_NOW - timedelta(days=n)).date().isoformat(): dict(zero) for n in range(14)}
    for days, line, figure in (
        (6, "received", 4),
        (5, "received", 2),
        (3, "sent", 2),
        (3, "held", 1),
        (2, "held", 1),
        (2, "dead-lettered", 1),
        (0, "sent", 1),
    ):
        expected[(TREND_NOW - timedelta(days=days)).date().isoformat()][line] = figure
    assert shown == expected
    assert list(shown) == sorted(shown)  # oldest first
    assert store.get_meta("console.daily_counts") is None


def test_a_form_token_that_is_not_ascii_is_refused_not_a_500(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A sign-in, sign-out, replay or conflict form whose token holds non-ASCII text (a tampered
    or garbled form) is refused with 403 like any wrong token, never a 500."""
    console_client.get("/console/sign-in")  # the sign-in cookie is set
    answer = console_client.post(
        "/console/sign-in", data={"api_key": console_keys["read"], "sign_in_token": "jeton-é"}
    )
    assert answer.status_code == 403
    assert console_client.get("/console/").status_code == 302

    _load_demo(console_client, console_keys)
    record_id = _dead_letter(console_app)
    sign_in(console_client, console_keys["admin"])
    for path in (
        "/console/sign-out",
        f"/console/records/{record_id}/replay",
        f"/console/records/{record_id}/conflict",
    ):
        assert console_client.post(path, data={"csrf_token": "jeton-é"}).status_code == 403
    assert console_client.get("/console/").status_code == 200


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_form_posts_from_another_site_are_refused(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str], site: str
) -> None:
    """A form posted from another site, even a sibling subdomain that could plant the sign-in
    cookie (login CSRF) or knows a token, is refused by the browser's Sec-Fetch-Site: no session
    is made, nothing is replayed, nobody is signed out. The console's own forms
    (same-origin) work."""
    other_site = {"Sec-Fetch-Site": site}
    token = _sign_in_token(console_client)
    answer = console_client.post(
        "/console/sign-in",
        data={"api_key": console_keys["admin"], "sign_in_token": token},
        headers=other_site,
    )
    assert answer.status_code == 403
    assert not any(c.startswith(f"{SESSION_COOKIE}=") for c in answer.headers.getlist("Set-Cookie"))
    assert console_client.get("/console/").status_code == 302

    _load_demo(console_client, console_keys)
    store = console_app.extensions["fhir_alliance"].store
    record_id = _dead_letter(console_app)
    sign_in(console_client, console_keys["admin"])
    csrf = csrf_of(console_client)
    for path in (f"/console/records/{record_id}/replay", "/console/sign-out"):
        refused = console_client.post(path, data={"csrf_token": csrf}, headers=other_site)
        assert refused.status_code == 403
    assert store.sync_status(record_id).state is SyncState.DEAD_LETTERED
    assert console_client.get("/console/").status_code == 200

    same_origin = {"Sec-Fetch-Site": "same-origin"}
    answer = console_client.post(
        f"/console/records/{record_id}/replay", data={"csrf_token": csrf}, headers=same_origin
    )
    assert answer.status_code == 303
    assert store.sync_status(record_id).state is SyncState.QUEUED


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_stored_values_are_escaped_on_every_page(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Markup in stored values (an automated tool's name and version, a consent's intervention
    display, a held reason, an OperationOutcome's text and expression, an API key's name) is shown
    as text on the overview, the patient page and the record pages, never as markup."""
    headers = {"Authorization": f"Bearer {console_keys['write']}"}
    rating = observation("dimension-rating-automated")
    rating["rater"]["automated"] |= {"tool": HOSTILE, "version": HOSTILE}
    declined = consent("treatment-declined")
    patient = {"reference": OBSERVATION_PATIENT, "type": "Patient", "display": HOSTILE}
    declined |= {"patient": patient, "grantor": patient}
    declined["intervention"]["display"] = HOSTILE
    held = copy.deepcopy(rating) | {"id": rating["id"] + "-held"}
    answer = console_client.post("/v1/records", json=[rating, held], headers=headers)
    assert answer.status_code == 201
    assert console_client.post("/v1/consents", json=[declined], headers=headers).status_code == 201
    store = console_app.extensions["fhir_alliance"].store
    now = datetime.now(UTC)
    dead = store.claim("test-worker", limit=1, lease_seconds=60, now=now)[0]
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "details": {"text": HOSTILE},
                "diagnostics": HOSTILE,
                "expression": [HOSTILE],
            }
        ],
    }
    assert store.mark_dead(dead.item_id, "test-worker", outcome=outcome, audit=[], at=now)
    held_item = store.claim("test-worker", limit=1, lease_seconds=60, now=now)[0]
    assert store.mark_held(held_item.item_id, "test-worker", reason=HOSTILE, audit=[], at=now)
    sign_in(console_client, create_api_key(store, f"staff {HOSTILE}", ["admin"]))
    overview = console_client.get("/console/").text
    patient_page = console_client.get(patient_path(console_client, OBSERVATION_PATIENT))
    links = set(re.findall(r'href="(/console/records/[^"]+)"', overview + patient_page.text))
    assert len(links) == 3
    pages = [overview, patient_page.text, *(console_client.get(link).text for link in links)]
    for page in pages:
        assert HOSTILE not in page
        assert "<script" not in page and "<img src=x" not in page
        assert str(escape(HOSTILE)) in page  # shown, as text


def test_the_stylesheet_route_serves_no_other_file(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """The public static route serves the stylesheet, and no path out of its folder, however
    spelt."""
    for path in (
        "/console/static/../views.py",
        "/console/static/%2e%2e/views.py",
        "/console/static/..%2fsession.py",
        "/console/static/%2e%2e%2f%2e%2e%2fapp.py",
    ):
        answer = console_client.get(path)
        assert answer.status_code == 404, path
        assert "import" not in answer.text and "root:" not in answer.text
    with console_client.get("/console/static/console.css") as css:
        assert css.status_code == 200 and css.mimetype == "text/css"


def test_sign_in_never_redirects_off_the_console_and_gets_change_nothing(
    console_app: Flask, console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A ``next`` in the sign-in's query or form is ignored: the browser goes to the overview,
    never to another site. The routes that change something answer GET with 405 and change
    nothing."""
    token = _sign_in_token(console_client)
    answer = console_client.post(
        "/console/sign-in?next=https://evil.example/",
        data={"api_key": console_keys["admin"], "sign_in_token": token, "next": "//evil.example"},
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/"
    _load_demo(console_client, console_keys)
    record_id = _dead_letter(console_app)
    store = console_app.extensions["fhir_alliance"].store
    for path in (
        f"/console/records/{record_id}/replay",
        f"/console/records/{record_id}/conflict?decision=overwrite",
        "/console/sign-out",
    ):
        assert console_client.get(path).status_code == 405
    assert store.sync_status(record_id).state is SyncState.DEAD_LETTERED
    assert console_client.get("/console/").status_code == 200


def test_an_unexpected_error_on_a_page_shows_nothing_of_it(
    console_client: FlaskClient, console_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error inside a console page answers 500 with the console's headers and neither the
    exception's text nor a traceback."""

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Patient/secret-client diagnostics")

    monkeypatch.setattr(console_views, "overview_page", failing)
    sign_in(console_client, console_keys["read"])
    answer = console_client.get("/console/")
    assert answer.status_code == 500
    assert "secret-client" not in answer.text and "Traceback" not in answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def _is_console_error_page(answer: TestResponse, status: int) -> None:
    """``answer`` is the console's own error page for ``status``: HTML in the console's layout,
    with the console's headers, and no OperationOutcome, traceback or detail."""
    assert answer.status_code == status
    assert answer.mimetype == "text/html"
    page = answer.text
    assert "fhir-alliance clinic console" in page and "/console/static/console.css" in page
    assert f"<h1>{status}: " in page and 'href="/console/"' in page
    assert "OperationOutcome" not in page and "Traceback" not in page
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert "<script" not in page


def test_an_unknown_console_address_is_a_404_page_not_json(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """A console address no page answers (routing's 404, before any console view) is the
    console's HTML error page, signed in or not; it echoes nothing of the address and shows no
    session."""
    addresses = (
        "/console/no-such-page",
        "/console/patients/not-a-uuid",  # the route's converter refuses it
        "/console/records/MRN-778899/history",
    )
    for address in addresses:
        _is_console_error_page(console_client.get(address), 404)
    sign_in(console_client, console_keys["read"])
    for address in addresses:
        answer = console_client.get(address)
        _is_console_error_page(answer, 404)
        assert "778899" not in answer.text
        assert "test read" not in answer.text and "csrf_token" not in answer.text


def test_a_method_a_console_page_does_not_take_is_a_405_page_with_allow(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """GET of a form's target (sign-out) and POST to a page (the overview) answer the console's
    405 page, ``Allow`` naming the methods the page takes."""
    sign_in(console_client, console_keys["read"])
    sign_out = console_client.get("/console/sign-out")
    _is_console_error_page(sign_out, 405)
    assert "POST" in sign_out.headers["Allow"] and "GET" not in sign_out.headers["Allow"]
    overview = console_client.post("/console/", data={"x": "1"})
    _is_console_error_page(overview, 405)
    assert "GET" in overview.headers["Allow"]
    assert console_client.get("/console/").status_code == 200  # still signed in


def test_api_and_other_addresses_keep_their_operation_outcome(
    console_client: FlaskClient, console_keys: dict[str, str]
) -> None:
    """Beside the console, an unknown address (``/v1/…`` or none of ours) and a method a route
    does not take stay FHIR JSON OperationOutcomes, with ``Allow`` on the 405."""
    headers = {"Authorization": f"Bearer {console_keys['read']}"}
    for address in ("/v1/no-such-route", "/no-such-thing", "/consoles/x"):
        answer = console_client.get(address, headers=headers)
        assert answer.status_code == 404, address
        assert answer.mimetype == "application/fhir+json"
        assert answer.json["resourceType"] == "OperationOutcome"
        assert answer.json["issue"][0]["code"] == "not-found"
    answer = console_client.delete("/v1/records", headers=headers)
    assert answer.status_code == 405 and answer.mimetype == "application/fhir+json"
    assert answer.json["issue"][0]["code"] == "not-supported"
    assert set(answer.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}


def test_a_schema_changed_under_the_service_is_a_503_page_on_the_console(
    make_app: Callable[..., Flask], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the store's schema changed under the process (another release's ``db upgrade``),
    console addresses (pages, forms, unknown ones; signed in or not) answer the console's HTML
    503 page: its headers, no session shown, nothing of the cause, and no statement on the store
    but the revision's read; its stylesheet is still served. The API beside it keeps its
    OperationOutcome. The console used to answer the API's FHIR JSON to the browser."""
    monkeypatch.setattr(schema_watch, "SCHEMA_CHECK_SECONDS", 0.0)
    app = make_app(recipients=EHR)
    store = app.extensions["fhir_alliance"].store
    key = create_api_key(store, "test read", ["read"])
    client = app.test_client()
    sign_in(client, key)
    assert client.get("/console/").status_code == 200
    statements: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *args: statements.append(statement),
    )
    _set_revision(sqlite_url, NEWER)
    for method, address in [
        ("get", "/console/"),
        ("get", "/console/sign-in"),
        ("post", "/console/sign-out"),
        ("get", "/console/no-such-page"),
        ("get", "/console"),
    ]:
        answer = getattr(client, method)(address)
        _is_console_error_page(answer, 503)
        for detail in ("schema", "restart", "0999", "test read", "csrf_token"):
            assert detail not in answer.text, (address, detail)
        assert "Set-Cookie" not in answer.headers, address
    client.delete_cookie(SESSION_COOKIE, path="/console")
    _is_console_error_page(client.get("/console/"), 503)
    # The error page's stylesheet reads nothing of the store: still served, so the page is
    # styled (it used to get the 503 page too).
    with client.get("/console/static/console.css") as stylesheet:
        assert stylesheet.status_code == 200 and stylesheet.mimetype == "text/css"
    assert client.get("/healthz").status_code == 200
    others = [s for s in statements if s != "BEGIN" and "alembic_version" not in s]
    assert others == []  # the session's key and ended sessions were not looked up
    answer = client.post("/v1/records", json={}, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 503 and answer.mimetype == "application/fhir+json"
    assert answer.json["issue"][0]["details"]["text"] == SCHEMA_CHANGED_MESSAGE
