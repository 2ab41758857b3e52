"""End to end, intake to the FHIR server: records taken in through the service's intake (the use
case behind ``/v1/records`` and ``fhir-alliance load``) and synced by the worker (consent gate,
mapping, validation, transaction Bundles of PUTs, audit and Provenance stored locally), vs a
one-by-one baseline that maps the same records and POSTs each FHIR resource on its own, with the
same client settings. Both start from an empty FHIR store; records/s over the whole way.
Target: at least 10x. Also reported: the server's own ceiling (the same resources, mapped
beforehand, sent in the worker's Bundles with nothing else timed), which bounds the ratio any
service can reach against this server.

Uses ``FHIR_ALLIANCE_TEST_BASE_URL`` if set (point it only at a disposable server), else starts
the suite's local FHIR test server, which is emptied before each timed phase. Another server is
emptied only if ``FHIR_ALLIANCE_BENCH_RESET_COMMAND`` names a shell command that does it (e.g.
restarts a disposable server on the same URL); without one, each phase finds the resources of the
phases before it, which favours the earlier phases on a server that slows as it fills.

With ``--rtt-ms N``, every phase reaches the server through ``latency_relay.py``, a relay in its
own process that adds an N ms round trip per request (N / 2 each way): a clinic's service and its
EHR's server are not on one machine, and on loopback a round trip costs nothing, which favours
the baseline's one request per resource. The entry's name says the round trip.

    python benchmarks/bench_service_sync.py [--quick] [--rtt-ms N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service_harness as harness

TARGET_RATIO = 10.0
SYSTEM = "https://bench.example.org/alliance-records"
CONSENTS = "https://bench.example.org/consents"
EHR = "Organization/bench-ehr"
#: Sessions per client: a backfill of N records covers N / 5 clients, each with a sharing consent.
#: (The worker claims at most one item per client at a time, to keep each client's order.)
SESSIONS_PER_PATIENT = 5
INTAKE_BATCH = 500
#: A shell command that empties the server named by FHIR_ALLIANCE_TEST_BASE_URL (run before each
#: timed phase, then /metadata is awaited).
RESET_COMMAND_ENV = "FHIR_ALLIANCE_BENCH_RESET_COMMAND"


@contextmanager
def latency_relay(base_url: str, rtt_ms: float) -> Iterator[str]:
    """``base_url`` as reached through a relay adding ``rtt_ms`` per round trip (its own
    process, stopped afterwards)."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme != "http":
        raise SystemExit("--rtt-ms relays plain http only")
    relay = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "latency_relay.py"),
            "--target",
            f"{parts.hostname}:{port}",
            "--rtt-ms",
            str(rtt_ms),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        line = relay.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            raise SystemExit("the latency relay did not start")
        yield urlunsplit(parts._replace(netloc=f"127.0.0.1:{line[1]}"))
    finally:
        relay.kill()
        relay.wait()


@contextmanager
def fhir_server() -> Iterator[tuple[str, bool]]:
    """(base URL, is_local): the env's server, or the suite's local one, stopped afterwards."""
    remote = os.environ.get("FHIR_ALLIANCE_TEST_BASE_URL", "").strip()
    if remote:
        yield remote.rstrip("/"), False
        return
    from tests.fhir_server.plugin import start_local_server

    with tempfile.TemporaryDirectory() as log_dir:
        server = start_local_server(Path(log_dir))
        try:
            yield server.base_url, True
        finally:
            server.stop()


def _patients(count: int) -> int:
    return max(1, count // SESSIONS_PER_PATIENT)


def sharing_consents(run: str, patients: int) -> list[dict[str, Any]]:
    """One active sharing consent per patient: disclose to the EHR for treatment."""
    when = "2026-11-01T09:00:00+00:00"
    return [
        {
            "kind": "consent",
            "id": f"{CONSENTS}|{run}-{p}",
            "consent_kind": "sharing",
            "patient": {"reference": f"Patient/bench-{run}-{p}"},
            "status": "active",
            "decision": "permit",
            "date": when,
            "period": {"start": when},
            "policy_basis": [{"uri": "https://bench.example.org/policies/sharing"}],
            "provision": {
                "actors": [
                    {
                        "role": {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                        },
                        "reference": {"reference": EHR},
                    }
                ],
                "actions": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": "disclose",
                    }
                ],
                "purposes": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "TREAT",
                    }
                ],
            },
        }
        for p in range(patients)
    ]


