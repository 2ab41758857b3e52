"""The JSON form of consent records and revocations (see docs/consent.md): load with field-path errors.

Codes are checked against the lists in :mod:`fhir_alliance.terminology`; a revocation is accepted only
for a consent the caller knows, and applying it appends to the consent's history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Coding, Identifier
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
from fhir_alliance.schemas.common import (
    AwareDateTime,
    CodingSchema,
    IdentifierField,
    RefSchema,
    StrictSchema,
    dump_ref,
)
from fhir_alliance.schemas.compiled import load_or_raise_fast
from fhir_alliance.terminology import (
    CLASS_SYSTEM_ALIASES,
    CODE_SYSTEM_ALIASES,
    CONSENT_ACTION,
    CONSENT_ACTION_CODES,
    CONSENT_CATEGORY_CODES,
    CONSENT_LABEL_CODES,
    LOINC,
    PARTICIPATION_TYPE_ALIASES,
    PURPOSE_OF_USE_CODES,
    RESOURCE_TYPES,
    V3_ACT_REASON,
    V3_LABEL_SYSTEM_ALIASES,
    canonical_system,
)

__all__ = [
    "MAX_PROVISION_DEPTH",
    "RECORD_KIND_CONSENT",
    "RECORD_KIND_REVOCATION",
    "ConsentRecordSchema",
    "ConsentRevocationSchema",
    "canonical_coding",
    "dump_consent",
    "dump_revocation",
    "load_consent",
    "load_consent_records",
    "load_revocation",
]

RECORD_KIND_CONSENT = "consent"
#: Deepest nesting of provisions below the root provision that a consent may have: the consent
#: engine's ``MAX_PROVISION_DEPTH`` (imported there would be a cycle; a test checks they agree).
#: The JSON form and both FHIR readers refuse deeper nesting with an error naming where.
MAX_PROVISION_DEPTH: Final = 32
RECORD_KIND_REVOCATION = "consent-revocation"


def canonical_coding(coding: Coding, aliases: Mapping[str, str]) -> Coding:
    """``coding`` with its system in canonical form (``aliases``: other spelling → canonical URI,
    e.g. :data:`~fhir_alliance.terminology.CODE_SYSTEM_ALIASES`; then any spelling of a code
    system consents are matched on, :func:`~fhir_alliance.terminology.canonical_system`). Every
    consent reader normalises a consent's codes, labels, classes, purposes, actions, roles and
    categories so: resources and requests are read in canonical form too, and a consent that names
    a code by an OID or ``https://loinc.org`` must still match them (a deny would be missed)."""
    system = aliases.get(coding.system) or canonical_system(coding.system)
    return coding if system == coding.system else replace(coding, system=system)


def _checked_coding(
    what: str, allowed: Mapping[str, frozenset[str]], aliases: Mapping[str, str] | None = None
) -> type[CodingSchema]:
    """A coding schema that accepts only ``allowed[system]`` codes (errors at ``system``/``code``);
    a system is looked up in canonical form (``aliases``), the loader normalising it after."""
    other_spellings: Mapping[str, str] = aliases or {}

    class _Checked(CodingSchema):
        @validates_schema
        def _known(self, data: dict[str, Any], **kwargs: Any) -> None:
            system = other_spellings.get(data["system"]) or canonical_system(data["system"])
            codes = allowed.get(system)
            if codes is None:
                raise ValidationError(
                    f"{what}: code system must be one of {', '.join(sorted(allowed))}",
                    field_name="system",
                )
            if data["code"] not in codes:
                raise ValidationError(f"unknown {what} code", field_name="code")

    _Checked.__name__ = f"{what.title().replace(' ', '')}CodingSchema"
    return _Checked


PurposeCodingSchema = _checked_coding("purpose of use", {V3_ACT_REASON: PURPOSE_OF_USE_CODES})
ActionCodingSchema = _checked_coding("consent action", {CONSENT_ACTION: CONSENT_ACTION_CODES})
CategoryCodingSchema = _checked_coding(
    "consent category", {LOINC: CONSENT_CATEGORY_CODES}, CODE_SYSTEM_ALIASES
)
SecurityLabelCodingSchema = _checked_coding(
    "security label", CONSENT_LABEL_CODES, V3_LABEL_SYSTEM_ALIASES
)


class PeriodSchema(StrictSchema):
    """``{start, end}``: either may be open, but not both; the end must lie after the start."""

    start = AwareDateTime(future_tolerance=None, load_default=None)
    end = AwareDateTime(future_tolerance=None, load_default=None)

    @validates_schema
    def _ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("start"), data.get("end")
        if start is None and end is None:
            raise ValidationError("give a start, an end, or both")
        if start is not None and end is not None and end <= start:
            raise ValidationError("period ends before it starts", field_name="end")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Period:
        return Period(**data)


