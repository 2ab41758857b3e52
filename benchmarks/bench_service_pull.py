"""Pull of many remote resources: N foreign Consents (IHE PCF-shaped; or, with ``--observations``,
N Observations) over N/10 patients are loaded into the FHIR test server with transaction Bundles
of 1,000 PUTs to deterministic ids (the load itself is timed and printed), then the service's pull
(``sync/pull.py``: a full listing, paged search per 100 patients, dedupe lookup per page, merge
into the store as remote-origin consent records with their audit, or read-only pulled
Observations) reads them all into a fresh SQLite store. Printed: resources/s, and the memory
growth of the pull: the process's resident memory sampled every 10 ms during the timed pull
(peak minus the value just before it: Python, SQLite's page cache, the HTTP client, everything),
and the Python heap peak (tracemalloc) in a second pull into another fresh store. Target: memory
growth under 50 MB, whatever N (paging streams); a second entry, ``ratio`` = 50 MB / the larger of
the two growths, meets it at >= 1.

The baseline is the same paged search with nothing done per resource (read and dropped): what the
server and the HTTP client cost on their own; the ratio shows what merging costs on top.

Uses ``FHIR_ALLIANCE_TEST_BASE_URL`` if set (NOT reset: point it only at a disposable server),
else starts the suite's local FHIR test server.

    python benchmarks/bench_service_pull.py [--quick] [--count N] [--observations]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import threading
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


def _observation(run: str, patient: int) -> dict[str, Any]:
    """An Observation written by someone else (a PHQ-9 total): pulled read-only."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
        "subject": {"reference": f"Patient/pull-{run}-{patient}"},
        "effectiveDateTime": "2026-11-02T09:00:00Z",
        "valueInteger": 7,
    }


