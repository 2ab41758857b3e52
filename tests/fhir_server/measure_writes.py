"""Measure the test server's write throughput: one request per resource vs transaction Bundles.

Run: .venv/bin/python -m tests.fhir_server.measure_writes [--count 2000] [--bundle-size 100]
     [--profiled] [--base-url URL]
Starts the local server unless --base-url is given; prints resources/s and the ratio per write path.
--profiled writes Observations claiming our alliance-item profile (the golden ORS item), so every
write is also validated against that profile.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.fhir_server.plugin import TimeoutSession, start_local_server

FHIR_JSON = {"Content-Type": "application/fhir+json"}
BUNDLE_SIZE = 100
GOLDEN_ITEM = Path(__file__).parents[1] / "golden/observations/r4/ors-administration.json"
PROFILED = False


def observation(i: int, run: str) -> dict[str, Any]:
    if PROFILED:
        return profiled_observation(i, run)
    return {
        "resourceType": "Observation",
        "meta": {"tag": [{"system": "urn:measure", "code": run}]},
        "identifier": [{"system": "urn:measure:obs", "value": f"{run}-{i}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
        "subject": {"reference": f"Patient/p{i % 50}"},
        "effectiveDateTime": "2025-01-01T10:00:00Z",
        "valueInteger": i % 7,
    }


def profiled_observation(i: int, run: str) -> dict[str, Any]:
    """The golden ORS item (profile alliance-item) with its own identifier and patient."""
    items = [
        r
        for r in json.loads(GOLDEN_ITEM.read_text(encoding="utf-8"))
        if r["meta"]["profile"][0].endswith("/alliance-item")
    ]
    body: dict[str, Any] = copy.deepcopy(items[0])
    del body["id"]
    body["meta"]["tag"] = [{"system": "urn:measure", "code": run}]
    body["identifier"][0]["value"] = f"{run}-{i}"
    body["subject"] = {"reference": f"Patient/p{i % 50}"}
    body["performer"] = [body["subject"]]
    return body


def one_by_one(http: requests.Session, base: str, count: int, put: bool) -> None:
    run = str(uuid.uuid4())
    for i in range(count):
        body = observation(i, run)
        if put:
            body["id"] = f"m-{run}-{i}"
            response = http.put(f"{base}/Observation/{body['id']}", json=body, headers=FHIR_JSON)
        else:
            response = http.post(f"{base}/Observation", json=body, headers=FHIR_JSON)
        response.raise_for_status()


def in_bundles(
    http: requests.Session, base: str, count: int, put: bool, minimal: bool = False
) -> None:
    run = str(uuid.uuid4())
    for start in range(0, count, BUNDLE_SIZE):
        entries = []
        for i in range(start, min(count, start + BUNDLE_SIZE)):
            body = observation(i, run)
            if put:
                body["id"] = f"m-{run}-{i}"
                request = {"method": "PUT", "url": f"Observation/{body['id']}"}
            else:
                request = {"method": "POST", "url": "Observation"}
            entries.append({"resource": body, "request": request})
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        headers = {**FHIR_JSON, "Prefer": "return=minimal"} if minimal else FHIR_JSON
        response = http.post(base, json=bundle, headers=headers)
        response.raise_for_status()


def in_bundles_minimal(http: requests.Session, base: str, count: int, put: bool) -> None:
    in_bundles(http, base, count, put, minimal=True)


def rate(
    write: Callable[[requests.Session, str, int, bool], None],
    http: requests.Session,
    base: str,
    count: int,
    put: bool,
) -> float:
    started = time.perf_counter()
    write(http, base, count, put)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--bundle-size", type=int, default=100)
    parser.add_argument("--profiled", action="store_true")
    parser.add_argument("--base-url")
    args = parser.parse_args()
    global BUNDLE_SIZE, PROFILED
    BUNDLE_SIZE, PROFILED = args.bundle_size, args.profiled
    server = None
    base = args.base_url
    if not base:
        server = start_local_server(Path(tempfile.mkdtemp(prefix="fhir-measure-")))
        base = server.base_url
    http = TimeoutSession(timeout=120)
    try:
        one_by_one(http, base, 200, put=False)  # warm-up (JIT, connections)
        for label, put in (("POST", False), ("PUT deterministic id", True)):
            if server:
                http.post(f"{base}/$reset").raise_for_status()  # each phase starts empty
            single = rate(one_by_one, http, base, args.count, put)
            if server:
                http.post(f"{base}/$reset").raise_for_status()
            bundled = rate(in_bundles, http, base, args.count, put)
            if server:
                http.post(f"{base}/$reset").raise_for_status()
            minimal = rate(in_bundles_minimal, http, base, args.count, put)
            print(
                f"{label:22s} one by one {single:6.0f}/s   transaction x{BUNDLE_SIZE} "
                f"{bundled:6.0f}/s ({bundled / single:4.1f}x)   with Prefer: return=minimal "
                f"{minimal:6.0f}/s ({minimal / single:4.1f}x)   [{args.count} "
                f"{'profiled ' if PROFILED else ''}Observations]"
            )
    finally:
        http.close()
        if server:
            server.stop()


if __name__ == "__main__":
    main()
