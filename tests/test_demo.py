"""`make demo` stays true: the demo sync runs end to end against the real test FHIR server."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fhir_server.plugin import FhirTestServer

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo_sync.py"


def _demo() -> Any:
    spec = importlib.util.spec_from_file_location("demo_sync", DEMO)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_sync"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.local_fhir_server  # it pushes untagged demo data: only on the suite's own server
def test_demo_sync_passes_every_step(
    fhir_server: FhirTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo gates, pushes, reads back, re-pushes, revokes and checks, and exits 0."""
    assert _demo().run(fhir_server.base_url) == 0
    out = capsys.readouterr().out
    assert "equals its source: True" in out
    assert "after the client's revocation: 0 may be disclosed" in out
    assert "RESULT: PASS" in out
    pushed = fhir_server.http.get(fhir_server.url("Observation"), params={"_summary": "count"})
    held_lines = [line for line in out.splitlines() if line.strip().startswith("held")]
    assert held_lines, "the demo consent holds PSYTHPN and AI-assisted content"
    assert pushed.json()["total"] > 0