def load(base_url: str, count: int, run: str, resource_type: str = "Consent") -> float:
    """PUT ``count`` resources to ids of this run in transaction Bundles; seconds taken."""
    from fhir_alliance.client import BundleRequest, FhirClient

    patients = max(1, count // PATIENT_SHARE)
    build = _consent if resource_type == "Consent" else _observation
    started = time.perf_counter()
    with FhirClient(base_url, return_preference="minimal", deadline=600.0) as client:
        for start in range(0, count, LOAD_BUNDLE):
            chunk = [
                BundleRequest.put({**build(run, n % patients), "id": f"pull-{run}-{n}"})
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


_PAGE_BYTES = resource.getpagesize()


def _rss_mb() -> float:
    """The process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES / 1e6


class RssPeak:
    """Samples resident memory every ``interval`` seconds while in use: the peak growth over
    the value at entry (a sampler, so a spike shorter than the interval can be missed)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> RssPeak:
        gc.collect()
        self.start = self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def growth(self) -> float:
        return self.peak - self.start


def pull_once(base_url: str, store: Any, resource_type: str = "Consent") -> tuple[float, int]:
    """One full pull (a listing); seconds taken and the resources merged or kept."""
    from fhir_alliance_service.config import Settings
    from fhir_alliance_service.sync.pull import Puller

    from fhir_alliance.client import FhirClient

    settings = Settings(
        database_url="sqlite://",
        fhir_base_url=base_url,
        pull_observations=resource_type == "Observation",
    )
    with FhirClient(base_url, deadline=600.0) as client:
        started = time.perf_counter()
        report = Puller(settings, store, client).pull(full_listing=True)
        elapsed = time.perf_counter() - started
    if report.error:
        raise RuntimeError(f"pull failed: {report.error}")
    return elapsed, report.merged if resource_type == "Consent" else report.observations


def read_only(
    base_url: str, run: str, patients: int, resource_type: str = "Consent"
) -> tuple[float, int]:
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
            for _ in client.search(resource_type, params, max_pages=100_000):
                seen += 1
        elapsed = time.perf_counter() - started
    return elapsed, seen


def notice_deletions(
    base_url: str, run: str, count: int, resource_type: str, timed: Any, traced: Any
) -> dict[str, Any]:
    """Delete 1 % of the resources on the server, then time the pass that notices it both ways:
    an incremental pass on ``timed`` (``_history`` where the server offers it) and a full
    listing on ``traced`` (``pull_deletions=listing``). Both must find every deletion."""
    from fhir_alliance_service.config import Settings
    from fhir_alliance_service.sync.pull import Puller

    from fhir_alliance.client import BundleRequest, FhirClient

    gone = max(1, count // 100)
    with FhirClient(base_url, return_preference="minimal", deadline=600.0) as client:
        doomed = [BundleRequest.delete(resource_type, f"pull-{run}-{n}") for n in range(gone)]
        failed = [o for o in client.transaction(doomed, chunk_size=LOAD_BUNDLE) if not o.ok]
        if failed:
            raise RuntimeError(f"delete failed: HTTP {failed[0].status}")
        history = client.capabilities().resource(resource_type).supports("history-type")
    found: dict[str, Any] = {"deleted_on_server": gone}
    passes = [("listing", traced, "listing", True)]
    if history:
        passes.insert(0, ("history", timed, "auto", None))
    else:
        print("  the server offers no _history: only the listing notices deletions", flush=True)
    for name, store, mode, full in passes:
        settings = Settings(
            database_url="sqlite://",
            fhir_base_url=base_url,
            pull_observations=resource_type == "Observation",
            pull_deletions=mode,
        )
        with FhirClient(base_url, deadline=600.0) as client:
            started = time.perf_counter()
            report = Puller(settings, store, client).pull(full_listing=full)
            seconds = time.perf_counter() - started
        if report.error or report.deleted != gone:
            raise RuntimeError(f"{name} pass noticed {report.deleted}/{gone} ({report.error})")
        method = report.deletions.get(resource_type)
        found[f"{name}_pass"] = {"method": method, "seconds": round(seconds, 1)}
        print(
            f"  {gone:,} deleted on the server: noticed by a pass using {method} "
            f"in {seconds:.1f} s ({report.read:,} resources and {report.history_entries:,} "
            "history entries read)",
            flush=True,
        )
    return found


def measure(count: int, resource_type: str = "Consent") -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    patients = max(1, count // PATIENT_SHARE)
    what = "foreign Consents" if resource_type == "Consent" else "Observations (read-only)"
    with fhir_server() as (base_url, _is_local), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        load_seconds = load(base_url, count, run, resource_type)
        print(
            f"  loaded {count:,} {resource_type}s in {load_seconds:.1f} s "
            f"({count / load_seconds:,.0f}/s)",
            flush=True,
        )
        base_seconds, base_seen = read_only(base_url, run, patients, resource_type)
        print(f"  baseline (read and drop): {count / base_seconds:,.0f}/s", flush=True)

        timed = _store(workdir, "timed.db", base_url, run, patients)
        with RssPeak() as rss:
            our_seconds, merged = pull_once(base_url, timed, resource_type)
        print(
            f"  pull: {count / our_seconds:,.0f}/s in {our_seconds:.0f} s; resident memory "
            f"{rss.start:.0f} MB before, peak growth {rss.growth:.1f} MB",
            flush=True,
        )

        traced = _store(workdir, "traced.db", base_url, run, patients)
        gc.collect()
        tracemalloc.start()
        baseline_heap, _ = tracemalloc.get_traced_memory()
        _, merged_traced = pull_once(base_url, traced, resource_type)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        deletions = notice_deletions(base_url, run, count, resource_type, timed, traced)
        timed.close()
        traced.close()
    heap_growth = (peak - baseline_heap) / 1e6
    rss_growth = rss.growth
    if merged != count or merged_traced != count or base_seen != count:
        raise RuntimeError(f"pulled {merged}/{merged_traced}/{base_seen} of {count}")
    growth = max(heap_growth, rss_growth)
    figures = {
        **deletions,
        "resources": count,
        "patients": patients,
        "load_seconds": round(load_seconds, 1),
        "pull_seconds": round(our_seconds, 1),
        "heap_growth_mb": round(heap_growth, 1),
        "rss_growth_mb": round(rss_growth, 1),
        "memory_target_mb": MEMORY_TARGET_MB,
        "memory_ok": growth < MEMORY_TARGET_MB,
    }
    speed = harness.entry(
        f"service pull: {count:,} {what} from the FHIR server, merged into the store "
        "vs the same paged search reading and dropping them",
        count / our_seconds,
        count / base_seconds,
        "resources/s",
        0.0,
        **figures,
    )
    memory = {
        "name": f"service pull memory: {count:,} {what} (growth, lower is better)",
        "ours": round(growth, 1),
        "baseline": MEMORY_TARGET_MB,
        "unit": "MB growth (the larger of resident and heap peak)",
        "ratio": round(MEMORY_TARGET_MB / max(growth, 1e-9), 2),
        "target_ratio": 1.0,
        **figures,
    }
    print(
        f"  pull: {count / our_seconds:,.0f} resources/s (baseline {count / base_seconds:,.0f}/s); "
        f"memory growth: resident peak {rss_growth:.1f} MB, heap peak {heap_growth:.1f} MB "
        f"(target < {MEMORY_TARGET_MB:.0f} MB)"
    )
    return [speed, memory]


def run(
    quick: bool = False, count: int | None = None, resource_type: str = "Consent"
) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement (speed, memory)."""
    return measure(count or (QUICK_COUNT if quick else FULL_COUNT), resource_type)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT:,} Consents")
    parser.add_argument("--count", type=int, help=f"resources to load and pull ({FULL_COUNT:,})")
    parser.add_argument(
        "--observations", action="store_true", help="Observations (read-only) instead of Consents"
    )
    args = parser.parse_args()
    kind = "Observation" if args.observations else "Consent"
    entries = run(quick=args.quick, count=args.count, resource_type=kind)
    harness.print_entries(entries)
    return 0 if all(e["memory_ok"] for e in entries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
