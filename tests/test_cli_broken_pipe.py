"""A reader that stops reading early (``fhir-alliance map … | head -c 10``): the command ends
quietly with exit status 141, as a tool that SIGPIPE ends does, never with a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_alliance.cli import EXIT_BROKEN_PIPE

RECORD = json.loads(
    (Path(__file__).parents[1] / "examples/observations/srs-administration.json").read_text("utf-8")
)


def read_then_close(
    args: list[str], keep: int, *, unbuffered: bool = False
) -> tuple[bytes, int, str]:
    """Run ``fhir-alliance ARGS`` with its stdout into a pipe, read ``keep`` bytes of it (none:
    the pipe is closed before the command starts writing), close the pipe, and give what was read,
    the exit status and stderr. ``unbuffered``: with ``PYTHONUNBUFFERED=1`` (as containers often
    set), else without."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_alliance", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    with process.stdout, process.stderr:
        head = process.stdout.read(keep) if keep else b""
        process.stdout.close()
        err = process.stderr.read().decode("utf-8")
    return head, process.wait(timeout=120), err


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_map_into_a_reader_that_stops_after_ten_bytes_exits_141_quietly(
    tmp_path: Path, unbuffered: bool
) -> None:
    """300 records map to far more lines than a pipe holds: past the reader's ten bytes the
    command's writes fail. It printed ``BrokenPipeError`` with a traceback, exit 1."""
    records = tmp_path / "records.ndjson"
    lines = (json.dumps({**RECORD, "id": f"{RECORD['id']}-{n}"}) for n in range(300))
    records.write_text("\n".join(lines) + "\n", encoding="utf-8")
    head, status, err = read_then_close(
        ["map", "--ndjson", str(records)], keep=10, unbuffered=unbuffered
    )
    assert head == b'{"resource'
    assert (status, err) == (EXIT_BROKEN_PIPE, ""), err


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_map_into_a_reader_already_gone_exits_141_quietly(unbuffered: bool) -> None:
    """The reader closed before the command writes (``| true``): one small Bundle, and its one
    write fails."""
    example = Path(__file__).parents[1] / "examples/quickstart/sharing-consent.json"
    _, status, err = read_then_close(["map", str(example)], keep=0, unbuffered=unbuffered)
    assert (status, err) == (EXIT_BROKEN_PIPE, ""), err
