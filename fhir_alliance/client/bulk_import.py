"""FHIR Bulk Data ``$import``: hand a server NDJSON files by URL, wait for it, read what it did.

Follows the Bulk Data import proposal (github.com/smart-on-fhir/bulk-import, the request body as a
FHIR ``Parameters`` resource, as HAPI and Azure take it): ``POST [base]/$import`` with
``inputFormat`` (``application/fhir+ndjson``), ``inputSource``, ``storageDetail`` and one ``input``
(``type`` and ``url``) per file, sent with ``Prefer: respond-async``; the server answers ``202``
with ``Content-Location``, the status URL. That URL is polled while it answers ``202``, waiting as
its ``Retry-After`` says (else with exponential backoff), until ``200`` brings the completion body:
``output`` and ``error`` entries per input file, with counts.

:func:`serve_files` serves the files for the server to fetch, read-only, from this machine.

The status URL comes from the server: it is followed only inside the client's base URL, so the
credentials never travel to another host (:meth:`BaseUrl.check_link`). Failures of single requests
are retried as the client retries every idempotent request (429/5xx, resets); the kick-off only
when the server refused it (429/503), since a second import of the same files is not harmless.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from fhir_alliance.client.client import FHIR_JSON, FhirClient
from fhir_alliance.client.responses import RequestFacts
from fhir_alliance.client.retry import Replay, parse_retry_after
from fhir_alliance.errors import (
    InputError,
    InvalidResponseError,
    Issue,
    ServerError,
    TransportError,
    UnsafeLinkError,
)

__all__ = [
    "NDJSON",
    "FileServer",
    "ImportInput",
    "ImportOutcome",
    "ImportPolling",
    "cancel_import",
    "import_parameters",
    "run_import",
    "serve_files",
    "start_import",
    "wait_for_import",
]

log = logging.getLogger("fhir_alliance.client.bulk_import")

#: The input format every ``$import`` server must take.
NDJSON = "application/fhir+ndjson"


@dataclass(frozen=True, slots=True)
class ImportInput:
    """One file for the server to fetch: its resource type and the URL it is served at."""

    type: str
    url: str


@dataclass(frozen=True, slots=True)
class ImportPolling:
    """How the status URL is polled: the first wait, the backoff ceiling, the bound on the whole
    wait, and the longest ``Retry-After`` honoured (a longer one is cut to it). ``sleep`` and
    ``clock`` are injectable so that tests run in real but short time."""

    first_wait: float = 1.0
    max_wait: float = 30.0
    timeout: float = 3600.0
    max_retry_after: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def __post_init__(self) -> None:
        bad = [
            Issue(path=name, message="must be positive")
            for name, value in (
                ("first_wait", self.first_wait),
                ("max_wait", self.max_wait),
                ("timeout", self.timeout),
                ("max_retry_after", self.max_retry_after),
            )
            if not value > 0
        ]
        if bad:
            raise InputError("invalid import polling settings", issues=bad)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What the server reported when the import finished.

    ``imported`` and ``failed`` count resources per resource type (from the ``output`` and
    ``error`` entries matched to the inputs); ``unmatched_errors`` counts error entries that name
    no input. ``error_counts_known`` is False when an error entry carried no count (the import
    had errors, how many is not said). The error files themselves (OperationOutcomes, which may
    echo patient data) are not fetched.
    """

    status_url: str
    transaction_time: str | None
    imported: dict[str, int]
    failed: dict[str, int]
    error_entries: int
    unmatched_errors: int
    error_counts_known: bool
    polls: int

    @property
    def ok(self) -> bool:
        return self.error_entries == 0


def import_parameters(
    inputs: Sequence[ImportInput], *, input_source: str, storage_type: str = "https"
) -> dict[str, Any]:
    """The kick-off body: a ``Parameters`` resource naming each file by type and URL."""
    if not inputs:
        raise InputError(
            "nothing to import", issues=[Issue(path="input", message="at least one file")]
        )
    parameters: list[dict[str, Any]] = [
        {"name": "inputFormat", "valueCode": NDJSON},
        {"name": "inputSource", "valueUri": input_source},
        {"name": "storageDetail", "part": [{"name": "type", "valueCode": storage_type}]},
    ]
    parameters += [
        {
            "name": "input",
            "part": [
                {"name": "type", "valueCode": item.type},
                {"name": "url", "valueUrl": item.url},
            ],
        }
        for item in inputs
    ]
    return {"resourceType": "Parameters", "parameter": parameters}


