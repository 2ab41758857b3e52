"""Outside review of ``fhir-alliance check``'s promise "runs a tagged round trip and cleans up
after itself": reproductions against hostile or faulty servers (pytest-httpserver)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance import cli
from fhir_alliance.check import CheckReport, run_check
from fhir_alliance.client import FhirClient, RetryPolicy
from fhir_alliance.client.links import is_fhir_id
from fhir_alliance.errors import InputError, InvalidResponseError
from tests.review_bulk_check.stub_fhir import StubFhir, tagged_observation


def _check(stub: StubFhir) -> tuple[str, CheckReport]:
    with FhirClient(stub.base_url, retry=RetryPolicy(max_attempts=1)) as client:
        report = run_check(client, resources=tagged_observation)
    return report.run_id, report


def test_cleanup_deletes_only_resources_that_carry_the_run_tag(httpserver: HTTPServer) -> None:
    """A server that ignores ``_tag`` (FHIR lets a server ignore a search parameter it does not
    support) answers the cleanup's tag search with every Observation: the check must delete only
    those carrying its run tag, never another user's."""
    stub = StubFhir(httpserver, ignore_tag=True)
    stub.add_foreign("someone-else")
    run_id, _ = _check(stub)
    assert "someone-else" not in stub.deleted, f"check {run_id} deleted another user's Observation"
    assert "someone-else" in stub.store


def test_cleanup_does_not_follow_an_id_that_leaves_its_resource_type(
    httpserver: HTTPServer,
) -> None:
    """A tag-search hit (server data) whose id is ``../Patient/p1``: the cleanup builds
    ``Observation/../Patient/p1``, which requests normalises to ``Patient/p1``; the read
    answers a Patient (InvalidResponseError, swallowed) and the DELETE goes to Patient/p1.
    Ids from the server must be checked against FHIR's id syntax (and not ``.``/``..``)."""
    stub = StubFhir(httpserver)
    stub.extra_tag_hits.append({"resourceType": "Observation", "id": "../Patient/p1"})
    httpserver.expect_request("/fhir/Patient/p1").respond_with_json(
        {"resourceType": "Patient", "id": "p1"}
    )
    _check(stub)
    requests = [(r.method, r.path) for r, _ in httpserver.log]
    assert ("DELETE", "/fhir/Patient/p1") not in requests, requests


def test_cleanup_verifies_that_a_delete_took_effect(httpserver: HTTPServer) -> None:
    """A server that answers DELETE with 204 but keeps the resource: the cleanup must read it
    back and list it as left behind, not count it as deleted and print "nothing left behind"."""
    stub = StubFhir(httpserver, ignore_deletes=True)
    run_id, report = _check(stub)
    leftover = f"Observation/check-{run_id}"
    assert f"check-{run_id}" in stub.store  # it really is still there
    text = report.to_text()
    assert report.cleanup_remaining == [leftover], text
    assert "nothing left behind" not in text


def test_a_failed_tag_search_is_not_reported_as_nothing_left_behind(
    httpserver: HTTPServer,
) -> None:
    """The create's answer is lost (the server stored it, then answered 500), so the check knows
    no id; the cleanup's tag search then fails. The resource is on the server: the report must
    not say "cleanup: nothing left behind"."""
    stub = StubFhir(httpserver, store_then_fail=True, fail_tag_search=True)
    run_id, report = _check(stub)
    assert f"check-{run_id}" in stub.store  # left on the server
    text = report.to_text()
    assert "nothing left behind" not in text, text
    assert "read back as gone" not in text and report.run_tag in text, text
    assert not report.ok


