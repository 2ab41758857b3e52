"""One error path for the API: every 4xx and 5xx answer is a FHIR OperationOutcome.

``register_error_handlers(app)`` maps, in one place:

* werkzeug ``HTTPException`` (unknown route 404, 405, 413, 415, …) → its status, one issue;
  under a path prefix that people open in a browser (``HTML_ERROR_PAGES``: the console's
  ``/console/``), the HTML error page that area registered instead, since no view of it ran to
  catch the error (an unknown page 404, a method a page does not take 405; the app's 503 for a
  store whose schema changed uses that page too);
* :class:`ApiError` (raised by the service itself, e.g. a malformed body) → its status and issues;
* the library's ``InputError`` / ``MappingError`` and marshmallow's ``ValidationError`` → 422, one
  issue per field path (the syntax of a body is 400, its content 422);
* ``LimitExceededError`` → 413; other ``ServerError`` (the FHIR server said no) → 502, issue codes
  only: a server's ``diagnostics`` may echo patient data and is neither returned nor logged;
* ``WriterTurnTimeout`` (the SQLite store's writers are busy past ``sqlite_write_wait_seconds``;
  nothing was written) → 503 with ``Retry-After``;
* anything else → 500 with no detail, logged with the request id and the exception type only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from flask import Flask, Response, current_app, g, json, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from fhir_alliance.errors import (
    FhirAllianceError,
    InputError,
    Issue,
    LimitExceededError,
    MappingError,
    ServerError,
)
from fhir_alliance_service.store.engine import WriterTurnTimeout

__all__ = [
    "FHIR_JSON",
    "HTML_ERROR_PAGES",
    "ApiError",
    "ErrorPage",
    "html_error_page",
    "operation_outcome",
    "outcome_response",
    "register_error_handlers",
    "serves_without_store",
    "store_free",
]

FHIR_JSON = "application/fhir+json"
log = logging.getLogger(__name__)

#: The HTML page of an error: ``(status, message, headers)`` → the response.
ErrorPage = Callable[[int, str, Mapping[str, str]], Response]
#: ``app.extensions`` key: URL path prefix (``/console/``) → the :data:`ErrorPage` of that area,
#: used for the answers no view of the area gives: routing's 404 and 405, and the app's 503 once
#: the store's schema changed under the process.
HTML_ERROR_PAGES: Final = "fhir_alliance.html_error_pages"

_STORE_FREE_ATTRIBUTE: Final = "_fhir_alliance_store_free"
_View = Callable[..., Any]


def store_free(view: _View) -> _View:
    """Mark a view that reads nothing of the store (``/healthz``, the console's stylesheet): it
    is still served once the store's schema changed under the process, when every other route
    answers 503."""
    setattr(view, _STORE_FREE_ATTRIBUTE, True)
    return view


def serves_without_store(endpoint: str | None) -> bool:
    """The view of ``endpoint`` (the request's, once routed) is marked :func:`store_free`."""
    view = current_app.view_functions.get(endpoint) if endpoint else None
    return bool(getattr(view, _STORE_FREE_ATTRIBUTE, False))


#: HTTP status → FHIR issue-type code, for errors that carry no issues of their own.
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    503: "transient",
}


class ApiError(Exception):
    """An error the API answers with ``status`` and an OperationOutcome of ``issues``; messages
    must never contain patient data."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        issues: Iterable[Issue] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.issues = tuple(issues) or (
            Issue(path="", message=message, code=_ISSUE_CODES.get(status, "processing")),
        )
        self.headers = headers or {}


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def outcome_response(
    status: int, outcome: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    response = Response(json.dumps(outcome), status=status, mimetype=FHIR_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _simple(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    issue = Issue(path="", message=message, code=_ISSUE_CODES.get(status, "processing"))
    return outcome_response(status, operation_outcome([issue]), headers)


def _http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {}
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    if exc.response is not None and "WWW-Authenticate" in exc.response.headers:
        headers["WWW-Authenticate"] = exc.response.headers["WWW-Authenticate"]
    message = exc.description or exc.name
    page = html_error_page(request.path)
    if page is not None:
        return page(status, message, headers)
    return _simple(status, message, headers)


def html_error_page(path: str) -> ErrorPage | None:
    """The error page of the browser area ``path`` lies in, if any (the API has none)."""
    pages: Mapping[str, ErrorPage] = current_app.extensions.get(HTML_ERROR_PAGES, {})
    for prefix, page in pages.items():
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return page
    return None


def _api_error(exc: ApiError) -> Response:
    return outcome_response(exc.status, operation_outcome(exc.issues), exc.headers)


def _library_error(exc: FhirAllianceError) -> Response:
    if isinstance(exc, InputError | MappingError):
        return outcome_response(422, exc.to_operation_outcome())
    if isinstance(exc, LimitExceededError):
        return outcome_response(413, exc.to_operation_outcome())
    if isinstance(exc, ServerError):
        log.warning(
            "FHIR server error",
            extra={"error_type": type(exc).__name__, "upstream_status": exc.status},
        )
        return _simple(502, f"the FHIR server refused the request ({type(exc).__name__})")
    return _unexpected(exc)


def _validation_error(exc: ValidationError) -> Response:
    return outcome_response(422, InputError.from_messages(exc.messages).to_operation_outcome())


#: ``Retry-After`` of a 503 for a busy store: a writer's turn usually comes within milliseconds.
BUSY_RETRY_AFTER_SECONDS = 1


def _store_busy(exc: WriterTurnTimeout) -> Response:
    log.warning("store busy: write turn timed out", extra={"request_id": g.get("request_id")})
    return _simple(
        503,
        "the store is busy with other writes; nothing was written: try again shortly",
        {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
    )


def _unexpected(exc: BaseException) -> Response:
    # Type only: messages and tracebacks of arbitrary exceptions can carry request data.
    log.error(
        "unexpected error",
        extra={"error_type": type(exc).__name__, "request_id": g.get("request_id")},
    )
    return _simple(500, "internal error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(FhirAllianceError, _library_error)
    app.register_error_handler(ValidationError, _validation_error)
    app.register_error_handler(WriterTurnTimeout, _store_busy)
    app.register_error_handler(Exception, _unexpected)
