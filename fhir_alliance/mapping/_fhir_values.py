"""Small pure helpers shared by the observation mappings: references, instants, numbers, and
readers that check a FHIR JSON value's type and raise :class:`MappingError` naming the element."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_alliance.errors import InputError, Issue, MappingError
from fhir_alliance.mapping.registry import FHIR_VERSIONS
from fhir_alliance.model.common import Identifier, Ref
from fhir_alliance.schemas.common import json_number, offset_problem

__all__ = [
    "MAX_DIGITS",
    "check_elements",
    "check_version",
    "digits_value",
    "fhir_number",
    "identifier_from_fhir",
    "obj",
    "opt_str",
    "read_decimal",
    "read_instant",
    "read_list",
    "ref_from_fhir",
    "ref_to_fhir",
    "req_str",
]


def check_version(version: str) -> str:
    if version not in FHIR_VERSIONS:
        message = f"unsupported FHIR version; expected one of {', '.join(FHIR_VERSIONS)}"
        raise InputError(message, issues=[Issue(path="version", message=message)])
    return version


def fhir_number(value: Decimal) -> int | float:
    """A Decimal as a JSON number, precision kept: integers stay integers (``48``), ``9.0`` stays
    ``9.0`` (see :func:`fhir_alliance.schemas.common.json_number`)."""
    return json_number(value)


def ref_to_fhir(ref: Ref) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ref.reference is not None:
        out["reference"] = ref.reference
    if ref.type is not None:
        out["type"] = ref.type
    if ref.identifier is not None:
        out["identifier"] = ref.identifier.to_fhir()
    if ref.display is not None:
        out["display"] = ref.display
    return out


# --- readers --------------------------------------------------------------------------------


def obj(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MappingError("expected a JSON object", element=path)
    return value


def check_elements(value: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    """Refuse what the reader would otherwise ignore: an element not in ``allowed`` (its
    meaning would be lost; ``implicitRules`` is never allowed) and any ``modifierExtension``
    (none is ours, and one we cannot understand may change what the rest means). Keys of
    primitive extensions (``_status``) pass."""
    for key in value:
        if not isinstance(key, str):
            raise MappingError("unexpected element", element=path)
        if key == "modifierExtension":
            if read_list(value[key], f"{path}.modifierExtension"):
                raise MappingError(
                    "unknown modifier extension", element=f"{path}.modifierExtension[0]"
                )
        elif key not in allowed and not key.startswith("_"):
            raise MappingError("not an element we can read", element=f"{path}.{key}")


def read_list(value: object, path: str, *, required: bool = False) -> list[Any]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise MappingError("expected a non-empty array", element=path)
    return value


def req_str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise MappingError("expected a non-empty string", element=path)
    return value


def opt_str(value: object, path: str) -> str | None:
    return None if value is None else req_str(value, path)


def read_decimal(value: object, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise MappingError("expected a number", element=path)
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise MappingError("expected a number", element=path) from None
    if not result.is_finite():
        raise MappingError("expected a finite number", element=path)
    return result


#: Most digits of a number read from text (an item number in a ``linkId`` or a code, an
#: attachment's size): none we read comes near, and Python refuses to make an int of more than
#: 4300 digits (a ``ValueError``, which would escape as a crash instead of a MappingError).
MAX_DIGITS = 18


def digits_value(text: str) -> int | None:
    """``text`` (ASCII digits) as an int; ``None`` when it has more than :data:`MAX_DIGITS`
    digits, so that the caller refuses it as matching nothing."""
    return int(text) if len(text) <= MAX_DIGITS else None


def read_instant(value: object, path: str) -> datetime:
    """A FHIR dateTime with time and offset (what we emit); partial dates do not fit the model.

    Strict where a wrong time could come out: a time without a UTC offset is refused, never read
    as the reader's local time (which would move it by that offset), and so is an offset FHIR
    cannot carry (seconds, beyond ±14:00). Lenient where the text names one instant only: other
    ISO 8601 spellings Python reads (no seconds ``T15:50Z``, ``+01`` for ``+01:00``, a week date)
    are read as that instant, as they are in a record's JSON form; resources read from a server
    are not refused for them. More than six fractional digits are cut to microseconds.
    """
    text = req_str(value, path)
    try:
        result = datetime.fromisoformat(text)
    except ValueError:
        raise MappingError("expected a dateTime with time and time zone", element=path) from None
    if result.tzinfo is None or "T" not in text:
        raise MappingError("expected a dateTime with time and time zone", element=path)
    problem = offset_problem(result)
    if problem is not None:
        raise MappingError(problem, element=path)
    return result


def identifier_from_fhir(value: object, path: str) -> Identifier:
    data = obj(value, path)
    return Identifier(
        system=req_str(data.get("system"), f"{path}.system"),
        value=req_str(data.get("value"), f"{path}.value"),
    )


def ref_from_fhir(value: object, path: str) -> Ref:
    data = obj(value, path)
    reference = opt_str(data.get("reference"), f"{path}.reference")
    identifier = (
        identifier_from_fhir(data["identifier"], f"{path}.identifier")
        if data.get("identifier") is not None
        else None
    )
    if reference is None and identifier is None:
        raise MappingError("a reference needs a literal reference or an identifier", element=path)
    return Ref(
        reference=reference,
        identifier=identifier,
        type=opt_str(data.get("type"), f"{path}.type"),
        display=opt_str(data.get("display"), f"{path}.display"),
    )
