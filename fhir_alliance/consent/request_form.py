"""The JSON form of a decision request and of a decision (docs/consent-decisions.md has examples).

Loading rejects unknown fields and reports errors by field path; codes may be given as full codings
or, for purposes, actions and labels, as bare codes of their usual code systems.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from marshmallow import ValidationError, fields, post_load, pre_load, validates, validates_schema

from fhir_alliance.consent.decision import (
    ACTION_MESSAGE,
    DEFAULT_ACTOR_ROLE,
    KNOWN_ACTIONS,
    KNOWN_PURPOSES,
    PURPOSE_MESSAGE,
    ConsentDecision,
    DecisionBasis,
    DecisionOutcome,
    DecisionRequest,
    RedactObligation,
    RequestActor,
    RequestedResource,
)
from fhir_alliance.consent.gate import label_problem, normal_code, normal_label
from fhir_alliance.model.common import Coding, Ref
from fhir_alliance.model.consent import Period
from fhir_alliance.schemas.common import (
    AwareDateTime,
    CodingSchema,
    RefSchema,
    StrictSchema,
    load_or_raise,
    not_blank,
)
from fhir_alliance.schemas.consent import canonical_coding
from fhir_alliance.terminology import (
    CONFIDENTIALITY_CODES,
    CONSENT_ACTION,
    PARTICIPATION_TYPE_ALIASES,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
    V3_PARTICIPATION_TYPE,
)

__all__ = [
    "ActorSchema",
    "DecisionRequestSchema",
    "ResourceSchema",
    "decision_to_json",
    "load_decision_request",
]


class _ShortCoding(fields.Field[Coding]):
    """A coding ``{system, code}`` or a bare code of ``system`` (labels: confidentiality or ActCode).
    With ``allowed``, only those ``(system, code)`` pairs load; anything else fails with
    ``unknown_message`` (an unknown code must never reach the engine as if it were a fact)."""

    default_error_messages = {"invalid": "expected a code or a {{system, code}} object"}  # noqa: RUF012

    def __init__(
        self,
        system: str | None,
        allowed: frozenset[tuple[str, str]] | None = None,
        unknown_message: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.system = system
        self.allowed = allowed
        self.unknown_message = unknown_message

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Coding:
        coding = self._coding(value)
        if self.allowed is not None and (coding.system, coding.code) not in self.allowed:
            raise ValidationError(self.unknown_message)
        return coding

    def _coding(self, value: Any) -> Coding:
        if isinstance(value, str):
            if not value.strip():
                raise self.make_error("invalid")
            if self.system is not None:
                return Coding(system=self.system, code=value)
            system = V3_CONFIDENTIALITY if value in CONFIDENTIALITY_CODES else V3_ACT_CODE
            return Coding(system=system, code=value)
        coding: Coding = CodingSchema().load(value)
        return coding


class _Label(_ShortCoding):
    """A resource's security label: a coding or a bare confidentiality or ActCode code, its
    system normalised (OIDs of the HL7 v3 label systems become their canonical URIs) and refused
    when it is a code of one of those systems the library does not know (``psy``, ``"PSY "``):
    as in :func:`~fhir_alliance.consent.gate.requested_resource`, a label must never be taken
    for no label."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(None, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Coding:
        coding = self._coding(value)
        system = normal_label(coding.system)
        problem = label_problem(system, coding.code)
        if problem is not None:
            raise ValidationError(problem)
        return coding if system == coding.system else Coding(system=system, code=coding.code)


def _codings(
    system: str | None, allowed: frozenset[tuple[str, str]] | None = None, message: str = ""
) -> fields.List[Any]:
    return fields.List(_ShortCoding(system, allowed, message), load_default=())


class ActorSchema(RefSchema):
    """An actor: a reference (``reference`` and/or ``identifier``) and an optional ``role``."""

    role = fields.Nested(CodingSchema, load_default=None)

    @validates("role")
    def _known_role(self, role: object, **kwargs: Any) -> None:
        # Provision actors match by (system, code): a role that is no v3-ParticipationType code
        # (``ircp``, ``"IRCP "``) would match no provision, so a deny naming the actor missed.
        if (
            isinstance(role, Coding)  # (a role that did not load has its own issue)
            and canonical_coding(role, PARTICIPATION_TYPE_ALIASES).system == V3_PARTICIPATION_TYPE
            and not _PARTICIPATION_CODE.fullmatch(role.code)
        ):
            raise ValidationError({"code": [ROLE_MESSAGE]})

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> RequestActor:
        # the OID or STU3 URL of v3-ParticipationType read as that code system, as consents are
        role = canonical_coding(
            data.pop("role", None) or DEFAULT_ACTOR_ROLE, PARTICIPATION_TYPE_ALIASES
        )
        return RequestActor(reference=Ref(**data), role=role)


#: A v3-ParticipationType code: upper-case letters (``IRCP``, ``PRCP``, ``DEV``).
_PARTICIPATION_CODE: Final = re.compile(r"[A-Z]+")
#: The message of the issue a misspelt v3-ParticipationType role gives.
ROLE_MESSAGE: Final = (
    "not a v3-ParticipationType code (exact case, no spaces), such as IRCP, PRCP, AUT or DEV"
)


def _literal(value: str) -> None:
    """Field validator: a literal reference as the gate reads one (no blank, no spaces at either
    end): a reference that names nothing must not make the resource look known by reference."""
    if not value or value.strip() != value:
        raise ValidationError(
            "expected a reference (a non-empty string without spaces at either end)"
        )


