"""Pull of many remote Consents: N foreign (IHE PCF-shaped) Consents over N/10 patients are loaded
into the FHIR test server with transaction Bundles (the load itself is timed and printed), then
the service's pull (``sync/pull.py``: paged search per 100 patients, dedupe lookup per page, merge
into the store as remote-origin consent records with their audit) reads them all into a fresh
SQLite store. Printed: resources/s, and the memory growth of the pull (Python heap peak measured
with tracemalloc in a second pull into another fresh store, and the process's peak RSS growth
over the first). Target: memory growth under 50 MB, whatever N (paging streams).

The baseline is the same paged search with nothing done per resource (read and dropped): what the
server and the HTTP client cost on their own; the ratio shows what merging costs on top.

Uses ``FHIR_ALLIANCE_TEST_BASE_URL`` if set (NOT reset: point it only at a disposable server),
else starts the suite's local FHIR test server.

    python benchmarks/bench_service_pull.py [--quick] [--count N]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import service_harness as harness
from bench_service_sync import fhir_server

MEMORY_TARGET_MB = 50.0
PATIENT_SHARE = 10  # consents per patient
LOAD_BUNDLE = 1000
FULL_COUNT = 100_000
QUICK_COUNT = 5_000


def _consent(run: str, patient: int) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
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
        "patient": {"reference": f"Patient/pull-{run}-{patient}"},
        "dateTime": "2026-11-02T09:00:00Z",
        "policy": [{"uri": "https://ehr.example.org/policies/hie-opt-in"}],
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": "Organization/bench-ehr"},
                }
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        },
    }


def load(base_url: str, count: int, run: str) -> float:
    """POST ``count`` Consents in transaction Bundles; seconds taken."""
    from fhir_alliance.client import BundleRequest, FhirClient

    patients = max(1, count // PATIENT_SHARE)
    started = time.perf_counter()
    with FhirClient(base_url, return_preference="minimal", deadline=600.0) as client:
        for start in range(0, count, LOAD_BUNDLE):
            chunk = [
                BundleRequest.create(_consent(run, n % patients))
                for n in range(start, min(count, start + LOAD_BUNDLE))
            ]
            outcomes = client.transaction(chunk, chunk_size=len(chunk))
            failed = [o for o in outcomes if not o.ok]
            if failed:
                raise RuntimeError(f"load failed: HTTP {failed[0].status}")
    return time.perf_counter() - started


def _store(workdir: Path, name: str, base_url: str, run: str, patients: int) -> Any:
    from datetime import UTC, datetime

    from fhir_alliance_service.store import open_store, upgrade

    url = f"sqlite:///{workdir / name}"
    upgrade(url)
    store = open_store(url)
    now = datetime.now(UTC)
    for p in range(patients):
        key = f"Patient/pull-{run}-{p}"
        store.set_remote_patient(base_url.rstrip("/"), key, key, at=now)
    return store


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def pull_once(base_url: str, store: Any) -> tuple[float, int]:
    from fhir_alliance_service.config import Settings
    from fhir_alliance_service.sync.pull import Puller

    from fhir_alliance.client import FhirClient

    settings = Settings(database_url="sqlite://", fhir_base_url=base_url)
    with FhirClient(base_url, deadline=600.0) as client:
        started = time.perf_counter()
        report = Puller(settings, store, client).pull(full_listing=True)
        elapsed = time.perf_counter() - started
    if report.error:
        raise RuntimeError(f"pull failed: {report.error}")
    return elapsed, report.merged


def read_only(base_url: str, run: str, patients: int) -> tuple[float, int]:
    """Baseline: the same paged searches, each resource read and dropped."""
    from fhir_alliance_service.sync.pull import PATIENTS_PER_QUERY

    from fhir_alliance.client import FhirClient

    refs = [f"Patient/pull-{run}-{p}" for p in range(patients)]
    seen = 0
    with FhirClient(base_url, deadline=600.0) as client:
        started = time.perf_counter()
        for start in range(0, len(refs), PATIENTS_PER_QUERY):
            chunk = refs[start : start + PATIENTS_PER_QUERY]
            params = [("patient", ",".join(chunk)), ("_count", "500")]
            for _ in client.search("Consent", params, max_pages=100_000):
                seen += 1
        elapsed = time.perf_counter() - started
    return elapsed, seen


def measure(count: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    patients = max(1, count // PATIENT_SHARE)
    with fhir_server() as (base_url, _is_local), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        load_seconds = load(base_url, count, run)
        print(
            f"  loaded {count:,} Consents in {load_seconds:.1f} s ({count / load_seconds:,.0f}/s)"
        )
        base_seconds, base_seen = read_only(base_url, run, patients)

        store = _store(workdir, "timed.db", base_url, run, patients)
        gc.collect()
        rss_before = _rss_mb()
        our_seconds, merged = pull_once(base_url, store)
        rss_growth = _rss_mb() - rss_before
        store.close()

        store = _store(workdir, "traced.db", base_url, run, patients)
        gc.collect()
        tracemalloc.start()
        baseline_heap, _ = tracemalloc.get_traced_memory()
        _, merged_traced = pull_once(base_url, store)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        store.close()
    heap_growth = (peak - baseline_heap) / 1e6
    if merged != count or merged_traced != count or base_seen != count:
        raise RuntimeError(f"pulled {merged}/{merged_traced}/{base_seen} of {count}")
    entry = harness.entry(
        f"service pull: {count:,} foreign Consents from the FHIR server, merged into the store "
        "vs the same paged search reading and dropping them",
        count / our_seconds,
        count / base_seconds,
        "resources/s",
        0.0,
        resources=count,
        patients=patients,
        load_seconds=round(load_seconds, 1),
        heap_growth_mb=round(heap_growth, 1),
        rss_growth_mb=round(rss_growth, 1),
        memory_target_mb=MEMORY_TARGET_MB,
        memory_ok=heap_growth < MEMORY_TARGET_MB and rss_growth < MEMORY_TARGET_MB,
    )
    print(
        f"  pull: {count / our_seconds:,.0f} resources/s; memory growth: heap peak "
        f"{heap_growth:.1f} MB, RSS peak {rss_growth:.1f} MB (target < {MEMORY_TARGET_MB:.0f} MB)"
    )
    return entry


def run(quick: bool = False, count: int | None = None) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement."""
    return [measure(count or (QUICK_COUNT if quick else FULL_COUNT))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT:,} Consents")
    parser.add_argument("--count", type=int, help=f"Consents to load and pull ({FULL_COUNT:,})")
    args = parser.parse_args()
    entries = run(quick=args.quick, count=args.count)
    harness.print_entries(entries)
    return 0 if all(e["memory_ok"] for e in entries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
