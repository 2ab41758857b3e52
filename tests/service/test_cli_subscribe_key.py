"""``fhir-alliance subscribe --key-env VARIABLE`` checks the key it is about to store in the
Subscription on the FHIR server (where anyone who can read that Subscription can read the key)
against the service's store: one ``warning:`` line on stderr when the key can do more than deliver
notifications (or cannot deliver them), never the key itself; registration goes on as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from fhir_alliance_service.auth import create_api_key, parse_api_key
from fhir_alliance_service.store.interface import Store
from pytest_httpserver import HTTPServer

from fhir_alliance.cli import main
from tests.service.conftest import answer_metadata

pytestmark = pytest.mark.usefixtures("root_logging_restored")

ENDPOINT = "https://sync.clinic.example/v1/fhir/notifications"
VARIABLE = "SYNC_NOTIFY_KEY"


@pytest.fixture
def fhir_server(
    database: str, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> HTTPServer:
    """A FHIR server whose CapabilityStatement offers no Subscription: ``subscribe`` reads it,
    registers nothing and exits 1, after its check of the key. (After ``database``, which clears
    every other FHIR_ALLIANCE_* setting.)"""
    answer_metadata(httpserver)
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", httpserver.url_for("/fhir"))
    monkeypatch.setenv("FHIR_ALLIANCE_RECIPIENTS", "Organization/demo-ehr")
    return httpserver


def _subscribe(monkeypatch: pytest.MonkeyPatch, key: str) -> int:
    monkeypatch.setenv(VARIABLE, key)
    return main(["subscribe", "--endpoint", ENDPOINT, "--key-env", VARIABLE])


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


@pytest.mark.usefixtures("fhir_server")
def test_a_notify_key_is_stored_without_a_warning(
    opened: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key of scope notify only is what the Subscription should carry: nothing to say."""
    key = create_api_key(opened, "ehr subscription", ["notify"])
    assert _subscribe(monkeypatch, key) == 1  # the server offers no Subscription, as before
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.usefixtures("fhir_server")
@pytest.mark.parametrize("scopes", [["write"], ["admin"], ["notify", "read"]])
def test_a_key_that_can_do_more_than_notify_is_warned_about(
    opened: Store,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    scopes: list[str],
) -> None:
    """A key with more than notify (a write key could post records and consents): one warning
    line naming the variable, the key's public id and scopes, and recommending a notify key;
    neither the key nor its secret is printed."""
    key = create_api_key(opened, "ehr subscription", scopes)
    key_id, secret = parse_api_key(key) or ("", "")
    assert _subscribe(monkeypatch, key) == 1
    captured = capsys.readouterr()
    [warning] = _warnings(captured.err)
    assert VARIABLE in warning and key_id in warning
    assert ", ".join(sorted(scopes)) in warning
    assert "--scope notify" in warning
    assert secret not in captured.out + captured.err


@pytest.mark.usefixtures("fhir_server")
def test_a_key_without_notify_is_warned_about(
    opened: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key the notification endpoint would refuse (here consult only): the warning says every
    notification would be refused (403)."""
    key = create_api_key(opened, "ehr subscription", ["consult"])
    assert _subscribe(monkeypatch, key) == 1
    [warning] = _warnings(capsys.readouterr().err)
    assert "403" in warning and "--scope notify" in warning


@pytest.mark.usefixtures("fhir_server")
@pytest.mark.parametrize("revoked", [False, True], ids=["unknown", "revoked"])
def test_a_key_the_store_does_not_accept_is_warned_about(
    opened: Store,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    revoked: bool,
) -> None:
    """A key that is not in the store (mistyped, another service's) or is revoked: every
    notification would be refused (401); the warning says so without the key."""
    from datetime import UTC, datetime

    key = create_api_key(opened, "ehr subscription", ["notify"])
    key_id, secret = parse_api_key(key) or ("", "")
    if revoked:
        assert opened.revoke_api_key(key_id, at=datetime.now(UTC))
    else:
        key = f"{key_id}_{'A' * len(secret)}"
    assert _subscribe(monkeypatch, key) == 1
    captured = capsys.readouterr()
    [warning] = _warnings(captured.err)
    assert VARIABLE in warning and "401" in warning
    assert secret not in captured.out + captured.err and key not in captured.err


def test_a_store_that_cannot_be_read_does_not_stop_the_registration(
    fhir_server: HTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run where the service's store is not (no database there): the key cannot be checked, a
    warning says so, and the command goes on to the server as before."""
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    assert _subscribe(monkeypatch, "fa_0123456789ab_secret-of-nothing") == 1
    captured = capsys.readouterr()
    [warning] = _warnings(captured.err)
    assert "could not be checked" in warning and "notify" in warning
    assert "secret-of-nothing" not in captured.out + captured.err
    assert any(request.path == "/fhir/metadata" for request, _ in fhir_server.log)
    assert not (tmp_path / "none.db").exists()
