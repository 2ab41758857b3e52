"""Short builders for consent scenarios: one patient, a few actors, codes by name."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_alliance.consent.decision import DecisionRequest, RequestActor, RequestedResource
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
    ProvisionActor,
    StatusChange,
)
from fhir_alliance.terminology import (
    CONSENT_ACTION,
    LOINC,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
    V3_PARTICIPATION_TYPE,
)

MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
NPI = "http://hl7.org/fhir/sid/us-npi"
ORG_IDS = "urn:ietf:rfc:3986"
CONSENT_IDS = "https://clinic.example/consent-ids"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"

PATIENT = Ref(reference="Patient/p1", identifier=Identifier(MRN, "p-001"))
PATIENT_BY_REF = Ref(reference="Patient/p1")
PATIENT_BY_ID = Ref(identifier=Identifier(MRN, "p-001"))
OTHER_PATIENT = Ref(reference="Patient/p2", identifier=Identifier(MRN, "p-002"))

IRCP = Coding(V3_PARTICIPATION_TYPE, "IRCP")
PRCP = Coding(V3_PARTICIPATION_TYPE, "PRCP")


def t(text: str) -> datetime:
    """``2025-03-01`` or ``2025-03-01T10:00`` as a UTC instant."""
    fmt = "%Y-%m-%dT%H:%M" if "T" in text else "%Y-%m-%d"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def act(code: str) -> Coding:
    return Coding(CONSENT_ACTION, code)


def pou(code: str) -> Coding:
    return Coding(V3_ACT_REASON, code)


def label(code: str) -> Coding:
    system = V3_CONFIDENTIALITY if code in {"N", "R", "V"} else V3_ACT_CODE
    return Coding(system, code)


def klass(resource_type: str) -> Coding:
    return Coding(RESOURCE_TYPES, resource_type)


def loinc(code: str) -> Coding:
    return Coding(LOINC, code)


def actor(ref: Ref, role: Coding = IRCP) -> ProvisionActor:
    return ProvisionActor(role=role, reference=ref)


def data(meaning: str, reference: str) -> DataRef:
    return DataRef(meaning=DataMeaning(meaning), reference=Ref(reference=reference))


def period(start: str | None = None, end: str | None = None) -> Period:
    return Period(start=t(start) if start else None, end=t(end) if end else None)


def prov(type: str | None = None, *children: Provision, **dims: Any) -> Provision:
    """A provision: ``prov("deny", prov("permit", actors=[...]), labels=[label("PSY")])``."""
    names = {"labels": "security_labels", "provision_period": "period"}
    kwargs = {names.get(k, k): (tuple(v) if isinstance(v, list) else v) for k, v in dims.items()}
    return Provision(type=Decision(type) if type else None, provisions=tuple(children), **kwargs)


def consent(
    value: str,
    decision: str,
    *children: Provision,
    date: str = "2025-01-01",
    status: str = "active",
    patient: Ref = PATIENT_BY_REF,
    period: Period | None = None,
    history: tuple[StatusChange, ...] = (),
    categories: tuple[Coding, ...] = (),
    **root: Any,
) -> ConsentRecord:
    """A consent whose root provision has ``root`` conditions and nested ``children``."""
    return ConsentRecord(
        id=Identifier(CONSENT_IDS, value),
        kind=ConsentKind.SHARING,
        patient=patient,
        status=ConsentStatus(status),
        decision=Decision(decision),
        date=t(date),
        period=period,
        history=history,
        categories=categories,
        provision=prov(decision, *children, **root),
        policy_basis=(PolicyBasis(uri="https://clinic.example/privacy-policy"),),
    )


def resource(
    type: str = "Observation",
    *,
    labels: tuple[str, ...] = (),
    codes: tuple[Coding, ...] = (),
    date: str | None = None,
    reference: str | None = None,
    refers_to: tuple[str, ...] = (),
    referenced_by: tuple[str, ...] = (),
    authors: tuple[Ref, ...] = (),
    profiles: tuple[str, ...] = (),
) -> RequestedResource:
    return RequestedResource(
        type=type,
        reference=Ref(reference=reference) if reference else None,
        profiles=profiles,
        codes=codes,
        labels=tuple(label(code) for code in labels),
        date=t(date) if date else None,
        refers_to=tuple(Ref(reference=r) for r in refers_to),
        referenced_by=tuple(Ref(reference=r) for r in referenced_by),
        authors=authors,
    )


def request(
    *actors: Ref,
    purpose: str | None = "TREAT",
    action: str | None = "disclose",
    at: str = "2025-06-01",
    patient: tuple[Ref, ...] = (PATIENT,),
    res: RequestedResource | None = None,
    role: Coding = IRCP,
    categories: tuple[Coding, ...] = (),
    classes: tuple[Coding, ...] = (),
) -> DecisionRequest:
    return DecisionRequest(
        patient=patient,
        actors=tuple(RequestActor(reference=a, role=role) for a in actors),
        at=t(at),
        purposes=(pou(purpose),) if purpose else (),
        action=act(action) if action else None,
        resource=res,
        categories=categories,
        content_classes=classes,
    )
