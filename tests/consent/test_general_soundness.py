"""The general answer (no resource) never releases what the exact answer for a resource denies.

``docs/consent-decisions.md`` promises that an answer about the patient's data in general may
remove more than strictly needed, never less. Checked here over random consents (those of
``test_engine_properties``, with provisions also scoped by ``class``: resource types, profiles
and document types),
random general requests (with and without content classes) and random resources of the asked
content: whenever the general answer is PERMIT and a resource survives every obligation it carries,
the engine asked about that very resource must say PERMIT too. The obligations are applied as a
careful recipient would (``RedactObligation``'s documented semantics; a fact the resource does not
state, such as its date or its codes, is redacted by a ``redact-matching`` filter on it and never
kept by a ``redact-all-except`` one: the engine reads a missing fact the same way). A class is a
resource type by its system, a profile when its code is a canonical URL, else a document type,
which content is of when it carries that code; content whose codes are unknown may be of any
document type. Provisions may
be scoped by data references too, and resources are known by ``Type/id`` and several identifiers
(``reference`` and ``aliases``): a recipient compares a data reference with every way it knows the
resource."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_alliance.consent.decision import (
    DecisionOutcome,
    DecisionRequest,
    RedactMode,
    RedactObligation,
    RequestedResource,
)
from fhir_alliance.consent.engine import RESOURCE_TYPE_SYSTEMS, ConsentEngine
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import ConsentRecord, DataMeaning, DataRef, Provision
from fhir_alliance.terminology import LOINC
from tests.consent.builders import RESOURCE_TYPES
from tests.consent.test_engine_properties import (
    CODES,
    DIRECTORY,
    RESOURCE_LABELS,
    SEEDS,
    _consents,
    _day,
    _request,
    as_denies_read,
)

PROFILES = ["https://clinic.example/StructureDefinition/wai-sr", "https://clinic.example/sd/srs"]
TYPES = ["Observation", "DocumentReference"]
#: LOINC 34904-3 Mental health Progress note: a document type, and a code resources may carry.
PROGRESS_NOTE = Coding(LOINC, "34904-3")
#: Classes a provision or a request may name: resource types, profiles (one under another
#: system), document types (one of them also a code of Observations), and a type whose system is
#: misspelled (then it is a document type, which no resource here carries as a code).
CLASSES = [
    *(Coding(RESOURCE_TYPES, t) for t in TYPES),
    *(Coding("http://hl7.org/fhir/StructureDefinition", p) for p in PROFILES),
    Coding("urn:ietf:rfc:3986", PROFILES[0]),
    PROGRESS_NOTE,
    CODES[0],
    Coding("http://hl7.org/fhir/resource-type", "Observation"),
]


#: The ids and identifiers resources are known by; data references name them in any way (and
#: name resources no request has).
IDS = ["o1", "o2"]
IDENTIFIERS = [
    Identifier("https://clinic.example/obs", "1"),
    Identifier("https://registry.example/m", "2"),
    Identifier("https://registry.example/m", "3"),
]
DATA_REFS = [
    Ref(reference="Observation/o1"),
    Ref(reference="DocumentReference/o2"),
    Ref(reference="Observation/o9"),
    *(Ref(identifier=i) for i in IDENTIFIERS),
    Ref(identifier=Identifier("https://registry.example/m", "9")),
    Ref(reference="Observation/o1", identifier=IDENTIFIERS[2]),
]
MEANINGS = [DataMeaning.INSTANCE, DataMeaning.RELATED, DataMeaning.DEPENDENTS]


def _with_classes(p: Provision, rng: random.Random) -> Provision:
    classes = tuple(rng.sample(CLASSES, rng.randint(1, 2))) if rng.random() < 0.25 else ()
    data = (
        tuple(
            DataRef(meaning=rng.choice(MEANINGS), reference=ref)
            for ref in rng.sample(DATA_REFS, rng.randint(1, 2))
        )
        if rng.random() < 0.2
        else ()
    )
    return dataclasses.replace(
        p,
        classes=classes,
        data=data,
        provisions=tuple(_with_classes(child, rng) for child in p.provisions),
    )


def _consents_with_classes(seed: int, n: int) -> list[ConsentRecord]:
    rng = random.Random(seed ^ 0x5EED)
    out = []
    for c in _consents(seed, n):
        root = _with_classes(c.provision, rng)
        out.append(dataclasses.replace(c, provision=root))
    return out


def _resource(rng: random.Random, asked: tuple[Coding, ...]) -> RequestedResource | None:
    """A resource of the content asked about (any, when nothing is asked); None when none of the
    resources tried is (the misspelled class: no resource has it)."""
    for _ in range(50):
        kind = rng.choice(TYPES)
        profiles = tuple(rng.sample(PROFILES, rng.randint(0, 2)))
        reference, aliases = _names(rng, kind)
        resource = RequestedResource(
            type=kind,
            reference=reference,
            profiles=profiles,
            codes=tuple(rng.sample([*CODES, PROGRESS_NOTE], rng.randint(0, 2))),
            labels=tuple(rng.sample(RESOURCE_LABELS, rng.randint(0, 2))),
            date=None if rng.random() < 0.1 else _day(rng.randint(-400, 200)),
            aliases=aliases,
        )
        if not asked or any(_is_of_class(resource, c) for c in asked):
            return resource
    return None


def _names(rng: random.Random, kind: str) -> tuple[Ref | None, tuple[Ref, ...]]:
    """The resource's reference and aliases: as the gate gives them (``Type/id`` with each
    identifier; each identifier alone without an id), or each way alone in its own Ref (as the
    request form may), or none (unknown)."""
    if rng.random() < 0.15:
        return None, ()
    rid = rng.choice([*IDS, None])
    ids = rng.sample(IDENTIFIERS, rng.randint(0 if rid else 1, len(IDENTIFIERS)))
    literal = f"{kind}/{rid}" if rid else None
    if literal is None:
        refs = [Ref(identifier=i, type=kind) for i in ids]
    elif rng.random() < 0.7:
        refs = [Ref(literal, i, type=kind) for i in ids] or [Ref(literal, type=kind)]
    else:
        refs = [Ref(literal, type=kind), *(Ref(identifier=i) for i in ids)]
    return refs[0], tuple(refs[1:])


def _data_hits(o: RedactObligation, r: RequestedResource, *, unknown: bool) -> bool:
    """Whether a data reference of the obligation names ``r`` (any of its ways); ``unknown``: what
    a resource counts as when that cannot be told (no reference, or the data reference names a
    resource one way only and ``r`` is known only the other way). Types are not compared: a
    careful recipient redacts rather than guesses."""
    names = (r.reference, *r.aliases) if r.reference is not None else ()
    own = frozenset().union(*(DIRECTORY.keys(n) for n in names))
    own_kinds = {k[0] for k in own}
    for d in o.data:
        keys = DIRECTORY.keys(d.reference)
        if keys & own:
            return True
        if unknown:
            kinds = {k[0] for k in keys}
            if not own or (len(own_kinds) == 1 and len(kinds) == 1 and kinds != own_kinds):
                return True
    return False


def _is_of_class(r: RequestedResource, c: Coding, *, unknown: bool = False) -> bool:
    """Whether ``r`` is of class ``c``; ``unknown``: what it counts as when ``c`` is a document
    type and the resource's codes are unknown."""
    if c.system in RESOURCE_TYPE_SYSTEMS:
        return r.type == c.code
    if "://" in c.code or c.code.startswith("urn:"):
        return c.code in r.profiles
    if not r.codes:
        return unknown
    return (c.system, c.code) in {(x.system, x.code) for x in r.codes}


