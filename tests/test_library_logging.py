"""Where the library's log records go: nowhere of the library's choosing when it is embedded (a
``NullHandler``), on stderr as ``warning: …`` lines when the ``fhir-alliance`` command runs, and
only once where the process set up logging of its own."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap

import pytest

from fhir_alliance import cli


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_an_embedding_program_without_logging_prints_nothing_of_the_library() -> None:
    """A program that set up no logging and meets a retried, failing request (warnings logged)
    gets nothing on stderr: no last-resort handler prints the library's warnings."""
    program = textwrap.dedent(
        f"""
        import logging
        from fhir_alliance.client import FhirClient, RetryPolicy
        from fhir_alliance.errors import TransportError

        seen = []
        def note(record):
            seen.append(record.levelno)
            return True
        logging.getLogger("fhir_alliance.client").addFilter(note)  # a filter is no handler
        client = FhirClient(
            "http://127.0.0.1:{_closed_port()}/fhir",
            allow_insecure_http=True,
            connect_retries=0,
            retry=RetryPolicy(max_attempts=2, backoff_base=0.01),
        )
        try:
            client.capabilities()
        except TransportError:
            pass
        print(seen.count(logging.WARNING))
        """
    )
    ran = _run("-c", program)
    assert ran.returncode == 0, ran.stderr
    assert int(ran.stdout) == 2  # the warning path ran: one warning per attempt
    assert ran.stderr == ""


def test_the_command_shows_the_library_warnings_on_stderr() -> None:
    """``fhir-alliance check`` against a port nothing listens on shows each retry's warning as a
    ``warning:`` line (the message only: method, path template, error, attempt)."""
    port = _closed_port()
    ran = _run(
        "-m",
        "fhir_alliance",
        "check",
        "--base-url",
        f"http://127.0.0.1:{port}/fhir",
        "--allow-insecure-http",
        "--deadline",
        "1",
    )
    assert ran.returncode == 1
    warnings = [line for line in ran.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings, ran.stderr
    assert warnings[0].startswith("warning: GET metadata -> connection refused")
    assert "(attempt 1)" in warnings[0]


def test_the_command_leaves_the_warnings_to_logging_set_up_by_the_process(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Where the process has a handler of its own (here pytest's on the root logger, as the
    service's JSON lines are), the command's warnings go there alone: no ``warning:`` line
    besides, and the command's handler is gone afterwards."""
    caplog.set_level(logging.WARNING)
    base_url = f"http://127.0.0.1:{_closed_port()}/fhir"
    code = cli.main(["check", "--base-url", base_url, "--allow-insecure-http", "--deadline", "1"])
    assert code == 1
    warned = [r for r in caplog.records if r.name == "fhir_alliance.client"]
    assert warned and all(r.levelno == logging.WARNING for r in warned)
    assert "warning:" not in capsys.readouterr().err
    library = logging.getLogger("fhir_alliance")
    assert [type(h) for h in library.handlers] == [logging.NullHandler]
