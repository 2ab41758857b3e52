"""Intake over HTTP: records/s POSTed one per request to ``/v1/records`` of ``fhir-alliance serve``
(API-key check, schema validation, record + audit + outbox row committed durably in SQLite WAL)
vs a bare Flask endpoint that only parses the JSON, both under the same gunicorn configuration
(``cli_serve.gunicorn_options``, 2 workers) and driven by the same client loop (4 threads, a
keep-alive ``http.client`` connection each). Target: at least 0.5x the bare endpoint.
``--postgres URL`` stores in a fresh schema of that PostgreSQL database instead of SQLite.

    python benchmarks/bench_service_intake.py [--quick] [--postgres postgresql://…/test]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service_harness as harness

TARGET_RATIO = 0.5
SYSTEM = "https://bench.example.org/alliance-records"


def srs_records(count: int, run: str) -> list[bytes]:
    """Distinct synthetic SRS administrations (each a new record), spread over 50 patients."""
    return [
        json.dumps(
            {
                "kind": "instrument-administration",
                "id": f"{SYSTEM}|{run}-{i}",
                "instrument": "srs",
                "patient": {"reference": f"Patient/bench-{i % 50}"},
                "counterpart": {"reference": "Practitioner/bench-therapist"},
                "effective": "2026-11-20T15:50:00+00:00",
                "rater": {"role": "client"},
                "responses": {"1": 9.1, "2": 8.7, "3": 8.0 + (i % 10) / 10, "4": 9.2},
            }
        ).encode()
        for i in range(count)
    ]


def measure(count: int, postgres_url: str | None = None) -> dict[str, Any]:
    warmup = max(50, count // 10)
    with harness.bare_flask() as bare:
        harness.drive(f"{bare.url}/v1/records", srs_records(warmup, "warm"))
        baseline = harness.drive(f"{bare.url}/v1/records", srs_records(count, "bare"), server=bare)
    with harness.service(["write"], postgres_url=postgres_url) as service:
        url = f"{service.url}/v1/records"
        harness.drive(url, srs_records(warmup, "warm"), api_key=service.api_key)
        ours = harness.drive(
            url,
            srs_records(count, "ours"),
            api_key=service.api_key,
            expect=lambda status: status == 201,
            server=service,
        )
    store = "SQLite" if postgres_url is None else "PostgreSQL"
    return harness.entry(
        f"service intake: records POSTed one per request to /v1/records ({store}, durable) "
        "vs bare Flask JSON parse, same gunicorn",
        ours.per_second,
        baseline.per_second,
        "records/s",
        TARGET_RATIO,
        records=count,
        p50_ms=round(ours.median_ms, 2),
        p99_ms=round(ours.percentile_ms(0.99), 2),
        baseline_p50_ms=round(baseline.median_ms, 2),
        **harness.cpu_figures(ours, baseline),
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement."""
    return [measure(400 if quick else 4000)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 records instead of 4,000")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="store in a fresh schema of this PostgreSQL database (dropped afterwards)",
    )
    harness.add_gunicorn_options(parser)
    args = parser.parse_args()
    shown = harness.use_gunicorn_options(args)
    entries = [{**measure(400 if args.quick else 4000, args.postgres), **shown}]
    harness.print_entries(entries)
    return 0 if all(e["ratio"] >= e["target_ratio"] for e in entries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
