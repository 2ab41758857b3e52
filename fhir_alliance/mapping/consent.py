"""Consent records ⇄ FHIR Consent, R4 (4.0.1) and R5 (5.0.0): pure and lossless for our records.

How each field is carried, and what is read from foreign (IHE PCF-, LEAP-shaped) consents, is in
docs/consent.md. Anything that does not fit raises :class:`~fhir_alliance.errors.MappingError` naming
the element; nothing is silently dropped that would change what a consent allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from fhir_alliance.errors import InputError, Issue, MappingError
from fhir_alliance.mapping._fhir_values import ref_to_fhir
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    Attachment,
    ConsentKind,
    ConsentRecord,
    ConsentRevocation,
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
    apply_revocation,
)
from fhir_alliance.schemas.common import load_or_raise, offset_problem
from fhir_alliance.schemas.consent import (
    MAX_PROVISION_DEPTH,
    RECORD_KIND_CONSENT,
    RECORD_KIND_REVOCATION,
    ConsentRevocationSchema,
    canonical_coding,
    dump_consent,
    dump_revocation,
    load_consent,
)
from fhir_alliance.terminology import (
    CLASS_SYSTEM_ALIASES,
    CODE_SYSTEM_ALIASES,
    CONSENT_ACTION,
    CONSENT_ACTION_CODES,
    CONSENT_LABEL_CODES,
    CONSENT_SCOPE,
    CS_CONSENT_KINDS,
    CS_CONSENT_VERIFICATION_METHODS,
    EXT_CONSENT_CONTROLLER,
    EXT_CONSENT_GRANTEE,
    EXT_CONSENT_INTERVENTION,
    EXT_CONSENT_POLICY_AUTHORITY,
    EXT_CONSENT_PROVISION_TYPE,
    EXT_CONSENT_ROOT_PROVISION,
    EXT_CONSENT_STATE,
    EXT_CONSENT_STATUS_CHANGE,
    EXT_CONSENT_VERIFICATION_METHOD,
    EXT_CONSENT_WITNESS,
    IDENTIFIER_SYSTEM_BASE,
    LOINC,
    PARTICIPATION_TYPE_ALIASES,
    PROFILE_CONSENT_RECORDING,
    PROFILE_CONSENT_RESTRICTION,
    PROFILE_CONSENT_SHARING,
    PROFILE_CONSENT_TREATMENT,
    PURPOSE_OF_USE_CODES,
    R4_CONSENT_DATETIME_EXTENSION,
    R5_CONSENT_DECISION_EXTENSION,
    RESOURCE_TYPES,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_LABEL_SYSTEM_ALIASES,
    V3_PARTICIPATION_TYPE,
)

__all__ = [
    "MAPPER",
    "R4",
    "R5",
    "ConsentMapper",
    "from_consent",
    "from_permission",
    "permission_view",
    "to_consent",
    "to_permission",
]

R4: Final = "4.0.1"
R5: Final = "5.0.0"

#: Identifier system used when a foreign consent has no business identifier, only a resource id.
FALLBACK_IDENTIFIER_SYSTEM: Final = f"{IDENTIFIER_SYSTEM_BASE}/fhir-consent-id"

KIND_PROFILES: Final = {
    ConsentKind.SHARING: PROFILE_CONSENT_SHARING,
    ConsentKind.TREATMENT: PROFILE_CONSENT_TREATMENT,
    ConsentKind.RECORDING: PROFILE_CONSENT_RECORDING,
    ConsentKind.RESTRICTION: PROFILE_CONSENT_RESTRICTION,
}
KIND_SCOPES: Final = {
    ConsentKind.SHARING: "patient-privacy",
    ConsentKind.TREATMENT: "treatment",
    ConsentKind.RECORDING: "patient-privacy",
    ConsentKind.RESTRICTION: "patient-privacy",
}
#: Domain state → FHIR status (R4 and R5 alike); the precise state travels in EXT_CONSENT_STATE.
FHIR_STATUS: Final = {
    ConsentStatus.DRAFT: "draft",
    ConsentStatus.ACTIVE: "active",
    ConsentStatus.REVOKED: "inactive",
    ConsentStatus.EXPIRED: "inactive",
    ConsentStatus.ENTERED_IN_ERROR: "entered-in-error",
}
#: FHIR status of a foreign consent (without our state extension) → domain state.
_STATUS_FROM_FHIR: Final = {
    "draft": ConsentStatus.DRAFT,
    "proposed": ConsentStatus.DRAFT,
    "active": ConsentStatus.ACTIVE,
    "inactive": ConsentStatus.REVOKED,
    "entered-in-error": ConsentStatus.ENTERED_IN_ERROR,
}
#: Base decision implied by a policy rule (LEAP's R4 consents carry it there).
_POLICY_RULE_DECISIONS: Final = {"OPTIN": Decision.PERMIT, "OPTOUT": Decision.DENY}
_VERIFIED_BY_TYPES: Final = frozenset({"Organization", "Practitioner", "PractitionerRole"})

#: Codes a provision is checked against (the same lists as the JSON schema).
_PURPOSES: Final = {V3_ACT_REASON: PURPOSE_OF_USE_CODES}
_ACTIONS: Final = {CONSENT_ACTION: CONSENT_ACTION_CODES}
_LABELS: Final = CONSENT_LABEL_CODES
_LABEL_ALIASES: Final = V3_LABEL_SYSTEM_ALIASES

_R4_ONLY: Final = frozenset(
    {"scope", "patient", "dateTime", "performer", "organization", "policy", "policyRule"}
)
_R5_ONLY: Final = frozenset(
    {
        "subject",
        "date",
        "decision",
        "grantor",
        "grantee",
        "manager",
        "controller",
        "period",
        "policyBasis",
        "policyText",
        "regulatoryBasis",
    }
)
_COMMON: Final = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "identifier",
        "status",
        "category",
        "sourceAttachment",
        "sourceReference",
        "verification",
        "provision",
    }
)
_PROVISION_COMMON: Final = frozenset(
    {
        "id",
        "extension",
        "modifierExtension",
        "period",
        "actor",
        "action",
        "securityLabel",
        "purpose",
        "code",
        "dataPeriod",
        "data",
        "provision",
    }
)
_PROVISION_R4: Final = _PROVISION_COMMON | {"type", "class"}
_PROVISION_R5: Final = _PROVISION_COMMON | {"documentType", "resourceType"}
_OUR_MODIFIERS: Final = frozenset({EXT_CONSENT_ROOT_PROVISION, EXT_CONSENT_PROVISION_TYPE})
# Deepest nesting of provisions below the root read or written: MAX_PROVISION_DEPTH, the JSON
# form's (hostile input must not exhaust the stack; what we write we can read back).


# ================================================================================================
# Domain → FHIR
# ================================================================================================


def to_consent(record: ConsentRecord, *, version: str = R4) -> dict[str, Any]:
    """:class:`ConsentRecord` → a FHIR Consent (``version`` ``"4.0.1"`` or ``"5.0.0"``), pure.

    Raises :class:`MappingError` for a record that the version cannot carry (e.g. R4 without a
    policy basis, which invariant ppc-1 forbids).
    """
    if version == R4:
        return _to_r4(record)
    if version == R5:
        return _to_r5(record)
    raise MappingError("unsupported FHIR version; expected 4.0.1 or 5.0.0", element="version")


def _instant(value: datetime) -> str:
    return value.isoformat()


def _cc(coding: Coding) -> dict[str, Any]:
    return {"coding": [coding.to_fhir()]}


def _period_out(period: Period) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if period.start is not None:
        out["start"] = _instant(period.start)
    if period.end is not None:
        out["end"] = _instant(period.end)
    return out


def _kind_cc(kind: ConsentKind) -> dict[str, Any]:
    return {"coding": [{"system": CS_CONSENT_KINDS, "code": kind.value}]}


def _scope_cc(kind: ConsentKind) -> dict[str, Any]:
    return {"coding": [{"system": CONSENT_SCOPE, "code": KIND_SCOPES[kind]}]}


def _lifecycle_extensions(record: ConsentRecord) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"url": EXT_CONSENT_STATE, "valueCode": record.status.value}]
    for change in record.history:
        parts: list[dict[str, Any]] = [
            {"url": "status", "valueCode": change.status.value},
            {"url": "at", "valueDateTime": _instant(change.at)},
        ]
        if change.by is not None:
            parts.append({"url": "by", "valueReference": ref_to_fhir(change.by)})
        if change.reason is not None:
            parts.append({"url": "reason", "valueCoding": change.reason.to_fhir()})
        out.append({"url": EXT_CONSENT_STATUS_CHANGE, "extension": parts})
    return out


def _intervention_extension(record: ConsentRecord) -> list[dict[str, Any]]:
    if record.intervention is None:
        return []
    return [{"url": EXT_CONSENT_INTERVENTION, "valueCodeableConcept": _cc(record.intervention)}]


def _conditions_out(p: Provision, *, r5: bool) -> dict[str, Any]:
    """The matching conditions of a provision (everything but its type and nested provisions)."""
    out: dict[str, Any] = {}
    if p.period is not None:
        out["period"] = _period_out(p.period)
    if p.actors:
        out["actor"] = [
            {"role": _cc(a.role), "reference": ref_to_fhir(a.reference)} for a in p.actors
        ]
    if p.actions:
        out["action"] = [_cc(c) for c in p.actions]
    if p.security_labels:
        out["securityLabel"] = [c.to_fhir() for c in p.security_labels]
    if p.purposes:
        out["purpose"] = [c.to_fhir() for c in p.purposes]
    if p.classes:
        if r5:
            types = [c.to_fhir() for c in p.classes if c.system == RESOURCE_TYPES]
            documents = [c.to_fhir() for c in p.classes if c.system != RESOURCE_TYPES]
            if documents:
                out["documentType"] = documents
            if types:
                out["resourceType"] = types
        else:
            out["class"] = [c.to_fhir() for c in p.classes]
    if p.codes:
        out["code"] = [_cc(c) for c in p.codes]
    if p.data_period is not None:
        out["dataPeriod"] = _period_out(p.data_period)
    if p.data:
        out["data"] = [
            {"meaning": d.meaning.value, "reference": ref_to_fhir(d.reference)} for d in p.data
        ]
    return out


def _has_conditions(p: Provision) -> bool:
    return bool(_conditions_out(p, r5=False))


def _check_root(record: ConsentRecord) -> None:
    root = record.provision
    if root.type not in (None, record.decision):
        raise MappingError(
            "the root provision's type must equal decision", element="provision.type"
        )
    if root.period is not None:
        raise MappingError(
            "the root provision's time frame is the consent's period", element="provision.period"
        )
    _check_nested(root.provisions, "provision.provisions")


def _check_nested(provisions: Sequence[Provision], path: str, depth: int = 1) -> None:
    for i, p in enumerate(provisions):
        if depth > MAX_PROVISION_DEPTH:
            raise MappingError(
                f"provisions nested deeper than {MAX_PROVISION_DEPTH} levels (the readers' limit)",
                element=f"{path}.{i}",
            )
        if p.type is None:
            raise MappingError("a nested provision needs a type", element=f"{path}.{i}.type")
        _check_nested(p.provisions, f"{path}.{i}.provisions", depth + 1)


def _provision_r4(p: Provision) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.type is not None:
        out["type"] = p.type.value
    out.update(_conditions_out(p, r5=False))
    if p.provisions:
        out["provision"] = [_provision_r4(c) for c in p.provisions]
    return out


def _to_r4(record: ConsentRecord) -> dict[str, Any]:
    _check_root(record)
    coded = [b for b in record.policy_basis if b.code is not None]
    documents = [b for b in record.policy_basis if b.code is None]
    if not record.policy_basis:
        raise MappingError("R4 needs a policy basis (invariant ppc-1)", element="policy_basis")
    if len(coded) > 1:
        raise MappingError("R4 carries at most one coded policy", element="policy_basis")
    if record.source is not None and record.source_attachment is not None:
        raise MappingError(
            "R4 carries either a source reference or a source attachment", element="source"
        )
    extensions = _lifecycle_extensions(record)
    extensions += [
        {"url": EXT_CONSENT_GRANTEE, "valueReference": ref_to_fhir(g)} for g in record.grantees
    ]
    if record.controller is not None:
        extensions.append(
            {"url": EXT_CONSENT_CONTROLLER, "valueReference": ref_to_fhir(record.controller)}
        )
    extensions += _intervention_extension(record)

    out: dict[str, Any] = {
        "resourceType": "Consent",
        "id": resource_id(record.id),
        "meta": {"profile": [KIND_PROFILES[record.kind]]},
        "extension": extensions,
        "identifier": [record.id.to_fhir()],
        "status": FHIR_STATUS[record.status],
        "scope": _scope_cc(record.kind),
        "category": [_kind_cc(record.kind), *(_cc(c) for c in record.categories)],
        "patient": ref_to_fhir(record.patient),
        "dateTime": _instant(record.date),
    }
    if record.grantor is not None:
        out["performer"] = [ref_to_fhir(record.grantor)]
    if record.manager is not None:
        out["organization"] = [ref_to_fhir(record.manager)]
    if record.source is not None:
        out["sourceReference"] = ref_to_fhir(record.source)
    if record.source_attachment is not None:
        out["sourceAttachment"] = _attachment_out(record.source_attachment)
    if documents:
        out["policy"] = [
            {k: v for k, v in (("authority", b.authority), ("uri", b.uri)) if v is not None}
            for b in documents
        ]
    if coded and coded[0].code is not None:
        out["policyRule"] = _cc(coded[0].code)
    if record.verification:
        out["verification"] = [_verification_r4(v) for v in record.verification]
    root = _provision_r4(record.provision)
    root["type"] = record.decision.value
    if record.period is not None:
        root["period"] = _period_out(record.period)
    out["provision"] = dict(sorted(root.items(), key=lambda kv: _R4_PROVISION_ORDER[kv[0]]))
    return out


_R4_PROVISION_ORDER: Final = {
    k: i
    for i, k in enumerate(
        (
            "type",
            "period",
            "actor",
            "action",
            "securityLabel",
            "purpose",
            "class",
            "code",
            "dataPeriod",
            "data",
            "provision",
        )
    )
}


def _attachment_out(att: Attachment) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if att.content_type is not None:
        out["contentType"] = att.content_type
    if att.data is not None:
        out["data"] = att.data
    if att.url is not None:
        out["url"] = att.url
    if att.title is not None:
        out["title"] = att.title
    if att.creation is not None:
        out["creation"] = _instant(att.creation)
    return out


def _verification_r4(v: Verification) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = [
        {"url": EXT_CONSENT_VERIFICATION_METHOD, "valueCode": v.method.value}
    ]
    if v.witness is not None:
        extensions.append({"url": EXT_CONSENT_WITNESS, "valueReference": ref_to_fhir(v.witness)})
    out: dict[str, Any] = {"extension": extensions, "verified": True}
    if v.verified_with is not None:
        out["verifiedWith"] = ref_to_fhir(v.verified_with)
    out["verificationDate"] = _instant(v.verified_at)
    return out


def _verification_r5(v: Verification) -> dict[str, Any]:
    out: dict[str, Any] = {}
    witness = v.witness
    if witness is not None and witness.type not in _VERIFIED_BY_TYPES:
        out["extension"] = [{"url": EXT_CONSENT_WITNESS, "valueReference": ref_to_fhir(witness)}]
    out["verified"] = True
    out["verificationType"] = {
        "coding": [{"system": CS_CONSENT_VERIFICATION_METHODS, "code": v.method.value}]
    }
    if witness is not None and witness.type in _VERIFIED_BY_TYPES:
        out["verifiedBy"] = ref_to_fhir(witness)
    if v.verified_with is not None:
        out["verifiedWith"] = ref_to_fhir(v.verified_with)
    out["verificationDate"] = [_instant(v.verified_at)]
    return out


def _provision_r5(p: Provision, parent: Decision) -> dict[str, Any]:
    """A nested provision in R5, where a provision's effect is implicitly the opposite of its
    parent's; one that repeats its parent's effect says so in a modifier extension."""
    out: dict[str, Any] = {}
    if p.type == parent:
        out["modifierExtension"] = [{"url": EXT_CONSENT_PROVISION_TYPE, "valueCode": parent.value}]
    out.update(_conditions_out(p, r5=True))
    effect = p.type if p.type is not None else _negate(parent)
    if p.provisions:
        out["provision"] = [_provision_r5(c, effect) for c in p.provisions]
    return out


def _negate(decision: Decision) -> Decision:
    return Decision.DENY if decision is Decision.PERMIT else Decision.PERMIT


def _to_r5(record: ConsentRecord) -> dict[str, Any]:
    _check_root(record)
    coded = [b for b in record.policy_basis if b.code is not None]
    documents = [b for b in record.policy_basis if b.code is None]
    if len(documents) > 1:
        raise MappingError("R5 carries at most one policy document", element="policy_basis")
    extensions = _lifecycle_extensions(record)
    extensions += _intervention_extension(record)
    extensions.append(
        {"url": R4_CONSENT_DATETIME_EXTENSION, "valueDateTime": _instant(record.date)}
    )

    out: dict[str, Any] = {
        "resourceType": "Consent",
        "id": resource_id(record.id),
        "extension": extensions,
        "identifier": [record.id.to_fhir()],
        "status": FHIR_STATUS[record.status],
        "category": [
            _kind_cc(record.kind),
            _scope_cc(record.kind),
            *(_cc(c) for c in record.categories),
        ],
        "subject": ref_to_fhir(record.patient),
        "date": record.date.date().isoformat(),
    }
    if record.period is not None:
        out["period"] = _period_out(record.period)
    if record.grantor is not None:
        out["grantor"] = [ref_to_fhir(record.grantor)]
    if record.grantees:
        out["grantee"] = [ref_to_fhir(g) for g in record.grantees]
    if record.manager is not None:
        out["manager"] = [ref_to_fhir(record.manager)]
    if record.controller is not None:
        out["controller"] = [ref_to_fhir(record.controller)]
    if record.source_attachment is not None:
        out["sourceAttachment"] = [_attachment_out(record.source_attachment)]
    if record.source is not None:
        out["sourceReference"] = [ref_to_fhir(record.source)]
    if coded:
        out["regulatoryBasis"] = [_cc(b.code) for b in coded if b.code is not None]
    if documents:
        basis: dict[str, Any] = {}
        if documents[0].authority is not None:
            basis["extension"] = [
                {"url": EXT_CONSENT_POLICY_AUTHORITY, "valueUri": documents[0].authority}
            ]
        if documents[0].uri is not None:
            basis["url"] = documents[0].uri
        out["policyBasis"] = basis
    if record.verification:
        out["verification"] = [_verification_r5(v) for v in record.verification]
    out["decision"] = record.decision.value
    root = record.provision
    if _has_conditions(root):
        top = {
            "modifierExtension": [{"url": EXT_CONSENT_ROOT_PROVISION, "valueBoolean": True}],
            **_conditions_out(root, r5=True),
        }
        if root.provisions:
            top["provision"] = [_provision_r5(c, record.decision) for c in root.provisions]
        out["provision"] = [top]
    elif root.provisions:
        out["provision"] = [_provision_r5(c, record.decision) for c in root.provisions]
    return out


# ================================================================================================
# FHIR → domain
# ================================================================================================


def from_consent(resource: Mapping[str, Any], *, version: str | None = None) -> ConsentRecord:
    """A FHIR Consent (R4 or R5; told by ``version`` or by its elements) → :class:`ConsentRecord`.

    Raises :class:`MappingError` naming the element for anything that does not fit.
    """
    if not isinstance(resource, Mapping):
        raise MappingError("expected a FHIR resource (a JSON object)", element="")
    if resource.get("resourceType") != "Consent":
        raise MappingError("expected a Consent", element="resourceType")
    if version is None:
        version = _detect_version(resource)
    if version == R4:
        return _from_r4(resource)
    if version == R5:
        return _from_r5(resource)
    raise MappingError("unsupported FHIR version; expected 4.0.1 or 5.0.0", element="version")


def _detect_version(resource: Mapping[str, Any]) -> str:
    r4 = sorted(k for k in resource if k in _R4_ONLY)
    r5 = sorted(k for k in resource if k in _R5_ONLY)
    provision = resource.get("provision")
    if isinstance(provision, Mapping):
        r4.append("provision")
    elif isinstance(provision, list):
        r5.append("provision")
    if r4 and r5:
        raise MappingError("mixes R4 and R5 elements", element=f"Consent.{r5[0]}")
    return R5 if r5 else R4


class _Path:
    """Builds FHIRPath-like element paths (``Consent.provision.provision[0].actor[1].role``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __truediv__(self, name: str) -> _Path:
        return _Path(f"{self.text}.{name}")

    def __getitem__(self, index: int) -> _Path:
        return _Path(f"{self.text}[{index}]")

    def __str__(self) -> str:
        return self.text


def _fail(message: str, path: _Path | str) -> MappingError:
    return MappingError(message, element=str(path))


def _obj(value: Any, path: _Path) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail("expected an object", path)
    return value


def _list(value: Any, path: _Path) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail("expected an array", path)
    return value


def _str(value: Any, path: _Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail("expected a non-empty string", path)
    return value


def _opt_str(value: Any, path: _Path) -> str | None:
    return None if value is None else _str(value, path)


def _at_most_one(value: Any, path: _Path) -> Any:
    items = _list(value, path)
    if len(items) > 1:
        raise _fail("more than one is not supported", path[1])
    return items[0] if items else None


def _known_keys(obj: Mapping[str, Any], allowed: frozenset[str], path: _Path) -> None:
    for key in obj:
        if not isinstance(key, str):
            raise _fail("unexpected element", path)
        if key not in allowed and not key.startswith("_"):
            raise _fail("not an element we can read", path / key)


def _extension_elements(ext: Mapping[str, Any], path: _Path) -> None:
    """An Extension has an id, a url, extensions and a value[x]; anything else is refused."""
    for key in ext:
        if not isinstance(key, str) or (
            key not in ("id", "url", "extension") and not key.startswith(("value", "_"))
        ):
            raise _fail("not an element we can read", path / str(key))


def _no_foreign_modifiers(obj: Mapping[str, Any], path: _Path) -> list[Mapping[str, Any]]:
    """Our modifier extensions in ``obj``; any other modifier extension is refused (its meaning
    would be lost)."""
    found = []
    for i, ext in enumerate(_list(obj.get("modifierExtension"), path / "modifierExtension")):
        ext = _obj(ext, _Path(f"{path}.modifierExtension[{i}]"))
        if not isinstance(ext.get("url"), str) or ext["url"] not in _OUR_MODIFIERS:
            raise _fail("unknown modifier extension", path / f"modifierExtension[{i}]")
        _extension_elements(ext, _Path(f"{path}.modifierExtension[{i}]"))
        found.append(ext)
    return found


#: Elements every backbone element may carry (a modifier extension is then refused, see _backbone).
_BACKBONE: Final = frozenset({"id", "extension", "modifierExtension"})


def _backbone(value: Any, path: _Path, elements: frozenset[str]) -> Mapping[str, Any]:
    """A backbone element (actor, data, verification, policy, a Permission's parts) with only
    ``elements`` besides id and extensions, and no modifier extension: an unknown element or
    modifier may narrow or invert what it says, and reading it without would widen a consent."""
    obj = _obj(value, path)
    _known_keys(obj, _BACKBONE | elements, path)
    if _no_foreign_modifiers(obj, path):
        raise _fail(
            "a provision modifier extension outside a provision", path / "modifierExtension"
        )
    return obj


#: The elements of the data types a consent is read from, besides ``id`` and ``extension``.
_COMPLEX_TYPES: Final = {
    "Coding": frozenset({"system", "version", "code", "display", "userSelected"}),
    "CodeableConcept": frozenset({"coding", "text"}),
    "Reference": frozenset({"reference", "type", "identifier", "display"}),
    "Identifier": frozenset({"use", "type", "system", "value", "period", "assigner"}),
    "Period": frozenset({"start", "end"}),
    "Attachment": frozenset(
        {
            "contentType",
            "language",
            "data",
            "url",
            "size",
            "hash",
            "title",
            "creation",
            "height",
            "width",
            "frames",
            "duration",
            "pages",
        }
    ),
}
_ELEMENT: Final = frozenset({"id", "extension"})


def _datatype(value: Any, path: _Path, kind: str) -> Mapping[str, Any]:
    """A value of a complex data type with only its own elements. FHIR gives these types no
    modifier extension, and an element we cannot read (a misspelt ``end``, a modifier where none
    belongs) may change what the value means: refused, never read past."""
    obj = _obj(value, path)
    if "modifierExtension" in obj:
        raise _fail(
            f"a modifier extension, which a {kind} cannot carry", path / "modifierExtension"
        )
    _known_keys(obj, _ELEMENT | _COMPLEX_TYPES[kind], path)
    return obj


def _no_implicit_rules(resource: Mapping[str, Any], path: _Path) -> None:
    """``implicitRules`` is a modifier element: rules we do not know change what the resource
    means, so it is not read at all."""
    if resource.get("implicitRules") is not None:
        raise _fail(
            "implicit rules cannot be applied; the resource is not read", path / "implicitRules"
        )


_DATE_RE: Final = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _datetime(value: Any, path: _Path, *, end: bool = False) -> datetime:
    """A FHIR date/dateTime/instant → aware datetime. A partial date is the first instant of that
    year/month/day; as a period ``end`` it is the first instant after it (ends are exclusive here).
    A time without a UTC offset is refused, never taken as local time (it would move a consent's
    period by the reader's offset), and so is an offset FHIR cannot carry (seconds, beyond ±14:00).
    Other ISO 8601 spellings Python reads (``T10:00Z`` without seconds) name one instant and are
    read as it."""
    text = _str(value, path)
    match = _DATE_RE.match(text)
    if match:
        year, month, day = match.group(1), match.group(2), match.group(3)
        try:
            start = date(int(year), int(month or 1), int(day or 1))
            if end:
                if day:
                    start = start + timedelta(days=1)
                elif month:
                    start = date(start.year + start.month // 12, start.month % 12 + 1, 1)
                else:
                    start = date(start.year + 1, 1, 1)
        except (ValueError, OverflowError):
            raise _fail("not a valid date", path) from None
        return datetime(start.year, start.month, start.day, tzinfo=UTC)
    if "T" not in text:
        raise _fail("not a valid FHIR dateTime", path)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _fail("not a valid FHIR dateTime", path) from None
    if parsed.tzinfo is None:
        raise _fail("a time needs a UTC offset", path)
    problem = offset_problem(parsed)  # one the record's JSON form and FHIR refuse (+01:00:30)
    if problem is not None:
        raise _fail(problem, path)
    return parsed


def _period(value: Any, path: _Path) -> Period | None:
    if value is None:
        return None
    obj = _datatype(value, path, "Period")
    start = None if obj.get("start") is None else _datetime(obj["start"], path / "start")
    end = None if obj.get("end") is None else _datetime(obj["end"], path / "end", end=True)
    if start is None and end is None:
        return None
    if start is not None and end is not None and end <= start:
        raise _fail("period ends before it starts", path / "end")
    return Period(start=start, end=end)


def _coding(value: Any, path: _Path) -> Coding:
    obj = _datatype(value, path, "Coding")
    return Coding(
        system=_str(obj.get("system"), path / "system"),
        code=_str(obj.get("code"), path / "code"),
        display=_opt_str(obj.get("display"), path / "display"),
    )


def _concept(value: Any, path: _Path) -> list[Coding]:
    """A CodeableConcept's codings (all of them: they name the same concept)."""
    obj = _datatype(value, path, "CodeableConcept")
    codings = _list(obj.get("coding"), path / "coding")
    if not codings:
        raise _fail("a coded concept is needed (text alone cannot be matched)", path / "coding")
    return [_coding(c, _Path(f"{path}.coding[{i}]")) for i, c in enumerate(codings)]


def _coded_as(
    value: Any,
    path: _Path,
    what: str,
    system: str | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Coding:
    """The one code a CodeableConcept is read as. A single coding is taken as given; among several
    (one concept coded several ways, e.g. another EHR's own code beside the standard one) the coding
    of ``system`` (after ``aliases``) is read. Several codings and none of ``system``, or two
    different codes of it, raise at ``coding``: taking the first would guess, and a deny whose actor
    or rule was guessed wrong would not deny."""
    codings = [canonical_coding(c, aliases or {}) for c in _concept(value, path)]
    if len(codings) == 1:
        return codings[0]
    found = {(c.system, c.code): c for c in codings if system is not None and c.system == system}
    if len(found) == 1:
        return next(iter(found.values()))
    if found:
        raise _fail(f"two different {what} codes", path / "coding")
    if system is None:
        raise _fail(f"{what}: expected one coding", path / "coding")
    raise _fail(f"{what} coded several ways, none of them in {system}", path / "coding")


def _policy_code(value: Any, path: _Path) -> Coding:
    """A coded policy (R4 ``policyRule``, R5 ``regulatoryBasis``, a Permission's basis): its
    v3-ActCode coding among several, where an OPTIN/OPTOUT rule implies the base decision."""
    return _coded_as(value, path, "policy", V3_ACT_CODE, V3_LABEL_SYSTEM_ALIASES)


def _checked(
    coding: Coding, allowed: Mapping[str, frozenset[str]], what: str, path: _Path
) -> Coding:
    codes = allowed.get(coding.system)
    if codes is None:
        raise _fail(f"{what}: unknown code system", path / "system")
    if coding.code not in codes:
        raise _fail(f"unknown {what} code", path / "code")
    return coding


def _ref(value: Any, path: _Path) -> Ref:
    obj = _datatype(value, path, "Reference")
    reference = _opt_str(obj.get("reference"), path / "reference")
    identifier = None
    if obj.get("identifier") is not None:
        identifier = _identifier(obj["identifier"], path / "identifier")
    if reference is None and identifier is None:
        raise _fail("a reference needs a literal reference or an identifier", path)
    return Ref(
        reference=reference,
        identifier=identifier,
        type=_opt_str(obj.get("type"), path / "type"),
        display=_opt_str(obj.get("display"), path / "display"),
    )


def _identifier(value: Any, path: _Path) -> Identifier:
    obj = _datatype(value, path, "Identifier")
    return Identifier(
        system=_str(obj.get("system"), path / "system"),
        value=_str(obj.get("value"), path / "value"),
    )


def _luhn_ok(code: str) -> bool:
    """LOINC's mod-10 check digit."""
    body, _, check = code.partition("-")
    if not (code.isascii() and body.isdigit() and check.isdigit() and len(check) == 1):
        return False
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10 == int(check)


def _extensions(obj: Mapping[str, Any], path: _Path) -> list[tuple[int, Mapping[str, Any]]]:
    out = []
    for i, ext in enumerate(_list(obj.get("extension"), path / "extension")):
        ext_path = _Path(f"{path}.extension[{i}]")
        ext = _obj(ext, ext_path)
        _str(ext.get("url"), ext_path / "url")
        _extension_elements(ext, ext_path)
        out.append((i, ext))
    return out


def _ext_values(obj: Mapping[str, Any], url: str, key: str, path: _Path) -> list[tuple[_Path, Any]]:
    found = []
    for i, ext in _extensions(obj, path):
        if ext.get("url") == url:
            ext_path = _Path(f"{path}.extension[{i}]")
            if key not in ext:
                raise _fail(f"expected {key}", ext_path)
            found.append((ext_path / key, ext[key]))
    return found


def _one_ext_value(
    obj: Mapping[str, Any], url: str, key: str, path: _Path
) -> tuple[_Path, Any] | None:
    """The value of an extension that takes one: repeated with the same value it is read once;
    with another, the second is an error (reading the first would pick one of two at random)."""
    found = _ext_values(obj, url, key, path)
    for where, value in found[1:]:
        if value != found[0][1]:
            raise _fail("a second value of an extension that takes one", where)
    return found[0] if found else None


def _lifecycle(
    resource: Mapping[str, Any], fhir_status: str, path: _Path
) -> tuple[ConsentStatus, tuple[StatusChange, ...]]:
    states = _ext_values(resource, EXT_CONSENT_STATE, "valueCode", path)
    if len(states) > 1:
        raise _fail("more than one consent state", states[1][0])
    history: list[StatusChange] = []
    for i, ext in _extensions(resource, path):
        if ext.get("url") != EXT_CONSENT_STATUS_CHANGE:
            continue
        change = _status_change(ext, _Path(f"{path}.extension[{i}]"))
        # The engine reads the changes in order: one out of time order would stretch the span
        # before it (active January to June where the consent was active in January only).
        if history and change.at < history[-1].at:
            raise _fail("status changes must be in time order", _Path(f"{path}.extension[{i}]"))
        history.append(change)
    if states:
        state_path, code = states[0]
        status = _enum(ConsentStatus, code, state_path)
        if FHIR_STATUS[status] != fhir_status:
            raise _fail("status disagrees with the precise consent state", path / "status")
    else:
        if fhir_status not in _STATUS_FROM_FHIR:
            raise _fail("a consent in this status cannot be read", path / "status")
        status = _STATUS_FROM_FHIR[fhir_status]
    if history and history[-1].status != status:
        raise _fail("the last status change disagrees with status", path / "status")
    return status, tuple(history)


def _status_change(ext: Mapping[str, Any], path: _Path) -> StatusChange:
    parts: dict[str, tuple[_Path, Any]] = {}
    for i, sub in _extensions(ext, path):
        name = sub.get("url")
        sub_path = _Path(f"{path}.extension[{i}]")
        wanted = {"status": "valueCode", "at": "valueDateTime", "by": "valueReference"}
        wanted["reason"] = "valueCoding"
        if not isinstance(name, str) or name not in wanted or name in parts:
            raise _fail("unexpected part of a status change", sub_path / "url")
        key = wanted[name]
        if key not in sub:
            raise _fail(f"expected {key}", sub_path)
        parts[name] = (sub_path / key, sub[key])
    for required in ("status", "at"):
        if required not in parts:
            raise _fail(f"a status change needs {required}", path)
    return StatusChange(
        status=_enum(ConsentStatus, parts["status"][1], parts["status"][0]),
        at=_datetime(parts["at"][1], parts["at"][0]),
        by=_ref(parts["by"][1], parts["by"][0]) if "by" in parts else None,
        reason=_coding(parts["reason"][1], parts["reason"][0]) if "reason" in parts else None,
    )


_E = Any


def _enum(kind: Callable[[str], _E], value: Any, path: _Path) -> _E:
    if not isinstance(value, str):
        raise _fail("expected a code", path)
    try:
        return kind(value)
    except ValueError:
        raise _fail("unknown code", path) from None


def _categories(
    resource: Mapping[str, Any], path: _Path
) -> tuple[ConsentKind | None, str | None, tuple[Coding, ...]]:
    """Our kind coding, a consentscope code carried in category (R5, LEAP), and the rest."""
    kind: ConsentKind | None = None
    scope: str | None = None
    rest: list[Coding] = []
    for i, concept in enumerate(_list(resource.get("category"), path / "category")):
        cat_path = _Path(f"{path}.category[{i}]")
        for j, read in enumerate(_concept(concept, cat_path)):
            coding_path = _Path(f"{cat_path}.coding[{j}]")
            coding = canonical_coding(read, CODE_SYSTEM_ALIASES)  # LOINC by its OID
            if coding.system == CS_CONSENT_KINDS:
                found = _enum(ConsentKind, coding.code, coding_path / "code")
                if kind is not None and kind != found:
                    raise _fail("two different consent kinds", coding_path / "code")
                kind = found
            elif coding.system == CONSENT_SCOPE:
                # Two scopes would let the last decide whether a restriction is about privacy.
                if scope is not None and scope != coding.code:
                    raise _fail("two different consent scopes", coding_path / "code")
                scope = coding.code
            else:
                if coding.system == LOINC and not _luhn_ok(coding.code):
                    raise _fail("not a valid LOINC code (check digit)", coding_path / "code")
                rest.append(coding)
    return kind, scope, tuple(rest)


def _kind(
    tagged: ConsentKind | None, scope: str | None, decision: Decision, path: _Path
) -> ConsentKind:
    if scope is not None and scope not in ("patient-privacy", "treatment"):
        raise _fail("only privacy and treatment consents are supported", path)
    if tagged is not None:
        if scope is not None and KIND_SCOPES[tagged] != scope:
            raise _fail("scope disagrees with the consent kind", path)
        return tagged
    if scope == "treatment":
        return ConsentKind.TREATMENT
    if scope == "patient-privacy":
        return ConsentKind.SHARING if decision is Decision.PERMIT else ConsentKind.RESTRICTION
    raise _fail("cannot tell what the consent is about: no scope", path)


def _record_id(resource: Mapping[str, Any], path: _Path) -> Identifier:
    identifiers = _list(resource.get("identifier"), path / "identifier")
    for i, ident in enumerate(identifiers):
        obj = _obj(ident, _Path(f"{path}.identifier[{i}]"))
        if obj.get("system") is not None and obj.get("value") is not None:
            return _identifier(obj, _Path(f"{path}.identifier[{i}]"))
    if resource.get("id") is not None:
        return Identifier(FALLBACK_IDENTIFIER_SYSTEM, _str(resource["id"], path / "id"))
    raise _fail("a consent needs an identifier (system and value) or an id", path / "identifier")


def _intervention(resource: Mapping[str, Any], path: _Path) -> Coding | None:
    found = _ext_values(resource, EXT_CONSENT_INTERVENTION, "valueCodeableConcept", path)
    if len(found) > 1:
        raise _fail("more than one intervention", found[1][0])
    return _coded_as(found[0][1], found[0][0], "intervention") if found else None


def _single_ref_ext(resource: Mapping[str, Any], url: str, path: _Path) -> Ref | None:
    found = _ext_values(resource, url, "valueReference", path)
    if len(found) > 1:
        raise _fail("more than one is not supported", found[1][0])
    return _ref(found[0][1], found[0][0]) if found else None


def _attachment(value: Any, path: _Path) -> Attachment:
    obj = _datatype(value, path, "Attachment")
    att = Attachment(
        content_type=_opt_str(obj.get("contentType"), path / "contentType"),
        url=_opt_str(obj.get("url"), path / "url"),
        title=_opt_str(obj.get("title"), path / "title"),
        data=_opt_str(obj.get("data"), path / "data"),
        creation=None
        if obj.get("creation") is None
        else _datetime(obj["creation"], path / "creation"),
    )
    if att.url is None and att.data is None:
        raise _fail("a source attachment needs a url or data", path)
    return att


def _conditions(obj: Mapping[str, Any], path: _Path, *, r5: bool) -> dict[str, Any]:
    """The matching conditions of a provision, as :class:`Provision` keyword arguments."""
    actors = []
    for i, actor in enumerate(_list(obj.get("actor"), path / "actor")):
        actor_path = _Path(f"{path}.actor[{i}]")
        actor = _backbone(actor, actor_path, frozenset({"role", "reference"}))
        if actor.get("role") is None:
            raise _fail("an actor needs a role", actor_path / "role")
        if actor.get("reference") is None:
            raise _fail("an actor needs a reference", actor_path / "reference")
        actors.append(
            ProvisionActor(
                role=_coded_as(
                    actor["role"],
                    actor_path / "role",
                    "actor role",
                    V3_PARTICIPATION_TYPE,
                    PARTICIPATION_TYPE_ALIASES,
                ),
                reference=_ref(actor["reference"], actor_path / "reference"),
            )
        )
    actions = [
        _checked(
            canonical_coding(c, {}),
            _ACTIONS,
            "consent action",
            _Path(f"{path}.action[{i}].coding[{j}]"),
        )
        for i, concept in enumerate(_list(obj.get("action"), path / "action"))
        for j, c in enumerate(_concept(concept, _Path(f"{path}.action[{i}]")))
    ]
    # Systems in canonical form (OIDs, STU3 URLs), as the gate reads resources: a consent naming a
    # code or label by its OID must still match them.
    labels = [
        _checked(
            canonical_coding(_coding(c, _Path(f"{path}.securityLabel[{i}]")), _LABEL_ALIASES),
            _LABELS,
            "security label",
            _Path(f"{path}.securityLabel[{i}]"),
        )
        for i, c in enumerate(_list(obj.get("securityLabel"), path / "securityLabel"))
    ]
    purposes = [
        _checked(
            canonical_coding(_coding(c, _Path(f"{path}.purpose[{i}]")), {}),
            _PURPOSES,
            "purpose of use",
            _Path(f"{path}.purpose[{i}]"),
        )
        for i, c in enumerate(_list(obj.get("purpose"), path / "purpose"))
    ]
    classes: list[Coding] = []
    names = ("resourceType", "documentType") if r5 else ("class",)
    for name in names:
        for i, c in enumerate(_list(obj.get(name), path / name)):
            coding = _coding(c, _Path(f"{path}.{name}[{i}]"))
            classes.append(canonical_coding(coding, CLASS_SYSTEM_ALIASES))
    raw_codes = obj.get("code")
    if isinstance(raw_codes, Mapping):  # LEAP writes R4 code as one object (the R5 shape of old)
        raw_codes = [raw_codes]
    codes = [
        canonical_coding(c, CODE_SYSTEM_ALIASES)
        for i, concept in enumerate(_list(raw_codes, path / "code"))
        for c in _concept(concept, _Path(f"{path}.code[{i}]"))
    ]
    data = []
    for i, item in enumerate(_list(obj.get("data"), path / "data")):
        item_path = _Path(f"{path}.data[{i}]")
        item = _backbone(item, item_path, frozenset({"meaning", "reference"}))
        if item.get("reference") is None:
            raise _fail("data needs a reference", item_path / "reference")
        data.append(
            DataRef(
                meaning=_enum(DataMeaning, item.get("meaning"), item_path / "meaning"),
                reference=_ref(item["reference"], item_path / "reference"),
            )
        )
    return {
        "period": _period(obj.get("period"), path / "period"),
        "actors": tuple(actors),
        "actions": tuple(actions),
        "security_labels": tuple(labels),
        "purposes": tuple(purposes),
        "classes": tuple(classes),
        "codes": tuple(codes),
        "data_period": _period(obj.get("dataPeriod"), path / "dataPeriod"),
        "data": tuple(data),
    }


def _check_depth(depth: int, path: _Path) -> None:
    """``depth`` counts the levels below the root provision (its children are at 1)."""
    if depth > MAX_PROVISION_DEPTH:
        raise _fail(f"provisions nested deeper than {MAX_PROVISION_DEPTH} levels", path)


def _provision_from_r4(
    obj: Mapping[str, Any], path: _Path, *, root: bool, depth: int = 0
) -> Provision:
    _check_depth(depth, path)
    _known_keys(obj, _PROVISION_R4, path)
    if _no_foreign_modifiers(obj, path):
        raise _fail("an R5 modifier extension in an R4 consent", path / "modifierExtension")
    kind: Decision | None = None
    if obj.get("type") is not None:
        kind = _enum(Decision, obj["type"], path / "type")
    elif not root:
        raise _fail("a nested provision needs a type", path / "type")
    children = tuple(
        _provision_from_r4(
            _obj(c, _Path(f"{path}.provision[{i}]")),
            _Path(f"{path}.provision[{i}]"),
            root=False,
            depth=depth + 1,
        )
        for i, c in enumerate(_list(obj.get("provision"), path / "provision"))
    )
    return Provision(type=kind, provisions=children, **_conditions(obj, path, r5=False))


def _policies_r4(resource: Mapping[str, Any], path: _Path) -> list[PolicyBasis]:
    bases = []
    for i, policy in enumerate(_list(resource.get("policy"), path / "policy")):
        policy_path = _Path(f"{path}.policy[{i}]")
        policy = _backbone(policy, policy_path, frozenset({"authority", "uri"}))
        uri = _opt_str(policy.get("uri"), policy_path / "uri")
        authority = _opt_str(policy.get("authority"), policy_path / "authority")
        if uri is None and authority is None:
            raise _fail("a policy needs a uri or an authority", policy_path)
        bases.append(PolicyBasis(uri=uri, authority=authority))
    if resource.get("policyRule") is not None:
        bases.append(PolicyBasis(code=_policy_code(resource["policyRule"], path / "policyRule")))
    return bases


_VERIFICATION_R4: Final = frozenset({"verified", "verifiedWith", "verificationDate"})
_VERIFICATION_R5: Final = _VERIFICATION_R4 | {"verificationType", "verifiedBy"}


def _verifications(resource: Mapping[str, Any], path: _Path, *, r5: bool) -> list[Verification]:
    out = []
    for i, item in enumerate(_list(resource.get("verification"), path / "verification")):
        v_path = _Path(f"{path}.verification[{i}]")
        item = _backbone(item, v_path, _VERIFICATION_R5 if r5 else _VERIFICATION_R4)
        if item.get("verified") is not True:
            raise _fail("only a verification that succeeded can be read", v_path / "verified")
        witness = _single_ref_ext(item, EXT_CONSENT_WITNESS, v_path)
        if r5:
            method_code = None
            method_path = v_path / "verificationType"
            if item.get("verificationType") is not None:
                codes = {
                    c.code
                    for c in _concept(item["verificationType"], method_path)
                    if c.system == CS_CONSENT_VERIFICATION_METHODS
                }
                if len(codes) > 1:
                    raise _fail("two different verification methods", method_path / "coding")
                method_code = codes.pop() if codes else None
            if item.get("verifiedBy") is not None:
                if witness is not None:
                    raise _fail("two witnesses", v_path / "verifiedBy")
                witness = _ref(item["verifiedBy"], v_path / "verifiedBy")
            dates = _list(item.get("verificationDate"), v_path / "verificationDate")
            if len(dates) != 1:
                raise _fail("exactly one verification date is needed", v_path / "verificationDate")
            when = _datetime(dates[0], _Path(f"{v_path}.verificationDate[0]"))
        else:
            method = _one_ext_value(item, EXT_CONSENT_VERIFICATION_METHOD, "valueCode", v_path)
            method_code = None if method is None else method[1]
            method_path = v_path / "extension"
            if item.get("verificationDate") is None:
                raise _fail("a verification needs its date", v_path / "verificationDate")
            when = _datetime(item["verificationDate"], v_path / "verificationDate")
        if method_code is None:
            raise _fail("how the consent was verified (verbal, written, …) is missing", method_path)
        out.append(
            Verification(
                method=_enum(VerificationMethod, method_code, method_path),
                verified_at=when,
                witness=witness,
                verified_with=None
                if item.get("verifiedWith") is None
                else _ref(item["verifiedWith"], v_path / "verifiedWith"),
            )
        )
    return out


def _from_r4(resource: Mapping[str, Any]) -> ConsentRecord:
    path = _Path("Consent")
    _no_implicit_rules(resource, path)
    _known_keys(resource, _COMMON | _R4_ONLY, path)
    if _no_foreign_modifiers(resource, path):
        raise _fail("a provision modifier extension on the consent", path / "modifierExtension")
    status, history = _lifecycle(resource, _str(resource.get("status"), path / "status"), path)
    tagged, scope_in_category, categories = _categories(resource, path)
    scope = scope_in_category
    if resource.get("scope") is not None:
        scopes = _concept(resource["scope"], path / "scope")
        scope_codes = {c.code for c in scopes if c.system == CONSENT_SCOPE}
        if len(scope_codes) != 1:
            raise _fail("expected one consentscope code", path / "scope")
        scope = scope_codes.pop()
        if scope_in_category not in (None, scope):
            raise _fail("scope disagrees with the consentscope category", path / "scope")
    if resource.get("provision") is None:
        raise _fail("a consent needs a root provision", path / "provision")
    root_path = path / "provision"
    root = _provision_from_r4(_obj(resource["provision"], root_path), root_path, root=True)
    policies = _policies_r4(resource, path)
    decision = _r4_decision(resource, root, policies, path)
    period = root.period
    source = None
    attachment = None
    if resource.get("sourceReference") is not None:
        source = _ref(resource["sourceReference"], path / "sourceReference")
    if resource.get("sourceAttachment") is not None:
        attachment = _attachment(resource["sourceAttachment"], path / "sourceAttachment")
    grantor = _at_most_one(resource.get("performer"), path / "performer")
    manager = _at_most_one(resource.get("organization"), path / "organization")
    if resource.get("patient") is None:
        raise _fail("a consent needs its patient", path / "patient")
    if resource.get("dateTime") is None:
        raise _fail("a consent needs its dateTime", path / "dateTime")
    grantees = _ext_values(resource, EXT_CONSENT_GRANTEE, "valueReference", path)
    return ConsentRecord(
        id=_record_id(resource, path),
        kind=_kind(tagged, scope, decision, path / "scope"),
        patient=_ref(resource["patient"], path / "patient"),
        status=status,
        decision=decision,
        date=_datetime(resource["dateTime"], path / "dateTime"),
        grantor=None if grantor is None else _ref(grantor, _Path(f"{path}.performer[0]")),
        grantees=tuple(_ref(v, p) for p, v in grantees),
        manager=None if manager is None else _ref(manager, _Path(f"{path}.organization[0]")),
        controller=_single_ref_ext(resource, EXT_CONSENT_CONTROLLER, path),
        period=period,
        history=history,
        verification=tuple(_verifications(resource, path, r5=False)),
        source=source,
        source_attachment=attachment,
        policy_basis=tuple(policies),
        categories=categories,
        intervention=_intervention(resource, path),
        provision=replace(root, type=decision, period=None),
    )


def _r4_decision(
    resource: Mapping[str, Any], root: Provision, policies: list[PolicyBasis], path: _Path
) -> Decision:
    """The base decision: root ``provision.type`` (IHE PCF), else the R5 ``decision`` cross-version
    extension, else an OPTIN/OPTOUT policy rule (LEAP). They must agree where several are given."""
    candidates: list[tuple[Decision, str]] = []
    if root.type is not None:
        candidates.append((root.type, str(path / "provision" / "type")))
    for ext_path, code in _ext_values(resource, R5_CONSENT_DECISION_EXTENSION, "valueCode", path):
        candidates.append((_enum(Decision, code, ext_path), str(ext_path)))
    for basis in policies:
        if basis.code is not None and basis.code.system == V3_ACT_CODE:
            implied = _POLICY_RULE_DECISIONS.get(basis.code.code)
            if implied is not None:
                candidates.append((implied, str(path / "policyRule")))
    if not candidates:
        raise _fail("no base decision (root provision.type)", path / "provision" / "type")
    for decision, where in candidates[1:]:
        if decision != candidates[0][0]:
            raise _fail("base decisions disagree", where)
    return candidates[0][0]


def _provision_from_r5(
    obj: Mapping[str, Any], path: _Path, parent: Decision, depth: int = 1
) -> Provision:
    """A nested provision ``depth`` levels below the root (top-level ones, and the children of
    a provision marked as the root, are at 1)."""
    _check_depth(depth, path)
    _known_keys(obj, _PROVISION_R5, path)
    if obj.get("expression") is not None:
        raise _fail("computable expressions are not supported", path / "expression")
    modifiers = _no_foreign_modifiers(obj, path)
    effect = _negate(parent)
    for m in modifiers:
        if m.get("url") == EXT_CONSENT_ROOT_PROVISION:
            raise _fail("only a top-level provision can be the root", path / "modifierExtension")
        effect = _enum(Decision, m.get("valueCode"), path / "modifierExtension")
        if effect != parent:
            raise _fail(
                "a provision type modifier must repeat its parent's", path / "modifierExtension"
            )
    children = tuple(
        _provision_from_r5(
            _obj(c, _Path(f"{path}.provision[{i}]")),
            _Path(f"{path}.provision[{i}]"),
            effect,
            depth + 1,
        )
        for i, c in enumerate(_list(obj.get("provision"), path / "provision"))
    )
    return Provision(type=effect, provisions=children, **_conditions(obj, path, r5=True))


def _from_r5(resource: Mapping[str, Any]) -> ConsentRecord:
    path = _Path("Consent")
    _no_implicit_rules(resource, path)
    _known_keys(resource, _COMMON | _R5_ONLY, path)
    if _no_foreign_modifiers(resource, path):
        raise _fail("a provision modifier extension on the consent", path / "modifierExtension")
    status, history = _lifecycle(resource, _str(resource.get("status"), path / "status"), path)
    tagged, scope, categories = _categories(resource, path)
    decision = _enum(Decision, resource.get("decision"), path / "decision")
    root = _root_from_r5(resource, path, decision)
    recorded = _one_ext_value(resource, R4_CONSENT_DATETIME_EXTENSION, "valueDateTime", path)
    if recorded:
        when = _datetime(recorded[1], recorded[0])
        if (
            resource.get("date") is not None
            and _str(resource["date"], path / "date")[:10] != when.date().isoformat()
        ):
            raise _fail("date disagrees with the recorded dateTime", path / "date")
    elif resource.get("date") is not None:
        when = _datetime(resource["date"], path / "date")
    else:
        raise _fail("a consent needs its date", path / "date")
    if resource.get("subject") is None:
        raise _fail("a consent needs its subject", path / "subject")
    grantor = _at_most_one(resource.get("grantor"), path / "grantor")
    manager = _at_most_one(resource.get("manager"), path / "manager")
    controller = _at_most_one(resource.get("controller"), path / "controller")
    source = _at_most_one(resource.get("sourceReference"), path / "sourceReference")
    attachment = _at_most_one(resource.get("sourceAttachment"), path / "sourceAttachment")
    policies: list[PolicyBasis] = []
    if resource.get("policyBasis") is not None:
        basis_path = path / "policyBasis"
        basis = _backbone(resource["policyBasis"], basis_path, frozenset({"reference", "url"}))
        if basis.get("reference") is not None:
            raise _fail("a policy basis by reference is not supported", basis_path / "reference")
        authority_ext = _one_ext_value(basis, EXT_CONSENT_POLICY_AUTHORITY, "valueUri", basis_path)
        uri = _opt_str(basis.get("url"), basis_path / "url")
        authority = None if authority_ext is None else _str(authority_ext[1], authority_ext[0])
        if uri is not None or authority is not None:
            policies.append(PolicyBasis(uri=uri, authority=authority))
    regulatory = resource.get("regulatoryBasis")
    if isinstance(regulatory, Mapping):  # LEAP writes one object
        regulatory = [regulatory]
    for i, concept in enumerate(_list(regulatory, path / "regulatoryBasis")):
        policies.append(
            PolicyBasis(code=_policy_code(concept, _Path(f"{path}.regulatoryBasis[{i}]")))
        )
    return ConsentRecord(
        id=_record_id(resource, path),
        kind=_kind(tagged, scope, decision, path / "category"),
        patient=_ref(resource["subject"], path / "subject"),
        status=status,
        decision=decision,
        date=when,
        grantor=None if grantor is None else _ref(grantor, _Path(f"{path}.grantor[0]")),
        grantees=tuple(
            _ref(g, _Path(f"{path}.grantee[{i}]"))
            for i, g in enumerate(_list(resource.get("grantee"), path / "grantee"))
        ),
        manager=None if manager is None else _ref(manager, _Path(f"{path}.manager[0]")),
        controller=None if controller is None else _ref(controller, _Path(f"{path}.controller[0]")),
        period=_period(resource.get("period"), path / "period"),
        history=history,
        verification=tuple(_verifications(resource, path, r5=True)),
        source=None if source is None else _ref(source, _Path(f"{path}.sourceReference[0]")),
        source_attachment=None
        if attachment is None
        else _attachment(attachment, _Path(f"{path}.sourceAttachment[0]")),
        policy_basis=tuple(policies),
        categories=categories,
        intervention=_intervention(resource, path),
        provision=root,
    )


def _root_from_r5(resource: Mapping[str, Any], path: _Path, decision: Decision) -> Provision:
    items = _list(resource.get("provision"), path / "provision")
    objs = [_obj(p, _Path(f"{path}.provision[{i}]")) for i, p in enumerate(items)]
    roots = [
        i
        for i, obj in enumerate(objs)
        if any(
            isinstance(m, Mapping) and m.get("url") == EXT_CONSENT_ROOT_PROVISION
            for m in _list(
                obj.get("modifierExtension"), _Path(f"{path}.provision[{i}]") / "modifierExtension"
            )
        )
    ]
    if not roots:
        children = tuple(
            _provision_from_r5(obj, _Path(f"{path}.provision[{i}]"), decision)
            for i, obj in enumerate(objs)
        )
        return Provision(type=decision, provisions=children)
    if len(objs) != 1:
        raise _fail(
            "a root provision must be the only top-level provision",
            _Path(f"{path}.provision[{roots[0]}]"),
        )
    obj = objs[0]
    root_path = _Path(f"{path}.provision[0]")
    _known_keys(obj, _PROVISION_R5, root_path)
    modifiers = _no_foreign_modifiers(obj, root_path)
    if len(modifiers) != 1 or modifiers[0].get("valueBoolean") is not True:
        raise _fail(
            "the root provision marker must be the only modifier", root_path / "modifierExtension"
        )
    if obj.get("expression") is not None:
        raise _fail("computable expressions are not supported", root_path / "expression")
    conditions = _conditions(obj, root_path, r5=True)
    if conditions["period"] is not None:
        raise _fail("the root provision's time frame is the consent's period", root_path / "period")
    children = tuple(
        _provision_from_r5(
            _obj(c, _Path(f"{root_path}.provision[{i}]")),
            _Path(f"{root_path}.provision[{i}]"),
            decision,
        )
        for i, c in enumerate(_list(obj.get("provision"), root_path / "provision"))
    )
    return Provision(type=decision, provisions=children, **conditions)


# ================================================================================================
# Registry
# ================================================================================================


#: Built once: a marshmallow schema costs more to build than a record costs to load.
_REVOCATION_SCHEMA = ConsentRevocationSchema()


class ConsentMapper:
    """The consent mapper for :mod:`fhir_alliance.mapping.registry`.

    A batch may hold consents and revocations: :meth:`check_batch` refuses a revocation whose consent
    is not in the batch (or in ``known``), and :meth:`apply_batch` folds each revocation into
    its consent (a new status change; nothing is erased), so only consents are mapped to FHIR.
    """

    kinds = frozenset({RECORD_KIND_CONSENT, RECORD_KIND_REVOCATION})
    resource_types = frozenset({"Consent", "Permission"})

    def load(self, data: Mapping[str, Any]) -> ConsentRecord | ConsentRevocation:
        if isinstance(data, Mapping) and data.get("kind") == RECORD_KIND_REVOCATION:
            revocation: ConsentRevocation = load_or_raise(_REVOCATION_SCHEMA, data)
            return revocation
        return load_consent(data)

    def dump(self, record: Any) -> dict[str, Any]:
        if isinstance(record, ConsentRevocation):
            return dump_revocation(record)
        return dump_consent(record)

    def check_batch(
        self,
        labelled: Sequence[tuple[str, ConsentRecord | ConsentRevocation]],
        *,
        known: Mapping[Identifier, ConsentRecord] | None = None,
    ) -> list[Issue]:
        """Problems across the records of one batch, each at ``label.field``."""
        try:
            self.apply_batch(labelled, known=known)
        except InputError as exc:
            return list(exc.issues)
        return []

    def apply_batch(
        self,
        labelled: Sequence[tuple[str, ConsentRecord | ConsentRevocation]],
        *,
        known: Mapping[Identifier, ConsentRecord] | None = None,
    ) -> list[tuple[str, ConsentRecord]]:
        """The batch's consents with its revocations applied, labelled as given (revocations of
        consents in ``known`` come back under the revocation's label). Order in the batch does not
        matter: every consent is taken first, then the revocations in the order of their ``at``."""
        consents: dict[Identifier, tuple[str, ConsentRecord]] = {
            record_id: ("", record) for record_id, record in (known or {}).items()
        }
        order: list[Identifier] = []
        issues: list[Issue] = []
        revocations: list[tuple[str, ConsentRevocation]] = []
        for label, record in labelled:
            if isinstance(record, ConsentRevocation):
                revocations.append((label, record))
            elif record.id in consents:
                issues.append(Issue(f"{label}.id", "a consent with this id was given before"))
            else:
                consents[record.id] = (label, record)
                order.append(record.id)
        for label, revocation in sorted(revocations, key=lambda pair: pair[1].at):
            entry = consents.get(revocation.consent)
            if entry is None:
                issues.append(Issue(f"{label}.consent", "revocation of an unknown consent"))
                continue
            try:
                revoked = apply_revocation(entry[1], revocation)
            except InputError as exc:
                issues += [Issue(f"{label}.{i.path}", i.message) for i in exc.issues]
                continue
            consents[revocation.consent] = (entry[0] or label, revoked)
            if revocation.consent not in order:
                order.append(revocation.consent)
        if issues:
            raise InputError.from_issues(issues)
        return [consents[record_id] for record_id in order]

    def to_fhir(self, record: Any, *, version: str = R4) -> list[dict[str, Any]]:
        if not isinstance(record, ConsentRecord):
            raise MappingError(
                "a revocation is applied to its consent (give both in one batch)", element="kind"
            )
        return [to_consent(record, version=version)]

    def from_fhir(self, resources: Sequence[Mapping[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for index, resource in enumerate(resources):
            try:
                if isinstance(resource, Mapping) and resource.get("resourceType") == "Permission":
                    out.append(from_permission(resource))
                else:
                    out.append(from_consent(resource))
            except MappingError as exc:
                where = exc.element.removeprefix("Consent").removeprefix("Permission")
                element = f"Bundle.entry[{index}].resource{where}"
                raise MappingError(exc.message, element=element) from None
        return out


MAPPER: Final = ConsentMapper()


# ================================================================================================
# R5 Permission (trial use) for treatment permissions
# ================================================================================================

#: Permission status for each domain state (Permission has no ``inactive``; our state extension
#: keeps revoked and expired apart).
PERMISSION_STATUS: Final = {
    ConsentStatus.DRAFT: "draft",
    ConsentStatus.ACTIVE: "active",
    ConsentStatus.REVOKED: "rejected",
    ConsentStatus.EXPIRED: "rejected",
    ConsentStatus.ENTERED_IN_ERROR: "entered-in-error",
}
_PERMISSION_KEYS: Final = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "status",
        "asserter",
        "date",
        "validity",
        "justification",
        "combining",
        "rule",
    }
)


#: Why a Permission whose action is a consentaction code is not read (nor written): such a rule
#: says who may do what with data, which read as a treatment's intervention would not count where
#: disclosure is asked about (a lost deny).
_DATA_ACCESS_ACTION: Final = (
    "a consentaction code (access, disclose, …) is about data, not a treatment: "
    "only treatment permissions are read from a Permission"
)


def permission_view(record: ConsentRecord) -> ConsentRecord:
    """What of a treatment permission an R5 Permission carries: ``record`` without verification,
    manager, controller, source attachment, categories and policy documents (Permission has no
    place for them). ``from_permission(to_permission(r)) == permission_view(r)``."""
    return replace(
        record,
        verification=(),
        manager=None,
        controller=None,
        source_attachment=None,
        categories=(),
        policy_basis=tuple(b for b in record.policy_basis if b.code is not None),
    )


def to_permission(record: ConsentRecord) -> dict[str, Any]:
    """A treatment permission → an R5 Permission (``combining`` deny-overrides, one rule).

    The Permission names the Consent it implements in ``justification.evidence`` (by the record's
    identifier and the Consent's deterministic id). Only a provision without nested exceptions whose
    one condition is purpose maps; anything else raises :class:`MappingError`.
    """
    if record.kind is not ConsentKind.TREATMENT:
        raise MappingError("only a treatment permission maps to Permission", element="kind")
    if record.intervention is None:
        raise MappingError("a treatment permission names its intervention", element="intervention")
    if canonical_coding(record.intervention, {}).system == CONSENT_ACTION:
        raise MappingError(_DATA_ACCESS_ACTION, element="intervention")
    _check_root(record)
    root = record.provision
    if root.provisions:
        raise MappingError(
            "Permission rules cannot nest exceptions", element="provision.provisions"
        )
    extra = _conditions_out(replace(root, purposes=()), r5=True)
    if extra:
        element = {"actor": "actors", "action": "actions", "securityLabel": "security_labels"}.get(
            next(iter(extra)), next(iter(extra))
        )
        raise MappingError(
            "a Permission rule carries only purposes", element=f"provision.{element}"
        )
    evidence = [
        {
            "reference": f"Consent/{resource_id(record.id)}",
            "type": "Consent",
            "identifier": record.id.to_fhir(),
        }
    ]
    if record.source is not None:
        evidence.append(ref_to_fhir(record.source))
    activity: dict[str, Any] = {}
    if record.grantees:
        activity["actor"] = [ref_to_fhir(g) for g in record.grantees]
    activity["action"] = [_cc(record.intervention)]
    if root.purposes:
        activity["purpose"] = [_cc(p) for p in root.purposes]
    out: dict[str, Any] = {
        "resourceType": "Permission",
        "id": resource_id(record.id, "/Permission"),
        "extension": _lifecycle_extensions(record),
        "status": PERMISSION_STATUS[record.status],
    }
    if record.grantor is not None:
        out["asserter"] = ref_to_fhir(record.grantor)
    out["date"] = [_instant(record.date)]
    if record.period is not None:
        out["validity"] = _period_out(record.period)
    justification: dict[str, Any] = {}
    coded = [b.code for b in record.policy_basis if b.code is not None]
    if coded:
        justification["basis"] = [_cc(c) for c in coded]
    justification["evidence"] = evidence
    out["justification"] = justification
    out["combining"] = "deny-overrides"
    out["rule"] = [
        {
            "type": record.decision.value,
            "data": [
                {"resource": [{"meaning": "instance", "reference": ref_to_fhir(record.patient)}]}
            ],
            "activity": [activity],
        }
    ]
    return out


def from_permission(resource: Mapping[str, Any]) -> ConsentRecord:
    """An R5 Permission written by :func:`to_permission` (or shaped like one) → a treatment
    permission. Raises :class:`MappingError` naming the element for anything else."""
    path = _Path("Permission")
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Permission":
        raise _fail("expected a Permission", "resourceType")
    _no_implicit_rules(resource, path)
    _known_keys(resource, _PERMISSION_KEYS, path)
    if resource.get("modifierExtension") is not None:
        raise _fail("unknown modifier extension", path / "modifierExtension")
    if resource.get("combining") != "deny-overrides":
        raise _fail("only deny-overrides with one rule is read", path / "combining")
    fhir_status = _str(resource.get("status"), path / "status")
    status, history = _permission_lifecycle(resource, fhir_status, path)
    rules = _list(resource.get("rule"), path / "rule")
    if len(rules) != 1:
        raise _fail("expected exactly one rule", path / "rule")
    rule_path = _Path(f"{path}.rule[0]")
    rule = _backbone(rules[0], rule_path, frozenset({"type", "data", "activity"}))
    decision = _enum(Decision, rule.get("type"), rule_path / "type")
    patient = _permission_patient(rule, rule_path)
    activities = _list(rule.get("activity"), rule_path / "activity")
    if len(activities) != 1:
        raise _fail("expected exactly one activity", rule_path / "activity")
    act_path = _Path(f"{rule_path}.activity[0]")
    activity = _backbone(activities[0], act_path, frozenset({"actor", "action", "purpose"}))
    actions = _list(activity.get("action"), act_path / "action")
    if len(actions) != 1:
        raise _fail("expected the intervention as the one action", act_path / "action")
    intervention = _coded_as(actions[0], _Path(f"{act_path}.action[0]"), "intervention")
    if intervention.system == CONSENT_ACTION:
        raise _fail(_DATA_ACCESS_ACTION, f"{act_path}.action[0]")
    purposes = tuple(
        _checked(c, _PURPOSES, "purpose of use", _Path(f"{act_path}.purpose[{i}].coding[{j}]"))
        for i, concept in enumerate(_list(activity.get("purpose"), act_path / "purpose"))
        for j, c in enumerate(_concept(concept, _Path(f"{act_path}.purpose[{i}]")))
    )
    grantees = tuple(
        _ref(a, _Path(f"{act_path}.actor[{i}]"))
        for i, a in enumerate(_list(activity.get("actor"), act_path / "actor"))
    )
    just_path = path / "justification"
    justification = _backbone(
        resource.get("justification") or {}, just_path, frozenset({"basis", "evidence"})
    )
    record_id: Identifier | None = None
    source: Ref | None = None
    for i, item in enumerate(_list(justification.get("evidence"), just_path / "evidence")):
        ref = _ref(item, _Path(f"{just_path}.evidence[{i}]"))
        if ref.type == "Consent" and record_id is None and ref.identifier is not None:
            record_id = ref.identifier
        elif source is None:
            source = ref
        else:
            raise _fail(
                "more evidence than the consent and its source", f"{just_path}.evidence[{i}]"
            )
    if record_id is None:
        raise _fail("the Consent this Permission implements is not named", just_path / "evidence")
    bases = tuple(
        PolicyBasis(code=_policy_code(c, _Path(f"{just_path}.basis[{i}]")))
        for i, c in enumerate(_list(justification.get("basis"), just_path / "basis"))
    )
    dates = _list(resource.get("date"), path / "date")
    if len(dates) != 1:
        raise _fail("expected exactly one date", path / "date")
    return ConsentRecord(
        id=record_id,
        kind=ConsentKind.TREATMENT,
        patient=patient,
        status=status,
        decision=decision,
        date=_datetime(dates[0], _Path(f"{path}.date[0]")),
        grantor=None
        if resource.get("asserter") is None
        else _ref(resource["asserter"], path / "asserter"),
        grantees=grantees,
        period=_period(resource.get("validity"), path / "validity"),
        history=history,
        source=source,
        policy_basis=bases,
        intervention=intervention,
        provision=Provision(type=decision, purposes=purposes),
    )


def _permission_lifecycle(
    resource: Mapping[str, Any], fhir_status: str, path: _Path
) -> tuple[ConsentStatus, tuple[StatusChange, ...]]:
    states = _ext_values(resource, EXT_CONSENT_STATE, "valueCode", path)
    if not states:
        found = {v: k for k, v in PERMISSION_STATUS.items() if k is not ConsentStatus.EXPIRED}
        if fhir_status not in found:
            raise _fail("unknown Permission status", path / "status")
        fake = {"status": FHIR_STATUS[found[fhir_status]]}
        return _lifecycle({**resource, **fake}, fake["status"], path)
    status = _enum(ConsentStatus, states[0][1], states[0][0])
    if PERMISSION_STATUS[status] != fhir_status:
        raise _fail("status disagrees with the precise consent state", path / "status")
    return _lifecycle(resource, FHIR_STATUS[status], path)


def _permission_patient(rule: Mapping[str, Any], path: _Path) -> Ref:
    data = _list(rule.get("data"), path / "data")
    if len(data) != 1:
        raise _fail("expected the patient as the one data item", path / "data")
    item = _backbone(data[0], _Path(f"{path}.data[0]"), frozenset({"resource"}))
    resources = _list(item.get("resource"), _Path(f"{path}.data[0]") / "resource")
    if len(resources) != 1:
        raise _fail(
            "expected the patient as the one resource", _Path(f"{path}.data[0]") / "resource"
        )
    res_path = _Path(f"{path}.data[0].resource[0]")
    res = _backbone(resources[0], res_path, frozenset({"meaning", "reference"}))
    if res.get("meaning") != "instance":
        raise _fail("the patient is named as an instance", res_path / "meaning")
    return _ref(res.get("reference"), res_path / "reference")
