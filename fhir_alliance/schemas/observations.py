"""marshmallow schemas for the JSON form of alliance observation records (one per ``kind``).

``load_record`` reads one record, ``load_batch`` a list (checking that every repair's rupture is in
the batch or known), ``dump_record`` writes a record back (``load_record(dump_record(r)) == r``).
Errors are :class:`~fhir_alliance.errors.InputError` with one issue per field path.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

from marshmallow import ValidationError, fields, post_load, validates_schema
from marshmallow.validate import Length, Range

from fhir_alliance import terminology as t
from fhir_alliance.consent.gate import label_problem, normal_label
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.instruments.catalog import InstrumentCode, instrument
from fhir_alliance.instruments.dimensions import SCALES, Dimension, RatingScale
from fhir_alliance.instruments.ruptures import (
    MARKER_TYPE,
    RepairStrategy,
    RuptureMarker,
    RuptureType,
)
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.observations import (
    AllianceRecord,
    AutomatedRater,
    DimensionRating,
    InstrumentAdministration,
    ItemResponse,
    ObservationStatus,
    Rater,
    RaterRole,
    RepairEvent,
    RuptureEvent,
)
from fhir_alliance.schemas.common import (
    DEFAULT_FUTURE_TOLERANCE,
    AwareDateTime,
    CodingSchema,
    IdentifierField,
    RefSchema,
    StrictSchema,
    dump_ref,
    json_number,
)
from fhir_alliance.schemas.compiled import load_or_raise_fast

__all__ = [
    "KIND_ADMINISTRATION",
    "KIND_DIMENSION_RATING",
    "KIND_REPAIR",
    "KIND_RUPTURE",
    "KINDS",
    "batch_issues",
    "derived_labels",
    "extra_label_problem",
    "dump_record",
    "load_batch",
    "load_record",
]

KIND_ADMINISTRATION = "instrument-administration"
KIND_DIMENSION_RATING = "dimension-rating"
KIND_RUPTURE = "rupture"
KIND_REPAIR = "repair"
KINDS = frozenset({KIND_ADMINISTRATION, KIND_DIMENSION_RATING, KIND_RUPTURE, KIND_REPAIR})

_TEXT_LIMIT = 200
_NARRATIVE_LIMIT = 20_000


#: Integers below this magnitude take the direct route in :class:`StrictDecimal`; larger ones go
#: through ``fields.Decimal`` (its ``str()`` refuses integers of more than 4,300 digits).
_DIRECT_INT = 10**18


class StrictDecimal(fields.Decimal):
    """A JSON number (not a string, not a boolean, not NaN/Infinity) read as an exact Decimal."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        # The two kinds JSON numbers arrive as, answered directly: what ``fields.Decimal`` gives
        # for them (``Decimal(str(value))``; for an int that equals ``Decimal(value)``), without
        # its four calls. Everything else (NaN, infinities, huge ints, Decimals, places, refusals)
        # takes marshmallow's own route below.
        kind = type(value)
        if self.places is None:
            if kind is int and -_DIRECT_INT < value < _DIRECT_INT:
                return Decimal(value)
            if kind is float and value - value == 0.0:  # finite: inf - inf and nan - nan are nan
                return Decimal(str(value))
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictInteger(fields.Integer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _nonblank(limit: int) -> Callable[[str], bool]:
    """Text that FHIR can carry: not blank, at most ``limit`` characters, no control characters
    other than tab and line breaks (FHIR string/markdown forbid them)."""

    def check(value: str) -> bool:
        if not value.strip() or len(value) > limit:
            raise ValidationError(f"must be 1..{limit} characters and not blank")
        if _CONTROL.search(value):
            raise ValidationError("must not contain control characters")
        return True

    return check


class AutomatedRaterSchema(StrictSchema):
    tool = fields.String(required=True, validate=_nonblank(_TEXT_LIMIT))
    version = fields.String(required=True, validate=_nonblank(_TEXT_LIMIT))
    clinician_reviewed = fields.Boolean(required=True, truthy={True}, falsy={False})
    confidence = StrictDecimal(load_default=None, validate=Range(0, 1))
    source = fields.Nested(RefSchema, load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> AutomatedRater:
        return AutomatedRater(**data)


class RaterSchema(StrictSchema):
    role = fields.Enum(RaterRole, by_value=True, required=True)
    who = fields.Nested(RefSchema, load_default=None)
    automated = fields.Nested(AutomatedRaterSchema, load_default=None)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        role = data.get("role")
        if role is None:
            return
        errors: dict[str, list[str]] = {}
        if role is RaterRole.AUTOMATED and data.get("automated") is None:
            errors["automated"] = ["required when the role is automated"]
        if role is not RaterRole.AUTOMATED and data.get("automated") is not None:
            errors["automated"] = ["only allowed when the role is automated"]
        needs_who = role in (RaterRole.THERAPIST, RaterRole.OBSERVER)
        if needs_who and data.get("who") is None:
            errors["who"] = ["required for a therapist or observer rater"]
        if not needs_who and data.get("who") is not None:
            errors["who"] = ["not allowed for a client (the record's patient) or automated rater"]
        if errors:
            raise ValidationError(errors)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Rater:
        return Rater(**data)


def derived_labels(*, narrative: bool, automated: bool) -> list[tuple[str, str]]:
    """The security labels the mapping gives a record itself: R and BH; PSYTHPN when it has a
    narrative; AIAST when its rater is automated. ``security_labels`` holds only the others."""
    labels = [t.LABEL_RESTRICTED, t.LABEL_BEHAVIORAL_HEALTH]
    if narrative:
        labels.append(t.LABEL_PSYCHOTHERAPY_NOTE)
    if automated:
        labels.append(t.LABEL_AI_ASSISTED)
    return labels


#: v3-Confidentiality codes below the R the mapping gives every record: one beside R would let a
#: consent that permits only such data (a provision applies when the resource carries any of its
#: labels) match the record, so a record may not carry one.
_BELOW_RESTRICTED: Final = frozenset(
    (t.V3_CONFIDENTIALITY, code) for code in t.CONFIDENTIALITY_CODES - {"R", "V"}
)
CONFIDENTIALITY_BELOW_RESTRICTED = (
    "a confidentiality below R (restricted), which the mapping gives every record: it would let "
    "a consent for less restricted data match"
)


def extra_label_problem(system: str, code: str) -> str | None:
    """Why ``(system, code)`` (system already normalised) cannot be one of a record's
    ``security_labels``: a label the consent engine cannot read, or a confidentiality below R."""
    problem = label_problem(system, code)
    if problem is None and (system, code) in _BELOW_RESTRICTED:
        return CONFIDENTIALITY_BELOW_RESTRICTED
    return problem


class SecurityLabelSchema(CodingSchema):
    """A security label beyond the derived ones (``SUD``): its system normalised (OIDs of the HL7
    v3 label systems become their URIs); a code of those systems the library does not know is
    refused, as the consent gate would refuse it (it must never be taken for no label), and so
    is a confidentiality below R (:func:`extra_label_problem`)."""

    @validates_schema
    def _readable(self, data: dict[str, Any], **kwargs: Any) -> None:
        problem = extra_label_problem(normal_label(data["system"]), data["code"])
        if problem is not None:
            raise ValidationError(problem)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Coding:
        return Coding(**{**data, "system": normal_label(data["system"])})


class _RecordSchema(StrictSchema):
    """Fields every record kind has: identity, context, rater, time and status."""

    KIND = ""

    kind = fields.String(required=True)
    id = IdentifierField(required=True)
    patient = fields.Nested(RefSchema, required=True)
    rater = fields.Nested(RaterSchema, required=True)
    effective = AwareDateTime(required=True)
    counterpart = fields.Nested(RefSchema, load_default=None)
    encounter = fields.Nested(RefSchema, load_default=None)
    questionnaire_response = fields.Nested(RefSchema, load_default=None)
    status = fields.Enum(ObservationStatus, by_value=True, load_default=ObservationStatus.FINAL)
    security_labels = fields.List(fields.Nested(SecurityLabelSchema), load_default=list)

    def __init__(self, *, future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE) -> None:
        super().__init__()
        field = self.fields["effective"]
        assert isinstance(field, AwareDateTime)
        field.future_tolerance = future_tolerance

    @validates_schema
    def _kind(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("kind") != self.KIND:
            raise ValidationError(f"expected {self.KIND!r}", field_name="kind")

    @validates_schema
    def _labels_once(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Each label once, none the mapping derives anyway: the record reads back the same."""
        rater = data.get("rater")
        seen = set(
            derived_labels(
                narrative=data.get("narrative") is not None,
                automated=isinstance(rater, Rater) and rater.role is RaterRole.AUTOMATED,
            )
        )
        errors: dict[int, list[str]] = {}
        for i, label in enumerate(data.get("security_labels") or ()):
            key = (label.system, label.code)
            if key in seen:
                errors[i] = ["given twice, or a label the mapping gives the record anyway"]
            seen.add(key)
        if errors:
            raise ValidationError({"security_labels": errors})

    @staticmethod
    def _record_fields(data: dict[str, Any]) -> dict[str, Any]:
        """What the record class takes: ``kind`` left out, the labels as a tuple."""
        data.pop("kind")
        data["security_labels"] = tuple(data["security_labels"])
        return data


class InstrumentAdministrationSchema(_RecordSchema):
    KIND = KIND_ADMINISTRATION

    instrument = fields.Enum(InstrumentCode, by_value=True, required=True)
    #: Item number (as a string key) → answer.
    responses = fields.Dict(keys=fields.String(), values=StrictDecimal(), required=True)
    #: Must be true to submit an administration with unanswered items.
    declared_partial = fields.Boolean(
        data_key="partial", load_default=False, truthy={True}, falsy={False}
    )

    @validates_schema
    def _responses(self, data: dict[str, Any], **kwargs: Any) -> None:
        code, responses = data.get("instrument"), data.get("responses")
        if code is None or responses is None:
            return
        inst = instrument(code)
        specs = inst.items_by_key
        errors: dict[str, list[str]] = {}
        items_answered = False
        for key, value in responses.items():
            spec = specs.get(key)  # keys are item numbers written canonically: "7", not "07"
            if spec is None:
                errors[key] = [f"{code.value} has no item {key!r}; items are 1..{len(inst.items)}"]
            else:
                items_answered = True
                if not spec.accepts(value):
                    grid = "an integer" if spec.integral else "a number with at most one decimal"
                    errors[key] = [f"must be {grid} in {spec.minimum}..{spec.maximum}"]
        # An answer counts when its key is a number, even one the instrument lacks (already an
        # error above): then "at least one item" is not said on top of it.
        answered = items_answered or any(
            k.isascii() and k.isdigit() and str(int(k)) == k for k in responses
        )
        missing = [n for k, n in inst.item_keys if k not in responses]
        if not answered:
            errors.setdefault("_schema", []).append("at least one item must be answered")
        elif missing and not data.get("declared_partial"):
            for n in missing:
                errors[str(n)] = ["missing; set partial: true to submit a partial administration"]
        if errors:
            raise ValidationError({"responses": errors})
        role = data["rater"].role if isinstance(data.get("rater"), Rater) else None
        if role is not None:
            allowed = (
                {RaterRole.CLIENT, RaterRole.AUTOMATED}
                if inst.client_rated
                else {RaterRole.THERAPIST, RaterRole.AUTOMATED}
            )
            if role not in allowed:
                raise ValidationError(
                    {"rater": {"role": [f"{code.value} is not rated by a {role.value}"]}}
                )

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> InstrumentAdministration:
        self._record_fields(data)
        data.pop("declared_partial")
        responses = sorted(
            (ItemResponse(int(k), v) for k, v in data.pop("responses").items()),
            key=lambda r: r.number,
        )
        return InstrumentAdministration(responses=tuple(responses), **data)


class DimensionRatingSchema(_RecordSchema):
    KIND = KIND_DIMENSION_RATING

    dimension = fields.Enum(Dimension, by_value=True, required=True)
    scale = fields.Enum(RatingScale, by_value=True, required=True)
    value = StrictDecimal(required=True)

    @validates_schema
    def _on_scale(self, data: dict[str, Any], **kwargs: Any) -> None:
        scale, value = data.get("scale"), data.get("value")
        if scale is None or value is None:
            return
        spec = SCALES[scale]
        if not spec.accepts(value):
            raise ValidationError(
                f"not a value of scale {scale.value} ({spec.minimum}..{spec.maximum}, step {spec.step})",
                field_name="value",
            )

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> DimensionRating:
        return DimensionRating(**self._record_fields(data))


_ONE_TO_FIVE = Range(1, 5)


class RuptureEventSchema(_RecordSchema):
    KIND = KIND_RUPTURE

    rupture_type = fields.Enum(RuptureType, by_value=True, required=True)
    tension = StrictInteger(required=True, validate=_ONE_TO_FIVE)
    markers = fields.List(fields.Enum(RuptureMarker, by_value=True), load_default=list)
    repaired = fields.Boolean(load_default=None, truthy={True}, falsy={False})
    repair_strategies = fields.List(fields.Enum(RepairStrategy, by_value=True), load_default=list)
    resolution = StrictInteger(load_default=None, validate=_ONE_TO_FIVE)
    narrative = fields.String(load_default=None, validate=_nonblank(_NARRATIVE_LIMIT))

    @validates_schema
    def _coherent(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, Any] = {}
        kind = data.get("rupture_type")
        marker_errors = {
            str(i): [f"a {MARKER_TYPE[m]} marker cannot mark a {kind} rupture"]
            for i, m in enumerate(data.get("markers") or [])
            if kind is not None and MARKER_TYPE[m] not in (None, kind)
        }
        if marker_errors:
            errors["markers"] = marker_errors
        if len(set(data.get("markers") or [])) != len(data.get("markers") or []):
            errors.setdefault("markers", {})["_schema"] = ["markers repeat"]
        if data.get("repair_strategies") and data.get("repaired") is not True:
            errors["repair_strategies"] = ["only given when repaired is true"]
        if errors:
            raise ValidationError(errors)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> RuptureEvent:
        self._record_fields(data)
        data["markers"] = tuple(data["markers"])
        data["repair_strategies"] = tuple(data["repair_strategies"])
        return RuptureEvent(**data)


class RepairEventSchema(_RecordSchema):
    KIND = KIND_REPAIR

    rupture = IdentifierField(required=True)
    strategies = fields.List(
        fields.Enum(RepairStrategy, by_value=True), required=True, validate=Length(min=1)
    )
    resolution = StrictInteger(load_default=None, validate=_ONE_TO_FIVE)
    narrative = fields.String(load_default=None, validate=_nonblank(_NARRATIVE_LIMIT))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> RepairEvent:
        self._record_fields(data)
        data["strategies"] = tuple(data["strategies"])
        return RepairEvent(**data)


_SCHEMAS: dict[str, type[_RecordSchema]] = {
    KIND_ADMINISTRATION: InstrumentAdministrationSchema,
    KIND_DIMENSION_RATING: DimensionRatingSchema,
    KIND_RUPTURE: RuptureEventSchema,
    KIND_REPAIR: RepairEventSchema,
}


def load_record(
    data: object,
    *,
    prefix: str = "",
    future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE,
) -> AllianceRecord:
    """One record of any observation kind from its JSON form; raises :class:`InputError`."""
    kind = data.get("kind") if type(data) is dict or isinstance(data, Mapping) else None
    if not isinstance(kind, str) or kind not in _SCHEMAS:
        path = ".".join(p for p in (prefix, "kind") if p)
        message = f"unknown record kind; expected one of {', '.join(sorted(KINDS))}"
        raise InputError(message, issues=[Issue(path=path, message=message)])
    schema = _schema(kind, future_tolerance)
    record: AllianceRecord = load_or_raise_fast(schema, data, prefix=prefix)
    return record


@lru_cache(maxsize=64)
def _schema(kind: str, future_tolerance: timedelta) -> _RecordSchema:
    """One schema per kind and tolerance, built once: building a marshmallow schema costs more than
    loading a record with it, and loading keeps no state in the schema (the clock is read per load)."""
    return _SCHEMAS[kind](future_tolerance=future_tolerance)


def load_batch(
    items: Sequence[object],
    *,
    known_ruptures: Collection[Identifier] = (),
    future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE,
) -> list[AllianceRecord]:
    """A list of records. Every repair must name a rupture that is in the batch (anywhere in it) or
    in ``known_ruptures`` (e.g. already stored). All errors of all items are reported together, with
    paths prefixed by the item's index (``3.responses.2``)."""
    records: list[AllianceRecord | None] = []
    issues: list[Issue] = []
    for index, item in enumerate(items):
        try:
            records.append(load_record(item, prefix=str(index), future_tolerance=future_tolerance))
        except InputError as exc:
            records.append(None)
            issues.extend(exc.issues)
    issues += batch_issues(
        [(str(i), r) for i, r in enumerate(records) if r is not None], known_ruptures=known_ruptures
    )
    if issues:
        raise InputError.from_issues(issues)
    return [r for r in records if r is not None]


def batch_issues(
    labelled: Sequence[tuple[str, AllianceRecord]], *, known_ruptures: Collection[Identifier] = ()
) -> list[Issue]:
    """Rules across the records of one batch: every repair's rupture is in the batch or in
    ``known_ruptures``, and no record id appears twice. ``labelled`` pairs each record with the
    label its error paths start with."""
    ruptures = {r.id for _, r in labelled if isinstance(r, RuptureEvent)} | set(known_ruptures)
    id_counts = Counter(r.id for _, r in labelled)
    issues = [
        Issue(path=f"{label}.rupture", message="names a rupture not in the batch nor known")
        for label, r in labelled
        if isinstance(r, RepairEvent) and r.rupture not in ruptures
    ]
    issues += [
        Issue(path=f"{label}.id", message="the same record id appears twice")
        for label, r in labelled
        if id_counts[r.id] > 1
    ]
    return issues


# --- dump -------------------------------------------------------------------------------------


_num = json_number


def _ref(ref: Ref | None) -> dict[str, str] | None:
    return None if ref is None else dump_ref(ref)


def _rater(rater: Rater) -> dict[str, Any]:
    out: dict[str, Any] = {"role": rater.role.value}
    if rater.who is not None:
        out["who"] = _ref(rater.who)
    if rater.automated is not None:
        auto = rater.automated
        out["automated"] = {
            "tool": auto.tool,
            "version": auto.version,
            "clinician_reviewed": auto.clinician_reviewed,
        }
        if auto.confidence is not None:
            out["automated"]["confidence"] = _num(auto.confidence)
        if auto.source is not None:
            out["automated"]["source"] = _ref(auto.source)
    return out


def dump_record(record: AllianceRecord) -> dict[str, Any]:
    """A record's JSON form (what :func:`load_record` reads)."""
    out: dict[str, Any] = {"kind": "", "id": str(record.id)}
    if isinstance(record, InstrumentAdministration):
        out["kind"] = KIND_ADMINISTRATION
        out["instrument"] = record.instrument.value
    elif isinstance(record, DimensionRating):
        out["kind"] = KIND_DIMENSION_RATING
        out.update(dimension=record.dimension.value, scale=record.scale.value)
        out["value"] = _num(record.value)
    elif isinstance(record, RuptureEvent):
        out["kind"] = KIND_RUPTURE
        out.update(rupture_type=record.rupture_type.value, tension=record.tension)
        if record.markers:
            out["markers"] = [m.value for m in record.markers]
        if record.repaired is not None:
            out["repaired"] = record.repaired
        if record.repair_strategies:
            out["repair_strategies"] = [s.value for s in record.repair_strategies]
        if record.resolution is not None:
            out["resolution"] = record.resolution
    else:
        out["kind"] = KIND_REPAIR
        out["rupture"] = str(record.rupture)
        out["strategies"] = [s.value for s in record.strategies]
        if record.resolution is not None:
            out["resolution"] = record.resolution
    out["patient"] = _ref(record.patient)
    out["rater"] = _rater(record.rater)
    out["effective"] = record.effective.isoformat()
    for name in ("counterpart", "encounter", "questionnaire_response"):
        value = _ref(getattr(record, name))
        if value is not None:
            out[name] = value
    if record.status is not ObservationStatus.FINAL:
        out["status"] = record.status.value
    if isinstance(record, InstrumentAdministration):
        out["responses"] = {str(r.number): _num(r.value) for r in record.responses}
        if len(record.responses) < len(instrument(record.instrument).items):
            out["partial"] = True
    if isinstance(record, RuptureEvent | RepairEvent) and record.narrative is not None:
        out["narrative"] = record.narrative
    if record.security_labels:
        out["security_labels"] = [label.to_fhir() for label in record.security_labels]
    return out