class _ResourceRefSchema(RefSchema):
    """A way the resource asked about is known: :class:`RefSchema` with a strict ``reference``."""

    reference = fields.String(load_default=None, validate=_literal)


class ResourceSchema(StrictSchema):
    """The one resource asked about. ``aliases`` are the other ways it is known beside
    ``reference`` (``Type/id`` with each further identifier): references as ``reference`` is,
    and only with it."""

    type = fields.String(load_default=None, validate=not_blank)
    reference = fields.Nested(_ResourceRefSchema, load_default=None)
    profiles = fields.List(fields.String(validate=not_blank), load_default=())
    codes = fields.List(fields.Nested(CodingSchema), load_default=())
    labels = fields.List(_Label(), load_default=())
    date = AwareDateTime(future_tolerance=None, load_default=None)
    refers_to = fields.List(fields.Nested(RefSchema), load_default=())
    referenced_by = fields.List(fields.Nested(RefSchema), load_default=())
    authors = fields.List(fields.Nested(RefSchema), load_default=())
    aliases = fields.List(fields.Nested(_ResourceRefSchema), load_default=())

    @validates_schema
    def _aliases_of_reference(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("aliases") and data.get("reference") is None:
            raise ValidationError(
                "aliases are further ways of the resource's reference: give reference",
                field_name="aliases",
            )

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> RequestedResource:
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        # Codes in canonical form, as the gate reads them (LOINC's OID is http://loinc.org).
        values["codes"] = tuple(normal_code(c) for c in values["codes"])
        return RequestedResource(**values)


class DecisionRequestSchema(StrictSchema):
    """``{patient, actors, at, purposes, action, categories, resource}``; ``patient`` is one reference
    or a list of the ways the same patient is known."""

    patient = fields.List(fields.Nested(RefSchema), required=True)
    actors = fields.List(fields.Nested(ActorSchema), required=True)
    at = AwareDateTime(future_tolerance=None, required=True)
    purposes = _codings(V3_ACT_REASON, KNOWN_PURPOSES, PURPOSE_MESSAGE)
    action = _ShortCoding(CONSENT_ACTION, KNOWN_ACTIONS, ACTION_MESSAGE, load_default=None)
    categories = fields.List(fields.Nested(CodingSchema), load_default=())
    resource = fields.Nested(ResourceSchema, load_default=None)
    content_classes = fields.List(fields.Nested(CodingSchema), load_default=())

    @pre_load
    def _one_patient(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("patient"), Mapping):
            return {**data, "patient": [data["patient"]]}
        return data

    @validates_schema
    def _named(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("content_classes") and data.get("resource") is not None:
            raise ValidationError(
                "content classes are for requests without a resource; give resource.type",
                field_name="content_classes",
            )
        if not data.get("patient"):
            raise ValidationError("name the patient", field_name="patient")
        if not data.get("actors"):
            raise ValidationError("name at least one actor", field_name="actors")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> DecisionRequest:
        return DecisionRequest(
            patient=tuple(data["patient"]),
            actors=tuple(data["actors"]),
            at=data["at"],
            purposes=tuple(data["purposes"]),
            action=data["action"],
            resource=data["resource"],
            categories=tuple(data["categories"]),
            content_classes=tuple(data["content_classes"]),
        )


def load_decision_request(data: object, *, at: datetime | None = None) -> DecisionRequest:
    """Our JSON request form → :class:`DecisionRequest`; ``at`` fills a missing ``at`` (the CLI
    passes the current time). Raises :class:`InputError` keyed by field path."""
    if isinstance(data, Mapping) and "at" not in data and at is not None:
        data = {**data, "at": at.isoformat()}
    request: DecisionRequest = load_or_raise(DecisionRequestSchema(), data)
    return request


# --- decisions as JSON -------------------------------------------------------------------------


def _coding(c: Coding) -> dict[str, str]:
    return {"system": c.system, "code": c.code}


def _period(p: Period) -> dict[str, str]:
    out = {}
    if p.start is not None:
        out["start"] = p.start.isoformat()
    if p.end is not None:
        out["end"] = p.end.isoformat()
    return out


def _basis(b: DecisionBasis) -> dict[str, str]:
    return {
        "consent": str(b.consent),
        "provision": b.path,
        "decision": b.decision.value,
        "consent_date": b.consent_date.isoformat(),
    }


def _obligation(o: RedactObligation) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": o.mode.value}
    if o.labels:
        out["labels"] = [_coding(c) for c in o.labels]
    if o.codes:
        out["codes"] = [_coding(c) for c in o.codes]
    if o.classes:
        out["classes"] = [_coding(c) for c in o.classes]
    if o.data_period is not None:
        out["data_period"] = _period(o.data_period)
    if o.data:
        out["data"] = [
            {
                "meaning": d.meaning.value,
                "reference": d.reference.reference or str(d.reference.identifier),
            }
            for d in o.data
        ]
    out["basis"] = [_basis(b) for b in o.basis]
    return out


def decision_to_json(decision: ConsentDecision) -> dict[str, Any]:
    """The machine form of a decision: outcome, combining rule, basis, obligations, notes, and
    for a ``no-consent`` answer its ``reasons``."""
    out: dict[str, Any] = {
        "decision": decision.outcome.value,
        "combining": decision.combining.value,
        "basis": [_basis(b) for b in decision.basis],
        "obligations": [_obligation(o) for o in decision.obligations],
        "notes": list(decision.notes),
    }
    if decision.outcome is DecisionOutcome.NO_CONSENT:
        out["reasons"] = list(decision.no_consent_reasons())
    return out
