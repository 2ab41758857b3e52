"""FHIR Bulk Data ``$import``: hand a server NDJSON files by URL, wait for it, read what it did.

Follows the Bulk Data import proposal (github.com/smart-on-fhir/bulk-import, the request body as a
FHIR ``Parameters`` resource, as HAPI and Azure take it): ``POST [base]/$import`` with
``inputFormat`` (``application/fhir+ndjson``), ``inputSource``, ``storageDetail`` and one ``input``
(``type`` and ``url``) per file, sent with ``Prefer: respond-async``; the server answers ``202``
with ``Content-Location``, the status URL. That URL is polled while it answers ``202``, waiting as
its ``Retry-After`` says (never less than ``first_wait``; else with exponential backoff), until
``200`` brings the completion body: ``output`` and ``error`` entries per input file, with counts.
A wait that ends without a completion (timeout, an error answer, a body that is not a completion
report, Ctrl-C) sends the proposal's cancel (``DELETE`` to the status URL) before raising.

:func:`serve_files` serves the files for the server to fetch, read-only, from this machine.

The status URL comes from the server: it is followed only inside the client's base URL, so the
credentials never travel to another host (:meth:`BaseUrl.check_link`). Failures of single requests
are retried as the client retries every idempotent request (429/5xx, resets); the kick-off only
when the server refused it (429/503), since a second import of the same files is not harmless.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import struct
import sys
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
from fhir_alliance.client.deadline import Deadline, running_under
from fhir_alliance.client.responses import RequestFacts
from fhir_alliance.client.retry import Replay, parse_retry_after
from fhir_alliance.errors import (
    FhirAllianceError,
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
    "numeric_address",
    "run_import",
    "serve_files",
    "start_import",
    "wait_for_import",
]

log = logging.getLogger("fhir_alliance.client.bulk_import")

#: The input format every ``$import`` server must take.
NDJSON = "application/fhir+ndjson"
#: Most seconds the cancel of an abandoned import may take, retries included (best effort).
CANCEL_DEADLINE = 30.0
#: Seconds the file server waits on a silent connection before it drops it.
FILE_SERVER_TIMEOUT = 30.0


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
    ``max_wait``; no wait is shorter than ``first_wait`` (``Retry-After: 0`` or a date in the past
    would otherwise poll as fast as the server answers). An error status (after the client's own
    retries) raises the client's error,
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
            delay = max(policy.first_wait, min(told, policy.max_retry_after))
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
    """Kick off the import of ``inputs`` and wait for it to finish.

    A wait given up (no completion within ``polling.timeout``, an error answer after the client's
    retries, a completion body that is not one) or interrupted (Ctrl-C) leaves a job running that
    nobody will read: the server is asked to cancel it (:func:`cancel_import`, at most
    :data:`CANCEL_DEADLINE` seconds) before the error goes on, its message saying whether the
    server accepted. An interrupt during the kick-off itself cannot cancel: the job's status URL
    is not known yet.
    """
    try:
        status_url, completion = start_import(client, inputs, input_source=input_source)
    except KeyboardInterrupt:
        log.warning(
            "interrupted during the $import kick-off: if the server accepted it, the import runs "
            "on and cannot be cancelled from here (its status URL was not received)"
        )
        raise
    try:
        return wait_for_import(client, status_url, inputs, polling=polling, completion=completion)
    except KeyboardInterrupt:
        if cancel_import(client, status_url):
            log.warning("interrupted: the $import was cancelled (DELETE accepted)")
        raise
    except FhirAllianceError as exc:
        cancelled = cancel_import(client, status_url)
        exc.message += (
            "; the import was cancelled (DELETE accepted)"
            if cancelled
            else "; cancelling the import failed: the server may still import the files"
        )
        exc.args = (exc.message,)
        raise


def cancel_import(client: FhirClient, status_url: str) -> bool:
    """``DELETE`` the status URL, the proposal's way to cancel an import; True when the server
    accepted it. Bounded by :data:`CANCEL_DEADLINE` (retries included). Failures are logged
    (status only) and reported as False, never raised."""
    try:
        with running_under(Deadline(CANCEL_DEADLINE)):
            client._request("DELETE", status_url, replay=Replay.IDEMPOTENT)
    except ServerError as exc:
        log.warning(
            "$import cancel was not accepted (%s): the server may still import the files",
            exc.status or type(exc).__name__,
        )
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
    listing, nothing else of the disk), 501 for any other method.

    One request per connection (HTTP/1.0, ``Connection: close``) and a socket timeout, so that
    no connection outlives the import; a file that vanished or changed since it was registered
    is not served, and nothing of its path is printed."""

    server: FileServer
    protocol_version = "HTTP/1.0"
    timeout = FILE_SERVER_TIMEOUT

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, body: bool) -> None:
        served = self.server.route(self.path.split("?", 1)[0])
        if served is None:
            self._empty(404)
            return
        path, identity = served
        try:
            handle = path.open("rb")
        except OSError as exc:
            log.warning("bulk file server: a served file cannot be opened (%s)", type(exc).__name__)
            self._empty(404 if isinstance(exc, FileNotFoundError) else 500)
            return
        with handle:
            stat = os.fstat(handle.fileno())
            if _identity(stat) != identity:
                log.warning("bulk file server: a served file changed after it was checked")
                self._empty(409)
                return
            self.send_response(200)
            self.send_header("Content-Type", NDJSON)
            self.send_header("Content-Length", str(stat.st_size))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            if not body:
                return
            remaining = stat.st_size
            try:
                while remaining > 0:
                    chunk = handle.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
            except OSError as exc:  # the fetcher went away, or the server was stopped
                log.debug("bulk file server: a download ended early (%s)", type(exc).__name__)
                self.close_connection = True
                return
            if remaining:
                log.warning("bulk file server: a served file shrank while being sent")
                return
            with self.server.lock:
                self.server.fetched[path.name] = self.server.fetched.get(path.name, 0) + 1

    def do_GET(self) -> None:
        self._send(body=True)

    def do_HEAD(self) -> None:
        self._send(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds the random path that grants access: never logged.
        log.debug("bulk file server answered a request")


_LINGER_OFF = struct.pack("ii", 1, 0)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What says a file is the one registered: device, inode, size, modification time."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class FileServer(ThreadingHTTPServer):
    """The HTTP server behind :func:`serve_files`: ``urls`` maps each file name to its URL,
    ``fetched`` counts completed downloads per file name. :meth:`stop` ends it for good: no
    route answers any more and every open connection is cut, downloads in flight included."""

    daemon_threads = True

    def __init__(
        self,
        host: str,
        port: int,
        files: Mapping[str, Path],
        checked: Mapping[str, os.stat_result] | None = None,
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        # What is served is fixed now (or was when the caller checked the files): a file replaced
        # or rewritten later is refused (409).
        identities: dict[str, tuple[int, int, int, int]] = {}
        for name, path in files.items():
            try:
                identities[name] = _identity((checked or {}).get(name) or Path(path).stat())
            except OSError as exc:
                why = type(exc).__name__
                raise InputError(
                    f"a file to serve cannot be read ({why})",
                    issues=[Issue(path=name, message=f"cannot be read ({why})")],
                ) from None
        super().__init__((host, port), _FileHandler)
        token = secrets.token_urlsafe(18)
        netloc = f"[{host}]" if ":" in host else host
        #: Scheme, host and port: what the files are served from, without the secret path.
        self.origin = f"http://{netloc}:{self.server_address[1]}"
        self.routes = {
            f"/{token}/{quote(name)}": (Path(path), identities[name])
            for name, path in files.items()
        }
        self.urls = {name: f"{self.origin}/{token}/{quote(name)}" for name in files}
        self.fetched: dict[str, int] = {}
        self.lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._idle = threading.Condition(self.lock)
        self._stopped = False

    def route(self, path: str) -> tuple[Path, tuple[int, int, int, int]] | None:
        with self.lock:
            return None if self._stopped else self.routes.get(path)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            stopped = self._stopped
            if not stopped:
                self._connections.add(request)
        if stopped:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self.lock:
            self._connections.discard(request)
            if not self._connections:
                self._idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The standard library prints a traceback, which can quote the served file's path (an
        # export directory is often named after the client): one fixed line instead.
        kind = sys.exc_info()[0]
        log.warning("bulk file server: a request failed (%s)", kind.__name__ if kind else "error")

    def stop(self) -> None:
        """Serve nothing more: clear the routes, stop accepting, cut every open connection, and
        wait (a few seconds at most) for their handlers to end, so that ``fetched`` is final."""
        with self.lock:
            self._stopped = True
            self.routes.clear()
        self.shutdown()
        with self.lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                # Linger 0: the handler's close resets the connection, dropping what is still
                # queued to send (a plain shutdown would deliver it first).
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
                connection.shutdown(socket.SHUT_RDWR)
        with self.lock:
            self._idle.wait_for(lambda: not self._connections, timeout=5)
        self.server_close()


def numeric_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as the address a socket binds for it, for every spelling of a numeric address
    (``::0``, ``0:0:0:0:0:0:0:0``, and the IPv4 shorthands ``0``, ``127.1``, ``0x7f.1`` that the
    C library reads); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@contextmanager
def serve_files(
    files: Mapping[str, Path],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    checked: Mapping[str, os.stat_result] | None = None,
) -> Iterator[FileServer]:
    """Serve ``files`` (name → path) read-only over HTTP while the ``with`` block runs, each at
    ``http://HOST:PORT/<random>/<name>``; port 0 picks a free one. When the block ends nothing is
    served any more, not even on a connection opened before.

    A file is served only while it is the one registered: the ``checked`` stat of its name if
    given (taken when the caller read it), else its stat now; a file rewritten or replaced since
    gets ``409``. InputError when it cannot listen there or a file cannot be read."""
    try:
        server = FileServer(host, port, files, checked)
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
        server.stop()
        thread.join(timeout=5)
