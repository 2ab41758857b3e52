"""``fhir-alliance load`` (``cli_load.py``) at its limits: an NDJSON line over the size cap, and the
SQLite store's write turn not obtained in time (another program writing the same file)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.cli_load import FileFormatError, read_records
from fhir_alliance_service.store import SqlStore

from fhir_alliance.cli import main
from fhir_alliance.jsonio import DEFAULT_MAX_BYTES
from tests.service.sync import records as R

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
