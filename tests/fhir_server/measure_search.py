"""Measure the test server's search at scale: a store of Consents and Observations (100,000 by
default, with updates and deletes), then search by patient, by identifier, and a full
``_lastUpdated`` pull sorted by ``_lastUpdated`` and paged by ``next`` links.

Run: .venv/bin/python -m tests.fhir_server.measure_search [--consents 50000] [--observations 50000]
     [--pull-pages N] [--base-url URL]
Starts the local server unless --base-url is given (e.g. another version of server.mjs started by
hand). Prints the load rate, the median time per query and the time per pull page.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

from tests.fhir_server.plugin import TimeoutSession, start_local_server

FHIR_JSON = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
PATIENTS = 2000
CHUNK = 1000
ID_SYSTEM = "urn:measure:id"


def consent(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"c{i}",
        "identifier": [{"system": ID_SYSTEM, "value": f"c{i}"}],
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/p{i % PATIENTS}"},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
    }


def observation(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"o{i}",
        "identifier": [{"system": ID_SYSTEM, "value": f"o{i}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
        "subject": {"reference": f"Patient/p{i % PATIENTS}"},
        "effectiveDateTime": "2025-01-01T10:00:00Z",
        "valueInteger": i % 7,
    }


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def put(resource: dict[str, Any]) -> dict[str, Any]:
    ref = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": ref}}


def chunks(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def load(http: requests.Session, base: str, consents: int, observations: int) -> float:
    """Consents and Observations interleaved; every 10th Consent updated, every 50th deleted."""
    creates: list[dict[str, Any]] = []
    for i in range(max(consents, observations)):
        if i < consents:
            creates.append(put(consent(i)))
        if i < observations:
            creates.append(put(observation(i)))
    updates = [put({**consent(i), "status": "inactive"}) for i in range(0, consents, 10)]
    deletes = [
        {"request": {"method": "DELETE", "url": f"Consent/c{i}"}} for i in range(5, consents, 50)
    ]
    started = time.perf_counter()
    for group in (creates, updates, deletes):  # one id is never changed twice in a Bundle
        for part in chunks(group):
            http.post(base, json=transaction(part), headers=FHIR_JSON).raise_for_status()
    return (len(creates) + len(updates) + len(deletes)) / (time.perf_counter() - started)


def timed(call: Callable[[], requests.Response], repeat: int) -> tuple[float, Any]:
    times = []
    body = None
    for _ in range(repeat):
        started = time.perf_counter()
        response = call()
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        body = response.json()
    return statistics.median(times) * 1000, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--consents", type=int, default=50_000)
    parser.add_argument("--observations", type=int, default=50_000)
    parser.add_argument("--pull-pages", type=int, default=0, help="stop the pull after N pages")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--base-url")
    args = parser.parse_args()
    server = None
    base = args.base_url
    if not base:
        server = start_local_server(Path(tempfile.mkdtemp(prefix="fhir-measure-")))
        base = server.base_url
    http = TimeoutSession(timeout=3600)
    try:
        http.post(f"{base}/$reset").raise_for_status()
        rate = load(http, base, args.consents, args.observations)
        print(f"loaded {args.consents} Consents + {args.observations} Observations: {rate:,.0f}/s")
        first = http.get(f"{base}/Consent", params={"_sort": "_lastUpdated", "_count": "1"})
        since = first.json()["entry"][0]["resource"]["meta"]["lastUpdated"]
        queries = {
            "Consent?patient=Patient/p17": {"patient": "Patient/p17"},
            "Consent?identifier=system|c12345": {"identifier": f"{ID_SYSTEM}|c12345"},
            "Observation?subject=...&_sort=-_lastUpdated": {
                "subject": "Patient/p17",
                "_sort": "-_lastUpdated",
            },
            "Consent?_lastUpdated=ge&_sort&_count=500 (page 1)": {
                "_lastUpdated": f"ge{since}",
                "_sort": "_lastUpdated",
                "_count": "500",
            },
            "Consent?_lastUpdated=ge&_sort&_count=500&_offset=40000": {
                "_lastUpdated": f"ge{since}",
                "_sort": "_lastUpdated",
                "_count": "500",
                "_offset": "40000",
            },
        }
        for label, params in queries.items():
            where = f"{base}/{label.split('?')[0]}"
            ms, body = timed(lambda u=where, p=params: http.get(u, params=p), args.repeat)
            print(f"{label:58s} {ms:9.1f} ms  (total {body['total']})")
        # The full pull a sync client makes: every page by next links.
        started = time.perf_counter()
        url: str | None = f"{base}/Consent?_lastUpdated=ge{since}&_sort=_lastUpdated&_count=500"
        pages = seen = 0
        while url and (not args.pull_pages or pages < args.pull_pages):
            bundle = http.get(url).json()
            pages += 1
            seen += len(bundle.get("entry", []))
            url = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        elapsed = time.perf_counter() - started
        print(
            f"pull: {pages} pages, {seen} Consents in {elapsed:.1f} s "
            f"({elapsed / pages * 1000:.0f} ms per page){'' if url is None else ' (stopped early)'}"
        )
    finally:
        http.close()
        if server:
            server.stop()


if __name__ == "__main__":
    main()
