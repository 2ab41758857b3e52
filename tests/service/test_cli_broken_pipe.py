"""The service's commands into a reader that stops reading early: exit 141 quietly, as the
library's (tests/test_cli_broken_pipe.py); they run through the same ``main``."""

from __future__ import annotations

import pytest

from fhir_alliance.cli import EXIT_BROKEN_PIPE
from tests.test_cli_broken_pipe import read_then_close


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("command", [["status", "--json"], ["list-api-keys"], ["db", "current"]])
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_service_command_into_a_reader_already_gone_exits_141_quietly(
    command: list[str], unbuffered: bool
) -> None:
    """``fhir-alliance status --json | true`` printed a BrokenPipeError traceback, exit 1 (with
    ``PYTHONUNBUFFERED``; without, "Exception ignored … BrokenPipeError" at exit, status 120)."""
    _, status, err = read_then_close(command, keep=0, unbuffered=unbuffered)
    assert (status, err) == (EXIT_BROKEN_PIPE, ""), err
