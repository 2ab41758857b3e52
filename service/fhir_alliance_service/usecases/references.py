"""What the service accepts as a business identifier and as a reference, checked at intake.

The library's JSON form takes any non-empty text in these places; the service is stricter because
the values become store keys, URL path parts and FHIR search tokens:

* a **business identifier** ``system|value``: ``system`` an absolute URI, ``value`` 1-200 characters
  without spaces, quotes, ``|``, ``,``, ``\\``, ``$`` or angle brackets (a ``|`` or ``,`` would break
  the FHIR token search that finds a record again after a lost response);
* a **literal reference**: ``Type/id`` as FHIR defines it (an optional absolute base before it, an
  optional ``/_history/<version>`` after it), ``urn:uuid:…``, ``urn:oid:…`` or a ``#contained`` id;
* the **patient** of a record: ``Patient/<id>`` or a business identifier.

Messages never repeat the refused value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from fhir_alliance.errors import Issue
from fhir_alliance.model.common import Identifier, Ref

__all__ = [
    "IDENTIFIER_MESSAGE",
    "REFERENCE_MESSAGE",
    "identifier_issues",
    "patient_issues",
    "reference_issues",
    "valid_literal_reference",
]

_SYSTEM: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s|,\\'\"<>`$]{1,255}")
_VALUE: Final = re.compile(r"[^\s|,\\'\"<>`$]{1,200}")
_ID: Final = r"[A-Za-z0-9\-.]{1,64}"
_LITERAL: Final = re.compile(
    rf"(?:https?://[A-Za-z0-9\-.:%/]+/)?[A-Z][A-Za-z]{{1,63}}/{_ID}(?:/_history/{_ID})?"
    rf"|urn:uuid:[0-9a-fA-F\-]{{36}}|urn:oid:[0-2](?:\.[0-9]+)+|#{_ID}"
)
_PATIENT: Final = re.compile(rf"Patient/{_ID}")

IDENTIFIER_MESSAGE: Final = (
    "expected an identifier system|value: an absolute URI, then a value without spaces, quotes, "
    "'|' or ','"
)
REFERENCE_MESSAGE: Final = "expected a literal reference such as Type/id"


def identifier_issues(identifier: Identifier, path: str) -> list[Issue]:
    if _SYSTEM.fullmatch(identifier.system) and _VALUE.fullmatch(identifier.value):
        return []
    return [Issue(path=path, message=IDENTIFIER_MESSAGE)]


def valid_literal_reference(text: str) -> bool:
    return _LITERAL.fullmatch(text) is not None


def patient_issues(patient: Ref, path: str) -> list[Issue]:
    """The patient is named ``Patient/<id>`` and/or by a business identifier."""
    issues: list[Issue] = []
    reference = patient.reference
    # A reference that is no literal reference at all is reported by reference_issues.
    if (
        reference is not None
        and valid_literal_reference(reference)
        and not _PATIENT.fullmatch(reference)
    ):
        issues.append(Issue(f"{path}.reference", "expected a patient reference Patient/<id>"))
    if patient.identifier is not None:
        issues += identifier_issues(patient.identifier, f"{path}.identifier")
    return issues


def _at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


#: JSON's scalar types: nothing inside them to walk (checked by type first: ``isinstance`` against
#: ``Mapping`` goes through the ABC machinery for every value).
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _collect_bad_references(value: Any, path: str, issues: list[Issue]) -> None:
    """Depth-first, in document order: every ``reference`` string that is not a literal
    reference. Only objects and arrays are descended into (and their paths written out)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                if not valid_literal_reference(item):
                    issues.append(Issue(path=_at(path, key), message=REFERENCE_MESSAGE))
            elif type(item) not in _SCALARS:
                _collect_bad_references(item, _at(path, key), issues)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if type(item) not in _SCALARS:
                _collect_bad_references(item, _at(path, index), issues)


def reference_issues(payload: Mapping[str, Any], label: str) -> list[Issue]:
    """Every ``reference`` in ``payload`` (our JSON form) that is not a literal reference."""
    issues: list[Issue] = []
    _collect_bad_references(payload, label, issues)
    return issues
