"""Review findings on the service's commands (clinic operator): ``replay`` of a record that is not
dead-lettered says why, ``load`` stores nothing of the batch an unparsable NDJSON line falls in,
``serve --bind`` is checked as FHIR_ALLIANCE_BIND is, and an unusable SMART private key file stops
``worker`` with one line naming FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir_alliance_service.store import SyncState
from fhir_alliance_service.store.interface import Store

from fhir_alliance.cli import main

pytestmark = pytest.mark.usefixtures("root_logging_restored")

ROOT = Path(__file__).resolve().parents[2]
CLINIC = ROOT / "examples" / "demo" / "clinic"
SESSIONS = json.loads((CLINIC / "2-sessions.json").read_text(encoding="utf-8"))
CONSENTS = json.loads((CLINIC / "1-consents.json").read_text(encoding="utf-8"))


def test_replay_of_a_record_that_is_not_dead_lettered_says_its_state(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A queued record: exit 1 and one line on stderr naming its state; no 're-queued 0'."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    capsys.readouterr()
    record_id = opened.list_records(limit=1)[0].record_id
    assert main(["replay", record_id]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: record {record_id} is queued, not dead-lettered")


def test_replay_of_a_held_record_names_the_held_reason(
    opened: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A held record: the line says held and why."""
    assert main(["load", str(CLINIC / "1-consents.json")]) == 0
    capsys.readouterr()
    now = datetime.now(UTC)
    (item,) = opened.claim("w", limit=1, lease_seconds=60, now=now)
    assert opened.mark_held(item.item_id, "w", reason="no consent permits it", audit=[], at=now)
    assert main(["replay", item.record_id]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"record {item.record_id} is held (no consent permits it), not dead-lettered" in err


# -- 3. load: an unparsable NDJSON line ---------------------------------------------------------


def _ndjson(path: Path, lines: list[Any]) -> Path:
    """Records as JSON lines; a str entry is written as it is (a broken line)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_broken_second_line_stores_nothing_of_its_batch(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Line 1 good, line 2 not JSON, one batch: nothing is stored; the report names line 2."""
    path = _ndjson(tmp_path / "sessions.ndjson", [SESSIONS[0], "{not json", SESSIONS[1]])
    assert main(["load", str(path)]) == 1
    out = capsys.readouterr().out
    assert opened.list_records(limit=100) == []
    assert "loaded 0 record(s)" in out
    assert "NOT loaded: 1 record(s)" in out
    problems = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:2: ")
    assert "not loaded: the 1 record(s) of this line's batch read before it" in problems[0]


def test_a_broken_line_costs_its_batch_and_the_rest_of_its_file_only(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batches of 2, line 4 broken: lines 1-2 (an earlier batch) are stored, line 3 (its batch)
    and line 5 (the rest of the file) are not; the next file loads."""
    records = [dict(r) for r in SESSIONS[:4]]
    path = _ndjson(tmp_path / "a.ndjson", [records[0], records[1], records[2], "{", records[3]])
    assert main(["load", str(path), str(CLINIC / "1-consents.json"), "--batch-size", "2"]) == 1
    out = capsys.readouterr().out
    stored = {r.identifier for r in opened.list_records(limit=100) if r.family != "consent"}
    assert stored == {records[0]["id"], records[1]["id"]}
    consents = [r for r in opened.list_records(limit=100) if r.family == "consent"]
    assert len(consents) == len(CONSENTS)
    assert f"{path}:4: " in out
    assert "NOT loaded: 1 record(s)" in out


def test_a_broken_line_at_a_batch_start_keeps_the_batches_before_it(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batches of 2, line 3 broken: its batch holds nothing read before it; lines 1-2 stay."""
    path = _ndjson(tmp_path / "a.ndjson", [SESSIONS[0], SESSIONS[1], "[1,", SESSIONS[2]])
    assert main(["load", str(path), "--batch-size", "2"]) == 1
    out = capsys.readouterr().out
    assert {r.identifier for r in opened.list_records(limit=100)} == {
        SESSIONS[0]["id"],
        SESSIONS[1]["id"],
    }
    assert f"{path}:3: " in out
    assert "the rest of this file is not loaded" in out


# -- 4. serve --bind ----------------------------------------------------------------------------


def test_serve_bind_option_is_checked_like_the_setting(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --bind nonsense`: one line naming --bind, exit 2, and gunicorn never starts."""
    import fhir_alliance_service.cli_serve as cli_serve

    started: list[str] = []

    def fake_serve(settings: Any, *, bind: str, workers: int, threads: int | None = None) -> int:
        started.append(bind)
        return 0

    monkeypatch.setattr(cli_serve, "serve", fake_serve)
    # "host:\u00b2": a superscript passes str.isdigit() but not int() (it was a traceback).
    for bad in ("nonsense", "host:0", "host:http", ":8000", "unix:", "host:\u00b2"):
        assert main(["serve", "--bind", bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith("error: --bind: expected host:port or unix:PATH")
    assert started == []
    assert main(["serve", "--bind", " 127.0.0.1:8123 "]) == 0
    assert main(["serve", "--bind", "unix:/tmp/fhir-alliance.sock"]) == 0
    assert started == ["127.0.0.1:8123", "unix:/tmp/fhir-alliance.sock"]


# -- 5. an unusable SMART private key file -------------------------------------------------------

GARBAGE_KEY = "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZS1ub3QtYS1rZXk=\n-----END PRIVATE KEY-----\n"


def _smart_env(monkeypatch: pytest.MonkeyPatch, key_file: Path, algorithm: str = "RS384") -> None:
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", "http://127.0.0.1:9/fhir")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_AUTH", "smart")
    monkeypatch.setenv("FHIR_ALLIANCE_SMART_CLIENT_ID", "clinic-sync")
    monkeypatch.setenv("FHIR_ALLIANCE_SMART_KEY_ID", "kid-1")
    monkeypatch.setenv("FHIR_ALLIANCE_SMART_ALGORITHM", algorithm)
    monkeypatch.setenv("FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE", str(key_file))


@pytest.mark.parametrize("command", [["worker"], ["sync-once"], ["pull"]])
def test_a_garbage_smart_key_file_stops_with_one_line_naming_the_variable(
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """Exit 2, one line naming FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE; the file's content is never
    printed."""
    key_file = tmp_path / "smart-key.pem"
    key_file.write_text(GARBAGE_KEY, encoding="utf-8")
    key_file.chmod(0o600)
    _smart_env(monkeypatch, key_file)
    assert main(command) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE: ")
    assert "not a readable PEM private key" in captured.err
    assert "Z2FyYmFnZS" not in captured.err + captured.out


def test_a_smart_key_of_the_wrong_kind_names_the_variable_and_the_algorithm(
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An RSA key with ES384: exit 2, one line naming the variable and the algorithm."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file = tmp_path / "rsa.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    _smart_env(monkeypatch, key_file, algorithm="ES384")
    assert main(["worker"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE: ")
    assert "ES384 needs an EC P-384 key" in captured.err
    body = pem.decode().splitlines()[1]
    assert body not in captured.err + captured.out


def test_sessions_are_queued_after_a_clean_load(
    opened: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control: the same file without the broken line loads every record."""
    path = _ndjson(tmp_path / "ok.ndjson", [SESSIONS[0], SESSIONS[1]])
    assert main(["load", str(path)]) == 0
    assert opened.counts_by_state()[SyncState.QUEUED] == 2
