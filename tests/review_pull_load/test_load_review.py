"""Outside review of ``fhir-alliance load``: what an interrupted load reports, and a file that
holds the same record twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.usecases import intake

from fhir_alliance.cli import main
from tests.service.sync import records as R

pytestmark = pytest.mark.usefixtures("root_logging_restored")

PATIENT = "Patient/load-1"


def _ndjson(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_ctrl_c_mid_load_says_what_was_stored(
    opened: SqlStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C while the second batch is stored: the first batch is committed (and stays), so the
    operator is told how many records were loaded before the interrupt (the CLI's contract:
    "the command has said what it left undone before letting it through"). Found: only
    ``interrupted``; nothing says two records were stored."""
    path = _ndjson(tmp_path / "sessions.ndjson", [R.rating("ld", n, PATIENT) for n in range(4)])
    real = intake.intake_records
    calls: list[int] = []

    def interrupted_on_the_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return real(*args, **kwargs)

    monkeypatch.setattr(intake, "intake_records", interrupted_on_the_second_batch)
    assert main(["load", str(path), "--batch-size", "2"]) == 130
    captured = capsys.readouterr()
    assert len(opened.list_records(limit=10)) == 2  # the first batch is committed
    assert "loaded 2 record(s)" in captured.out + captured.err, captured


@pytest.mark.parametrize("batch_size", ["1", "500"])
def test_the_same_record_twice_in_one_file_is_reported_whatever_the_batch_size(
    sqlite_url: str,
    database: str,
    tmp_path: Path,
    batch_size: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file with one record id on two lines and two different contents (a copy-paste slip, an
    export that repeats a row): what ``load`` does must not depend on ``--batch-size``. In one
    batch it is refused (``the same record id appears twice``, exit 1); found: in two batches the
    second silently replaces the first as version 2 (exit 0, nothing reported)."""
    first = R.rating("ld", 1, PATIENT, value=4)
    again = R.rating("ld", 1, PATIENT, value=1)
    path = _ndjson(tmp_path / "twice.ndjson", [first, again])
    code = main(["load", str(path), "--batch-size", batch_size])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"{path}:2: id: the same record id appears twice" in out
    store = open_store(sqlite_url)
    try:
        versions = [r.version for r in store.list_records(limit=10)]
    finally:
        store.close()
    assert 2 not in versions
