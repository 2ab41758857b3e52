"""Ctrl-C in any command: one line on stderr and exit status 130, never a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fhir_alliance import bulk_push, cli


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``push --bulk`` interrupted (its $import cancel already logged): ``main`` returns 130
    and prints "interrupted"; the KeyboardInterrupt does not escape."""

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(bulk_push, "_run", interrupted)
    try:
        code = cli.main(["push", "--bulk", str(tmp_path), "--base-url", "http://127.0.0.1:9/fhir"])
    except KeyboardInterrupt:  # escaped main: the user would see a traceback
        pytest.fail("KeyboardInterrupt escaped cli.main")
    captured = capsys.readouterr()
    assert code == 130
    assert captured.err == "interrupted\n"
    assert captured.out == ""