def start_import(
    client: FhirClient, inputs: Sequence[ImportInput], *, input_source: str
) -> tuple[str, dict[str, Any] | None]:
    """Kick off the import. Returns the status URL (checked to lie inside the base) and, when
    the server finished at once (``200``), the completion body."""
    body = orjson.dumps(import_parameters(inputs, input_source=input_source))
    answer = client._request(
        "POST",
        client.base.join("$import"),
        body=body,
        headers={"Prefer": "respond-async", "Accept": FHIR_JSON},
        replay=Replay.IF_REFUSED,
        facts=RequestFacts("POST"),
    )
    kick_off = client.base.join("$import")
    if answer.status == 200:
        return kick_off, _completion_body(answer.body, status=200)
    if answer.status != 202:
        raise InvalidResponseError(
            f"$import answered HTTP {answer.status}; expected 202 Accepted", status=answer.status
        )
    location = answer.headers.get("Content-Location")
    if not location:
        raise InvalidResponseError(
            "$import answered 202 without a Content-Location (the status URL)", status=202
        )
    return _inside_base(client, location, relative_to=kick_off), None


def _inside_base(client: FhirClient, link: str, *, relative_to: str) -> str:
    try:
        return client.base.check_link(link, relative_to=relative_to)
    except UnsafeLinkError as exc:
        why = exc.message.removeprefix("server link refused: ")
        raise UnsafeLinkError(
            f"$import status URL refused, credentials are not sent there: {why}"
        ) from None


def wait_for_import(
    client: FhirClient,
    status_url: str,
    inputs: Sequence[ImportInput],
    *,
    polling: ImportPolling | None = None,
    completion: dict[str, Any] | None = None,
) -> ImportOutcome:
    """Poll ``status_url`` until the import is complete; read the completion body.

    A ``202`` means "still running": the next poll waits ``Retry-After`` (seconds or HTTP-date,
    at most ``polling.max_retry_after``) or else backs off exponentially from ``first_wait`` to
    ``max_wait``. An error status (after the client's own retries) raises the client's error,
    carrying the server's OperationOutcome; a ``200`` whose body is not a completion report raises
    InvalidResponseError; no completion within ``polling.timeout`` raises TransportError.
    """
    policy = polling or ImportPolling()
    started = policy.clock()
    polls = 0
    wait = policy.first_wait
    while completion is None:
        polls += 1
        answer = client._request(
            "GET",
            status_url,
            headers={"Accept": "application/json"},
            replay=Replay.IDEMPOTENT,
        )
        if answer.status == 200:
            completion = _completion_body(answer.body, status=200)
            break
        if answer.status != 202:
            raise InvalidResponseError(
                f"$import status answered HTTP {answer.status}; expected 202 or 200",
                status=answer.status,
            )
        told = parse_retry_after(answer.headers.get("Retry-After"), now=client.retry.wall_clock())
        if told is not None:
            delay = min(told, policy.max_retry_after)
        else:  # exponential backoff, advanced only by the polls that had no Retry-After
            delay, wait = wait, min(policy.max_wait, wait * 2)
        elapsed = policy.clock() - started
        if elapsed + delay > policy.timeout:
            raise TransportError(
                f"the import did not finish within {policy.timeout:g} s "
                f"({polls} status polls; the server may still be importing)"
            )
        log.debug("$import still running (poll %d); next poll in %.1f s", polls, delay)
        policy.sleep(delay)
    return _outcome(completion, inputs, status_url=status_url, polls=polls)


def run_import(
    client: FhirClient,
    inputs: Sequence[ImportInput],
    *,
    input_source: str,
    polling: ImportPolling | None = None,
) -> ImportOutcome:
    """Kick off the import of ``inputs`` and wait for it to finish. Interrupted while waiting
    (Ctrl-C), it asks the server to cancel the job (:func:`cancel_import`) before re-raising."""
    status_url, completion = start_import(client, inputs, input_source=input_source)
    try:
        return wait_for_import(client, status_url, inputs, polling=polling, completion=completion)
    except KeyboardInterrupt:
        cancel_import(client, status_url)
        raise


def cancel_import(client: FhirClient, status_url: str) -> bool:
    """``DELETE`` the status URL, the proposal's way to cancel an import; True when the server
    accepted it. Failures are logged (status only) and reported as False, never raised."""
    try:
        client._request("DELETE", status_url, replay=Replay.IDEMPOTENT)
    except ServerError as exc:
        log.warning("$import cancel was not accepted (%s)", exc.status or type(exc).__name__)
        return False
    return True


