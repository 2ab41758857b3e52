"""Structured JSON logs, one object per line, and the per-request log line with a request id.

Each line has ``time``, ``level``, ``logger``, ``message`` and, inside a request, ``request_id``;
the request line adds ``method``, ``route`` (the URL rule such as ``/v1/records/<record_id>``,
never the raw path or query string, which can carry identifiers), ``status`` and ``duration_ms``.
Only whitelisted ``extra`` fields are written, so a careless ``extra={"patient": …}`` never reaches
the output. Nothing that could be PHI is logged: no bodies, names, identifiers, tokens, keys or
OperationOutcome ``diagnostics``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

from flask import Flask, Response, g, has_request_context, request

from fhir_alliance_service.metrics import request_latency

__all__ = ["REQUEST_ID_HEADER", "JsonFormatter", "configure_logging", "register_request_logging"]

REQUEST_ID_HEADER: Final = "X-Request-ID"
#: A client's request id is kept only if it is a UUID (any version, 8-4-4-4-12 hex) or 16 to 64 hex
#: characters (trace ids of tracing systems): text of any other shape can carry a name or a medical
#: record number into every log line, so it is replaced by an id of our own (which the response
#: echoes).
_SANE_REQUEST_ID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,64}"
)
#: ``extra`` fields that may appear in a line: all are machine values, never free text.
ALLOWED_FIELDS: Final = (
    "request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "endpoint",
    "error_type",
    "upstream_status",
    "worker",
    "count",
    "state",
    "item_id",
    "attempts",
    "outcome",
    "codes",
    "setting",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; exceptions by type only (tracebacks can quote data)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" not in record.__dict__:
            request_id = g.get("request_id")
            if request_id:
                line["request_id"] = request_id
        for name in ALLOWED_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            line["error_type"] = record.exc_info[0].__name__
        return json.dumps(line, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Make every log line of this process a JSON line on stderr (the root logger; once per
    process). ``serve`` and ``worker`` call it; ``create_app`` does not, so that tests and embedding
    applications keep their own logging."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)


request_log = logging.getLogger("fhir_alliance_service.request")


#: The WSGI environ key of the ``X-Request-ID`` header (read directly: building Flask's header
#: view for one lookup cost more than the rest of this hook).
_REQUEST_ID_ENVIRON: Final = "HTTP_X_REQUEST_ID"


def _new_request_id() -> str:
    """128 random bits in hex (32 characters, as ``uuid4().hex`` gave, at a fifth of its cost)."""
    return os.urandom(16).hex()


def _start_request() -> None:
    offered = request.environ.get(_REQUEST_ID_ENVIRON)
    context = g._get_current_object()  # one proxy lookup for both attributes
    context.request_id = (
        offered if offered and _SANE_REQUEST_ID.fullmatch(offered) else _new_request_id()
    )
    context.request_started = time.perf_counter()


def _finish_request(response: Response) -> Response:
    context = g._get_current_object()
    request_id = context.get("request_id") or _new_request_id()
    response.headers[REQUEST_ID_HEADER] = request_id
    started = context.get("request_started")
    duration = time.perf_counter() - started if started is not None else 0.0
    rule = request.url_rule
    route = rule.rule if rule is not None else "<unmatched>"
    request_latency(route).observe(duration)
    if request_log.isEnabledFor(logging.INFO):  # the line's fields only when it is written
        request_log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
            },
        )
    return response


def register_request_logging(app: Flask) -> None:
    """Request ids in and out, and one log line per request. Register before auth, so that a
    refused request has its id too."""
    app.before_request(_start_request)
    app.after_request(_finish_request)
