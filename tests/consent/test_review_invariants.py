"""Review (consent engine, deny by default): invariants over random consents and requests.

* Adding what only denies (a deny-only consent, or a deny provision anywhere in a consent) never
  turns an answer into PERMIT, and never releases a resource the answer for it did not release.
* Taking a consent out of force (revoked, entered in error, its period over) is the same as not
  having it; a consent that only permits taken out never widens.
* Order of consents, of nested provisions (outcome) and of the codings in a provision (outcome,
  basis and obligations) does not matter.
* The request time's UTC offset does not matter; the R4 and R5 forms of the same consents decide
  the same.
* General answers stay sound (what survives their obligations is permitted for that resource)
  under ``most-recent-wins``, with categories (restrictions of another category) and histories.
"""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fhir_alliance.consent.decision import (
    CombiningRule,
    DecisionOutcome,
    DecisionRequest,
    RequestedResource,
)
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.mapping.consent import R4, R5, from_consent, to_consent
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    ConsentKind,
    ConsentRecord,
    ConsentStatus,
    DataMeaning,
    DataRef,
    Decision,
    Period,
    PolicyBasis,
    Provision,
    StatusChange,
)
from fhir_alliance.terminology import CONSENT_SCOPE, LOINC
from tests.consent.builders import CONSENT_IDS, RESOURCE_TYPES, act, consent, prov, request
from tests.consent.test_engine_properties import (
    DIRECTORY,
    SEEDS,
    _request,
)
from tests.consent.test_general_soundness import (
    CLASSES,
    _consents_with_classes,
    _resource,
    _survives,
)
from tests.consent.test_scenarios import summary

COMBINING = st.sampled_from(list(CombiningRule))
PATIENT_CONSENT = Coding(LOINC, "59284-0")
RELEASE = Coding(LOINC, "64292-6")
CATEGORIES = [PATIENT_CONSENT, RELEASE, Coding(CONSENT_SCOPE, "patient-privacy")]
POLICY = (PolicyBasis(uri="https://clinic.example/privacy-policy"),)


def _only_denies(p: Provision) -> Provision:
    return dataclasses.replace(
        p, type=Decision.DENY, provisions=tuple(_only_denies(c) for c in p.provisions)
    )


def _deny_consent(seed: int, value: str) -> ConsentRecord:
    """A consent that denies only: base deny, every nested provision deny."""
    (base,) = _consents_with_classes(seed, 1)
    rng = random.Random(seed)
    return dataclasses.replace(
        base,
        id=Identifier(CONSENT_IDS, value),
        kind=rng.choice([ConsentKind.SHARING, ConsentKind.RESTRICTION, ConsentKind.RECORDING]),
        decision=Decision.DENY,
        status=ConsentStatus.ACTIVE,
        categories=tuple(rng.sample(CATEGORIES[:2], rng.randint(0, 1))),
        provision=_only_denies(base.provision),
    )


def _varied(seed: int, n: int) -> list[ConsentRecord]:
    """Consents of several kinds and categories (with classes and data references)."""
    rng = random.Random(seed ^ 0xC0FFEE)
    out = []
    for c in _consents_with_classes(seed, n):
        kind = rng.choice([ConsentKind.SHARING, ConsentKind.SHARING, ConsentKind.RESTRICTION])
        out.append(
            dataclasses.replace(
                c,
                kind=kind,
                categories=tuple(rng.sample(CATEGORIES[:2], rng.randint(0, 1))),
                policy_basis=POLICY,
            )
        )
    return out


def _general_request(seed: int, rng: random.Random) -> DecisionRequest:
    asked = tuple(rng.sample(CLASSES, rng.randint(1, 2))) if rng.random() < 0.4 else ()
    categories = tuple(rng.sample(CATEGORIES, rng.randint(1, 2))) if rng.random() < 0.3 else ()
    return dataclasses.replace(
        _request(seed, general=True), content_classes=asked, categories=categories
    )


def _exact(general: DecisionRequest, resource: RequestedResource) -> DecisionRequest:
    return dataclasses.replace(general, resource=resource, content_classes=())


