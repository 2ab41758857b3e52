"""Push Observations to the test FHIR server: transaction Bundles (ours) vs one POST per resource.

Runs on its own (``python benchmarks/bench_client_push.py [--quick] [--count N] [--chunk N]``) or
through ``benchmarks/run.py`` via :func:`run`. Uses ``FHIR_ALLIANCE_TEST_BASE_URL`` if set (its store
is NOT reset: point it only at a disposable server), else starts the suite's local server. Both
phases use one client (one keep-alive Session) and start from an empty store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_alliance.client import BundleRequest, FhirClient, WriteStrategy, deterministic_id  # noqa: E402
from fhir_alliance.model.common import Identifier  # noqa: E402
from fhir_alliance.terminology import (  # noqa: E402
    IDENTIFIER_SYSTEM_BASE,
    LABEL_BEHAVIORAL_HEALTH,
    LABEL_TEST_DATA,
    OBSERVATION_CATEGORY,
)

SERVER_DIR = ROOT / "tests" / "fhir_server"
TARGET_RATIO = 5.0
SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/bench"


@contextmanager
def fhir_server() -> Iterator[tuple[str, bool]]:
    """(base URL, is_local): the env's server, or a local one that stops when we do."""
    remote = os.environ.get("FHIR_ALLIANCE_TEST_BASE_URL", "").strip()
    if remote:
        yield remote.rstrip("/"), False
        return
    node = shutil.which("node")
    if node is None or not (SERVER_DIR / "node_modules").is_dir():
        raise SystemExit(
            "the test FHIR server needs Node and `make install` (or set FHIR_ALLIANCE_TEST_BASE_URL)"
        )
    process = subprocess.Popen(
        [node, str(SERVER_DIR / "server.mjs"), "--port", "0"],
        cwd=SERVER_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("FHIR_TEST_SERVER "):
            raise SystemExit(f"test FHIR server did not start: {line!r}")
        base = line.split(maxsplit=1)[1].strip()
        for _ in range(100):
            try:
                if requests.get(f"{base}/metadata", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        yield base, True
    finally:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def observations(count: int, run: str) -> list[dict[str, Any]]:
    """Realistic alliance ratings (synthetic): identifier, category, code, subject, value, labels."""
    return [
        {
            "resourceType": "Observation",
            "meta": {
                "security": [
                    {"system": LABEL_BEHAVIORAL_HEALTH[0], "code": LABEL_BEHAVIORAL_HEALTH[1]},
                    {"system": LABEL_TEST_DATA[0], "code": LABEL_TEST_DATA[1]},
                ]
            },
            "identifier": [{"system": SYSTEM, "value": f"{run}-{i}"}],
            "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey"}]}],
            "code": {
                "coding": [
                    {
                        "system": "https://fhir-alliance.org/fhir/CodeSystem/alliance-dimensions",
                        "code": "trust",
                    }
                ]
            },
            "subject": {
                "type": "Patient",
                "identifier": {"system": f"{SYSTEM}-patient", "value": str(i % 97)},
            },
            "effectiveDateTime": "2026-11-20T16:05:00+00:00",
            "valueInteger": 1 + i % 5,
        }
        for i in range(count)
    ]


def _reset(client: FhirClient, is_local: bool) -> None:
    if is_local:
        client.session.post(client.base.join("$reset"), timeout=30).raise_for_status()


def measure(count: int, chunk: int) -> dict[str, Any]:
    with fhir_server() as (base, is_local), FhirClient(base, timeout=(5, 120)) as client:
        strategy = client.capabilities().write_strategy("Observation")
        use_put = strategy is WriteStrategy.PUT_DETERMINISTIC_ID

        # Warm both paths (server JIT, connection) so neither phase pays for a cold start.
        _reset(client, is_local)
        warm = observations(200, uuid.uuid4().hex)
        for resource in warm:
            client.create(resource)
        client.transaction([BundleRequest.create(r) for r in warm], chunk_size=chunk)

        _reset(client, is_local)
        batch = observations(count, uuid.uuid4().hex)
        start = time.perf_counter()
        for resource in batch:
            client.create(resource)
        baseline = count / (time.perf_counter() - start)

        _reset(client, is_local)
        batch = observations(count, uuid.uuid4().hex)
        if use_put:
            requests_ = [
                BundleRequest.put(
                    r | {"id": deterministic_id("Observation", Identifier(**r["identifier"][0]))}
                )
                for r in batch
            ]
        else:
            requests_ = [BundleRequest.create(r) for r in batch]
        start = time.perf_counter()
        outcomes = client.transaction(requests_, chunk_size=chunk)
        ours = count / (time.perf_counter() - start)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise SystemExit(f"{len(failed)} transaction entries failed (first: {failed[0].error})")
        _reset(client, is_local)
    return {
        "name": f"push {count} Observations: transaction Bundles of {chunk} "
        f"({'PUT deterministic id' if use_put else 'POST'}) vs one POST each",
        "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "unit": "resources/s",
        "ratio": round(ours / baseline, 2),
        "target_ratio": TARGET_RATIO,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement."""
    return [measure(1000 if quick else 5000, 100)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 resources instead of 5,000")
    parser.add_argument("--count", type=int)
    parser.add_argument("--chunk", type=int, default=100, help="entries per transaction Bundle")
    args = parser.parse_args()
    count = args.count or (1000 if args.quick else 5000)
    results = [measure(count, args.chunk)]
    print(
        f"{'benchmark':<90} {'ours':>10} {'baseline':>10} {'unit':>12} {'ratio':>7} {'target':>7}"
    )
    for r in results:
        print(
            f"{r['name']:<90} {r['ours']:>10} {r['baseline']:>10} {r['unit']:>12} "
            f"{r['ratio']:>6}x {r['target_ratio']:>6}x"
        )
    return 0 if all(r["ratio"] >= r["target_ratio"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
