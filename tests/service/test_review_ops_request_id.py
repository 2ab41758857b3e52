"""Review fix of the request id: a caller's X-Request-ID reaches the logs only when it is a UUID or
a hex trace id; any other text (which can carry a name or a medical record number, even from a
caller without a key) is replaced by an id of our own, and the response echoes ours."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from fhir_alliance_service.logs import JsonFormatter
from flask.testing import FlaskClient

OUR_ID = r"[0-9a-f]{32}"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of the service, as JSON lines."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fhir_alliance_service")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _request_line(buffer: io.StringIO) -> dict[str, object]:
    lines: list[dict[str, object]] = [json.loads(x) for x in buffer.getvalue().splitlines()]
    (line,) = [line for line in lines if line["message"] == "request"]
    return line


@pytest.mark.parametrize(
    "offered",
    [
        "Jane-Doe-MRN-000123",  # the reviewer's example
        "MRN:000123:Doe.Jane",
        "patient-1234567",
        "0f8fad5b-d9cb-469f-a165-70867728950e-Jane",  # a UUID with a name appended
        "0f8fad5bd9cb-469f-a165-70867728950e",  # not the 8-4-4-4-12 shape
        "a3ce929d0e0e473",  # 15 hex characters: too short
        "a" * 65,  # 65 hex characters: too long
        "g3ce929d0e0e4736",  # not hex
    ],
)
def test_an_identifier_shaped_request_id_is_replaced(
    client: FlaskClient, captured_logs: io.StringIO, offered: str
) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": offered})
    echoed = response.headers["X-Request-ID"]
    assert echoed != offered
    assert re.fullmatch(OUR_ID, echoed)
    line = _request_line(captured_logs)
    assert line["request_id"] == echoed
    assert offered not in captured_logs.getvalue()


@pytest.mark.parametrize(
    "offered",
    [
        "0f8fad5b-d9cb-469f-a165-70867728950e",  # UUID v4
        "0F8FAD5B-D9CB-469F-A165-70867728950E",  # upper case
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",  # UUID v1
        "01890a5d-ac96-774b-bcce-b302099a8057",  # UUID v7
        "00f067aa0ba902b7",  # 16 hex: a W3C span id
        "4bf92f3577b34da6a3ce929d0e0e4736",  # 32 hex: a W3C trace id
        "4BF92F3577B34DA6A3CE929D0E0E4736",
        "ab" * 32,  # 64 hex
    ],
)
def test_a_uuid_or_hex_trace_id_is_kept_and_echoed(
    client: FlaskClient, captured_logs: io.StringIO, offered: str
) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": offered})
    assert response.headers["X-Request-ID"] == offered
    assert _request_line(captured_logs)["request_id"] == offered


def test_a_refused_request_echoes_our_id_too(
    client: FlaskClient, captured_logs: io.StringIO
) -> None:
    """Without a key (401) the caller's text still never reaches the log line."""
    response = client.get(
        "/v1/records/0f8fad5b-d9cb-469f-a165-70867728950e",
        headers={"X-Request-ID": "Jane-Doe-MRN-000123"},
    )
    assert response.status_code == 401
    line = _request_line(captured_logs)
    assert line["status"] == 401
    assert line["request_id"] == response.headers["X-Request-ID"] != "Jane-Doe-MRN-000123"
    assert "Jane" not in captured_logs.getvalue()
