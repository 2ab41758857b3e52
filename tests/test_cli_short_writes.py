"""``fhir-alliance map`` to stdout writes everything, also where one write takes only part of
what it is given: under ``PYTHONUNBUFFERED`` stdout's byte layer is the unbuffered file itself,
one ``write(2)`` a call, which a pipe (a non-blocking one, or a signal) may cut short."""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fhir_alliance.cli import main

RECORD = json.loads(
    (Path(__file__).parents[1] / "examples/observations/srs-administration.json").read_text("utf-8")
)


def _records(path: Path, count: int) -> Path:
    lines = (json.dumps({**RECORD, "id": f"{RECORD['id']}-{n}"}) for n in range(count))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class _ShortWrites(io.RawIOBase):
    """An unbuffered output that takes at most ``most`` bytes a call, as ``write(2)`` may."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.taken = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        part = bytes(memoryview(data))[: self.most]  # type: ignore[arg-type]
        self.taken += part
        return len(part)


@pytest.mark.parametrize("args", [["--ndjson"], []], ids=["ndjson", "bundle"])
def test_map_to_an_output_taking_part_of_each_write_writes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """stdout as ``-u`` makes it (text over an unbuffered byte layer) whose writes take 1,000
    bytes at most: the output is the whole of what ``--output FILE`` writes. Only each write's
    first 1,000 bytes came out, without a word."""
    records = _records(tmp_path / "records.ndjson", 50)
    expected = tmp_path / "expected"
    assert main(["map", *args, "--output", str(expected), str(records)]) == 0
    raw = _ShortWrites(1000)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, write_through=True))
    assert main(["map", *args, str(records)]) == 0
    assert bytes(raw.taken) == expected.read_bytes()


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_map_into_a_non_blocking_pipe_read_slowly_writes_everything(
    tmp_path: Path, unbuffered: bool
) -> None:
    """A real pipe whose writing end is non-blocking (a parent such as Node.js may leave it so)
    and a reader slower than the command: a write into a nearly full pipe takes part, the next
    one none, and the command waits and writes the rest. With ``PYTHONUNBUFFERED=1`` most of the
    output was lost, exit 0; without it, ``BlockingIOError`` ended it with a traceback, exit 1."""
    records = _records(tmp_path / "records.ndjson", 300)
    expected = tmp_path / "expected.ndjson"
    assert main(["map", "--ndjson", "--output", str(expected), str(records)]) == 0
    assert expected.stat().st_size > 4 * 65536  # far more than a pipe holds
    received, status, err = _run_into_a_slow_non_blocking_pipe(
        [sys.executable, "-m", "fhir_alliance", "map", "--ndjson", str(records)], unbuffered
    )
    assert (status, err) == (0, "")
    assert received == expected.read_bytes()


BATCH = Path(__file__).parents[1] / "examples/decisions/requests/batch.jsonl"
CONSENTS = Path(__file__).parents[1] / "examples/decisions/consents/records.json"


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_any_command_printing_into_a_non_blocking_pipe_read_slowly_writes_everything(
    tmp_path: Path, unbuffered: bool
) -> None:
    """What a command prints (here ``decide --batch``: one ``print`` an answer) reaches a
    non-blocking pipe whole. Python's text layer drops what a short write left over, and a full
    non-blocking pipe raises ``BlockingIOError`` out of ``print``: with ``PYTHONUNBUFFERED=1``
    most of the answers were lost, exit 0; without it, a traceback. ``map`` alone wrote
    everything (its own writes); the command line now gives every command such a stdout."""
    requests = tmp_path / "requests.jsonl"
    lines = BATCH.read_text("utf-8").splitlines()
    requests.write_text("\n".join(lines * 1500) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "fhir_alliance", "decide", "--batch", "-r", str(requests)]
    command.append(str(CONSENTS))
    expected = subprocess.run(command, capture_output=True, check=True).stdout
    assert len(expected) > 4 * 65536  # far more than a pipe holds
    received, status, err = _run_into_a_slow_non_blocking_pipe(command, unbuffered)
    assert (status, err[-300:]) == (0, "")
    assert received == expected


def _run_into_a_slow_non_blocking_pipe(
    command: list[str], unbuffered: bool
) -> tuple[bytes, int, str]:
    """Run ``command`` with its stdout the non-blocking writing end of a pipe (``PYTHONUNBUFFERED``
    set or not) read by a reader slower than the command, which lets the pipe fill up first:
    what the reader got, the exit status and stderr."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        process = subprocess.Popen(command, stdout=write_end, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(write_end)
    received = bytearray()

    def read_slowly() -> None:
        time.sleep(0.5)  # the pipe fills up first
        while chunk := os.read(read_end, 16384):
            received.extend(chunk)
            time.sleep(0.01)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        assert process.stderr is not None
        with process.stderr:
            err = process.stderr.read().decode("utf-8")
        status = process.wait(timeout=120)
        reader.join(timeout=120)
    finally:
        os.close(read_end)
    return bytes(received), status, err
