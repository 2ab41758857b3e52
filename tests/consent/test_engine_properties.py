"""Properties over random consents and requests: the compiled, indexed engine agrees with a plain
recursive reading of the rules, with its own full scan, and with any order of the consents."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_alliance.consent.decision import (
    CombiningRule,
    DecisionOutcome,
    DecisionRequest,
    RequestActor,
    RequestedResource,
)
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.consent.purposes import PURPOSE_OF_USE_PARENT
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    ConsentKind,
    ConsentRecord,
    ConsentStatus,
    Decision,
    Period,
    Provision,
    ProvisionActor,
)
from fhir_alliance.terminology import RESOURCE_LABEL_CODES
from tests.consent.builders import CONSENT_IDS, IRCP, NPI, PRCP, act, label, loinc, pou, t
from tests.consent.test_scenarios import summary

#: The last doctor is not in the directory: named by reference on one side and by identifier on the
#: other, it cannot be resolved (a missing fact).
DOCTORS = [f"Practitioner/d{i}" for i in range(5)]
DIRECTORY = ActorDirectory((d, [Identifier(NPI, str(i))]) for i, d in enumerate(DOCTORS[:-1]))
PATIENT = Ref(reference="Patient/p1")
OTHER = Ref(reference="Patient/p2")
PURPOSES = [pou(c) for c in ("TREAT", "ETREAT", "HPAYMT", "HRESCH")]
ACTIONS = [act(c) for c in ("access", "disclose")]
#: Requests may carry codes no consent can name: misspelled, or in another system.
REQUEST_PURPOSES = [*PURPOSES, pou("TRAET")]
REQUEST_ACTIONS = [*ACTIONS, act("acess"), None]
LABELS = [label(c) for c in ("R", "PSY", "PSYTHPN", "SUD")]
#: Resources may also carry labels of a code system the engine does not know, with an HL7 label
#: code (which they may mean: a missing fact) or another code.
FOREIGN_LABELS = [Coding("http://ehr.example/labels", c) for c in ("R", "PSYTHPN", "internal")]
RESOURCE_LABELS = [*LABELS, *FOREIGN_LABELS]
CODES = [loinc(c) for c in ("89204-2", "44261-6")]
BASE = t("2025-01-01")
PSYTHPN = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSYTHPN")


def _day(n: int) -> datetime:
    return BASE + timedelta(days=n)


def _provision(rng: random.Random, depth: int, root: bool) -> Provision:
    def some(pool: list, chance: float = 0.3) -> tuple:  # type: ignore[type-arg]
        # Nested provisions restrict less often, so that exceptions (and sibling clashes) match.
        odds = chance if root else chance / 2
        return tuple(rng.sample(pool, rng.randint(1, 2))) if rng.random() < odds else ()

    start = rng.randint(0, 200)
    return Provision(
        type=None if root else rng.choice([Decision.PERMIT, Decision.DENY]),
        period=None if root or rng.random() < 0.7 else Period(_day(start), _day(start + 90)),
        actors=tuple(
            ProvisionActor(rng.choice([IRCP, IRCP, PRCP]), Ref(reference=d))
            for d in some(DOCTORS, 0.5)
        ),
        actions=some(ACTIONS),
        purposes=some(PURPOSES),
        security_labels=() if root and rng.random() < 0.7 else some(LABELS, 0.4),
        codes=some(CODES, 0.2),
        data_period=None
        if rng.random() < 0.8
        else Period(_day(-400), _day(rng.randint(-200, 100))),
        provisions=tuple(
            _provision(rng, depth - 1, False) for _ in range(rng.randint(0, 3) if depth else 0)
        ),
    )


def _consents(seed: int, n: int) -> list[ConsentRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        decision = rng.choice([Decision.PERMIT, Decision.DENY])
        root = _provision(rng, 3, True)
        out.append(
            ConsentRecord(
                id=Identifier(CONSENT_IDS, f"c{i}"),
                kind=ConsentKind.SHARING,
                patient=PATIENT if rng.random() < 0.9 else OTHER,
                status=rng.choice([ConsentStatus.ACTIVE] * 4 + [ConsentStatus.REVOKED]),
                decision=decision,
                date=_day(rng.randint(0, 5)),  # few distinct dates: ties happen
                period=None
                if rng.random() < 0.6
                else Period(_day(-10), _day(rng.randint(50, 300))),
                provision=Provision(
                    type=decision,
                    **{
                        f: getattr(root, f)
                        for f in (
                            "actors",
                            "actions",
                            "purposes",
                            "security_labels",
                            "codes",
                            "data_period",
                            "provisions",
                        )
                    },
                ),
            )
        )
    return out


def _request(seed: int, general: bool) -> DecisionRequest:
    rng = random.Random(seed)
    n = rng.randrange(len(DOCTORS))
    who = (
        Ref(reference=DOCTORS[n]) if rng.random() < 0.5 else Ref(identifier=Identifier(NPI, str(n)))
    )
    resource = None
    if not general:
        resource = RequestedResource(
            type="Observation",
            codes=tuple(rng.sample(CODES, rng.randint(0, 1))),
            labels=tuple(rng.sample(RESOURCE_LABELS, rng.randint(0, 2))),
            date=None if rng.random() < 0.1 else _day(rng.randint(-400, 200)),
        )
    return DecisionRequest(
        patient=(PATIENT,),
        actors=(RequestActor(who, rng.choice([IRCP, IRCP, PRCP])),),
        at=_day(rng.randint(0, 250)),
        purposes=tuple(rng.sample(REQUEST_PURPOSES, rng.randint(0, 2))),
        action=rng.choice(REQUEST_ACTIONS),
        resource=resource,
    )


# --- a plain reading of the rules, straight over the domain objects --------------------------------


def as_denies_read(labels: tuple[Coding, ...]) -> set[tuple[str, str]]:
    """A resource's labels as deny provisions read them: a label of a system other than the HL7
    label systems counts also as its code in each of those systems that has it."""
    keys = {(c.system, c.code) for c in labels}
    for c in labels:
        if c.system not in RESOURCE_LABEL_CODES:
            keys |= {(s, c.code) for s, codes in RESOURCE_LABEL_CODES.items() if c.code in codes}
    return keys


def _keys(ref: Ref) -> frozenset:  # type: ignore[type-arg]
    return DIRECTORY.keys(ref)


def _is_a(code: str, broader: str) -> bool:
    while code is not None:
        if code == broader:
            return True
        code = PURPOSE_OF_USE_PARENT.get(code)  # type: ignore[assignment]
    return False


def _purpose_matches(p: Provision, permit: bool, q: DecisionRequest) -> bool:
    known = [c.code for c in q.purposes if c.code in PURPOSE_OF_USE_PARENT]
    if not permit and (not known or len(known) < len(q.purposes)):  # missing or unknown
        return True
    return any(
        _is_a(asked, named.code) or (not permit and _is_a(named.code, asked))
        for asked in known
        for named in p.purposes
    )


def _same_actor(a: Ref, b: Ref, permit: bool) -> bool:
    if _keys(a) & _keys(b):
        return True
    kinds_a, kinds_b = ({k[0] for k in _keys(r)} for r in (a, b))
    return not permit and not kinds_a & kinds_b  # cannot be compared: a deny matches


def _matches(p: Provision, permit: bool, q: DecisionRequest) -> bool:
    r = q.resource
    assert r is not None
    codes = {(c.system, c.code) for c in r.codes}
    labels = {(c.system, c.code) for c in r.labels} if permit else as_denies_read(r.labels)
    if p.period is not None and not p.period.contains(q.at):
        return False
    if p.actions and q.action not in p.actions and (permit or q.action in ACTIONS):
        return False
    if p.purposes and not _purpose_matches(p, permit, q):
        return False
    if p.actors and not any(
        a.role == ra.role and _same_actor(a.reference, ra.reference, permit)
        for a in p.actors
        for ra in q.actors
    ):
        return False
    if p.security_labels and not {(c.system, c.code) for c in p.security_labels} & labels:
        return False
    if p.codes:
        if not codes:
            if permit:
                return False
        elif not {(c.system, c.code) for c in p.codes} & codes:
            return False
    if p.data_period is not None:
        if r.date is None:
            if permit:
                return False
        elif not p.data_period.contains(r.date):
            return False
    return True


def _deepest(p: Provision, permit: bool, path: str, named: set, q: DecisionRequest):  # type: ignore[no-untyped-def,type-arg]
    named = named | ({(c.system, c.code) for c in p.security_labels} & {PSYTHPN})
    best = (permit, path, named)
    found = False
    needs = as_denies_read(q.resource.labels) & {PSYTHPN} if q.resource else set()
    for i, child in enumerate(p.provisions):
        child_permit = child.type is Decision.PERMIT
        if _matches(child, child_permit, q):
            result = _deepest(
                child, child_permit, f"{path}.{i}" if path != "root" else str(i), named, q
            )
            # Deny overrides among siblings; among permits, one naming PSYTHPN (when the
            # resource carries it) decides, else the first.
            if (
                not found
                or (best[0] and not result[0])
                or (best[0] and result[0] and needs and needs <= result[2] and not needs <= best[2])
            ):
                best, found = result, True
    return best


def _plain(consents: list[ConsentRecord], q: DecisionRequest) -> tuple[DecisionOutcome, list[str]]:
    """deny-overrides, resource requests, consents without history."""
    patient_keys = frozenset().union(*(_keys(p) for p in q.patient))
    assert q.resource is not None
    needs = as_denies_read(q.resource.labels) & {PSYTHPN}
    denies, permits, silent = [], [], False
    for c in consents:
        if not _keys(c.patient) & patient_keys or c.status is not ConsentStatus.ACTIVE:
            continue
        if c.period is not None and not c.period.contains(q.at):
            continue
        if not _matches(c.provision, c.decision is Decision.PERMIT, q):
            continue
        permit, path, named = _deepest(c.provision, c.decision is Decision.PERMIT, "root", set(), q)
        entry = (-c.date.timestamp(), str(c.id), f"{c.id.value}@{path}")
        if not permit:
            denies.append(entry)
        elif needs <= named:
            permits.append(entry)
        else:
            silent = True
    if denies:
        return DecisionOutcome.DENY, [e[2] for e in sorted(denies)]
    if permits:
        return DecisionOutcome.PERMIT, [e[2] for e in sorted(permits)]
    return (DecisionOutcome.DENY if silent else DecisionOutcome.NO_CONSENT), []


SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=300, deadline=None)
@given(SEEDS, SEEDS, st.integers(min_value=1, max_value=12))
def test_engine_agrees_with_plain_reading(consent_seed: int, request_seed: int, n: int) -> None:
    """For a resource request, outcome and deciding paths equal a plain recursive evaluation."""
    consents = _consents(consent_seed, n)
    request = _request(request_seed, general=False)
    decision = ConsentEngine(consents, directory=DIRECTORY).decide(request)
    assert (decision.outcome, summary(decision)[0]) == _plain(consents, request)


@settings(max_examples=150, deadline=None)
@given(
    SEEDS,
    SEEDS,
    st.integers(min_value=1, max_value=12),
    st.booleans(),
    st.sampled_from(list(CombiningRule)),
)
def test_index_agrees_with_full_scan(
    consent_seed: int, request_seed: int, n: int, general: bool, combining: CombiningRule
) -> None:
    """The per-patient index never changes an answer (traced decisions scan every consent)."""
    engine = ConsentEngine(_consents(consent_seed, n), directory=DIRECTORY, combining=combining)
    request = _request(request_seed, general=general)
    fast, full = engine.decide(request), engine.decide(request, trace=True)
    assert (fast.outcome, summary(fast)) == (full.outcome, summary(full))


@settings(max_examples=100, deadline=None)
@given(
    SEEDS,
    SEEDS,
    st.integers(min_value=2, max_value=10),
    st.booleans(),
    st.sampled_from(list(CombiningRule)),
    st.randoms(use_true_random=False),
)
def test_order_of_consents_does_not_matter(
    consent_seed: int,
    request_seed: int,
    n: int,
    general: bool,
    combining: CombiningRule,
    shuffler: random.Random,
) -> None:
    """Shuffling the consents changes neither outcome, nor basis, nor obligations."""
    consents = _consents(consent_seed, n)
    request = _request(request_seed, general=general)
    shuffled = consents[:]
    shuffler.shuffle(shuffled)
    a = ConsentEngine(consents, directory=DIRECTORY, combining=combining).decide(request)
    b = ConsentEngine(shuffled, directory=DIRECTORY, combining=combining).decide(request)
    assert (a.outcome, summary(a)) == (b.outcome, summary(b))