def srs_records(count: int, run: str) -> list[dict[str, Any]]:
    return [
        {
            "kind": "instrument-administration",
            "id": f"{SYSTEM}|{run}-{i}",
            "instrument": "srs",
            "patient": {"reference": f"Patient/bench-{run}-{i % _patients(count)}"},
            "counterpart": {"reference": "Practitioner/bench-therapist"},
            "effective": "2026-11-20T15:50:00+00:00",
            "rater": {"role": "client"},
            "responses": {"1": 9.1, "2": 8.7, "3": 8.0 + (i % 10) / 10, "4": 9.2},
        }
        for i in range(count)
    ]


def _reset(client: Any, is_local: bool) -> None:
    if is_local:
        client.session.post(client.base.join("$reset"), timeout=60).raise_for_status()
        return
    command = os.environ.get(RESET_COMMAND_ENV, "").strip()
    if not command:
        return
    subprocess.run(command, shell=True, check=True)  # the operator's own command
    deadline = time.monotonic() + 60
    while True:
        try:
            client.session.get(client.base.join("metadata"), timeout=5).raise_for_status()
            return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _software(client: Any) -> str:
    """The server's name and version from its CapabilityStatement (reported with the figures)."""
    statement = client.session.get(client.base.join("metadata"), timeout=30).json()
    software = statement.get("software") or {}
    return f"{software.get('name', '?')} {software.get('version', '')}".strip()


def ours(base_url: str, count: int, run: str) -> tuple[float, float, int]:
    """Seconds from the first intake to the drained queue, of which intake, and the resources
    sent."""
    from fhir_alliance_service.config import load_settings
    from fhir_alliance_service.store import SyncState, open_store
    from fhir_alliance_service.sync.target import client_from_settings
    from fhir_alliance_service.sync.worker import sync_once
    from fhir_alliance_service.usecases.intake import intake_records

    with (
        tempfile.TemporaryDirectory(prefix="fhir-alliance-bench-") as tmp,
        harness.migrated_store(Path(tmp)) as database_url,
    ):
        settings = load_settings(
            {},
            {
                "database_url": database_url,
                "fhir_base_url": base_url,
                "recipients": EHR,
                "worker_batch_size": 250,
            },
        )
        store = open_store(database_url)
        client = client_from_settings(settings)
        payloads = sharing_consents(run, _patients(count)) + srs_records(count, run)
        try:
            started = time.perf_counter()
            for i in range(0, len(payloads), INTAKE_BATCH):
                intake_records(store, payloads[i : i + INTAKE_BATCH], at=datetime.now(UTC))
            intake_seconds = time.perf_counter() - started
            report = sync_once(settings, store, client)
            elapsed = time.perf_counter() - started
            counts = store.counts_by_state()
        finally:
            client.close()
            store.close()
    if report.error or counts.get(SyncState.SENT, 0) != len(payloads):
        raise SystemExit(f"the sync did not send everything: {report} {counts}")
    return elapsed, intake_seconds, report.resources_sent


def one_by_one(base_url: str, count: int, run: str) -> tuple[float, int]:
    """Map each record (and consent) to FHIR R4 and POST every resource on its own."""
    from fhir_alliance_service.config import load_settings
    from fhir_alliance_service.sync.target import client_from_settings

    from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
    from fhir_alliance.mapping.observation import MAPPER as OBSERVATION_MAPPER

    settings = load_settings({}, {"fhir_base_url": base_url})
    client = client_from_settings(settings)
    sent = 0
    try:
        started = time.perf_counter()
        for payload in sharing_consents(run, _patients(count)):
            for resource in CONSENT_MAPPER.to_fhir(CONSENT_MAPPER.load(payload), version="4.0.1"):
                client.create(resource)
                sent += 1
        for payload in srs_records(count, run):
            mapped = OBSERVATION_MAPPER.to_fhir(OBSERVATION_MAPPER.load(payload), version="4.0.1")
            for resource in mapped:
                client.create(resource)
                sent += 1
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    return elapsed, sent


