"""``push --bulk`` to the suite's FHIR test server: the files of ``export --bulk`` (Observations in
our profiles, which the server validates) sent as transaction Bundles of PUTs (the fallback path)
and, where the server advertises it, by ``$import`` (the server fetches the files from a local
file server); baseline: one POST per resource, same client.

Runs on its own (``python benchmarks/bench_push_bulk.py [--quick]``) or through
``benchmarks/run.py`` via :func:`run`. Uses only the suite's local server (its store is reset
before every phase; a remote server could not fetch files served on loopback). Phases alternate
over rounds so that all see the same machine load; throughput = resources / total time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_alliance.bulk_push import (  # noqa: E402
    BulkFile,
    PushReport,
    check_files,
    push_transactions,
    read_manifest,
)
from fhir_alliance.client import FhirClient  # noqa: E402
from fhir_alliance.client.bulk_import import (  # noqa: E402
    ImportInput,
    ImportPolling,
    run_import,
    serve_files,
)

#: No target in issue 10 for pushes; the fallback must at least beat one request per resource.
TARGET_RATIO = 1.0
BUNDLE_SIZE = 100


@contextmanager
def local_server() -> Iterator[str]:
    from tests.fhir_server.plugin import start_local_server

    with tempfile.TemporaryDirectory() as log_dir:
        server = start_local_server(Path(log_dir))
        try:
            yield server.base_url
        finally:
            server.stop()


def exported(directory: Path, records: int) -> list[BulkFile]:
    """What ``export --bulk`` writes for ``records`` SRS administrations (6 Observations each)."""
    from fhir_alliance.consent.engine import ConsentEngine
    from fhir_alliance.mapping.bulk import export_bulk
    from fhir_alliance.schemas.consent import load_consent

    sharing = json.loads((ROOT / "examples" / "consent" / "sharing.json").read_text())
    form = json.loads((ROOT / "examples" / "observations" / "srs-administration.json").read_text())
    items = []
    for n in range(records):
        record = dict(form)
        record["id"] = f"https://bench.example/records|push-bulk-{n}"
        record["patient"] = {"reference": "Patient/p1"}
        record["effective"] = "2025-05-01T10:00:00+00:00"
        items.append((f"in:{n}", record))
    export_bulk(
        items,
        directory,
        engine=ConsentEngine([load_consent(sharing)]),
        recipient="Organization/ehr-clinic",
        purposes=["TREAT"],
        at=datetime(2025, 6, 1, tzinfo=UTC),
    )
    return check_files(read_manifest(directory))


def _reset(client: FhirClient) -> None:
    client.session.post(client.base.join("$reset"), timeout=60).raise_for_status()


def _transactions(client: FhirClient, files: list[BulkFile]) -> float:
    report = PushReport(mode="transaction", import_advertised=False, files=files)
    start = time.perf_counter()
    push_transactions(client, files, report, bundle_size=BUNDLE_SIZE)
    elapsed = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"transaction push failed: {report.errors[:1]}")
    return elapsed


def _import(client: FhirClient, files: list[BulkFile]) -> float:
    polling = ImportPolling(first_wait=0.05, max_wait=0.5, max_retry_after=0.5)
    start = time.perf_counter()
    with serve_files({f.name: f.path for f in files}) as served:
        inputs = [ImportInput(type=f.type, url=served.urls[f.name]) for f in files]
        outcome = run_import(client, inputs, input_source=served.origin, polling=polling)
    elapsed = time.perf_counter() - start
    if not outcome.ok or sum(outcome.imported.values()) != sum(f.count for f in files):
        raise SystemExit(f"$import failed: {outcome}")
    return elapsed


def _one_by_one(client: FhirClient, files: list[BulkFile]) -> float:
    start = time.perf_counter()
    for f in files:
        with f.path.open("rb") as handle:
            for line in handle:
                client.create(json.loads(line))
    return time.perf_counter() - start


def measure(records: int, rounds: int) -> list[dict[str, Any]]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_server() as base,
        FhirClient(base, timeout=(5, 120), return_preference="minimal") as client,
    ):
        files = exported(Path(tmp) / "bulk", records)
        total = sum(f.count for f in files)
        has_import = client.capabilities().supports_operation("import")
        phases = {"baseline": _one_by_one, "transactions": _transactions}
        if has_import:
            phases["import"] = _import
        for phase in phases.values():  # warm each path (server JIT, connections)
            _reset(client)
            phase(client, files)
        times = dict.fromkeys(phases, 0.0)
        for i in range(rounds):
            order = list(phases) if i % 2 == 0 else list(reversed(phases))
            for name in order:
                _reset(client)
                times[name] += phases[name](client, files)
        _reset(client)
    rate = {name: total * rounds / seconds for name, seconds in times.items()}
    entries = [
        {
            "name": f"push --bulk {total} profiled Observations: transaction Bundles of "
            f"{BUNDLE_SIZE} PUTs vs one POST each",
            "ours": round(rate["transactions"], 1),
            "baseline": round(rate["baseline"], 1),
            "unit": "resources/s",
            "ratio": round(rate["transactions"] / rate["baseline"], 2),
            "target_ratio": TARGET_RATIO,
        }
    ]
    if has_import:
        entries.append(
            {
                "name": f"push --bulk {total} profiled Observations: $import (files served "
                "locally, polled to completion) vs one POST each",
                "ours": round(rate["import"], 1),
                "baseline": round(rate["baseline"], 1),
                "unit": "resources/s",
                "ratio": round(rate["import"] / rate["baseline"], 2),
                "target_ratio": TARGET_RATIO,
                "transactions": round(rate["transactions"], 1),
            }
        )
    return entries


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement."""
    return measure(100 if quick else 500, rounds=2 if quick else 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 records instead of 500")
    args = parser.parse_args()
    results = run(args.quick)
    print(
        f"{'benchmark':<100} {'ours':>10} {'baseline':>10} {'unit':>12} {'ratio':>7} {'target':>7}"
    )
    for r in results:
        print(
            f"{r['name']:<100} {r['ours']:>10} {r['baseline']:>10} {r['unit']:>12} "
            f"{r['ratio']:>6}x {r['target_ratio']:>6}x"
        )
    return 0 if all(r["ratio"] >= r["target_ratio"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
