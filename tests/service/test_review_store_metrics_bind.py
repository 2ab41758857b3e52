"""FHIR_ALLIANCE_WORKER_METRICS_BIND: an address already in use (a second worker with the same
setting) stops the worker with one line naming the setting and the address, exit 2, no
traceback; a bad port is refused with a message that does not offer ``unix:PATH``, which this
setting refuses."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from fhir_alliance_service.config import ConfigError, load_settings

from fhir_alliance.cli import main

PREFIX = "FHIR_ALLIANCE_"


@pytest.fixture
def listening() -> Iterator[str]:
    """An address some other process (here: a socket of ours) already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_metrics_address_in_use_stops_the_worker_with_one_line(
    sqlite_url: str,
    listening: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith(PREFIX) and name != "FHIR_ALLIANCE_TEST_BASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", "http://127.0.0.1:9/fhir")
    monkeypatch.setenv("FHIR_ALLIANCE_RECIPIENTS", "Organization/demo-ehr")
    monkeypatch.setenv("FHIR_ALLIANCE_WORKER_METRICS_BIND", listening)
    assert main(["worker", "--no-pull"]) == 2
    err = capfd.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: FHIR_ALLIANCE_WORKER_METRICS_BIND: ")
    assert listening in line
    assert "in use" in line
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["127.0.0.1:99999", "127.0.0.1:0", "localhost", "unix:/run/m"])
def test_a_bad_metrics_address_is_refused_without_offering_unix_path(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({f"{PREFIX}WORKER_METRICS_BIND": value})
    message = str(caught.value)
    assert message.startswith("FHIR_ALLIANCE_WORKER_METRICS_BIND: expected host:port")
    assert "or unix:PATH" not in message
    assert repr(value) in message


@pytest.mark.parametrize("by_option", [False, True], ids=["setting", "option"])
def test_serve_on_an_address_in_use_stops_at_once_naming_the_setting(
    sqlite_url: str,
    listening: str,
    by_option: bool,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``serve`` on a port another process holds (a second ``serve``, the 8080 default taken):
    gunicorn retried for about 5 s and exited 1 with its own lines, naming neither
    FHIR_ALLIANCE_BIND nor ``--bind``. Now one line naming the one that gave the address, exit 2,
    before gunicorn starts."""
    for name in list(os.environ):
        if name.startswith(PREFIX) and name != "FHIR_ALLIANCE_TEST_BASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", sqlite_url)
    assert main(["db", "upgrade"]) == 0
    capfd.readouterr()
    if by_option:
        status = main(["serve", "--bind", listening, "--workers", "1"])
    else:
        monkeypatch.setenv("FHIR_ALLIANCE_BIND", listening)
        status = main(["serve", "--workers", "1"])
    assert status == 2
    err = capfd.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: --bind: " if by_option else "error: FHIR_ALLIANCE_BIND: ")
    assert listening in line and "in use" in line
    assert "Traceback" not in err