def _completion_body(body: bytes, *, status: int) -> dict[str, Any]:
    def bad(why: str) -> InvalidResponseError:
        return InvalidResponseError(
            f"$import status answered HTTP {status} but {why}", status=status
        )

    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad("its body is not JSON") from None
    if not isinstance(data, dict):
        raise bad("its body is not a JSON object")
    if data.get("resourceType") == "OperationOutcome":
        raise bad("its body is an OperationOutcome, not a completion report")
    for key in ("output", "error"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
            raise bad(f"its '{key}' is not a list of objects")
    if "output" not in data:
        raise bad("its body has no 'output' (not a completion report)")
    for key in ("output", "error"):
        for i, entry in enumerate(data.get(key, [])):
            count = entry.get("count")
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 0
            ):
                raise bad(f"its '{key}[{i}].count' is not a count")
    return data


def _input_type(
    entry: Mapping[str, Any], position: int, inputs: Sequence[ImportInput], same_length: bool
) -> str | None:
    """The resource type of the input an output/error entry answers: by its input URL
    (``inputUrl``, or ``input`` as the proposal's field list names it), else by position when
    the entries correspond 1:1 with the inputs."""
    by_url = {item.url: item.type for item in inputs}
    for key in ("inputUrl", "input"):
        url = entry.get(key)
        if isinstance(url, str) and url in by_url:
            return by_url[url]
    return inputs[position].type if same_length else None


def _outcome(
    completion: Mapping[str, Any],
    inputs: Sequence[ImportInput],
    *,
    status_url: str,
    polls: int,
) -> ImportOutcome:
    outputs: list[Mapping[str, Any]] = completion.get("output", [])
    errors: list[Mapping[str, Any]] = completion.get("error", [])
    imported: dict[str, int] = {}
    for i, entry in enumerate(outputs):
        rtype = _input_type(entry, i, inputs, len(outputs) == len(inputs))
        if rtype is not None and isinstance(entry.get("count"), int):
            imported[rtype] = imported.get(rtype, 0) + int(entry["count"])
    failed: dict[str, int] = {}
    unmatched = 0
    known = True
    for i, entry in enumerate(errors):
        rtype = _input_type(entry, i, inputs, len(errors) == len(inputs))
        count = entry.get("count")
        if not isinstance(count, int):
            known = False
            count = 0
        if rtype is None:
            unmatched += 1
        elif count:
            failed[rtype] = failed.get(rtype, 0) + count
    # An error entry whose count is 0 reports nothing that failed.
    error_entries = sum(1 for e in errors if e.get("count") != 0)
    time_value = completion.get("transactionTime")
    return ImportOutcome(
        status_url=status_url,
        transaction_time=time_value if isinstance(time_value, str) else None,
        imported=imported,
        failed=failed,
        error_entries=error_entries,
        unmatched_errors=unmatched,
        error_counts_known=known,
        polls=polls,
    )


# ---------------------------------------------------------------------------- serving the files


class _FileHandler(BaseHTTPRequestHandler):
    """GET/HEAD of exactly the files registered on the server: 404 for any other path (no
    listing, nothing else of the disk), 501 for any other method."""

    server: FileServer
    protocol_version = "HTTP/1.1"

    def _send(self, body: bool) -> None:
        path = self.server.routes.get(self.path.split("?", 1)[0])
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with path.open("rb") as handle:
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", NDJSON)
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                shutil.copyfileobj(handle, self.wfile)
                with self.server.lock:
                    self.server.fetched[path.name] = self.server.fetched.get(path.name, 0) + 1

    def do_GET(self) -> None:
        self._send(body=True)

    def do_HEAD(self) -> None:
        self._send(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds the random path that grants access: never logged.
        log.debug("bulk file server answered a request")


class FileServer(ThreadingHTTPServer):
    """The HTTP server behind :func:`serve_files`: ``urls`` maps each file name to its URL,
    ``fetched`` counts completed downloads per file name."""

    daemon_threads = True

    def __init__(self, host: str, port: int, files: Mapping[str, Path]) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _FileHandler)
        token = secrets.token_urlsafe(18)
        netloc = f"[{host}]" if ":" in host else host
        #: Scheme, host and port: what the files are served from, without the secret path.
        self.origin = f"http://{netloc}:{self.server_address[1]}"
        self.routes = {f"/{token}/{quote(name)}": Path(path) for name, path in files.items()}
        self.urls = {name: f"{self.origin}/{token}/{quote(name)}" for name in files}
        self.fetched: dict[str, int] = {}
        self.lock = threading.Lock()


@contextmanager
def serve_files(
    files: Mapping[str, Path], *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[FileServer]:
    """Serve ``files`` (name → path) read-only over HTTP while the ``with`` block runs, each at
    ``http://HOST:PORT/<random>/<name>``; port 0 picks a free one. InputError when it cannot
    listen there."""
    try:
        server = FileServer(host, port, files)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise InputError(
            f"cannot serve the files on {host}:{port} ({why})",
            issues=[Issue(path="--serve-on", message=f"cannot listen there ({why})")],
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="bulk-file-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
