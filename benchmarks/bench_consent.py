"""Consent decisions per second: one patient, 25 consents with three levels of provisions, varied
requests. Ours compiles the consents once; the baseline re-parses the FHIR JSON (json + the R4
mapping) and decides afresh for every request, as a service that fetches consents per request does.
Two workloads: requests about one resource (targets >= 50,000/s and >= 20x) and requests about the
patient's data in general, answered with redact obligations (reported; >= 20x).

    python benchmarks/bench_consent.py [--quick]
"""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_alliance.consent.decision import (
    DecisionRequest,
    RequestActor,
    RequestedResource,
)
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.consent.engine import ConsentEngine, decide
from fhir_alliance.mapping.consent import R4, from_consent, to_consent
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    ConsentKind,
    ConsentRecord,
    ConsentStatus,
    Decision,
    Period,
    PolicyBasis,
    Provision,
    ProvisionActor,
)
from fhir_alliance.terminology import (
    CONSENT_ACTION,
    LOINC,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
    V3_PARTICIPATION_TYPE,
)

N_CONSENTS = 25
NPI = "http://hl7.org/fhir/sid/us-npi"
IRCP = Coding(V3_PARTICIPATION_TYPE, "IRCP")
PATIENT = Ref(reference="Patient/p1")
PURPOSES = [Coding(V3_ACT_REASON, c) for c in ("TREAT", "HPAYMT", "HOPERAT", "HRESCH", "ETREAT")]
ACTIONS = [Coding(CONSENT_ACTION, c) for c in ("access", "disclose", "use", "collect")]
LABELS = [Coding(V3_CONFIDENTIALITY, c) for c in ("N", "R", "V")] + [
    Coding(V3_ACT_CODE, c) for c in ("BH", "PSY", "PSYTHPN", "ETH", "SUD", "HIV")
]
CODES = [Coding(LOINC, c) for c in ("89204-2", "44261-6", "69737-5", "11488-4")]
TYPES = ["Observation", "QuestionnaireResponse", "DocumentReference"]
ACTORS = [f"Practitioner/dr-{i}" for i in range(12)] + [f"Organization/org-{i}" for i in range(4)]
START = datetime(2025, 1, 1, tzinfo=UTC)


def _day(offset: int) -> datetime:
    return START + timedelta(days=offset)


def build_consents(rng: random.Random) -> list[ConsentRecord]:
    """25 consents, each root → 2 exceptions → 1-2 nested exceptions each (three levels)."""
    consents = []
    for n in range(N_CONSENTS):
        decision = rng.choice([Decision.PERMIT, Decision.PERMIT, Decision.DENY])
        opposite = Decision.DENY if decision is Decision.PERMIT else Decision.PERMIT

        def actor() -> ProvisionActor:
            return ProvisionActor(role=IRCP, reference=Ref(reference=rng.choice(ACTORS)))

        level3a = Provision(type=decision, actors=(actor(),), purposes=(rng.choice(PURPOSES),))
        level3b = Provision(type=decision, security_labels=(LABELS[5],), actors=(actor(),))
        level2a = Provision(
            type=opposite,
            security_labels=tuple(rng.sample(LABELS, 2)),
            provisions=(level3a, level3b),
        )
        level2b = Provision(
            type=opposite,
            codes=(rng.choice(CODES),),
            data_period=Period(start=_day(-900), end=_day(-300)),
            provisions=(Provision(type=decision, actions=(ACTIONS[0],)),),
        )
        root = Provision(
            type=decision,
            actors=tuple(actor() for _ in range(3)),
            actions=tuple(rng.sample(ACTIONS, 2)),
            purposes=tuple(rng.sample(PURPOSES, 3)),
            provisions=(level2a, level2b),
        )
        consents.append(
            ConsentRecord(
                id=Identifier("https://clinic.example/consent-ids", f"c{n}"),
                kind=ConsentKind.SHARING,
                patient=PATIENT,
                status=ConsentStatus.ACTIVE,
                decision=decision,
                date=_day(rng.randint(0, 150)),
                period=Period(start=_day(-30), end=_day(rng.randint(200, 500))),
                policy_basis=(PolicyBasis(uri="https://clinic.example/privacy-policy"),),
                provision=root,
            )
        )
    return consents


