"""Hypothesis strategies for valid consent records (in the schema's normal form), shared by tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    Attachment,
    ConsentKind,
    ConsentRecord,
    ConsentStatus,
    DataMeaning,
    DataRef,
    Decision,
    Period,
    PolicyBasis,
    Provision,
    ProvisionActor,
    StatusChange,
    Verification,
    VerificationMethod,
)
from fhir_alliance.terminology import (
    CONFIDENTIALITY_CODES,
    CONSENT_ACTION,
    CONSENT_ACTION_CODES,
    CONSENT_CATEGORY_CODES,
    LOINC,
    PURPOSE_OF_USE_CODES,
    RESOURCE_TYPES,
    SENSITIVITY_CODES,
    SNOMED,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
    V3_PARTICIPATION_TYPE,
)

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=10)
_display = st.none() | st.sampled_from(["x", "Display text", "ü ß 漢"])
identifiers = st.builds(
    Identifier, system=st.sampled_from(["https://a.example/ids", "urn:oid:1.2.3"]), value=_token
)


def refs(*resource_types: str) -> st.SearchStrategy[Ref]:
    def build(resource_type: str) -> st.SearchStrategy[Ref]:
        literal = _token.map(lambda v: f"{resource_type}/{v}")
        return st.one_of(
            st.builds(Ref, reference=literal),
            st.builds(Ref, reference=literal, type=st.just(resource_type)),
            st.builds(Ref, identifier=identifiers, type=st.just(resource_type)),
            st.builds(Ref, reference=literal, identifier=identifiers, display=st.just("x")),
        )

    return st.sampled_from(resource_types).flatmap(build)


#: Past instants (the schema refuses future ones) with assorted UTC offsets and microseconds.
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2025, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
    ),
)


def _codings(system: str, codes: frozenset[str] | list[str]) -> st.SearchStrategy[Coding]:
    return st.builds(
        Coding, system=st.just(system), code=st.sampled_from(sorted(codes)), display=_display
    )


purposes = _codings(V3_ACT_REASON, PURPOSE_OF_USE_CODES)
actions = _codings(CONSENT_ACTION, CONSENT_ACTION_CODES)
labels = _codings(V3_CONFIDENTIALITY, CONFIDENTIALITY_CODES) | _codings(
    V3_ACT_CODE, SENSITIVITY_CODES
)
categories = _codings(LOINC, CONSENT_CATEGORY_CODES)
roles = _codings(V3_PARTICIPATION_TYPE, ["IRCP", "PRCP", "AUT", "DEV"])
content_codes = _codings(
    "https://fhir-alliance.org/fhir/CodeSystem/alliance-measures", ["wai-sr", "srs", "ors"]
) | _codings(LOINC, ["42828-4"])
any_codings = st.builds(
    Coding, system=st.sampled_from([SNOMED, "urn:x"]), code=_token, display=_display
)


@st.composite
def periods(draw: st.DrawFn) -> Period:
    start = draw(st.none() | instants)
    if start is None:
        return Period(end=draw(instants))
    if draw(st.booleans()):
        return Period(start=start)
    return Period(
        start=start, end=start + draw(st.timedeltas(timedelta(seconds=1), timedelta(days=900)))
    )


def _classes() -> st.SearchStrategy[tuple[Coding, ...]]:
    resource_types = _codings(
        RESOURCE_TYPES, ["Observation", "QuestionnaireResponse", "DocumentReference"]
    )
    documents = _codings(LOINC, ["11488-4", "34117-2"])
    return st.tuples(st.lists(resource_types, max_size=2), st.lists(documents, max_size=2)).map(
        lambda pair: (*pair[0], *pair[1])  # normal form: resource types first
    )


def _conditions() -> dict[str, st.SearchStrategy[object]]:
    return {
        "actors": st.lists(
            st.builds(
                ProvisionActor,
                role=roles,
                reference=refs("Organization", "Practitioner", "Device", "RelatedPerson"),
            ),
            max_size=2,
        ).map(tuple),
        "actions": st.lists(actions, max_size=2).map(tuple),
        "security_labels": st.lists(labels, max_size=2).map(tuple),
        "purposes": st.lists(purposes, max_size=2).map(tuple),
        "classes": _classes(),
        "codes": st.lists(content_codes, max_size=2).map(tuple),
        "data_period": st.none() | periods(),
        "data": st.lists(
            st.builds(
                DataRef,
                meaning=st.sampled_from(list(DataMeaning)),
                reference=refs("Observation", "QuestionnaireResponse"),
            ),
            max_size=2,
        ).map(tuple),
    }


def nested_provisions(depth: int) -> st.SearchStrategy[Provision]:
    children = (
        st.just(()) if depth <= 0 else st.lists(nested_provisions(depth - 1), max_size=2).map(tuple)
    )
    return st.builds(
        Provision,
        type=st.sampled_from(list(Decision)),
        period=st.none() | periods(),
        provisions=children,
        **_conditions(),
    )


def root_provisions(
    decision: Decision, *, needs_actions: bool = False
) -> st.SearchStrategy[Provision]:
    plain = st.builds(
        Provision,
        type=st.just(decision),
        provisions=st.lists(nested_provisions(1), max_size=3).map(tuple),
    )
    conditions = _conditions()
    if needs_actions:
        conditions["actions"] = st.lists(actions, min_size=1, max_size=2).map(tuple)
    conditioned = st.builds(
        Provision,
        type=st.just(decision),
        provisions=st.lists(nested_provisions(1), max_size=3).map(tuple),
        **conditions,
    )
    return conditioned if needs_actions else plain | conditioned


@st.composite
def histories(draw: st.DrawFn, status: ConsentStatus, after: datetime) -> tuple[StatusChange, ...]:
    if draw(st.booleans()):
        return ()
    earlier = draw(st.lists(st.sampled_from(list(ConsentStatus)), max_size=3))
    steps = [*earlier, status]
    at = after
    out = []
    for step in steps:
        at = at + draw(st.timedeltas(timedelta(0), timedelta(days=30)))
        out.append(
            StatusChange(
                status=step,
                at=at,
                by=draw(st.none() | refs("Patient", "Practitioner", "RelatedPerson")),
                reason=draw(st.none() | any_codings),
            )
        )
    return tuple(out)


policy_documents = st.builds(
    PolicyBasis,
    uri=st.none() | st.just("https://clinic.example.org/policy/v1"),
    authority=st.none() | st.just("https://clinic.example.org"),
).filter(lambda b: b.uri is not None or b.authority is not None)
policy_codes = st.builds(
    PolicyBasis,
    code=st.sampled_from([Coding(V3_ACT_CODE, "42CFRPart2"), Coding(V3_ACT_CODE, "OPTIN")]),
)


@st.composite
def policy_bases(draw: st.DrawFn, decision: Decision) -> tuple[PolicyBasis, ...]:
    out = []
    if draw(st.booleans()):
        out.append(draw(policy_documents))
    if not out or draw(st.booleans()):
        basis = draw(policy_codes)
        assert basis.code is not None
        # An OPTIN/OPTOUT policy rule implies the base decision; keep it consistent.
        if basis.code.code == "OPTIN" and decision is Decision.DENY:
            basis = PolicyBasis(code=Coding(V3_ACT_CODE, "OPTOUT"))
        out.append(basis)
    return tuple(out)


attachments = st.builds(
    Attachment,
    content_type=st.none() | st.just("application/pdf"),
    url=st.just("https://docs.example.org/consent.pdf"),
    title=st.none() | st.just("Signed form"),
    data=st.none() | st.just("JVBERi0xLjQK"),
    creation=st.none() | instants,
)


@st.composite
def consent_records(draw: st.DrawFn) -> ConsentRecord:
    kind = draw(st.sampled_from(list(ConsentKind)))
    status = draw(st.sampled_from(list(ConsentStatus)))
    decision = draw(st.sampled_from(list(Decision)))
    date = draw(instants)
    source_choice = draw(st.sampled_from(["none", "ref", "attachment"]))
    return ConsentRecord(
        id=draw(identifiers),
        kind=kind,
        patient=draw(refs("Patient")),
        status=status,
        decision=decision,
        date=date,
        grantor=draw(st.none() | refs("Patient", "RelatedPerson")),
        grantees=tuple(draw(st.lists(refs("Organization", "Practitioner"), max_size=2))),
        manager=draw(st.none() | refs("Organization")),
        controller=draw(st.none() | refs("Organization")),
        period=draw(st.none() | periods()),
        history=draw(histories(status, date - timedelta(days=100))),
        verification=tuple(
            draw(
                st.lists(
                    st.builds(
                        Verification,
                        method=st.sampled_from(list(VerificationMethod)),
                        verified_at=instants,
                        witness=st.none() | refs("Practitioner", "RelatedPerson", "Organization"),
                        verified_with=st.none() | refs("Patient", "RelatedPerson"),
                    ),
                    max_size=2,
                )
            )
        ),
        source=draw(refs("DocumentReference")) if source_choice == "ref" else None,
        source_attachment=draw(attachments) if source_choice == "attachment" else None,
        policy_basis=draw(policy_bases(decision)),
        categories=tuple(draw(st.lists(categories, max_size=2))),
        intervention=draw(any_codings) if kind is ConsentKind.TREATMENT else None,
        provision=draw(root_provisions(decision, needs_actions=kind is ConsentKind.RECORDING)),
    )
