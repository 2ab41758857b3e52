"""``fhir-alliance load`` (``cli_load.py``) at its limits: an NDJSON line over the size cap, the
SQLite store's write turn not obtained in time (another program writing the same file), and
another intake of the same record between a batch's read and its write."""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.cli_load import FileFormatError, read_records
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.usecases import intake
from fhir_alliance_service.usecases.intake import intake_records

from fhir_alliance.cli import main
from fhir_alliance.jsonio import DEFAULT_MAX_BYTES
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.model.common import Identifier
from tests.service.sync import records as R
from tests.service.test_review_store_sqlite_lock import (
    nobody_holds_the_write_lock,
    outside_write_lock,
)

pytestmark = pytest.mark.usefixtures("root_logging_restored")

PATIENT = "Patient/load-1"
MiB = 1024 * 1024


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode("utf-8") + b"\n"


def _padded(record: dict[str, Any], size: int) -> bytes:
    """``record`` as one NDJSON line of exactly ``size`` bytes before its newline (JSON allows
    the spaces that pad it)."""
    text = json.dumps(record).encode("utf-8")
    assert len(text) <= size
    return text[:-1] + b" " * (size - len(text)) + b"}\n"


def test_an_ndjson_line_over_the_cap_of_a_json_file_is_reported_by_file_and_line(
    opened: SqlStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line is one record, capped like a whole ``.json`` file (``DEFAULT_MAX_BYTES``): line 2,
    one byte over it, is reported as ``file:2`` and stops that file (like a line that is not
    JSON); line 1 is stored, line 3 is not read, nothing of the long line is echoed."""
    path = tmp_path / "sessions.ndjson"
    with path.open("wb") as handle:
        handle.write(_line(R.rating("cap", 1, PATIENT)))
        handle.write(b'{"kind": "' + b"x" * (DEFAULT_MAX_BYTES - 10) + b'"}\n')
        handle.write(_line(R.rating("cap", 3, PATIENT)))
    assert main(["load", str(path), "--batch-size", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: line longer than {DEFAULT_MAX_BYTES} bytes" in out, out[:2000]
    assert "xxxx" not in out
    assert "loaded 1 record(s)" in out
    assert [r.identifier for r in opened.list_records(limit=10)] == [R.rating("cap", 1)["id"]]


def test_a_line_of_exactly_the_cap_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    """The cap counts a line's bytes without its newline: at the cap the record is read, one
    byte over it the line is refused as ``file:line``."""
    record = R.rating("cap", 1, PATIENT)
    path = tmp_path / "edge.ndjson"
    path.write_bytes(_padded(record, 4096) + _padded(record, 4097))
    read = read_records(path, max_line_bytes=4096)
    assert next(read).payload == record
    with pytest.raises(FileFormatError, match=rf"^{path}:2: line longer than 4096 bytes"):
        next(read)


def test_an_overlong_line_is_not_read_whole_into_memory(tmp_path: Path) -> None:
    """Reading a 48 MiB line under a 1 MiB cap holds about the cap, not the line."""
    path = tmp_path / "long.ndjson"
    with path.open("wb") as handle:
        handle.write(b'{"kind": "')
        for _ in range(48):
            handle.write(b"x" * MiB)
        handle.write(b'"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError, match=rf"^{path}:1: line longer than {MiB} bytes"):
            list(read_records(path, max_line_bytes=MiB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak


def test_the_write_turn_not_obtained_stops_the_load_with_one_line_and_what_was_stored(
    opened: SqlStore,
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another program holds the SQLite write lock while the second batch is stored: that batch
    waits ``FHIR_ALLIANCE_SQLITE_WRITE_WAIT_SECONDS`` and writes nothing; the load stops there
    (the next batches would wait as long) with the summary of the first batch on stdout, one
    ``error:`` line naming the batch on stderr, no traceback, exit 1. Loading again once the
    lock is gone stores the rest."""
    monkeypatch.setenv("FHIR_ALLIANCE_SQLITE_WRITE_WAIT_SECONDS", "0.3")
    path = tmp_path / "sessions.ndjson"
    path.write_bytes(b"".join(_line(R.rating("busy", n, PATIENT)) for n in range(6)))
    real = intake.intake_records
    calls: list[int] = []

    def another_program_writes_during_the_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) != 2:
            return real(*args, **kwargs)
        with outside_write_lock(database):
            return real(*args, **kwargs)

    monkeypatch.setattr(intake, "intake_records", another_program_writes_during_the_second_batch)
    code = main(["load", str(path), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "Traceback" not in captured.err
    assert captured.out.startswith("loaded 2 record(s) (created 2)"), captured
    [error] = captured.err.splitlines()
    assert error.startswith(f"error: stopped at {path}:3..4: timed out after 0.3 s"), error
    assert "nothing was written" in error
    assert len(calls) == 2  # the third batch was not tried
    assert len(opened.list_records(limit=10)) == 2
    assert nobody_holds_the_write_lock(database)

    monkeypatch.setattr(intake, "intake_records", real)
    assert main(["load", str(path), "--batch-size", "2"]) == 0
    assert "created 4, unchanged 2" in capsys.readouterr().out


def test_a_record_another_intake_changed_meanwhile_is_audited_at_the_version_loaded(
    opened: SqlStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another intake stores the record ``load`` is storing between the batch's read of the
    store and its write: ``load`` writes version 2, and its ``intake`` event names version 2
    (it named version 1, under the other intake's event id), with no warning."""
    path = tmp_path / "sessions.ndjson"
    path.write_bytes(_line(R.rating("race", 1, PATIENT, value=5)))
    put_records = SqlStore.put_records
    racing: list[bool] = []

    def with_a_concurrent_intake(self: SqlStore, records: Any, **kwargs: Any) -> Any:
        if not racing:  # once: the other intake's own write goes straight through
            racing.append(True)
            intake_records(self, [R.rating("race", 1, PATIENT, value=2)], at=kwargs["at"])
        return put_records(self, records, **kwargs)

    monkeypatch.setattr(SqlStore, "put_records", with_a_concurrent_intake)
    assert main(["load", str(path)]) == 0
    captured = capsys.readouterr()
    assert "loaded 1 record(s) (updated 1)" in captured.out, captured.out
    assert captured.err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    record_id = resource_id(Identifier.parse(R.rating("race", 1)["id"]))
    events = opened.list_audit(record_id=record_id)
    versions = sorted(
        detail["valueString"]
        for event in events
        for entity in event.resource["entity"]
        for detail in entity.get("detail", ())
        if detail["type"] == "version"
    )
    assert versions == ["1", "2"]
    assert len({event.resource["id"] for event in events}) == 2