def build_directory() -> ActorDirectory:
    return ActorDirectory((ref, [Identifier(NPI, f"{n:010d}")]) for n, ref in enumerate(ACTORS))


def build_requests(
    rng: random.Random, count: int, *, general: bool = False
) -> list[DecisionRequest]:
    """Different actors (by reference or identifier), purposes, actions, labels, codes, dates."""
    requests = []
    for _ in range(count):
        n = rng.randrange(len(ACTORS))
        who = (
            Ref(reference=ACTORS[n])
            if rng.random() < 0.5
            else Ref(identifier=Identifier(NPI, f"{n:010d}"))
        )
        requests.append(
            DecisionRequest(
                patient=(PATIENT,),
                actors=(RequestActor(reference=who),),
                at=_day(rng.randint(0, 300)) + timedelta(minutes=rng.randint(0, 1440)),
                purposes=(rng.choice(PURPOSES),),
                action=rng.choice(ACTIONS),
                resource=None
                if general
                else RequestedResource(
                    type=rng.choice(TYPES),
                    codes=(rng.choice(CODES),),
                    labels=tuple(rng.sample(LABELS, rng.randint(0, 3))),
                    date=_day(rng.randint(-1000, 300)),
                ),
            )
        )
    return requests


def _rate(fn: Any, items: list[Any], min_seconds: float) -> float:
    """Items per second of this process's CPU time: one core's throughput, whatever else the
    machine is running (wall-clock time on a shared machine would count other processes)."""
    done, started = 0, time.process_time()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        elapsed = time.process_time() - started
        if elapsed >= min_seconds:
            return done / elapsed


def _measure(
    name: str,
    engine: ConsentEngine,
    requests: list[DecisionRequest],
    wire: bytes,
    directory: ActorDirectory,
    quick: bool,
    target_abs: int | None,
) -> dict[str, Any]:
    def baseline(request: DecisionRequest) -> Any:
        records = [from_consent(r) for r in json.loads(wire)]
        return decide(records, request, directory=directory)

    # Both paths must agree before their speed means anything.
    for request in requests[:200]:
        ours, theirs = engine.decide(request), baseline(request)
        assert (ours.outcome, ours.basis, ours.obligations) == (
            theirs.outcome,
            theirs.basis,
            theirs.obligations,
        )
    mix: dict[str, int] = {}
    for request in requests:
        outcome = engine.decide(request).outcome.value
        mix[outcome] = mix.get(outcome, 0) + 1

    ours_rate = _rate(engine.decide, requests, 0.5 if quick else 3.0)
    baseline_rate = _rate(baseline, requests[: 50 if quick else 300], 0.5 if quick else 3.0)
    entry: dict[str, Any] = {
        "name": name,
        "ours": ours_rate,
        "baseline": baseline_rate,
        "unit": "decisions/s",
        "ratio": ours_rate / baseline_rate,
        "target_ratio": 20,
        "outcomes": mix,  # the requests really differ: every outcome occurs
    }
    if target_abs is not None:
        entry["target_abs"] = target_abs
    return entry


def run(quick: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(20250601)
    consents = build_consents(rng)
    directory = build_directory()
    wire = json.dumps([to_consent(c, version=R4) for c in consents]).encode()
    count = 500 if quick else 4000
    engine = ConsentEngine(consents, directory=directory)
    return [
        _measure(
            "consent decisions, 25 consents x 3 levels",
            engine,
            build_requests(rng, count),
            wire,
            directory,
            quick,
            50000,  # the target set for per-resource decisions
        ),
        _measure(
            "consent decisions without a resource (obligations)",
            engine,
            build_requests(rng, count, general=True),
            wire,
            directory,
            quick,
            None,  # reported, ratio target only: the absolute target is for resource decisions
        ),
    ]


def main() -> None:
    for entry in run(quick="--quick" in sys.argv):
        absolute = f" and >= {entry['target_abs']:,}" if "target_abs" in entry else ""
        print(
            f"{entry['name']}: ours {entry['ours']:,.0f} {entry['unit']}, "
            f"baseline {entry['baseline']:,.0f}, ratio {entry['ratio']:.1f}x "
            f"(targets >= {entry['target_ratio']}x{absolute}); outcomes {entry['outcomes']}"
        )


if __name__ == "__main__":
    main()
