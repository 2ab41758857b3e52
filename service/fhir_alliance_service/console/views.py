"""The console's routes under ``/console/``: sign-in, sync overview, patient view, record view, and
the admin-only replay and conflict decision.

Every page but the sign-in form needs a session with ``read`` (``auth.require_scope``; the app's
deny-by-default check runs first); replay and a conflict decision need ``admin`` and a CSRF
token. Every answer carries a
Content-Security-Policy without scripts and ``Cache-Control: no-store`` (pages show PHI).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from fhir_alliance.client.links import is_loopback_host
from fhir_alliance.instruments import InstrumentCode, ReliableChange
from fhir_alliance_service.auth import public, require_scope
from fhir_alliance_service.console import charts
from fhir_alliance_service.console.pages import (
    SHOWN_STATES,
    TREND_LINES,
    PatientPage,
    find_patient,
    overview_page,
    patient_page,
    pretty_json,
    record_page,
)
from fhir_alliance_service.console.session import (
    check_csrf,
    csrf_token,
    current_session,
    end_session,
    no_session,
    refresh_session,
    sign_in,
    sign_in_token,
)
from fhir_alliance_service.errors import ApiError, store_free
from fhir_alliance_service.usecases.conflicts import (
    DECISIONS,
    ConflictChanged,
    NotFlagged,
    ServerVersionsUnknown,
    decide_conflict,
    format_versions,
    parse_versions,
)
from fhir_alliance_service.usecases.status import NotDeadLettered, RecordNotFound, replay_record

__all__ = ["CONTENT_SECURITY_POLICY", "blueprint", "error_page_without_view"]

HERE = Path(__file__).resolve().parent
blueprint = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")

#: No script at all; styles and images from the service itself (charts as ``data:`` images).
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: What a browser's ``Sec-Fetch-Site`` says of a form the console's own pages posted (``none``:
#: the user's own doing, such as a bookmark). Any other site's form is refused.
_OWN_SITE: Final = frozenset({"same-origin", "none"})
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_RECORD_ID_PATTERN: Final = "<uuid:record_id>"
_STATE_WORDS: Final = {
    "queued": "waiting to be sent",
    "held": "held back (by consent, or waiting for a person)",
    "sent": "sent to the EHR",
    "failed": "failed, will be retried",
    "dead-lettered": "failed for good (needs a fix and a replay)",
    "superseded": "replaced by a newer version before it was sent",
}
_CHANGE_WORDS: Final = {
    ReliableChange.IMPROVED: "▲ reliably better",
    ReliableChange.DETERIORATED: "▼ reliably worse",
    ReliableChange.NO_RELIABLE_CHANGE: "no reliable change",
}


def _store() -> Any:
    from fhir_alliance_service.app import current_service

    return current_service().store


def _settings() -> Any:
    from fhir_alliance_service.app import current_service

    return current_service().settings


def _now() -> datetime:
    return datetime.now(UTC)


#: ``Strict-Transport-Security`` of console pages served over TLS: a browser that has seen the
#: console over HTTPS never goes to this host over plain HTTP for a year (no subdomains named).
STRICT_TRANSPORT_SECURITY: Final = "max-age=31536000"
#: Why a console page over plain HTTP from another machine is refused (the 403 page says it).
PLAIN_HTTP_REFUSED: Final = (
    "the console is served only over HTTPS (sign-in keys and session cookies would cross the "
    "network in clear): serve it behind TLS, with a proxy that sends X-Forwarded-Proto: https "
    "(see the console's documentation), or set FHIR_ALLIANCE_CONSOLE_ALLOW_PLAIN_HTTP=true on a "
    "network you trust"
)


#: WSGI environ keys of the headers a proxy adds to say whose request it passes on
#: (``Forwarded``, ``X-Forwarded-For``, ``X-Forwarded-Host``, ``X-Real-IP``); a browser sends none.
_FORWARDING_HEADERS: Final = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_REAL_IP",
)


def _from_this_machine() -> bool:
    """Whether the browser runs on this machine: the connection comes from a loopback address,
    the page was asked for by a loopback name, no proxy says it passes the request on, and the
    page the browser names (``Origin``, ``Referer``), if it names one, is on a loopback name. A
    proxy on this machine forwarding other machines' requests connects from loopback too; it
    passes on their host name, or (Apache's default) asks by the upstream's loopback name and
    adds forwarding headers, or (nginx's bare ``proxy_pass``) asks by that name and adds none:
    the browser's ``Origin`` (on every form post, the sign-in included) and ``Referer`` then
    still carry the host name it used."""
    environ = request.environ
    if any(environ.get(name) for name in _FORWARDING_HEADERS):
        return False
    host = urlsplit(f"//{request.host}").hostname or ""
    if not (is_loopback_host(request.remote_addr or "") and is_loopback_host(host)):
        return False
    return all(
        _names_a_loopback_page(environ.get(name)) for name in ("HTTP_ORIGIN", "HTTP_REFERER")
    )


def _names_a_loopback_page(value: str | None) -> bool:
    """``value`` (an ``Origin`` or ``Referer``) is absent, says nothing (``null``: an opaque
    origin), or names a page on a loopback host; anything else (a host name, an address of the
    network, an unreadable value) is a page elsewhere."""
    if not value or value == "null":
        return True
    try:
        page_host = urlsplit(value).hostname
    except ValueError:
        return False
    return page_host is not None and is_loopback_host(page_host)


@blueprint.before_request
def _require_https() -> None:
    """Refuse (403) a console request over plain HTTP from another machine, unless the clinic
    allows it (``console_allow_plain_http``): the sign-in form carries an API key, and the
    session cookie opens the console to whoever reads it off the network."""
    if request.is_secure or _from_this_machine() or _settings().console_allow_plain_http:
        return
    raise ApiError(403, PLAIN_HTTP_REFUSED)


@blueprint.before_request
def _refuse_other_sites_posts() -> None:
    """Refuse a form posted from another site (403), sign-in included: the browser says where a
    request comes from in ``Sec-Fetch-Site``, which pages cannot set. A sibling subdomain
    (``same-site``) is refused too: it can plant cookies on this host, so the sign-in form's
    double-submit token alone does not stop it signing a browser in with its own key. Browsers
    that send no ``Sec-Fetch-Site`` still meet ``SameSite=Strict`` and the forms' tokens."""
    if request.method in _SAFE_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in _OWN_SITE:
        raise ApiError(403, "a form from another site cannot post to the console")


@blueprint.after_request
def _keep_session_alive(response: Response) -> Response:
    """A request is activity: the session's cookie is re-issued and its idle time starts again."""
    refresh_session(response)
    return response


@blueprint.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY
    return response


@blueprint.context_processor
def _template_globals() -> dict[str, Any]:
    session = current_session()
    return {
        "csrf_token": csrf_token,
        "signed_in": session is not None,
        "may_replay": session is not None and session.may("admin"),
        "key_name": session.key.name if session is not None else None,
        "state_words": _STATE_WORDS,
    }


@blueprint.errorhandler(ApiError)
def _console_error(error: ApiError) -> BaseResponse:
    if error.status == 401:
        return redirect(url_for("console.sign_in_form"))
    return _error_page(error.status, error.message)


@blueprint.errorhandler(HTTPException)
def _console_http_error(error: HTTPException) -> BaseResponse:
    return _error_page(error.code or 500, error.description or error.name)


def _error_page(status: int, message: str) -> Response:
    return make_response(
        render_template("console/error.html", status=status, message=message), status
    )


def error_page_without_view(status: int, message: str, headers: Mapping[str, str]) -> Response:
    """The error page of an address under ``/console/`` that no console view answers: routing
    refused it (404 no such page, 405 a method the page does not take; ``headers`` keeps
    ``Allow``), for the app's error handler, or the app refuses every request (503, the store's
    schema changed under the process). Neither the console's checks nor its session ran: the
    page has the console's layout and headers but shows no session (no key name, no sign-out
    form), and the session is neither looked up in the store nor re-issued."""
    no_session()
    response = make_response(
        render_template("console/error.html", status=status, message=message, signed_in=False),
        status,
    )
    response.headers.update(headers)
    return _security_headers(response)


@blueprint.get("/static/<path:filename>")
@public
@store_free
def asset(filename: str) -> Response:
    """The console's stylesheet (no PHI; cacheable like any static file)."""
    response = send_from_directory(HERE / "static", filename)
    return response


@blueprint.get("/sign-in")
@public
def sign_in_form() -> Response:
    response = make_response()
    token = sign_in_token(response)
    response.set_data(render_template("console/sign_in.html", sign_in_token=token, failed=None))
    return response


@blueprint.post("/sign-in")
@public
def sign_in_submit() -> BaseResponse:
    response = redirect(url_for("console.overview"), code=303)
    try:
        sign_in(request.form.get("api_key", ""), request.form.get("sign_in_token", ""), response)
    except ApiError as error:
        page = make_response()
        token = sign_in_token(page)
        page.set_data(
            render_template("console/sign_in.html", sign_in_token=token, failed=error.message)
        )
        page.status_code = error.status
        return page
    return response


@blueprint.post("/sign-out")
@require_scope("read")
def sign_out() -> BaseResponse:
    check_csrf()
    response = redirect(url_for("console.sign_in_form"), code=303)
    end_session(response)
    return response


@blueprint.get("/")
@require_scope("read")
def overview() -> str:
    page = overview_page(_store(), _settings(), now=_now())
    trend_chart = charts.data_url(
        charts.time_chart(
            [
                charts.Panel(
                    title="Records per day (UTC)",
                    series=[
                        charts.Series(
                            line.label, [(d.day, d.counts[line.action]) for d in page.trend]
                        )
                        for line in TREND_LINES
                    ],
                    y_label="records",
                )
            ]
        )
    )
    return render_template(
        "console/overview.html",
        page=page,
        states=SHOWN_STATES,
        trend_lines=TREND_LINES,
        trend_chart=trend_chart,
    )


def _score_panels(page: PatientPage) -> dict[str, str]:
    """The patient's charts as data URLs: SRS, ORS, WAI-SR (client and therapist), ratings."""
    events = [charts.Event(e.at, e.kind) for e in page.events]
    # One time axis for every chart of the patient, so that marks line up from chart to chart.
    moments: list[charts.Moment] = [p.at for points in page.scores.values() for p in points]
    moments += [r.at for r in page.ratings] + [e.at for e in events]
    shared = charts.time_range(moments)
    drawn: dict[str, str] = {}
    srs = page.scores[InstrumentCode.SRS]
    if srs:
        drawn["srs"] = charts.data_url(
            charts.time_chart(
                [
                    charts.Panel(
                        "SRS total per session",
                        [
                            charts.Series(
                                "SRS total",
                                [(p.at, float(p.total)) for p in srs if p.total is not None],
                            )
                        ],
                        y_label="total (0-40)",
                        y_range=(0, 40),
                        cutoff=float(page.srs_cutoff),
                        cutoff_label=f"cutoff {page.srs_cutoff}",
                        notes=[
                            (p.at, float(p.total), "below cutoff")
                            for p in srs
                            if p.below_cutoff and p.total is not None
                        ],
                    )
                ],
                events,
                x_range=shared,
            )
        )
    ors = page.scores[InstrumentCode.ORS]
    if ors:
        drawn["ors"] = charts.data_url(
            charts.time_chart(
                [
                    charts.Panel(
                        "ORS total per session",
                        [
                            charts.Series(
                                "ORS total",
                                [(p.at, float(p.total)) for p in ors if p.total is not None],
                            )
                        ],
                        y_label="total (0-40)",
                        y_range=(0, 40),
                        cutoff=float(page.ors_cutoff),
                        cutoff_label=f"clinical cutoff {page.ors_cutoff}",
                        notes=[
                            (p.at, float(p.total), _CHANGE_WORDS[p.change])
                            for p in ors
                            if p.change is not None
                            and p.change is not ReliableChange.NO_RELIABLE_CHANGE
                            and p.total is not None
                        ],
                    )
                ],
                events,
                x_range=shared,
            )
        )
    client = page.scores[InstrumentCode.WAI_SR]
    therapist = page.scores[InstrumentCode.WAI_SR_T]
    panels = []
    if client:
        keys = sorted({k for p in client for k in p.subscales})
        series = [
            charts.Series("total", [(p.at, float(p.total)) for p in client if p.total is not None])
        ]
        series += [
            charts.Series(
                key, [(p.at, float(v)) for p in client if (v := p.subscales.get(key)) is not None]
            )
            for key in keys
        ]
        panels.append(charts.Panel("WAI-SR, client form", series, y_label="score", y_range=(0, 60)))
    if therapist:
        panels.append(
            charts.Panel(
                "WAI-SR, therapist form",
                [
                    charts.Series(
                        "total", [(p.at, float(p.total)) for p in therapist if p.total is not None]
                    )
                ],
                y_label="score",
                y_range=(0, 60),
            )
        )
    if panels:
        drawn["wai"] = charts.data_url(charts.time_chart(panels, events, x_range=shared))
    if page.ratings:
        by_line: dict[tuple[str, bool], list[Any]] = {}
        for rating in page.ratings:
            by_line.setdefault((rating.dimension, rating.automated is not None), []).append(rating)
        drawn["ratings"] = charts.data_url(
            charts.time_chart(
                [
                    charts.Panel(
                        "Single ratings (open markers: automated)",
                        [
                            charts.Series(
                                f"{dimension}{' (automated)' if automated else ''}",
                                [(r.at, float(r.value)) for r in rows],
                                hollow=automated,
                            )
                            for (dimension, automated), rows in sorted(by_line.items())
                        ],
                        y_label="rating",
                    )
                ],
                events,
                x_range=shared,
            )
        )
    return drawn


@blueprint.get("/patients/<uuid:token>")
@require_scope("read")
def patient(token: Any) -> str:
    store = _store()
    key = find_patient(store, str(token))
    if key is None:
        raise ApiError(404, "no such patient")
    page = patient_page(store, _settings(), key, now=_now())
    return render_template(
        "console/patient.html",
        page=page,
        charts=_score_panels(page),
        codes=InstrumentCode,
        change_words=_CHANGE_WORDS,
    )


@blueprint.get("/records/<uuid:record_id>")
@require_scope("read")
def record(record_id: Any) -> str:
    return _record(str(record_id))


def _record(record_id: str, *, conflict_changed: bool = False) -> str:
    """The record page; ``conflict_changed``: a decision was refused because the conflict it
    was made on was decided and flagged again meanwhile (the page shows the new one)."""
    page = record_page(_store(), record_id)
    if page is None:
        raise ApiError(404, "no such record")
    return render_template(
        "console/record.html",
        page=page,
        pretty_json=pretty_json,
        format_versions=format_versions,
        conflict_changed=conflict_changed,
    )


@blueprint.post("/records/<uuid:record_id>/replay")
@require_scope("admin")
def replay(record_id: Any) -> BaseResponse:
    check_csrf()
    try:
        replay_record(_store(), str(record_id), at=_now())
    except RecordNotFound:
        raise ApiError(404, "no such record") from None
    except NotDeadLettered as exc:
        raise ApiError(409, str(exc)) from None
    return redirect(url_for("console.record", record_id=record_id, replayed=1), code=303)


@blueprint.post("/records/<uuid:record_id>/conflict")
@require_scope("admin")
def decide(record_id: Any) -> BaseResponse:
    """A person's decision on a conflict flagged for them: the form's ``decision``
    (``overwrite`` or ``keep-remote``) on the conflict the page showed (``against``, the
    server's versions, and ``record_version``, our record's, hidden), audited with the
    signed-in key's id. When that conflict was decided and flagged again meanwhile, or a newer
    version of the record was flagged, nothing is decided: 409, the page with the new one."""
    check_csrf()
    session = current_session()
    assert session is not None  # require_scope signed it in
    decision = request.form.get("decision", "")
    if decision not in DECISIONS:
        raise ApiError(422, "decision must be overwrite or keep-remote")
    try:
        against = parse_versions(request.form["against"])
        record_version = int(request.form["record_version"])
    except (KeyError, ValueError):  # a page from before these fields, or tampered with
        raise ApiError(
            422, "the form does not say which conflict it decides: reload the page"
        ) from None
    try:
        decide_conflict(
            _store(),
            str(record_id),
            decision,
            against=against,
            record_version=record_version,
            decided_by=session.key.key_id,
            at=_now(),
        )
    except RecordNotFound:
        raise ApiError(404, "no such record") from None
    except ConflictChanged:
        return make_response(_record(str(record_id), conflict_changed=True), 409)
    except (NotFlagged, ServerVersionsUnknown) as exc:
        raise ApiError(409, str(exc)) from None
    return redirect(url_for("console.record", record_id=record_id, decided=decision), code=303)
