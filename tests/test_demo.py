"""`make demo` stays true: the service, its worker and the synthetic clinic sync end to end against
the real test FHIR server, and nothing is left running."""

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


def _processes_using(workdir: Path) -> list[int]:
    """Pids of live processes whose environment names the demo's working directory."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if str(workdir).encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue  # gone meanwhile, or not ours
    return pids


@pytest.mark.slow
@pytest.mark.local_fhir_server  # it pushes untagged demo data: only on the suite's own server
def test_demo_clinic_syncs_through_the_service(
    fhir_server: FhirTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The clinic goes through serve + worker: shares are sent, PSYTHPN, AI and revoked held."""
    demo = _demo()
    seen: list[Any] = []
    status = demo.run(fhir_server.base_url, observe=seen.append)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "NOT as expected" not in out
    assert "the queue is drained" in out
    # Without --console the service is stopped at the end: no sign-in key for it is printed.
    assert "sign in with this key" not in out and "make demo-console" in out
    assert "the decision for the EHR is now no-consent" in out
    held = [line for line in out.splitlines() if line.strip().startswith("held")]
    assert any("rupture" in line for line in held)
    assert any("session-2: no consent" in line and "client-3" in line for line in held)
    sent = [line for line in out.splitlines() if line.strip().startswith("sent")]
    assert sent and all(fhir_server.base_url in line for line in sent)
    # Client 2 declined an intervention: a treatment consent never decides a disclosure.
    assert not any("client-2" in line for line in held)
    assert any("srs-client-2" in line for line in sent)
    rupture = next(r for r in demo._load("2-sessions.json") if r["kind"] == "rupture")
    on_server = fhir_server.http.get(
        fhir_server.url("Observation"), params={"identifier": rupture["id"], "_summary": "count"}
    ).json()
    assert on_server["total"] == 0, "held session narrative must not reach the server"
    srs = next(r for r in demo._load("2-sessions.json") if r.get("instrument") == "srs")
    on_server = fhir_server.http.get(
        fhir_server.url("Observation"), params={"identifier": srs["id"], "_summary": "count"}
    ).json()
    assert on_server["total"] == 1
    (service,) = seen
    assert all(process.poll() is not None for process in service.processes.values())
    assert _processes_using(service.workdir) == [], "the demo left service processes running"