def test_an_interrupted_check_lists_what_it_left_behind(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during the round trip: the cleanup runs (finally), but when its deletes fail the
    leftovers must still be printed by id and the exit status be non-zero; today the
    KeyboardInterrupt escapes ``main`` and nothing is printed."""
    stub = StubFhir(httpserver, fail_deletes=True)
    original = FhirClient.update

    def interrupted_update(self: FhirClient, resource: object, **kw: object) -> object:
        if kw.get("if_match"):  # the If-Match step, after the create
            raise KeyboardInterrupt
        return original(self, resource, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(FhirClient, "update", interrupted_update)
    code: int | None = None
    try:
        code = cli.main(["check", "--base-url", stub.base_url, "--deadline", "5"])
    except KeyboardInterrupt:
        code = None
    out, err = capsys.readouterr()
    left = [rid for rid in stub.store]
    assert left, "the Observation should be on the server (deletes fail)"
    assert all(f"Observation/{rid}" in out + err for rid in left), (
        f"exit {code}; leftovers {left} not listed; stdout={out!r} stderr={err!r}"
    )
    assert code not in (None, 0)


def test_cleanup_searches_by_tag_with_strict_handling(httpserver: HTTPServer) -> None:
    """The cleanup's ``_tag`` searches ask ``Prefer: handling=strict``, so that a server not
    supporting ``_tag`` refuses the search instead of answering every resource."""
    stub = StubFhir(httpserver)
    _check(stub)
    assert stub.tag_search_prefer and set(stub.tag_search_prefer) == {"handling=strict"}


def test_hits_without_the_run_tag_are_reported_and_left_alone(httpserver: HTTPServer) -> None:
    """A server ignoring ``_tag``: the run's own Observation is deleted and confirmed gone, the
    other user's is left alone and the report says the search answered untagged resources."""
    stub = StubFhir(httpserver, ignore_tag=True)
    stub.add_foreign("someone-else")
    run_id, report = _check(stub)
    assert f"check-{run_id}" not in stub.store and "someone-else" in stub.store
    assert stub.deleted.count("someone-else") == 0
    text = report.to_text()
    assert "1 resource(s) without the run tag" in text and "left alone" in text, text
    assert report.ok, text


def test_a_hit_is_read_again_and_not_deleted_without_the_run_tag(httpserver: HTTPServer) -> None:
    """The tag search names a resource as tagged, but a read of it shows no run tag (the
    search answer was wrong, or the resource changed): it is not deleted."""
    stub = StubFhir(httpserver, tag_extra_hits=True)
    stub.add_foreign("victim")
    stub.extra_tag_hits.append({"resourceType": "Observation", "id": "victim"})
    _, report = _check(stub)
    assert "victim" in stub.store and "victim" not in stub.deleted
    assert "Observation/victim" in report.cleanup_remaining
    assert "Observation/victim read back without the run tag; not deleted" in report.to_text()


def test_a_tagged_hit_with_a_path_in_its_id_is_never_requested(httpserver: HTTPServer) -> None:
    """A tag-search hit carrying the run tag but with id ``../Patient/p1``: nothing is sent to
    ``Patient/p1`` (not even a read), and the report says a tagged hit could not be deleted."""
    stub = StubFhir(httpserver, tag_extra_hits=True)
    stub.extra_tag_hits.append({"resourceType": "Observation", "id": "../Patient/p1"})
    httpserver.expect_request("/fhir/Patient/p1").respond_with_json(
        {"resourceType": "Patient", "id": "p1"}
    )
    _, report = _check(stub)
    paths = [r.path for r, _ in httpserver.log]
    assert not [p for p in paths if "Patient" in p], paths
    assert not report.ok
    assert any("invalid id" in f for f in report.cleanup_failures), report.cleanup_failures


def test_a_failed_read_before_the_delete_means_no_delete(httpserver: HTTPServer) -> None:
    """The read just before the delete answers 500: the cleanup cannot tell what the resource
    is, so it does not delete it and lists it as left behind."""
    stub = StubFhir(httpserver, fail_deletes=False)
    original = stub.put

    def put_then_fail_reads(request: object, rid: str) -> object:
        answer = original(request, rid)  # type: ignore[arg-type]
        stub.fail_reads.add(rid)  # every read of it from now on fails
        return answer

    stub.put = put_then_fail_reads  # type: ignore[method-assign,assignment]
    run_id, report = _check(stub)
    assert f"check-{run_id}" not in stub.deleted
    assert report.cleanup_remaining == [f"Observation/check-{run_id}"]
    assert not report.ok


def test_a_failed_tag_search_is_named_with_the_tag_and_fails(httpserver: HTTPServer) -> None:
    """A tag search that fails is a cleanup failure: named by type and run id, the run tag is
    printed for cleaning up by hand, and the check fails."""
    stub = StubFhir(httpserver, fail_tag_search=True)
    run_id, report = _check(stub)
    text = report.to_text()
    assert f"cleanup could not search Observation by tag {run_id}" in text, text
    assert f"delete by hand what carries meta.tag {report.run_tag}" in text
    assert not report.ok and "RESULT: FAIL" in text


def test_a_check_that_cleaned_up_says_deleted_and_mentions_history(httpserver: HTTPServer) -> None:
    """A clean run says what it deleted and that deleted versions may stay in ``_history``."""
    stub = StubFhir(httpserver)
    _, report = _check(stub)
    text = report.to_text()
    assert report.ok and not stub.store, text
    assert "every resource of the run deleted and read back as gone" in text
    assert "_history" in text


def test_an_interrupted_check_exits_130_and_says_so(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during the round trip: the cleanup deletes what was created, the report says the
    run was interrupted and the exit status is 130."""
    stub = StubFhir(httpserver)
    original = FhirClient.update

    def interrupted_update(self: FhirClient, resource: object, **kw: object) -> object:
        if kw.get("if_match"):
            raise KeyboardInterrupt
        return original(self, resource, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(FhirClient, "update", interrupted_update)
    try:
        code: int | None = cli.main(["check", "--base-url", stub.base_url, "--json"])
    except KeyboardInterrupt:  # escaped the command: nothing was printed
        code = None
    out = capsys.readouterr().out
    assert code == 130, (code, out)
    report = json.loads(out)
    assert code == 130 and report["interrupted"] == "SIGINT" and report["ok"] is False
    assert not stub.store and report["cleanup_remaining"] == []


def test_sigterm_cleans_up_reports_and_exits_143(httpserver: HTTPServer) -> None:
    """A real ``fhir-alliance check`` process sent SIGTERM mid-run (a CI job's timeout): it
    deletes what it created, prints the report saying so, and exits 128 + SIGTERM."""
    hold = threading.Event()
    stub = StubFhir(httpserver, hold_if_match=hold)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE")}
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_alliance.cli", "check", "--base-url", stub.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert stub.held.wait(timeout=60), "the check never reached the If-Match update"
        assert stub.store, "the check's Observation should be on the server"
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # let the signal land while the request is still waiting
        hold.set()
        out, err = process.communicate(timeout=60)
    finally:
        hold.set()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, (process.returncode, out, err)
    assert not stub.store, f"left on the server: {list(stub.store)}; {out}"
    assert "interrupted (SIGTERM); the cleanup ran" in out, out
    assert "RESULT: FAIL" in out


def _check_process(
    stub: StubFhir, *args: str, module: str = "fhir_alliance.cli", **popen: Any
) -> subprocess.Popen[str]:
    """A real ``fhir-alliance check`` against ``stub``, in the repository root, without the
    environment's FHIR_ALLIANCE settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE")}
    return subprocess.Popen(
        [sys.executable, "-m", module, "check", "--base-url", stub.base_url, *args],
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        **popen,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.mark.parametrize(
    ("signum", "count"), [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)]
)
def test_a_signal_while_the_client_closes_still_prints_the_report(
    httpserver: HTTPServer, signum: signal.Signals, count: int
) -> None:
    """SIGTERM (or Ctrl-C) while the check closes its client (the round trip and cleanup are
    done): the report is printed all the same and the exit status is 128 + the signal. A second
    signal then stops it at once, with one line. The close is held open by ``held_close`` until
    the signals have landed."""
    stub = StubFhir(httpserver)
    process = _check_process(
        stub,
        module="tests.review_bulk_check.held_close",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with process:  # closes its pipes
        try:
            assert process.stderr is not None and process.stdin is not None
            before = []
            for line in process.stderr:  # retry warnings (the stub has no Consent) come first
                if line == "closing the client\n":
                    break
                before.append(line)
            else:
                pytest.fail(f"the check never closed its client: {before}")
            for _ in range(count):
                process.send_signal(signum)
                time.sleep(0.3)  # let the signal land while the close waits
            with contextlib.suppress(BrokenPipeError):  # a check that died of it reads no more
                process.stdin.write("\n")
                process.stdin.close()
            out = process.stdout.read() if process.stdout else ""
            err = process.stderr.read()
            process.wait(timeout=60)
        finally:
            _stop(process)
    assert process.returncode == 128 + signum, (process.returncode, out, err)
    assert not stub.store, out
    if count == 2:
        assert out == "" and err.endswith(f"check interrupted ({signum.name})\n"), (out, err)
        return
    assert out.startswith("FHIR server check:") and out.rstrip().endswith("RESULT: FAIL"), out
    assert "every resource of the run deleted" in out, out
    assert f"check interrupted ({signum.name}) after it had finished" in err, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ and /proc: Linux")
@pytest.mark.parametrize("as_json", [False, True])
def test_sigterm_while_the_report_is_printed_still_prints_it_whole(
    httpserver: HTTPServer, tmp_path: Path, as_json: bool
) -> None:
    """SIGTERM while the report is being written out (to a pipe whose reader is slow): the whole
    report still comes out (valid JSON with ``--json``) and the exit status is 128 + SIGTERM.
    The pipe is filled before the check starts, so the check blocks writing its report until
    the test, having sent the signal, reads."""
    import fcntl

    stub = StubFhir(httpserver)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += os.write(write_end, b"#" * 512)
    os.set_blocking(write_end, True)
    with (tmp_path / "stderr").open("w+") as stderr:
        process = _check_process(
            stub, *(["--json"] if as_json else []), stdout=write_end, stderr=stderr
        )
        os.close(write_end)
        try:
            wchan = Path(f"/proc/{process.pid}/wchan")
            deadline = time.monotonic() + 60
            while "pipe_write" not in wchan.read_text():
                assert process.poll() is None and time.monotonic() < deadline, "never blocked"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # let the signal land while the write waits
            chunks = []
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
            process.wait(timeout=60)
        finally:
            os.close(read_end)
            _stop(process)
        stderr.seek(0)
        err = stderr.read()
    out = b"".join(chunks)[filled:].decode()
    assert process.returncode == 128 + signal.SIGTERM, (process.returncode, out, err)
    if as_json:
        assert json.loads(out)["cleanup_remaining"] == [], out
    else:
        assert out.startswith("FHIR server check:") and out.rstrip().endswith("RESULT: FAIL"), out
    assert not stub.store


def test_the_sigterm_handler_is_restored_after_the_check(httpserver: HTTPServer) -> None:
    """The check's SIGTERM handler is in place only while it runs."""
    before = signal.getsignal(signal.SIGTERM)
    stub = StubFhir(httpserver)
    cli.main(["check", "--base-url", stub.base_url])  # fails: the stub has no Consent
    assert signal.getsignal(signal.SIGTERM) is before


BAD_IDS = ["../Patient/p1", "..", ".", "a/b", "a%2Fb", "a b", "abc\n", "x" * 65, "", "é"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_the_client_refuses_caller_ids_that_are_not_fhir_ids(
    httpserver: HTTPServer, bad_id: str
) -> None:
    """read, update and delete refuse an id that is not FHIR's id syntax (or is ``.``/``..``)
    with an InputError that does not quote it, before anything is sent."""
    with FhirClient(httpserver.url_for("/fhir"), retry=RetryPolicy(max_attempts=1)) as client:
        calls = [
            lambda: client.read("Observation", bad_id),
            lambda: client.delete("Observation", bad_id),
            lambda: client.update({"resourceType": "Observation", "id": bad_id}),
        ]
        for call in calls:
            with pytest.raises(InputError) as caught:
                call()
            message = caught.value.message
            assert "not a valid FHIR id" in message or (bad_id == "" and "needs the" in message)
            assert len(bad_id.strip()) <= 2 or bad_id not in message
    assert list(httpserver.log) == []


def test_the_client_refuses_a_resource_type_with_a_path_in_it(httpserver: HTTPServer) -> None:
    """``Observation/..`` as a resource type is refused like a bad id."""
    with FhirClient(httpserver.url_for("/fhir")) as client, pytest.raises(InputError):
        client.delete("Observation/..", "p1")
    assert list(httpserver.log) == []


@pytest.mark.parametrize(
    ("location", "body_id"),
    [
        (None, "../Patient/p1"),
        ("/fhir/Observation/a%2Fb/_history/1", None),
        ("/fhir/Observation/../_history/1", None),
    ],
)
def test_a_write_answer_naming_an_invalid_id_is_an_invalid_response(
    httpserver: HTTPServer, location: str | None, body_id: str | None
) -> None:
    """The server's answer to a write names an id (Location or body) that is not a FHIR id:
    InvalidResponseError, so the id never becomes a request path."""
    body: dict[str, object] = {"resourceType": "Observation", "meta": {"versionId": "1"}}
    if body_id is not None:
        body["id"] = body_id
    headers = {"Location": httpserver.url_for(location)} if location else {}
    httpserver.expect_request("/fhir/Observation", method="POST").respond_with_json(
        body, status=201, headers=headers
    )
    client = FhirClient(httpserver.url_for("/fhir"), retry=RetryPolicy(max_attempts=1))
    with client, pytest.raises(InvalidResponseError) as caught:
        client.create({"resourceType": "Observation", "status": "final"})
    message = caught.value.message
    assert "invalid FHIR id" in message or "refused: dot or encoded-slash" in message, message
    assert "Patient" not in caught.value.message and "a%2Fb" not in caught.value.message


def test_fhir_ids_that_are_valid_pass() -> None:
    """FHIR's id syntax: 1-64 of A-Z a-z 0-9 - . (UUIDs, HAPI's numeric ids, dotted ids)."""
    for good in ["1", "abc-DEF.9", "x" * 64, "557e2e79-16ab-5da0-a490-6624733c7802", "a..b"]:
        assert is_fhir_id(good)
    for bad in BAD_IDS:
        assert not is_fhir_id(bad)


def test_a_type_neither_written_nor_offered_is_not_searched(httpserver: HTTPServer) -> None:
    """Provenance is not in the stand-in's CapabilityStatement and the check writes none: the
    cleanup does not search it (a server without Provenance would fail that search, and the
    check with it, though nothing of the run can be there)."""
    stub = StubFhir(httpserver)
    _, report = _check(stub)
    assert not [r for r, _ in httpserver.log if r.path.startswith("/fhir/Provenance")]
    assert report.ok, report.to_text()


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("{base}/Observation/../Patient/p1/_history/{version}", "dot or encoded-slash"),
        ("http://evil.example/fhir/Patient/{rid}/_history/{version}", "names a Patient"),
        ("{base}/Patient/p1/_history/{version}", "names a Patient, not the Observation sent"),
        ("{base}/Observation/p1/_history/{version}", "another Observation than the one sent"),
        ("{base}/Observation/{rid}/_history/{version}%20junk", "invalid versionId"),
    ],
)
def test_a_hostile_location_fails_the_create_and_steers_nothing(
    httpserver: HTTPServer, location: str, why: str
) -> None:
    """The server answers the check's PUT with a Location outside the base, of another type or
    id, or with a junk version: the create step fails saying why, nothing outside the run's own
    Observation is read or deleted, and the tag search still cleans the Observation up."""
    stub = StubFhir(httpserver, location=location)
    run_id, report = _check(stub)
    text = report.to_text()
    [create] = [s for s in report.steps if s.name == "create"]
    assert not create.ok and "write answer's location" in create.detail and why in create.detail
    paths = {r.path for r, _ in httpserver.log}
    assert paths <= {"/fhir/metadata", "/fhir/Observation", f"/fhir/Observation/check-{run_id}"}
    assert not stub.store and report.cleanup_deleted == 1, text
    assert "RESULT: FAIL" in text and "evil" not in text
