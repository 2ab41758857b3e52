"""Building blocks every record schema shares: strict base schema, identifiers, references, times.

Every schema rejects unknown fields (OWASP API3, mass assignment) and reports errors keyed by field
path; :func:`load_or_raise` turns marshmallow's messages into one :class:`~fhir_alliance.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validates_schema

from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Coding, Identifier, Ref

__all__ = [
    "DEFAULT_FUTURE_TOLERANCE",
    "AwareDateTime",
    "CodingSchema",
    "IdentifierField",
    "RefSchema",
    "StrictSchema",
    "json_number",
    "load_or_raise",
    "not_blank",
    "offset_problem",
]

T = TypeVar("T")

#: How far in the future a timestamp may lie (clock skew between devices) before it is refused.
DEFAULT_FUTURE_TOLERANCE = timedelta(minutes=5)


def json_number(value: Decimal) -> int | float:
    """A Decimal as a JSON number that keeps how it was written: ``48`` stays an integer and
    ``9.0`` stays ``9.0`` (a float's shortest form keeps one decimal place; ``9.10`` becomes 9.1)."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(value)
    return float(value)


class StrictSchema(Schema):
    """Base schema: unknown fields are an error, never silently dropped or passed through."""

    class Meta:
        unknown = RAISE


class IdentifierField(fields.Field[Identifier]):
    """An identifier written as ``"system|value"`` (the FHIR search-token form)."""

    default_error_messages = {"invalid": "expected an identifier as system|value"}  # noqa: RUF012

    def _serialize(
        self, value: Identifier | None, attr: str | None, obj: Any, **kwargs: Any
    ) -> Any:
        return None if value is None else str(value)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Identifier:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        system, sep, code = value.partition("|")
        if not sep or not system or not code:
            raise self.make_error("invalid")
        return Identifier(system=system, value=code)


#: The widest UTC offset a FHIR dateTime allows (``+14:00`` / ``-14:00``).
_MAX_OFFSET = timedelta(hours=14)


def offset_problem(value: datetime) -> str | None:
    """Why ``value``'s UTC offset cannot be written as a FHIR dateTime (``Z`` or ``±hh:mm`` up to
    14:00), or ``None``. Python reads offsets with seconds (``+05:30:15``) that FHIR refuses."""
    offset = value.utcoffset()
    if offset is None:
        return "expected a UTC offset"
    if offset % timedelta(minutes=1) or abs(offset) > _MAX_OFFSET:
        return "the UTC offset must be whole minutes from -14:00 to +14:00 (±hh:mm)"
    return None


class AwareDateTime(fields.AwareDateTime):
    """An ISO 8601 timestamp with a UTC offset FHIR can carry (``Z`` or ``±hh:mm``), not later than
    the wall clock + ``future_tolerance`` (``None`` allows any future time, e.g. for the end of a
    consent period)."""

    default_error_messages = {  # noqa: RUF012
        "future": "timestamp lies in the future beyond the allowed tolerance",
    }

    def __init__(
        self, *, future_tolerance: timedelta | None = DEFAULT_FUTURE_TOLERANCE, **kwargs: Any
    ) -> None:
        super().__init__(format="iso", **kwargs)
        self.future_tolerance = future_tolerance

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> datetime:
        result: datetime = super()._deserialize(value, attr, data, **kwargs)
        problem = offset_problem(result)
        if problem is not None:
            raise ValidationError(problem)
        if self.future_tolerance is not None and result > datetime.now(UTC) + self.future_tolerance:
            raise self.make_error("future")
        return result


def not_blank(value: str) -> None:
    """Field validator: refuse empty or whitespace-only strings (marshmallow 4 validators must raise;
    a validator returning ``False`` is ignored)."""
    if not value.strip():
        raise ValidationError("must not be blank")


class CodingSchema(StrictSchema):
    system = fields.String(required=True, validate=not_blank)
    code = fields.String(required=True, validate=not_blank)
    display = fields.String(load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Coding:
        return Coding(**data)


class RefSchema(StrictSchema):
    """A reference by literal (``"Practitioner/123"``), by identifier (``"system|value"``), or both."""

    reference = fields.String(load_default=None)
    identifier = IdentifierField(load_default=None)
    type = fields.String(load_default=None)
    display = fields.String(load_default=None)

    @validates_schema
    def _one_of(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("reference") is None and data.get("identifier") is None:
            raise ValidationError("give a reference or an identifier", field_name="_schema")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Ref:
        return Ref(**data)


def dump_ref(ref: Ref) -> dict[str, str]:
    """The JSON form :class:`RefSchema` loads: only the parts that are set."""
    out: dict[str, str] = {}
    if ref.reference is not None:
        out["reference"] = ref.reference
    if ref.identifier is not None:
        out["identifier"] = str(ref.identifier)
    if ref.type is not None:
        out["type"] = ref.type
    if ref.display is not None:
        out["display"] = ref.display
    return out


def load_or_raise(schema: Schema, data: object, *, prefix: str = "") -> Any:
    """``schema.load(data)``, raising :class:`InputError` with one issue per field path."""
    if not isinstance(data, Mapping):
        raise InputError.from_messages({"_schema": ["expected a JSON object"]}, prefix=prefix)
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise InputError.from_messages(exc.messages, prefix=prefix) from None