def server_ceiling(base_url: str, count: int, run: str) -> tuple[float, int]:
    """The test server's own share: the same resources, mapped beforehand (untimed), sent as the
    worker sends them (transaction Bundles of ``DEFAULT_BUNDLE_ENTRIES`` PUTs, same client
    settings) with nothing else timed. No intake, gate, validation or store: what ``ours`` would
    reach if the service itself cost nothing."""
    from fhir_alliance_service.config import load_settings
    from fhir_alliance_service.sync.target import client_from_settings
    from fhir_alliance_service.sync.worker import DEFAULT_BUNDLE_ENTRIES

    from fhir_alliance.client import BundleRequest
    from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
    from fhir_alliance.mapping.observation import MAPPER as OBSERVATION_MAPPER

    resources = [
        resource
        for payload in sharing_consents(run, _patients(count))
        for resource in CONSENT_MAPPER.to_fhir(CONSENT_MAPPER.load(payload), version="4.0.1")
    ] + [
        resource
        for payload in srs_records(count, run)
        for resource in OBSERVATION_MAPPER.to_fhir(
            OBSERVATION_MAPPER.load(payload), version="4.0.1"
        )
    ]
    requests = [BundleRequest.put(resource) for resource in resources]
    client = client_from_settings(load_settings({}, {"fhir_base_url": base_url}))
    try:
        started = time.perf_counter()
        outcomes = client.transaction(requests, chunk_size=DEFAULT_BUNDLE_ENTRIES)
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    if not all(outcome.ok for outcome in outcomes):
        raise SystemExit("the server refused part of the ceiling run")
    return elapsed, len(requests)


def measure(count: int, rtt_ms: float = 0.0) -> dict[str, Any]:
    from fhir_alliance.client import FhirClient

    with fhir_server() as (server_url, is_local), FhirClient(server_url) as admin:
        _reset(admin, is_local)  # the admin's own calls go straight to the server
        software = _software(admin)
        with latency_relay(server_url, rtt_ms) if rtt_ms else nullcontext(server_url) as base_url:
            phases = _phases(admin, base_url, is_local, count)
    base_seconds, our_seconds, intake_seconds, our_sent, base_sent, ceiling_seconds = phases
    resets = is_local or bool(os.environ.get(RESET_COMMAND_ENV, "").strip())
    records = count + _patients(count)
    # Results are merged by name: another server's figures, or another round trip, get an entry
    # of their own.
    server = "" if is_local else f" [{software}]"
    if rtt_ms:
        server += f" [round trip +{rtt_ms:g} ms]"
    return harness.entry(
        "service sync end to end: SRS records + consents, intake -> worker -> FHIR server "
        f"vs map + one POST per resource{server}",
        records / our_seconds,
        records / base_seconds,
        "records/s",
        TARGET_RATIO,
        records=records,
        resources_sent=our_sent,
        baseline_resources=base_sent,
        # The same resources in the same Bundles with nothing of ours timed: ``ratio`` cannot
        # exceed ``ceiling_ratio`` against this server, whatever the service does.
        server_ceiling_records_s=round(records / ceiling_seconds, 1),
        ceiling_ratio=round(base_seconds / ceiling_seconds, 2),
        # Ours as a share of the ceiling (1.0: the service costs the run nothing), and the
        # split: intake runs first, then the worker alone (``worker_of_ceiling``: its share).
        of_ceiling=round(ceiling_seconds / our_seconds, 2),
        intake_seconds=round(intake_seconds, 2),
        worker_seconds=round(our_seconds - intake_seconds, 2),
        worker_of_ceiling=round(ceiling_seconds / (our_seconds - intake_seconds), 2),
        server=software,
        server_reset_between_phases=resets,
        added_round_trip_ms=rtt_ms,
    )


def _phases(
    admin: Any, base_url: str, is_local: bool, count: int
) -> tuple[float, float, float, int, int, float]:
    """Warm up, then the baseline, ours and the ceiling, each from a reset server."""
    ours(base_url, 50, f"warm-{uuid.uuid4().hex[:8]}")  # server JIT, imports, connections
    one_by_one(base_url, 20, f"warm-{uuid.uuid4().hex[:8]}")
    _reset(admin, is_local)
    base_seconds, base_sent = one_by_one(base_url, count, uuid.uuid4().hex[:8])
    _reset(admin, is_local)
    our_seconds, intake_seconds, our_sent = ours(base_url, count, uuid.uuid4().hex[:8])
    _reset(admin, is_local)
    ceiling_seconds, _ = server_ceiling(base_url, count, uuid.uuid4().hex[:8])
    _reset(admin, is_local)
    return base_seconds, our_seconds, intake_seconds, our_sent, base_sent, ceiling_seconds


def run(quick: bool = False, rtt_ms: float = 0.0) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement."""
    return [measure(300 if quick else 2000, rtt_ms)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 records instead of 2,000")
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="reach the server through a relay adding this round trip per request (ms)",
    )
    args = parser.parse_args()
    entries = run(quick=args.quick, rtt_ms=args.rtt_ms)
    harness.print_entries(entries)
    return 0 if all(e["ratio"] >= e["target_ratio"] for e in entries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
