"""Reading a body from a server that ends the input stream itself (``wsgi.input_terminated``, as
gunicorn does for Content-Length and chunked bodies): read directly, within ``max_body_bytes``,
with the same answers as through werkzeug's stream."""

from __future__ import annotations

import io
import json

import pytest
from fhir_alliance_service.store.interface import Store
from flask import Flask
from flask.testing import FlaskClient

from .test_errors import RECORDS, SRS, _nothing_stored, _outcome

TERMINATED = {"wsgi.input_terminated": True}


#: How a server says "no Content-Length, the body comes chunked" (werkzeug then has no length).
CHUNKED = {**TERMINATED, "HTTP_TRANSFER_ENCODING": "chunked"}


class _Trickle(io.BytesIO):
    """A stream that gives at most ``step`` bytes a read, as a socket may."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self._step = step

    def read(self, size: int | None = -1) -> bytes:
        return super().read(self._step if size is None or size < 0 else min(size, self._step))


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
def test_a_body_read_directly_is_stored(
    client: FlaskClient,
    store: Store,
    auth_headers: dict[str, dict[str, str]],
    with_length: bool,
) -> None:
    """The whole body is read, in short reads too, with or without Content-Length."""
    body = json.dumps(SRS).encode()
    response = client.post(
        RECORDS,
        input_stream=_Trickle(body, 7),
        headers={**auth_headers["write"], "Content-Type": "application/json"},
        environ_overrides=TERMINATED if with_length else CHUNKED,
    )
    assert response.status_code == 201, response.json
    assert len(store.list_records()) == 1


def test_a_length_over_the_limit_is_413_unread(
    app: Flask, client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A Content-Length over ``max_body_bytes`` is refused before a byte is read."""
    limit = app.extensions["fhir_alliance"].settings.max_body_bytes

    class Unreadable(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise AssertionError("the body was read")

    response = client.post(
        RECORDS,
        input_stream=Unreadable(b" " * (limit + 1)),
        headers={**auth_headers["write"], "Content-Type": "application/json"},
        environ_overrides=TERMINATED,
    )
    _outcome(response, 413)
    _nothing_stored(store)


def test_malformed_json_read_directly_is_400(
    client: FlaskClient, store: Store, auth_headers: dict[str, dict[str, str]]
) -> None:
    """The strict reader still decides: a duplicate key is 400 naming it."""
    body = b'{"kind": "a", "kind": "b"}'
    response = client.post(
        RECORDS,
        data=body,
        headers={**auth_headers["write"], "Content-Type": "application/json"},
        environ_overrides=TERMINATED,
    )
    assert _outcome(response, 400)["issue"][0]["expression"] == ["kind"]
    _nothing_stored(store)
