"""Outside review of ``fhir-alliance push --bulk`` on its ``$import`` path: the files served
"read-only from this machine" and the polling of a hostile server's status URL."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.cli import main
from fhir_alliance.client import FhirClient, RetryPolicy
from fhir_alliance.client.bulk_import import (
    ImportInput,
    ImportPolling,
    run_import,
    serve_files,
    wait_for_import,
)
from fhir_alliance.errors import InvalidResponseError, TransportError
from tests.test_push_bulk import STATEMENT_WITH_IMPORT, export_dir


@pytest.fixture
def bulk_dir(tmp_path: Path) -> Path:
    return export_dir(tmp_path / "bulk", "review")


class Waits:
    """Stands in for time.sleep and a monotonic clock that only the recorded waits move."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def clock(self) -> float:
        return sum(self.waits)


def _client(server: HTTPServer) -> FhirClient:
    return FhirClient(server.url_for("/fhir"), retry=RetryPolicy(max_attempts=1))


INPUTS = [ImportInput(type="Observation", url="https://files.example/x/Observation.ndjson")]


# ---------------------------------------------------------------------------- fail-open report


@pytest.mark.parametrize(
    "output",
    [
        [],
        [{"type": "Observation", "url": "https://ehr.example/out/1.ndjson"}],
        [{"type": "OperationOutcome", "count": 18}],  # a count it cannot have
    ],
    ids=["empty-output", "output-without-count", "output-with-count"],
)
def test_an_import_that_fetched_no_file_is_not_ok(
    bulk_dir: Path,
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
    output: list[dict[str, Any]],
) -> None:
    """The server never fetched a file from our file server, then reported the import complete
    with no output (or output without counts) and no errors: the command knows nothing was
    fetched (``filesFetched`` 0), so it must not exit 0 with "ok"."""
    httpserver.expect_request("/fhir/metadata").respond_with_json(STATEMENT_WITH_IMPORT)
    httpserver.expect_request("/fhir/$import", method="POST").respond_with_data(
        "", status=202, headers={"Content-Location": "status/1"}
    )
    httpserver.expect_request("/fhir/status/1").respond_with_json(
        {"transactionTime": "2026-12-06T20:00:00Z", "output": output, "error": []}
    )
    code = main(["push", "--bulk", str(bulk_dir), "--base-url", httpserver.url_for("/fhir"),
                 "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["import"]["filesFetched"] == 0
    assert (code, report["ok"]) == (1, False), report
    assert report["errors"][0]["message"].startswith("the server never fetched Observation.ndjson")


# ---------------------------------------------------------------------------- the file server


def test_files_are_not_served_after_serve_files_returns(tmp_path: Path) -> None:
    """``serve_files`` promises to serve "while the with block runs". A fetcher that opened a
    keep-alive connection (HTTP/1.1, as the handler speaks) during the import can still GET the
    files after the block has exited and the server was "shut down"."""
    path = tmp_path / "Observation.ndjson"
    path.write_text('{"resourceType":"Observation","id":"1"}\n')
    with serve_files({"Observation.ndjson": path}) as served:
        url = urlsplit(served.urls["Observation.ndjson"])
        connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
        connection.request("GET", url.path)
        first = connection.getresponse()
        first.read()
        assert first.status == 200
    try:
        connection.request("GET", url.path)
        late = connection.getresponse()
        status: int | None = late.status
        late.read()
    except (OSError, http.client.HTTPException):
        status = None
    finally:
        connection.close()
    assert status != 200, "the file was served after serve_files() had returned"


def test_a_file_server_error_does_not_print_the_file_path(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A file that disappears while served (moved, cleaned up) makes the handler raise; the
    standard library's ``handle_error`` prints a traceback with the absolute path to stderr.
    Export directories are commonly named after the client: nothing of the path should be
    printed, only a fixed line."""
    directory = tmp_path / "client-jane-doe-1984-03-02"
    directory.mkdir()
    path = directory / "Observation.ndjson"
    path.write_text('{"resourceType":"Observation","id":"1"}\n')
    with serve_files({"Observation.ndjson": path}) as served:
        url = urlsplit(served.urls["Observation.ndjson"])
        path.unlink()
        connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
        try:
            connection.request("GET", url.path)
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
    err = capfd.readouterr().err
    assert "jane-doe" not in err, err


def test_a_failing_request_prints_one_fixed_line(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any exception in a request's handler (here one whose text holds the path) is reported by
    one fixed line with its type only, never the standard library's traceback."""
    import fhir_alliance.client.bulk_import as bulk_import

    directory = tmp_path / "client-jane-doe-1984-03-02"
    directory.mkdir()
    path = directory / "Observation.ndjson"
    path.write_text('{"resourceType":"Observation","id":"1"}\n')

    def failing(stat: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    with serve_files({"Observation.ndjson": path}) as served:
        monkeypatch.setattr(bulk_import, "_identity", failing)
        url = urlsplit(served.urls["Observation.ndjson"])
        connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection.request("GET", url.path)
            connection.getresponse().read()
        connection.close()
    err = capfd.readouterr().err
    assert "jane-doe" not in err and "Traceback" not in err, err
    assert "jane-doe" not in caplog.text
    assert "bulk file server: a request failed (PermissionError)" in caplog.messages


# ---------------------------------------------------------------------------- polling


def test_retry_after_zero_does_not_poll_in_a_tight_loop(httpserver: HTTPServer) -> None:
    """A status URL answering ``202`` with ``Retry-After: 0`` (or an HTTP-date in the past) makes
    every wait 0 s: the command polls the server as fast as it answers, for up to
    ``--import-timeout`` (an hour by default). Each wait should have a floor."""
    polls = {"n": 0}

    def status(request: Request) -> Response:
        polls["n"] += 1
        if polls["n"] < 20:
            return Response("", status=202, headers={"Retry-After": "0"})
        return Response(json.dumps({"output": [], "error": []}), content_type="application/json")

    httpserver.expect_request("/fhir/status/1").respond_with_handler(status)
    waits = Waits()
    polling = ImportPolling(sleep=waits.sleep, clock=waits.clock, timeout=3600)
    with _client(httpserver) as client:
        wait_for_import(client, httpserver.url_for("/fhir/status/1"), INPUTS, polling=polling)
    assert min(waits.waits) >= polling.first_wait, waits.waits


def test_an_import_that_times_out_is_cancelled(httpserver: HTTPServer) -> None:
    """``--import-timeout`` reached: the command stops serving the files and exits 1, but leaves
    the job running on the server (only Ctrl-C sends the proposal's cancel, DELETE to the status
    URL). The job would fetch from a server that is gone, or import what it already fetched
    after the user was told it failed."""
    httpserver.expect_request("/fhir/$import", method="POST").respond_with_data(
        "", status=202, headers={"Content-Location": "status/1"}
    )
    httpserver.expect_request("/fhir/status/1", method="GET").respond_with_data(
        "", status=202, headers={"Retry-After": "10"}
    )
    httpserver.expect_request("/fhir/status/1", method="DELETE").respond_with_data("", status=202)
    waits = Waits()
    polling = ImportPolling(sleep=waits.sleep, clock=waits.clock, timeout=25)
    with _client(httpserver) as client, pytest.raises(TransportError):
        run_import(client, INPUTS, input_source="urn:x", polling=polling)
    methods = [(r.method, r.path) for r, _ in httpserver.log]
    assert ("DELETE", "/fhir/status/1") in methods, methods


# ---------------------------------------------------------------------------- where it serves


def _non_loopback_address() -> str | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.123", 9))  # no packet is sent for UDP connect
        address: str = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.fixture
def remote_fhir() -> Iterator[HTTPServer]:
    """A FHIR server reached at this machine's non-loopback address (as a remote EHR is)."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    server = HTTPServer(host=address, port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


def test_loopback_file_urls_are_not_sent_to_a_remote_server(
    bulk_dir: Path, remote_fhir: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--serve-on``/``--files-url`` the files are served on 127.0.0.1 and the server is
    told ``http://127.0.0.1:PORT/...``: a server on another host cannot fetch them (it would
    fetch from its own loopback, whatever listens there) and the command waits up to an hour.
    A non-loopback base with loopback serving should be refused before the kick-off."""
    remote_fhir.expect_request("/fhir/metadata").respond_with_json(STATEMENT_WITH_IMPORT)
    remote_fhir.expect_request("/fhir/$import", method="POST").respond_with_json(
        {"output": [], "error": []}
    )
    base = remote_fhir.url_for("/fhir")
    assert not urlsplit(base).hostname.startswith("127.")  # type: ignore[union-attr]
    main(["push", "--bulk", str(bulk_dir), "--base-url", base])
    capsys.readouterr()
    kick_offs = [r for r, _ in remote_fhir.log if r.path == "/fhir/$import"]
    told = [  # where the server was told to fetch from (origin only: the path is the secret)
        urlsplit(p["part"][1]["valueUrl"]).netloc
        for r in kick_offs
        for p in json.loads(r.get_data())["parameter"]
        if p["name"] == "input"
    ]
    assert kick_offs == [], f"the remote server was told to fetch the files from {told}"


@pytest.mark.parametrize("serve_on", ["[::0]:0", "[0:0:0:0:0:0:0:0]:0", "0.0.0.0:0", "0:0"])
def test_every_spelling_of_a_wildcard_is_refused(
    bulk_dir: Path, serve_on: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--serve-on`` refuses a wildcard ("give the address the FHIR server reaches this machine
    at") by comparing the text with ``0.0.0.0`` and ``::`` only: ``[::0]`` or ``0`` (which
    bind every interface) pass with ``--allow-insecure-http``, and the server is told a URL
    it cannot use while the files are served on every interface."""
    code = main(["push", "--bulk", str(bulk_dir), "--base-url", "http://127.0.0.1:9/fhir",
                 "--serve-on", serve_on, "--allow-insecure-http"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "not a wildcard" in err, err


# ---------------------------------------------------------------------------- the fixes, further


def _fetching_import(server: HTTPServer, fetched: list[int]) -> None:
    """$import that GETs every file it is given (as a real server does), then answers 202."""

    def kick_off(request: Request) -> Response:
        body = json.loads(request.get_data())
        for p in body["parameter"]:
            if p["name"] == "input":
                url = urlsplit(p["part"][1]["valueUrl"])
                connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
                connection.request("GET", url.path)
                answer = connection.getresponse()
                answer.read()
                connection.close()
                fetched.append(answer.status)
        return Response("", status=202, headers={"Content-Location": "status/1"})

    server.expect_request("/fhir/metadata").respond_with_json(STATEMENT_WITH_IMPORT)
    server.expect_request("/fhir/$import", method="POST").respond_with_handler(kick_off)


def test_an_import_without_counts_is_unconfirmed_not_ok(
    bulk_dir: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every file fetched, then a completion with no counts (the proposal allows it): the report
    lists the types as unconfirmed, says so in words, and the exit status is 1."""
    fetched: list[int] = []
    _fetching_import(httpserver, fetched)
    httpserver.expect_request("/fhir/status/1").respond_with_json({"output": [], "error": []})
    argv = ["push", "--bulk", str(bulk_dir), "--base-url", httpserver.url_for("/fhir")]
    code = main([*argv, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert fetched and set(fetched) == {200}
    assert report["import"]["filesFetched"] == len(report["files"])
    assert (code, report["ok"], report["errors"]) == (1, False, [])
    assert report["unconfirmed"] == report["expected"]
    code = main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[1].startswith("unconfirmed: the server gave no count for Observation (")
    assert lines[-1] == "NOT confirmed that everything arrived"


def test_an_import_counted_in_full_is_ok(
    bulk_dir: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every file fetched and every type counted as sent: exit 0, "ok", nothing unconfirmed."""
    fetched: list[int] = []
    _fetching_import(httpserver, fetched)
    manifest = json.loads((bulk_dir / "manifest.json").read_text())
    output = [{"type": "OperationOutcome", "count": e["count"]} for e in manifest["output"]]
    httpserver.expect_request("/fhir/status/1").respond_with_json({"output": output, "error": []})
    code = main(["push", "--bulk", str(bulk_dir), "--base-url", httpserver.url_for("/fhir")])
    lines = capsys.readouterr().out.splitlines()
    assert (code, lines[-1]) == (0, "ok"), lines


def test_a_connection_opened_during_the_import_gets_nothing_after(tmp_path: Path) -> None:
    """A connection accepted while the files were served, whose request comes only after
    ``serve_files`` returned, is cut: no file byte goes out."""
    path = tmp_path / "Observation.ndjson"
    path.write_text('{"resourceType":"Observation","id":"1"}\n')
    with serve_files({"Observation.ndjson": path}) as served:
        url = urlsplit(served.urls["Observation.ndjson"])
        sock = socket.create_connection((url.hostname or "", url.port or 0), timeout=5)
        sock.sendall(b"GET ")
        for _ in range(100):  # until a handler thread is reading it
            with served.lock:
                if served._connections:
                    break
            time.sleep(0.02)
        else:
            pytest.fail("the connection was not accepted")
    received = b""
    try:
        sock.sendall(f"{url.path} HTTP/1.0\r\n\r\n".encode())
        while chunk := sock.recv(4096):
            received += chunk
    except OSError:
        pass
    finally:
        sock.close()
    assert b"Observation" not in received and not received.startswith(b"HTTP/1.0 200"), received


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(1 << 16):
            received += chunk
    return received


def test_one_request_per_connection(tmp_path: Path) -> None:
    """The file server closes every connection after one answer (``Connection: close``), even
    to an HTTP/1.1 client that would keep it open: no connection waits for a later request."""
    path = tmp_path / "Observation.ndjson"
    path.write_text('{"resourceType":"Observation","id":"1"}\n')
    with serve_files({"Observation.ndjson": path}) as served:
        url = urlsplit(served.urls["Observation.ndjson"])
        with socket.create_connection((url.hostname or "", url.port or 0), timeout=3) as sock:
            sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(4096):  # ends when the server closes; times out otherwise
                answer += chunk
    assert b"200 OK" in answer and b"Connection: close" in answer


def test_a_silent_connection_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that sends nothing is closed by the file server after its socket timeout
    (30 s; shortened here), not held open for the rest of the import."""
    from fhir_alliance.client.bulk_import import _FileHandler

    assert _FileHandler.timeout == 30
    monkeypatch.setattr(_FileHandler, "timeout", 0.3)
    path = tmp_path / "Observation.ndjson"
    path.write_text('{"resourceType":"Observation","id":"1"}\n')
    with serve_files({"Observation.ndjson": path}) as served:
        url = urlsplit(served.urls["Observation.ndjson"])
        with socket.create_connection((url.hostname or "", url.port or 0), timeout=3) as sock:
            assert sock.recv(4096) == b""  # closed by the server, before the client's 3 s


def test_a_download_in_flight_is_cut_when_serving_ends(tmp_path: Path) -> None:
    """A fetcher still reading a file when the ``with`` block ends does not get the rest of it."""
    path = tmp_path / "Observation.ndjson"
    line = b'{"resourceType":"Observation","id":"1"}\n'
    path.write_bytes(line * (48 * 1024 * 1024 // len(line)))
    size = path.stat().st_size
    with serve_files({"Observation.ndjson": path}) as served:
        url = urlsplit(served.urls["Observation.ndjson"])
        sock = socket.create_connection((url.hostname or "", url.port or 0), timeout=5)
        sock.sendall(f"GET {url.path} HTTP/1.0\r\n\r\n".encode())
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.0 200")
    rest = _read_all(sock)
    sock.close()
    assert len(first) + len(rest) < size, "the whole file was sent after serve_files() returned"
    assert served.fetched == {}


def test_a_vanished_file_gets_404_and_a_changed_one_409(tmp_path: Path) -> None:
    """A served file removed since it was registered answers 404; one rewritten answers 409
    (what was checked is what is served, or nothing)."""
    gone = tmp_path / "Observation.ndjson"
    changed = tmp_path / "Provenance.ndjson"
    for path in (gone, changed):
        path.write_text('{"resourceType":"Observation","id":"1"}\n')
    files = {"Observation.ndjson": gone, "Provenance.ndjson": changed}
    with serve_files(files) as served:
        gone.unlink()
        changed.write_text('{"resourceType":"Provenance","id":"unchecked-and-longer"}\n')
        statuses = []
        for name in files:
            url = urlsplit(served.urls[name])
            connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
            connection.request("GET", url.path)
            answer = connection.getresponse()
            statuses.append((answer.status, answer.read()))
            connection.close()
        assert served.fetched == {}
    assert statuses == [(404, b""), (409, b"")]


def test_a_file_changed_after_the_check_is_not_sent(
    bulk_dir: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file rewritten between the check and the sending (here: while /metadata is read) is
    refused on the transaction path with one line, before any Bundle of it is sent."""
    statement = {**STATEMENT_WITH_IMPORT, "rest": [{"mode": "server", "interaction": [
        {"code": "transaction"}]}]}  # fmt: skip
    target = bulk_dir / "Observation.ndjson"

    def metadata(request: Request) -> Response:
        target.write_text(target.read_text().replace('"final"', '"amended"'))
        return Response(json.dumps(statement), content_type="application/fhir+json")

    httpserver.expect_request("/fhir/metadata").respond_with_handler(metadata)
    code = main(["push", "--bulk", str(bulk_dir), "--base-url", httpserver.url_for("/fhir")])
    err = capsys.readouterr().err
    assert code == 1 and "Observation.ndjson: changed after it was checked" in err, err
    assert [r.path for r, _ in httpserver.log] == ["/fhir/metadata"]


def test_a_bad_completion_cancels_the_import_and_says_so(httpserver: HTTPServer) -> None:
    """A 200 whose body is not a completion report (InvalidResponseError): the job is cancelled
    with DELETE and the error says it was."""
    httpserver.expect_request("/fhir/$import", method="POST").respond_with_data(
        "", status=202, headers={"Content-Location": "status/1"}
    )
    httpserver.expect_request("/fhir/status/1", method="GET").respond_with_data("<html>")
    httpserver.expect_request("/fhir/status/1", method="DELETE").respond_with_data("", status=202)
    with _client(httpserver) as client, pytest.raises(InvalidResponseError) as caught:
        run_import(client, INPUTS, input_source="urn:x", polling=ImportPolling())
    assert caught.value.message.endswith("; the import was cancelled (DELETE accepted)")
    assert [r.method for r, _ in httpserver.log] == ["POST", "GET", "DELETE"]


def test_an_interrupted_kick_off_says_it_cannot_cancel(
    httpserver: HTTPServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the kick-off is on its way: no status URL, so no cancel; the output says that
    the import may run on."""
    import fhir_alliance.client.bulk_import as bulk_import

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(bulk_import, "start_import", interrupted)
    with _client(httpserver) as client, pytest.raises(KeyboardInterrupt):
        run_import(client, INPUTS, input_source="urn:x")
    assert "cannot be cancelled from here" in caplog.text
    assert httpserver.log == []