def _resource_request(seed: int, rng: random.Random) -> DecisionRequest:
    general = _general_request(seed, rng)
    resource = None
    while resource is None:
        resource = _resource(rng, ())
    return _exact(general, resource)


def _released(engine: ConsentEngine, q: DecisionRequest, rng: random.Random, tries: int = 8):  # type: ignore[no-untyped-def]
    """Resources of the content asked about that the general answer releases."""
    answer = engine.decide(q)
    if answer.outcome is not DecisionOutcome.PERMIT:
        return answer, []
    out = []
    for _ in range(tries):
        resource = _resource(rng, q.content_classes)
        if resource is not None and _survives(answer.obligations, resource):
            out.append(resource)
    return answer, out


# --- adding denies ---------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(SEEDS, SEEDS, SEEDS, st.integers(min_value=0, max_value=6), COMBINING)
def test_a_deny_only_consent_never_widens_a_resource_answer(
    consent_seed: int, deny_seed: int, request_seed: int, n: int, combining: CombiningRule
) -> None:
    consents = _varied(consent_seed, n)
    extra = _deny_consent(deny_seed, "added-deny")
    q = _resource_request(request_seed, random.Random(request_seed))
    before = ConsentEngine(consents, directory=DIRECTORY, combining=combining).decide(q)
    after = ConsentEngine([*consents, extra], directory=DIRECTORY, combining=combining).decide(q)
    if after.outcome is DecisionOutcome.PERMIT:
        assert before.outcome is DecisionOutcome.PERMIT, (before, after)


@settings(max_examples=400, deadline=None)
@given(SEEDS, SEEDS, SEEDS, st.integers(min_value=0, max_value=6), COMBINING)
def test_a_deny_only_consent_never_widens_a_general_answer(
    consent_seed: int, deny_seed: int, request_seed: int, n: int, combining: CombiningRule
) -> None:
    consents = _varied(consent_seed, n)
    extra = _deny_consent(deny_seed, "added-deny")
    rng = random.Random(request_seed)
    q = _general_request(request_seed, rng)
    before = ConsentEngine(consents, directory=DIRECTORY, combining=combining)
    after = ConsentEngine([*consents, extra], directory=DIRECTORY, combining=combining)
    answer, released = _released(after, q, rng)
    if answer.outcome is DecisionOutcome.PERMIT:
        earlier = before.decide(q)
        assert earlier.outcome is DecisionOutcome.PERMIT
    for resource in released:
        # What survives the obligations after survived them before: adding a deny narrows a
        # general answer, never swaps one redaction for a narrower one.
        assert _survives(earlier.obligations, resource), resource
        assert before.decide(_exact(q, resource)).outcome is DecisionOutcome.PERMIT, resource
        assert after.decide(_exact(q, resource)).outcome is DecisionOutcome.PERMIT, resource


def _add_deny(p: Provision, rng: random.Random, deny: Provision) -> Provision:
    """``p`` with ``deny`` added as a child of one provision (anywhere in the tree)."""
    if not p.provisions or rng.random() < 0.4:
        at = rng.randint(0, len(p.provisions))
        children = (*p.provisions[:at], deny, *p.provisions[at:])
        return dataclasses.replace(p, provisions=children)
    n = rng.randrange(len(p.provisions))
    children = list(p.provisions)
    children[n] = _add_deny(children[n], rng, deny)
    return dataclasses.replace(p, provisions=tuple(children))


