"""The consent consult over HTTP: ``POST /cds-services/patient-consent-consult`` of ``fhir-alliance
serve`` (API-key check, LEAP hook request read, the patient's compiled consents from the store's
cache, one card), for a patient with 25 consents of three provision levels (the consents of
``bench_consent.py``, with actors named by NPI as LEAP sends them and periods around today), with
varied actors, purposes and categories. Reports decisions/s (target >= 1,500) with p50 and p99
latency; the baseline is a bare Flask endpoint that only parses the JSON, under the same gunicorn
configuration and client loop (the HTTP floor; no ratio target).

    python benchmarks/bench_service_consult.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_consent  # noqa: E402
import requests  # noqa: E402
import service_harness as harness  # noqa: E402

from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER  # noqa: E402
from fhir_alliance.model.common import Identifier, Ref  # noqa: E402
from fhir_alliance.model.consent import ConsentRecord, Period, Provision  # noqa: E402

TARGET_DECISIONS_PER_SECOND = 1500
PATIENT = Identifier("https://bench.example.org/mrn", "p-0001")
NPI = bench_consent.NPI
PURPOSE_CODES = ("TREAT", "HPAYMT", "HOPERAT", "HRESCH", "ETREAT")


def _npi_of(reference: str) -> Identifier:
    return Identifier(NPI, f"{bench_consent.ACTORS.index(reference):010d}")


def _by_identifier(provision: Provision) -> Provision:
    """The same provision tree with every actor named by NPI (LEAP consults name actors so)."""
    actors = tuple(
        dataclasses.replace(
            a, reference=Ref(identifier=_npi_of(str(a.reference.reference)), type=None)
        )
        if a.reference is not None and a.reference.reference
        else a
        for a in provision.actors
    )
    return dataclasses.replace(
        provision,
        actors=actors,
        provisions=tuple(_by_identifier(p) for p in provision.provisions),
    )


def consents(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    """25 consents (three levels), in force around ``now``, as our JSON form for /v1/consents."""
    records: list[ConsentRecord] = []
    for record in bench_consent.build_consents(rng):
        records.append(
            dataclasses.replace(
                record,
                patient=Ref(identifier=PATIENT),
                date=now - timedelta(days=rng.randint(1, 60)),
                period=Period(
                    start=now - timedelta(days=90), end=now + timedelta(days=rng.randint(30, 400))
                ),
                provision=_by_identifier(record.provision) if record.provision else None,
            )
        )
    return [CONSENT_MAPPER.dump(r) for r in records]


def hook_requests(rng: random.Random, count: int) -> list[bytes]:
    """LEAP ``patient-consent-consult`` requests: one or two actors, a purpose, maybe a category."""
    bodies = []
    for n in range(count):
        actors = rng.sample(range(len(bench_consent.ACTORS)), rng.choice([1, 1, 2]))
        context: dict[str, Any] = {
            "patientId": [{"system": PATIENT.system, "value": PATIENT.value}],
            "actor": [{"system": NPI, "value": f"{a:010d}"} for a in actors],
            "purposeOfUse": [rng.choice(PURPOSE_CODES)],
        }
        if rng.random() < 0.3:
            context["category"] = [{"system": "http://loinc.org", "code": "59284-0"}]
        body = {"hook": "patient-consent-consult", "hookInstance": f"bench-{n}", "context": context}
        bodies.append(json.dumps(body).encode())
    return bodies


def _outcomes(url: str, key: str, bodies: list[bytes]) -> Counter[str]:
    """The decisions of a sample (a check that the workload exercises every outcome)."""
    seen: Counter[str] = Counter()
    with requests.Session() as session:
        for body in bodies:
            answer = session.post(
                url,
                data=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                timeout=30,
            )
            answer.raise_for_status()
            seen[answer.json()["cards"][0]["summary"]] += 1
    return seen


def measure(count: int) -> dict[str, Any]:
    rng = random.Random(20261206)
    now = datetime.now(UTC)
    stored = consents(rng, now)
    bodies = hook_requests(rng, count)
    warm = hook_requests(rng, max(100, count // 10))
    path = "/cds-services/patient-consent-consult"
    with harness.bare_flask() as bare:
        harness.drive(f"{bare.url}{path}", warm)
        baseline = harness.drive(f"{bare.url}{path}", bodies, server=bare)
    with harness.service(["write", "consult"]) as service:
        answer = requests.post(
            f"{service.url}/v1/consents",
            json=stored,
            headers={"Authorization": f"Bearer {service.api_key}"},
            timeout=60,
        )
        if answer.status_code != 201:
            raise SystemExit(
                f"storing the consents failed: {answer.status_code} {answer.text[:500]}"
            )
        url = f"{service.url}{path}"
        outcomes = _outcomes(url, service.api_key, bodies[:200])
        harness.drive(url, warm, api_key=service.api_key)
        ours = harness.drive(
            url,
            bodies,
            api_key=service.api_key,
            expect=lambda status: status == 200,
            server=service,
        )
    result = harness.entry(
        "service consent consult over HTTP: LEAP hook requests, patient with 25 consents of "
        "3 levels vs bare Flask JSON parse, same gunicorn",
        ours.per_second,
        baseline.per_second,
        "decisions/s",
        0.0,
        target_abs=TARGET_DECISIONS_PER_SECOND,
        requests=count,
        p50_ms=round(ours.median_ms, 2),
        p99_ms=round(ours.percentile_ms(0.99), 2),
        baseline_p50_ms=round(baseline.median_ms, 2),
        outcomes_in_sample=dict(outcomes),
        **harness.cpu_figures(ours, baseline),
    )
    return result


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Bench-runner contract: one entry per measurement."""
    return [measure(600 if quick else 6000)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 requests instead of 6,000")
    harness.add_gunicorn_options(parser)
    args = parser.parse_args()
    shown = harness.use_gunicorn_options(args)
    entries = [{**entry, **shown} for entry in run(quick=args.quick)]
    harness.print_entries(entries)
    return 0 if all(e["ours"] >= e["target_abs"] for e in entries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