def _hits(o: RedactObligation, r: RequestedResource, *, unknown: bool) -> bool:
    """Whether ``r`` matches the obligation's filter (any of its parts); ``unknown``: what a fact
    the resource does not state counts as."""
    # A label of another code system with an HL7 label code may mean that label: a recipient
    # redacts it as that label, and never keeps it as one (the engine reads it the same way).
    keys = as_denies_read(r.labels) if unknown else {(c.system, c.code) for c in r.labels}
    if any((c.system, c.code) in keys for c in o.labels):
        return True
    if o.codes:
        if not r.codes:
            if unknown:
                return True
        elif {(c.system, c.code) for c in o.codes} & {(c.system, c.code) for c in r.codes}:
            return True
    if any(_is_of_class(r, c, unknown=unknown) for c in o.classes):
        return True
    if o.data_period is not None:
        if r.date is None:
            if unknown:
                return True
        elif o.data_period.contains(r.date):
            return True
    return _data_hits(o, r, unknown=unknown)


def _survives(obligations: tuple[RedactObligation, ...], r: RequestedResource) -> bool:
    for o in obligations:
        if o.mode is RedactMode.MATCHING and _hits(o, r, unknown=True):
            return False
        if o.mode is RedactMode.ALL_EXCEPT and not _hits(o, r, unknown=False):
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(SEEDS, SEEDS, SEEDS, st.integers(min_value=1, max_value=8), st.booleans())
def test_the_general_answer_never_releases_what_the_resource_answer_denies(
    consent_seed: int, request_seed: int, resource_seed: int, n: int, with_classes: bool
) -> None:
    consents = _consents_with_classes(consent_seed, n)
    rng = random.Random(resource_seed)
    asked = tuple(rng.sample(CLASSES, rng.randint(1, 2))) if with_classes else ()
    general = dataclasses.replace(_request(request_seed, general=True), content_classes=asked)
    engine = ConsentEngine(consents, directory=DIRECTORY)
    answer = engine.decide(general)
    if answer.outcome is not DecisionOutcome.PERMIT:
        return
    for _ in range(8):
        resource = _resource(rng, asked)
        if resource is None or not _survives(answer.obligations, resource):
            continue
        exact = DecisionRequest(
            patient=general.patient,
            actors=general.actors,
            at=general.at,
            purposes=general.purposes,
            action=general.action,
            resource=resource,
        )
        decided = engine.decide(exact)
        assert decided.outcome is DecisionOutcome.PERMIT, (
            f"general: permit with {answer.obligations}; this resource: {decided.outcome} "
            f"({resource})"
        )