@settings(max_examples=400, deadline=None)
@given(SEEDS, SEEDS, SEEDS, st.integers(min_value=1, max_value=6), COMBINING, st.booleans())
# A random run's find: the general answer after kept DocumentReference/o2, which an obligation
# before removed (a deny nested in a scope that the added deny took over).
@example(298771805, 2706175051, 2439960231, 3, CombiningRule.DENY_OVERRIDES, True)
def test_a_deny_provision_added_to_a_consent_never_widens(
    consent_seed: int,
    deny_seed: int,
    request_seed: int,
    n: int,
    combining: CombiningRule,
    general: bool,
) -> None:
    consents = _varied(consent_seed, n)
    rng = random.Random(deny_seed)
    target = rng.randrange(n)
    deny = _only_denies(_deny_consent(deny_seed, "x").provision)
    deny = dataclasses.replace(deny, provisions=deny.provisions[:1])
    changed = consents[:]
    changed[target] = dataclasses.replace(
        consents[target], provision=_add_deny(consents[target].provision, rng, deny)
    )
    qrng = random.Random(request_seed)
    before = ConsentEngine(consents, directory=DIRECTORY, combining=combining)
    after = ConsentEngine(changed, directory=DIRECTORY, combining=combining)
    if not general:
        q = _resource_request(request_seed, qrng)
        if after.decide(q).outcome is DecisionOutcome.PERMIT:
            assert before.decide(q).outcome is DecisionOutcome.PERMIT
        return
    q = _general_request(request_seed, qrng)
    answer, released = _released(after, q, qrng)
    if answer.outcome is DecisionOutcome.PERMIT:
        earlier = before.decide(q)
        assert earlier.outcome is DecisionOutcome.PERMIT
    for resource in released:
        assert _survives(earlier.obligations, resource), resource
        assert before.decide(_exact(q, resource)).outcome is DecisionOutcome.PERMIT, resource
        assert after.decide(_exact(q, resource)).outcome is DecisionOutcome.PERMIT, resource


# --- out of force -----------------------------------------------------------------------------------


def _out_of_force(c: ConsentRecord, how: str, q: DecisionRequest) -> ConsentRecord:
    at = q.at
    if how == "revoked":
        history = (
            StatusChange(ConsentStatus.ACTIVE, c.date - timedelta(days=30)),
            StatusChange(ConsentStatus.REVOKED, at - timedelta(seconds=1)),
        )
        return dataclasses.replace(c, status=ConsentStatus.REVOKED, history=history)
    if how == "revoked-now":
        history = (
            StatusChange(ConsentStatus.ACTIVE, c.date - timedelta(days=30)),
            StatusChange(ConsentStatus.REVOKED, at),
        )
        return dataclasses.replace(c, status=ConsentStatus.REVOKED, history=history)
    if how == "entered-in-error":
        return dataclasses.replace(c, status=ConsentStatus.ENTERED_IN_ERROR)
    if how == "expired":
        return dataclasses.replace(c, status=ConsentStatus.EXPIRED)
    if how == "draft":
        return dataclasses.replace(c, status=ConsentStatus.DRAFT)
    # period over at the request time (end exclusive), in another UTC offset
    end = at.astimezone(timezone(timedelta(hours=-5)))
    start = c.period.start if c.period is not None and c.period.start else None
    if start is not None and start >= end:
        start = None
    return dataclasses.replace(
        c,
        status=ConsentStatus.ACTIVE,
        period=dataclasses.replace(c.period, start=start, end=end)
        if c.period is not None
        else Period(end=end),
    )


@settings(max_examples=300, deadline=None)
@given(
    SEEDS,
    SEEDS,
    st.integers(min_value=1, max_value=6),
    COMBINING,
    st.booleans(),
    st.sampled_from(["revoked", "revoked-now", "entered-in-error", "expired", "draft", "period"]),
)
def test_a_consent_out_of_force_is_as_if_absent(
    consent_seed: int,
    request_seed: int,
    n: int,
    combining: CombiningRule,
    general: bool,
    how: str,
) -> None:
    consents = [
        dataclasses.replace(c, status=ConsentStatus.ACTIVE) for c in _varied(consent_seed, n)
    ]
    rng = random.Random(request_seed)
    q = _general_request(request_seed, rng) if general else _resource_request(request_seed, rng)
    target = rng.randrange(n)
    changed = consents[:]
    changed[target] = _out_of_force(consents[target], how, q)
    absent = consents[:target] + consents[target + 1 :]
    a = ConsentEngine(changed, directory=DIRECTORY, combining=combining).decide(q)
    b = ConsentEngine(absent, directory=DIRECTORY, combining=combining).decide(q)
    assert (a.outcome, summary(a)) == (b.outcome, summary(b))


# --- order ------------------------------------------------------------------------------------------


