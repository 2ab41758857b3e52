"""Demo sync on embedded defaults: what the library can do end to end, against a real FHIR server.

``make demo`` runs it. Without ``--base-url`` it starts the suite's own FHIR R4 test server
(tests/fhir_server, Medplum's router) on a free loopback port and stops it afterwards. Steps:

1. load the example alliance records (examples/observations) and the demo consent (examples/demo);
2. map every record to FHIR R4 and validate it;
3. gate every resource through the consent engine (disclose to the EHR for TREAT): permitted
   resources go, the rest are held with the reason;
4. push the permitted ones idempotently (PUT to deterministic ids in transaction Bundles);
5. read the SRS administration back and check it maps to the very record it came from;
6. push again: nothing new is created (idempotence);
7. apply the client's revocation and gate again: nothing may leave any more;
8. run ``fhir-alliance check`` against the same server.

All data is synthetic. A vendor embedding the library does the same with its own records.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from fhir_alliance.check import run_check  # noqa: E402
from fhir_alliance.client import BundleRequest, FhirClient  # noqa: E402
from fhir_alliance.consent import ConsentEngine, DecisionOutcome  # noqa: E402
from fhir_alliance.consent.gate import disclosure_request  # noqa: E402
from fhir_alliance.mapping.consent import MAPPER as CONSENTS  # noqa: E402
from fhir_alliance.mapping.observation import MAPPER as OBSERVATIONS  # noqa: E402
from fhir_alliance.mapping.validation import validate_resource  # noqa: E402
from fhir_alliance.model.common import Coding, Ref  # noqa: E402
from fhir_alliance.terminology import V3_ACT_REASON  # noqa: E402

EHR = Ref(reference="Organization/example-ehr", type="Organization")
TREAT = Coding(system=V3_ACT_REASON, code="TREAT")


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _records() -> list[Any]:
    records = [OBSERVATIONS.load(_load(p)) for p in sorted((HERE / "observations").glob("*.json"))]
    issues = OBSERVATIONS.check_batch([(str(i), r) for i, r in enumerate(records)])
    if issues:
        raise SystemExit(f"example records are inconsistent: {issues}")
    return records


def _gate(
    resources: list[tuple[Ref, dict[str, Any]]], engine: ConsentEngine, at: datetime
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Ask the engine about every (patient, resource); a Provenance names no subject of its own."""
    allowed: list[dict[str, Any]] = []
    held: Counter[str] = Counter()
    for patient, resource in resources:
        request = disclosure_request(
            resource, patient=[patient], recipient=[EHR], purposes=[TREAT], at=at
        )
        decision = engine.decide(request)
        if decision.outcome is DecisionOutcome.PERMIT:
            allowed.append(resource)
        else:
            why = str(decision.basis[0]) if decision.basis else "; ".join(decision.notes)
            held[f"{decision.outcome.value}: {why or 'no consent covers it'}"] += 1
    return allowed, held


def _push(client: FhirClient, resources: list[dict[str, Any]]) -> Counter[str]:
    outcomes = client.transaction([BundleRequest.put(r) for r in resources], chunk_size=100)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"{len(failed)} resource(s) were refused, first: HTTP {failed[0].status}")
    return Counter("created" if o.status == 201 else "unchanged/updated" for o in outcomes)


def run(base_url: str) -> int:
    at = datetime.now(UTC)
    records = _records()
    consent = CONSENTS.load(_load(HERE / "demo" / "consent-sharing.json"))
    resources = [
        (record.patient, r)
        for record in records
        for r in OBSERVATIONS.to_fhir(record, version="4.0.1")
    ]
    for _, resource in resources:
        validate_resource(resource, version="4.0.1")
    print(f"1-2. {len(records)} alliance records mapped to {len(resources)} FHIR R4 resources")

    allowed, held = _gate(resources, ConsentEngine([consent]), at)
    print(
        f"3.   consent gate: {len(allowed)} may be disclosed to the EHR, {sum(held.values())} held"
    )
    for reason, count in sorted(held.items()):
        print(f"       held {count:3d} x {reason}")

    with FhirClient(base_url) as client:
        caps = client.capabilities()
        print(
            f"     server: FHIR {caps.fhir_version}, write strategy {getattr(caps.write_strategy('Observation'), 'value', 'none')}"
        )
        print(f"4.   pushed: {dict(_push(client, allowed))}")

        srs = next(
            r for r in records if getattr(r, "instrument", None) and "srs" in str(r.instrument)
        )
        panel = OBSERVATIONS.to_fhir(srs)[0]
        members = [
            client.read("Observation", m["reference"].split("/")[1]) for m in panel["hasMember"]
        ]
        back = OBSERVATIONS.from_fhir([client.read("Observation", panel["id"]), *members])
        print(
            f"5.   SRS administration read back from the server equals its source: {back == [srs]}"
        )
        if back != [srs]:
            return 1

        print(f"6.   pushed again: {dict(_push(client, allowed))} (same ids: no duplicates)")

    revoked = CONSENTS.apply_batch(
        [
            ("consent", consent),
            ("revocation", CONSENTS.load(_load(HERE / "demo" / "revocation.json"))),
        ]
    )
    allowed_after, held_after = _gate(resources, ConsentEngine([r for _, r in revoked]), at)
    print(
        f"7.   after the client's revocation: {len(allowed_after)} may be disclosed, "
        f"{sum(held_after.values())} held"
    )
    if allowed_after:
        return 1

    with FhirClient(base_url) as client:
        report = run_check(client)
    print("8.   fhir-alliance check:")
    print("\n".join("       " + line for line in report.to_text().splitlines()))
    return 0 if report.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an R4 server to use instead of the local test server")
    args = parser.parse_args()
    if args.base_url:
        return run(args.base_url)
    from tests.fhir_server.plugin import start_local_server

    with tempfile.TemporaryDirectory() as log_dir:
        server = start_local_server(Path(log_dir))
        try:
            print(f"started the local FHIR R4 test server at {server.base_url}")
            return run(server.base_url)
        finally:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
