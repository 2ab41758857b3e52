"""``make demo-console``: the demo ends by printing the console's URL and a sign-in key, keeps the
service running until interrupted, and then leaves nothing running."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.fhir_server.plugin import FhirTestServer

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "examples" / "demo_sync.py"
READY_TIMEOUT = 150.0


@pytest.mark.slow
@pytest.mark.local_fhir_server  # the demo pushes untagged data: only on the suite's own server
def test_demo_console_keeps_the_service_until_interrupted(fhir_server: FhirTestServer) -> None:
    """With --console the printed key signs in to the printed console URL; Ctrl-C stops all."""
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--console", "--base-url", fhir_server.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(output)
        assert "press Ctrl-C" in text, text
        url = re.search(r"the clinic console: (\S+)", text)
        key = re.search(r"shown once, stored hashed\): (\S+)", text)
        assert url and key, text
        with requests.Session() as browser:
            form = browser.get(url.group(1) + "sign-in", timeout=10)
            token = re.search(r'name="sign_in_token" value="([^"]+)"', form.text)
            assert token is not None
            overview = browser.post(
                url.group(1) + "sign-in",
                data={"api_key": key.group(1), "sign_in_token": token.group(1)},
                timeout=30,
            )
            assert overview.status_code == 200 and "Sync overview" in overview.text
            assert process.poll() is None  # still running after the demo's steps
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, text + rest
        assert "stopped the service and its worker" in rest
        with pytest.raises(requests.ConnectionError):
            requests.get(url.group(1) + "sign-in", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