def _shuffle_codings(p: Provision, rng: random.Random, children: bool) -> Provision:
    def mix(values: tuple) -> tuple:  # type: ignore[type-arg]
        out = list(values)
        rng.shuffle(out)
        return tuple(out)

    kids = tuple(_shuffle_codings(c, rng, children) for c in p.provisions)
    return dataclasses.replace(
        p,
        actors=mix(p.actors),
        actions=mix(p.actions),
        purposes=mix(p.purposes),
        security_labels=mix(p.security_labels),
        codes=mix(p.codes),
        classes=mix(p.classes),
        data=mix(p.data),
        provisions=mix(kids) if children else kids,
    )


def _obligation_sets(d):  # type: ignore[no-untyped-def]
    """The obligations as a set, each filter's codings as sets (their order is the consents')."""

    def keys(codings):  # type: ignore[no-untyped-def]
        return sorted((c.system, c.code) for c in codings)

    return sorted(
        repr(
            (
                o.mode.value,
                keys(o.labels),
                keys(o.codes),
                keys(o.classes),
                o.data_period,
                sorted(map(repr, o.data)),
            )
        )
        for o in d.obligations
    )


@settings(max_examples=300, deadline=None)
@given(SEEDS, SEEDS, st.integers(min_value=1, max_value=6), COMBINING, st.booleans(), st.booleans())
def test_order_of_codings_and_provisions_does_not_matter(
    consent_seed: int,
    request_seed: int,
    n: int,
    combining: CombiningRule,
    general: bool,
    children: bool,
) -> None:
    consents = _varied(consent_seed, n)
    rng = random.Random(request_seed)
    q = _general_request(request_seed, rng) if general else _resource_request(request_seed, rng)
    shuffled = [
        dataclasses.replace(c, provision=_shuffle_codings(c.provision, rng, children))
        for c in consents
    ]
    a = ConsentEngine(consents, directory=DIRECTORY, combining=combining).decide(q)
    b = ConsentEngine(shuffled, directory=DIRECTORY, combining=combining).decide(q)
    assert a.outcome is b.outcome, (a, b)
    if not children:
        assert summary(a)[0] == summary(b)[0]
        assert _obligation_sets(a) == _obligation_sets(b)


# --- time zones, R4/R5 -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    SEEDS,
    SEEDS,
    st.integers(min_value=1, max_value=6),
    st.booleans(),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_the_request_times_offset_does_not_matter(
    consent_seed: int, request_seed: int, n: int, general: bool, minutes: int
) -> None:
    consents = _varied(consent_seed, n)
    rng = random.Random(request_seed)
    q = _general_request(request_seed, rng) if general else _resource_request(request_seed, rng)
    shifted = dataclasses.replace(q, at=q.at.astimezone(timezone(timedelta(minutes=minutes))))
    engine = ConsentEngine(consents, directory=DIRECTORY)
    a, b = engine.decide(q), engine.decide(shifted)
    assert (a.outcome, summary(a)) == (b.outcome, summary(b))


def _fhir(records: list[ConsentRecord], version: str) -> list[ConsentRecord]:
    return [from_consent(json.loads(json.dumps(to_consent(r, version=version)))) for r in records]


@settings(max_examples=200, deadline=None)
@given(SEEDS, SEEDS, st.integers(min_value=1, max_value=6), COMBINING, st.booleans())
def test_r4_and_r5_forms_decide_the_same(
    consent_seed: int, request_seed: int, n: int, combining: CombiningRule, general: bool
) -> None:
    consents = _varied(consent_seed, n)
    rng = random.Random(request_seed)
    q = _general_request(request_seed, rng) if general else _resource_request(request_seed, rng)
    domain = ConsentEngine(consents, directory=DIRECTORY, combining=combining).decide(q)
    for version in (R4, R5):
        fhir = ConsentEngine(_fhir(consents, version), directory=DIRECTORY, combining=combining)
        answer = fhir.decide(q)
        assert (answer.outcome, summary(answer)) == (domain.outcome, summary(domain)), version