class StatusChangeSchema(StrictSchema):
    status = fields.Enum(ConsentStatus, by_value=True, required=True)
    at = AwareDateTime(required=True)
    by = fields.Nested(RefSchema, load_default=None)
    reason = fields.Nested(CodingSchema, load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> StatusChange:
        return StatusChange(**data)


class VerificationSchema(StrictSchema):
    method = fields.Enum(VerificationMethod, by_value=True, required=True)
    verified_at = AwareDateTime(required=True)
    witness = fields.Nested(RefSchema, load_default=None)
    verified_with = fields.Nested(RefSchema, load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Verification:
        return Verification(**data)


class PolicyBasisSchema(StrictSchema):
    """Either a coded policy (``code``, e.g. 42CFRPart2) or a policy document (``uri``/``authority``)."""

    uri = fields.String(load_default=None)
    code = fields.Nested(CodingSchema, load_default=None)
    authority = fields.String(load_default=None)

    @validates_schema
    def _one_kind(self, data: dict[str, Any], **kwargs: Any) -> None:
        coded = data.get("code") is not None
        documented = data.get("uri") is not None or data.get("authority") is not None
        if coded == documented:
            raise ValidationError("give either a code, or a uri and/or an authority")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> PolicyBasis:
        return PolicyBasis(**data)


class AttachmentSchema(StrictSchema):
    content_type = fields.String(load_default=None)
    url = fields.String(load_default=None)
    title = fields.String(load_default=None)
    data = fields.String(load_default=None)
    creation = AwareDateTime(load_default=None)

    @validates_schema
    def _has_content(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("url") is None and data.get("data") is None:
            raise ValidationError("give the document's url or its data (base64)")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Attachment:
        return Attachment(**data)


class ProvisionActorSchema(StrictSchema):
    """An actor of a provision; its role's system in canonical form (v3-ParticipationType by its
    OID or STU3 URL is that code system), as the FHIR readers give it, so that a deny naming the
    recipient's role that way matches the recipient."""

    role = fields.Nested(CodingSchema, required=True)
    reference = fields.Nested(RefSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> ProvisionActor:
        role = canonical_coding(data["role"], PARTICIPATION_TYPE_ALIASES)
        return ProvisionActor(**{**data, "role": role})


class DataRefSchema(StrictSchema):
    meaning = fields.Enum(DataMeaning, by_value=True, required=True)
    reference = fields.Nested(RefSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> DataRef:
        return DataRef(**data)


#: The provision elements whose codings are normalised, with the other spellings of their systems.
_PROVISION_ALIASES: Final[tuple[tuple[str, Mapping[str, str]], ...]] = (
    ("security_labels", V3_LABEL_SYSTEM_ALIASES),
    ("classes", CLASS_SYSTEM_ALIASES),
    ("codes", CODE_SYSTEM_ALIASES),
    ("purposes", {}),
    ("actions", {}),
)


def _codings(schema: type[CodingSchema] = CodingSchema) -> fields.List[Any]:
    return fields.List(fields.Nested(schema), load_default=())


class _ProvisionConditions(StrictSchema):
    """The conditions a provision matches on; shared by the root and nested provisions."""

    actors = fields.List(fields.Nested(ProvisionActorSchema), load_default=())
    actions = _codings(ActionCodingSchema)
    security_labels = _codings(SecurityLabelCodingSchema)
    purposes = _codings(PurposeCodingSchema)
    classes = _codings()
    codes = _codings()
    data_period = fields.Nested(PeriodSchema, load_default=None)
    data = fields.List(fields.Nested(DataRefSchema), load_default=())

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Provision:
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        # Systems in canonical form, as the FHIR readers give them and the gate reads resources.
        for name, aliases in _PROVISION_ALIASES:
            values[name] = tuple(canonical_coding(c, aliases) for c in values[name])
        # Normal form (what the R5 reader gives back): resource types before other classes.
        values["classes"] = tuple(
            sorted(values["classes"], key=lambda c: c.system != RESOURCE_TYPES)
        )
        return Provision(**values)


class ProvisionSchema(_ProvisionConditions):
    """A nested provision: an exception to its parent, so its ``type`` is required."""

    type = fields.Enum(Decision, by_value=True, required=True)
    period = fields.Nested(PeriodSchema, load_default=None)
    provisions = fields.List(fields.Nested(lambda: ProvisionSchema()), load_default=())


class RootProvisionSchema(_ProvisionConditions):
    """The root provision: its ``type`` is the consent's ``decision`` (may be omitted) and its time
    frame is the consent's ``period``."""

    type = fields.Enum(Decision, by_value=True, load_default=None)
    provisions = fields.List(fields.Nested(ProvisionSchema), load_default=())
    period = fields.Raw(load_default=None)

    @validates_schema
    def _no_period(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("period") is not None:
            raise ValidationError(
                "the root provision's time frame is the consent's period", field_name="period"
            )


class ConsentRecordSchema(StrictSchema):
    """A consent record in our JSON form (``kind: "consent"``)."""

    kind = fields.String(required=True, validate=validate.Equal(RECORD_KIND_CONSENT))
    id = IdentifierField(required=True)
    consent_kind = fields.Enum(ConsentKind, by_value=True, required=True)
    patient = fields.Nested(RefSchema, required=True)
    status = fields.Enum(ConsentStatus, by_value=True, required=True)
    decision = fields.Enum(Decision, by_value=True, required=True)
    date = AwareDateTime(required=True)
    grantor = fields.Nested(RefSchema, load_default=None)
    grantees = fields.List(fields.Nested(RefSchema), load_default=())
    manager = fields.Nested(RefSchema, load_default=None)
    controller = fields.Nested(RefSchema, load_default=None)
    period = fields.Nested(PeriodSchema, load_default=None)
    history = fields.List(fields.Nested(StatusChangeSchema), load_default=())
    verification = fields.List(fields.Nested(VerificationSchema), load_default=())
    source = fields.Nested(RefSchema, load_default=None)
    source_attachment = fields.Nested(AttachmentSchema, load_default=None)
    policy_basis = fields.List(fields.Nested(PolicyBasisSchema), required=True)
    categories = _codings(CategoryCodingSchema)
    intervention = fields.Nested(CodingSchema, load_default=None)
    provision = fields.Nested(RootProvisionSchema, load_default=None)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, Any] = {}
        history: list[StatusChange] = data.get("history", [])
        if history and history[-1].status != data["status"]:
            errors["status"] = ["status must equal the last status change in history"]
        out_of_order = {
            i: {"at": ["status changes must be in time order"]}
            for i in range(1, len(history))
            if history[i].at < history[i - 1].at
        }
        if out_of_order:
            errors["history"] = out_of_order
        provision: Provision | None = data.get("provision")
        if provision is not None and provision.type not in (None, data["decision"]):
            errors["provision"] = {"type": ["the root provision's type must equal decision"]}
        bases: list[PolicyBasis] = data["policy_basis"]
        if not bases:
            errors["policy_basis"] = ["give at least one policy basis (FHIR R4 requires one)"]
        elif sum(b.code is not None for b in bases) > 1 or sum(b.code is None for b in bases) > 1:
            errors["policy_basis"] = ["give at most one coded policy and one policy document"]
        if data.get("source") is not None and data.get("source_attachment") is not None:
            errors["source_attachment"] = [
                "give the source as a reference or an attachment, not both"
            ]
        if data["consent_kind"] is ConsentKind.RECORDING and not (provision and provision.actions):
            errors["provision"] = {
                "actions": ["a recording consent names its actions (collect, use)"]
            }
        is_treatment = data["consent_kind"] is ConsentKind.TREATMENT
        if is_treatment and data.get("intervention") is None:
            errors["intervention"] = ["a treatment permission names its intervention"]
        if not is_treatment and data.get("intervention") is not None:
            errors["intervention"] = ["only a treatment permission names an intervention"]
        if errors:
            raise ValidationError(errors)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> ConsentRecord:
        data.pop("kind")
        root: Provision = data.pop("provision") or Provision()
        data["provision"] = replace(root, type=data["decision"])
        data["kind"] = data.pop("consent_kind")
        for name in ("grantees", "history", "verification", "categories"):
            data[name] = tuple(data[name])
        data["categories"] = tuple(
            canonical_coding(c, CODE_SYSTEM_ALIASES) for c in data["categories"]
        )
        # Normal form (what the FHIR readers give back): the policy document before the coded policy.
        data["policy_basis"] = tuple(sorted(data["policy_basis"], key=lambda b: b.code is not None))
        return ConsentRecord(**data)


class ConsentRevocationSchema(StrictSchema):
    """``{kind: "consent-revocation", consent: "system|value", at, by, reason}``."""

    kind = fields.String(required=True, validate=validate.Equal(RECORD_KIND_REVOCATION))
    consent = IdentifierField(required=True)
    at = AwareDateTime(required=True)
    by = fields.Nested(RefSchema, load_default=None)
    reason = fields.Nested(CodingSchema, load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> ConsentRevocation:
        data.pop("kind")
        return ConsentRevocation(**data)


#: Built once and reused: building a marshmallow schema costs more than loading a record with it,
#: and loading keeps no state in the schema.
_CONSENT_SCHEMA = ConsentRecordSchema()
_REVOCATION_SCHEMA = ConsentRevocationSchema()


def load_consent(data: object, *, prefix: str = "") -> ConsentRecord:
    """Our JSON form → :class:`ConsentRecord`; :class:`InputError` with one issue per field path.
    Provisions nested deeper than :data:`MAX_PROVISION_DEPTH` are refused before anything else."""
    if isinstance(data, Mapping):
        _check_depth(data.get("provision"), prefix)
    record: ConsentRecord = load_or_raise_fast(_CONSENT_SCHEMA, data, prefix=prefix)
    return record


def _check_depth(root: object, prefix: str) -> None:
    """Refuse provisions nested deeper than :data:`MAX_PROVISION_DEPTH` below the root provision,
    naming the first one too deep; iteratively, so that no nesting can exhaust the stack (the
    loaders recurse once per level). Anything malformed is left to the schema to word."""
    if not isinstance(root, Mapping):
        return
    pending: list[tuple[Mapping[str, Any], str, int]] = [(root, "provision", 0)]
    while pending:
        node, path, depth = pending.pop()
        children = node.get("provisions")
        if not isinstance(children, list):
            continue
        for i, child in enumerate(children):
            if not isinstance(child, Mapping):
                continue
            child_path = f"{path}.provisions.{i}"
            if depth + 1 > MAX_PROVISION_DEPTH:
                where = ".".join(p for p in (prefix, child_path) if p)
                message = f"provisions nested deeper than {MAX_PROVISION_DEPTH} levels (the limit)"
                raise InputError.from_issues([Issue(path=where, message=message)])
            pending.append((child, child_path, depth + 1))


def load_revocation(
    data: object,
    *,
    known_consents: Iterable[ConsentRecord | Identifier | str],
    prefix: str = "",
) -> ConsentRevocation:
    """Our JSON form → :class:`ConsentRevocation`, refusing one for a consent not in
    ``known_consents``: consent records, their identifiers (or ``system|value`` text), or a
    mapping keyed by identifier."""
    revocation: ConsentRevocation = load_or_raise_fast(_REVOCATION_SCHEMA, data, prefix=prefix)
    found = isinstance(known_consents, (Set, Mapping)) and revocation.consent in known_consents
    if not found and revocation.consent not in _known_identifiers(known_consents):
        path = ".".join(p for p in (prefix, "consent") if p)
        raise InputError.from_issues([Issue(path=path, message="revocation of an unknown consent")])
    return revocation


def _known_identifiers(items: Iterable[object]) -> set[Identifier]:
    known: set[Identifier] = set()
    for n, item in enumerate(items):
        if isinstance(item, ConsentRecord):
            known.add(item.id)
        elif isinstance(item, Identifier):
            known.add(item)
        elif isinstance(item, str):
            known.add(Identifier.parse(item, path=f"known_consents.{n}"))
        else:
            message = "expected a consent record, an Identifier or system|value text"
            raise InputError.from_issues([Issue(path=f"known_consents.{n}", message=message)])
    return known


def load_consent_records(
    items: Sequence[object], *, known: Mapping[Identifier, ConsentRecord] | None = None
) -> list[ConsentRecord]:
    """Load a list of consents and revocations; each revocation is applied to its consent (from
    this list, or from ``known``). Order in the list does not matter: the consents are loaded first,
    then the revocations are applied in the order of their ``at``. Returns the consents of the list
    and those of ``known`` that a revocation changed, in first-seen order. Errors are prefixed with
    the item's index."""
    records: dict[Identifier, ConsentRecord] = dict(known or {})
    touched: list[Identifier] = []
    revocation_items: list[tuple[str, object]] = []
    for index, item in enumerate(items):
        prefix = str(index)
        kind = item.get("kind") if isinstance(item, Mapping) else None
        if kind == RECORD_KIND_REVOCATION:
            revocation_items.append((prefix, item))
            continue
        record = load_consent(item, prefix=prefix)
        if record.id in records:
            message = "a consent with this id was given before"
            raise InputError.from_issues([Issue(path=f"{prefix}.id", message=message)])
        records[record.id] = record
        touched.append(record.id)
    revocations = [
        (prefix, load_revocation(item, known_consents=records.keys(), prefix=prefix))
        for prefix, item in revocation_items
    ]
    for prefix, revocation in sorted(revocations, key=lambda pair: pair[1].at):
        try:
            records[revocation.consent] = apply_revocation(records[revocation.consent], revocation)
        except InputError as exc:
            raise _prefixed(exc, prefix) from None
        if revocation.consent not in touched:
            touched.append(revocation.consent)
    return [records[i] for i in touched]


def _prefixed(exc: InputError, prefix: str) -> InputError:
    issues = [Issue(path=f"{prefix}.{i.path}", message=i.message) for i in exc.issues]
    return InputError.from_issues(issues)


# --- dump: domain → our JSON form (load(dump(r)) == r) ---------------------------------------------


def _time(value: datetime) -> str:
    return value.isoformat()


def _coding(coding: Coding) -> dict[str, Any]:
    return coding.to_fhir()


def _period(period: Period) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if period.start is not None:
        out["start"] = _time(period.start)
    if period.end is not None:
        out["end"] = _time(period.end)
    return out


def _compact(items: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in items.items() if v is not None and v != [] and v != {}}


def _provision(p: Provision, *, root: bool) -> dict[str, Any]:
    return _compact(
        {
            "type": None if root or p.type is None else p.type.value,
            "period": None if root or p.period is None else _period(p.period),
            "actors": [
                {"role": _coding(a.role), "reference": dump_ref(a.reference)} for a in p.actors
            ],
            "actions": [_coding(c) for c in p.actions],
            "security_labels": [_coding(c) for c in p.security_labels],
            "purposes": [_coding(c) for c in p.purposes],
            "classes": [_coding(c) for c in p.classes],
            "codes": [_coding(c) for c in p.codes],
            "data_period": None if p.data_period is None else _period(p.data_period),
            "data": [
                {"meaning": d.meaning.value, "reference": dump_ref(d.reference)} for d in p.data
            ],
            "provisions": [_provision(c, root=False) for c in p.provisions],
        }
    )


def dump_consent(record: ConsentRecord) -> dict[str, Any]:
    """:class:`ConsentRecord` → our JSON form (``load_consent(dump_consent(r)) == r``)."""
    att = record.source_attachment
    return _compact(
        {
            "kind": RECORD_KIND_CONSENT,
            "id": str(record.id),
            "consent_kind": record.kind.value,
            "patient": dump_ref(record.patient),
            "status": record.status.value,
            "decision": record.decision.value,
            "date": _time(record.date),
            "grantor": None if record.grantor is None else dump_ref(record.grantor),
            "grantees": [dump_ref(g) for g in record.grantees],
            "manager": None if record.manager is None else dump_ref(record.manager),
            "controller": None if record.controller is None else dump_ref(record.controller),
            "period": None if record.period is None else _period(record.period),
            "history": [
                _compact(
                    {
                        "status": h.status.value,
                        "at": _time(h.at),
                        "by": None if h.by is None else dump_ref(h.by),
                        "reason": None if h.reason is None else _coding(h.reason),
                    }
                )
                for h in record.history
            ],
            "verification": [
                _compact(
                    {
                        "method": v.method.value,
                        "verified_at": _time(v.verified_at),
                        "witness": None if v.witness is None else dump_ref(v.witness),
                        "verified_with": None
                        if v.verified_with is None
                        else dump_ref(v.verified_with),
                    }
                )
                for v in record.verification
            ],
            "source": None if record.source is None else dump_ref(record.source),
            "source_attachment": None
            if att is None
            else _compact(
                {
                    "content_type": att.content_type,
                    "url": att.url,
                    "title": att.title,
                    "data": att.data,
                    "creation": None if att.creation is None else _time(att.creation),
                }
            ),
            "policy_basis": [
                _compact(
                    {
                        "uri": b.uri,
                        "code": None if b.code is None else _coding(b.code),
                        "authority": b.authority,
                    }
                )
                for b in record.policy_basis
            ],
            "categories": [_coding(c) for c in record.categories],
            "intervention": None if record.intervention is None else _coding(record.intervention),
            "provision": _provision(record.provision, root=True) or None,
        }
    )


def dump_revocation(revocation: ConsentRevocation) -> dict[str, Any]:
    """:class:`ConsentRevocation` → our JSON form."""
    return _compact(
        {
            "kind": RECORD_KIND_REVOCATION,
            "consent": str(revocation.consent),
            "at": _time(revocation.at),
            "by": None if revocation.by is None else dump_ref(revocation.by),
            "reason": None if revocation.reason is None else _coding(revocation.reason),
        }
    )
