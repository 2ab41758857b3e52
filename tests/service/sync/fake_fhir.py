"""A small transaction-only FHIR endpoint on pytest-httpserver, for fault injection.

It applies transaction Bundles of ``PUT`` entries to an in-memory map (version per write), reads
them back (``GET Type/id``) and deletes them (``DELETE Type/id``), and answers with a transaction-response, unless the next queued fault
says otherwise: a status (503 storms, 429 with ``Retry-After``), a malformed body, a rejection of
Bundles holding a given id (422 with an OperationOutcome), "apply, then answer too late" (a lost
response), or "apply, then name another resource in the answer" (a hostile ``location``, or a
status that cannot be read); while
``read_status`` is set, every read answers that status (a server down for reads), and a
``Type/id`` in ``read_answers`` is answered by its function (one poisoned resource), and while
``delete_status`` is set every delete answers that status (a retraction that fails). With
``check_if_match`` a Bundle an entry of which carries an ``ifMatch`` that is not its resource's
current version is refused whole with 412 (someone else wrote it since: a conflict). ``writes``
counts the writes applied per ``Type/id``, so tests can tell a harmless re-send from a duplicate,
and ``reads`` the reads asked for.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

FHIR_JSON = "application/fhir+json"
Fault = Callable[[dict[str, Any]], Response | str | None]


def outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


def status(code: int, *, retry_after: str | None = None) -> Fault:
    """Answer ``code`` with an OperationOutcome; apply nothing."""

    def fault(bundle: dict[str, Any]) -> Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        body = json.dumps(outcome("transient", "try later"))
        return Response(body, status=code, headers=headers, content_type=FHIR_JSON)

    return fault


def malformed(bundle: dict[str, Any]) -> Response:
    """A 200 that is not FHIR JSON (a proxy's HTML page); nothing applied."""
    return Response("<html><body>gateway</body></html>", status=200, content_type="text/html")


def late_answer(seconds: float) -> Fault:
    """Apply the Bundle, then answer only after ``seconds`` (the client has given up)."""

    def fault(bundle: dict[str, Any]) -> str:
        time.sleep(seconds)
        return "applied-late"

    return fault


def hostile_location(fake: FakeFhir, location: str) -> Fault:
    """Apply the Bundle, then answer its first entry with ``location`` (a format string of
    ``key``, the entry's ``Type/id``): a server naming something other than what was sent."""

    def fault(bundle: dict[str, Any]) -> Response:
        answer = fake.apply(bundle)
        key = bundle["entry"][0]["request"]["url"]
        answer["entry"][0]["response"]["location"] = location.format(key=key)
        return Response(json.dumps(answer), status=200, content_type=FHIR_JSON)

    return fault


def hostile_status(fake: FakeFhir, answer_status: str) -> Fault:
    """Apply the Bundle, then answer its first entry with the status ``answer_status`` (e.g.
    ``²00 OK``, a superscript digit: a status that cannot be read)."""

    def fault(bundle: dict[str, Any]) -> Response:
        answer = fake.apply(bundle)
        answer["entry"][0]["response"]["status"] = answer_status
        return Response(json.dumps(answer), status=200, content_type=FHIR_JSON)

    return fault


@dataclass
class FakeFhir:
    server: HTTPServer
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    #: Ids whose Bundles are refused with 422 (the server's own validation says no).
    rejected_ids: set[str] = field(default_factory=set)
    #: While set, every ``GET Type/id`` answers this status with an OperationOutcome (e.g. 503).
    read_status: int | None = None
    #: While set, every ``DELETE Type/id`` answers this status and deletes nothing (e.g. 503).
    delete_status: int | None = None
    #: ``Type/id`` → what its ``GET`` answers instead (given the resource held, or None).
    read_answers: dict[str, Callable[[dict[str, Any] | None], Response]] = field(
        default_factory=dict
    )
    #: ``GET Type/id`` requests per ``Type/id``.
    reads: Counter[str] = field(default_factory=Counter)
    #: Whether an entry's ``ifMatch`` is checked (a stale one: the Bundle is refused with 412).
    check_if_match: bool = False
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return self.server.url_for("/fhir")

    def install(self) -> FakeFhir:
        self.server.expect_request("/fhir", method="POST").respond_with_handler(self.handle)
        self.server.expect_request(
            re.compile(r"^/fhir/[A-Za-z]+/[^/]+$"), method="GET"
        ).respond_with_handler(self.read)
        self.server.expect_request(
            re.compile(r"^/fhir/[A-Za-z]+/[^/]+$"), method="DELETE"
        ).respond_with_handler(self.delete)
        return self

    def read(self, request: Request) -> Response:
        """``GET Type/id``: the resource as last written (with its ``versionId``), else 404."""
        key = request.path.removeprefix("/fhir/")
        with self.lock:
            self.reads[key] += 1
            resource = self.resources.get(key)
            down = self.read_status
            answer = self.read_answers.get(key)
        if down is not None:
            return status(down)({})
        if answer is not None:
            return answer(resource)
        if resource is None:
            body = json.dumps(outcome("not-found", "no such resource"))
            return Response(body, status=404, content_type=FHIR_JSON)
        return Response(json.dumps(resource), status=200, content_type=FHIR_JSON)

    def delete(self, request: Request) -> Response:
        """``DELETE Type/id``: the resource is gone (204), or 404 when there was none."""
        key = request.path.removeprefix("/fhir/")
        with self.lock:
            down = self.delete_status
            gone = None if down is not None else self.resources.pop(key, None)
        if down is not None:
            return status(down)({})
        if gone is None:
            body = json.dumps(outcome("not-found", "no such resource"))
            return Response(body, status=404, content_type=FHIR_JSON)
        return Response(status=204)

    def handle(self, request: Request) -> Response:
        bundle = json.loads(request.get_data())
        with self.lock:
            self.requests += 1
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            answer = fault(bundle)
            if isinstance(answer, Response):
                return answer
        ids = {e["resource"]["id"] for e in bundle["entry"]}
        if ids & self.rejected_ids:
            body = json.dumps(outcome("processing", "Patient Jane Roe: value not allowed"))
            return Response(body, status=422, content_type=FHIR_JSON)
        if self.check_if_match and self._stale(bundle):
            body = json.dumps(outcome("conflict", "version mismatch"))
            return Response(body, status=412, content_type=FHIR_JSON)
        return Response(json.dumps(self.apply(bundle)), status=200, content_type=FHIR_JSON)

    def _stale(self, bundle: dict[str, Any]) -> bool:
        """Whether an entry's ``ifMatch`` names another version than its resource's current one
        (or one of a resource not there)."""
        with self.lock:
            for entry in bundle["entry"]:
                expected = entry["request"].get("ifMatch")
                if expected is None:
                    continue
                held = self.resources.get(entry["request"]["url"])
                if held is None or expected != f'W/"{held["meta"]["versionId"]}"':
                    return True
        return False

    def apply(self, bundle: dict[str, Any]) -> dict[str, Any]:
        entries = []
        with self.lock:
            for entry in bundle["entry"]:
                assert entry["request"]["method"] == "PUT", "the worker only PUTs"
                key = entry["request"]["url"]
                self.writes[key] += 1
                version = self.writes[key]
                created = key not in self.resources
                resource = dict(entry["resource"])
                resource["meta"] = {**resource.get("meta", {}), "versionId": str(version)}
                self.resources[key] = resource
                entries.append(
                    {
                        "response": {
                            "status": "201 Created" if created else "200 OK",
                            "location": f"{key}/_history/{version}",
                            "etag": f'W/"{version}"',
                        }
                    }
                )
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


@contextmanager
def resetting_server() -> Iterator[str]:
    """A TCP server that reads a request and answers with a connection reset; yields its base."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(2)
            with suppress(OSError):
                conn.recv(65536)
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