# --- soundness of general answers, wider --------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(SEEDS, SEEDS, st.integers(min_value=1, max_value=8), COMBINING)
def test_general_answers_stay_sound_with_categories_and_combining(
    consent_seed: int, request_seed: int, n: int, combining: CombiningRule
) -> None:
    consents = _varied(consent_seed, n)
    rng = random.Random(request_seed)
    q = _general_request(request_seed, rng)
    engine = ConsentEngine(consents, directory=DIRECTORY, combining=combining)
    _, released = _released(engine, q, rng)
    for resource in released:
        decided = engine.decide(_exact(q, resource))
        assert decided.outcome is DecisionOutcome.PERMIT, (resource, decided)


def test_a_deny_added_to_a_scoped_consent_never_turns_a_general_deny_into_a_permit() -> None:
    """A sharing permit, and a consent that denies DocumentReference/o2 except a permit, beside
    which a deny of DocumentReference content. Asked in general about DocumentReferences: the
    nested deny redacts every DocumentReference (more than its scope, the safe side), which
    removes all that was asked for: deny. Add an unscoped deny beside the permit and the consent
    denies its whole scope: that redacts o2, and the deny nested inside still redacts every
    DocumentReference, so the answer stays deny (it was a permit redacting o2 only: adding a deny
    widened the answer). The random check above
    (test_a_deny_provision_added_to_a_consent_never_widens) met this now and then."""
    docs = [Coding(RESOURCE_TYPES, "DocumentReference")]
    o2 = DataRef(meaning=DataMeaning.INSTANCE, reference=Ref(reference="DocumentReference/o2"))

    def scoped(*extra: Provision) -> ConsentRecord:
        return consent("c1", "deny", *extra, prov("permit"), prov("deny", classes=docs), data=[o2])

    q = request(Ref(reference="Organization/ehr"), classes=tuple(docs))
    share = consent("c0", "permit")
    before = ConsentEngine([share, scoped()]).decide(q)
    after = ConsentEngine([share, scoped(prov("deny", actions=[act("disclose")]))]).decide(q)
    assert before.outcome is DecisionOutcome.DENY
    assert after.outcome is not DecisionOutcome.PERMIT, after.explain()


def _scoped_exception(*extra: Provision) -> Provision:
    """A deny of DocumentReference/o2 except a permit, beside which a deny of every
    DocumentReference: decided by the permit (its nested deny redacts DocumentReferences), until
    ``extra`` adds an unscoped deny beside the permit (then the deny decides the whole scope)."""
    docs = [Coding(RESOURCE_TYPES, "DocumentReference")]
    o2 = DataRef(meaning=DataMeaning.INSTANCE, reference=Ref(reference="DocumentReference/o2"))
    return prov("deny", *extra, prov("permit"), prov("deny", classes=docs), data=[o2])


@pytest.mark.parametrize(
    "where", ["under-a-permit", "beside-a-kept-permit", "inside-a-deny-beside-a-kept-permit"]
)
def test_a_deny_that_takes_over_a_scoped_exception_keeps_the_denies_nested_in_it(
    where: str,
) -> None:
    """The same within one consent, wherever the scoped exception sits: under the consent's
    permit (its scope redacted), beside a scoped permit under a deny (its scope then kept beside
    the permit's, later redacted), or inside a scoped deny there (a permit too narrow to keep).
    Once an added deny decides the exception's whole scope, the deny nested inside it still
    redacts, so the answer about DocumentReferences stays deny."""
    docs = [Coding(RESOURCE_TYPES, "DocumentReference")]

    def record(*extra: Provision) -> ConsentRecord:
        exception = _scoped_exception(*extra)
        if where == "under-a-permit":
            return consent("c1", "permit", exception)
        if where == "inside-a-deny-beside-a-kept-permit":
            exception = prov("deny", exception, codes=[Coding(LOINC, "11488-4")])
        return consent("c1", "deny", prov("permit", classes=docs), exception)

    q = request(Ref(reference="Organization/ehr"), classes=tuple(docs))
    before = ConsentEngine([record()]).decide(q)
    after = ConsentEngine([record(prov("deny", actions=[act("disclose")]))]).decide(q)
    assert before.outcome is DecisionOutcome.DENY, before.explain()
    assert after.outcome is not DecisionOutcome.PERMIT, after.explain()
