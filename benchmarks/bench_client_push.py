"""Push Observations to the test FHIR server: transaction Bundles (ours) vs one POST per resource.

Runs on its own (``python benchmarks/bench_client_push.py [--quick] [--count N] [--chunk N]``) or
through ``benchmarks/run.py`` via :func:`run`. Uses ``FHIR_ALLIANCE_TEST_BASE_URL`` if set (its store
is NOT reset: point it only at a disposable server), else starts the suite's local server. Both
phases use one client (one keep-alive Session, ``Prefer: return=minimal`` on every write, as a sync
pushing resources would send) and start from an empty store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

TARGET_RATIO = 5.0
#: Entries per transaction Bundle. The client's own default stays 100 (safe for servers with
#: bundle limits); a bulk push to a server that takes more sends fewer, larger Bundles.
CHUNK = 250
SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/bench"


@contextmanager
def fhir_server() -> Iterator[tuple[str, bool]]:
    """(base URL, is_local): the env's server, or the suite's local one, stopped when we are done."""
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


def _one_by_one(client: FhirClient, batch: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for resource in batch:
        client.create(resource)
    return time.perf_counter() - start


def _transactions(
    client: FhirClient, batch: list[dict[str, Any]], chunk: int, use_put: bool
) -> float:
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
    elapsed = time.perf_counter() - start
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"{len(failed)} transaction entries failed (first: {failed[0].error})")
    return elapsed


def measure(count: int, chunk: int, rounds: int = 5) -> dict[str, Any]:
    """Push ``count`` resources each way, in ``rounds`` alternating rounds (so both phases see the
    same machine load), resetting the store before every phase; throughput = total / total time."""
    per_round = max(1, count // rounds)
    with (
        fhir_server() as (base, is_local),
        FhirClient(base, timeout=(5, 120), return_preference="minimal") as client,
    ):
        strategy = client.capabilities().write_strategy("Observation")
        use_put = strategy is WriteStrategy.PUT_DETERMINISTIC_ID

        # Warm both paths (server JIT, connection) so neither phase pays for a cold start.
        _reset(client, is_local)
        warm = observations(200, uuid.uuid4().hex)
        _one_by_one(client, warm)
        _transactions(client, observations(200, uuid.uuid4().hex), chunk, use_put)

        baseline_time = ours_time = 0.0
        for i in range(rounds):
            phases = ["baseline", "ours"] if i % 2 == 0 else ["ours", "baseline"]
            for phase in phases:
                _reset(client, is_local)
                batch = observations(per_round, uuid.uuid4().hex)
                if phase == "baseline":
                    baseline_time += _one_by_one(client, batch)
                else:
                    ours_time += _transactions(client, batch, chunk, use_put)
        _reset(client, is_local)
    total = per_round * rounds
    ours, baseline = total / ours_time, total / baseline_time
    return {
        "name": f"push {total} Observations: transaction Bundles of {chunk} "
        f"({'PUT deterministic id' if use_put else 'POST'}) vs one POST each",
        "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "unit": "resources/s",
        "ratio": round(ours / baseline, 2),
        "target_ratio": TARGET_RATIO,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement."""
    return [measure(1000 if quick else 5000, CHUNK, rounds=2 if quick else 5)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 resources instead of 5,000")
    parser.add_argument("--count", type=int)
    parser.add_argument("--chunk", type=int, default=CHUNK, help="entries per transaction Bundle")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args()
    count = args.count or (1000 if args.quick else 5000)
    results = [measure(count, args.chunk, args.rounds)]
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
