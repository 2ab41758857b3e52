"""Reading a JSON request body safely: content type, size cap, strict syntax.

``json_body()`` is what every route that takes a body calls. Each refusal is an OperationOutcome
(through :class:`~fhir_alliance_service.errors.ApiError`), never a traceback:

* 415 unless ``Content-Type`` is ``application/json`` or ``application/fhir+json``;
* 413 over ``max_body_bytes`` (checked while reading, so also without ``Content-Length``);
* 400 for malformed JSON (with line and column), duplicate object keys (path named), ``NaN`` /
  ``Infinity``, numbers with absurdly many digits, nesting deeper than ``MAX_DEPTH``, or text that
  is not UTF-8.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from flask import request

from fhir_alliance.errors import Issue
from fhir_alliance_service.errors import ApiError

__all__ = ["JSON_TYPES", "MAX_DEPTH", "MAX_NUMBER_DIGITS", "json_body", "parse_json"]

JSON_TYPES: Final = frozenset({"application/json", "application/fhir+json"})
MAX_DEPTH: Final = 64
MAX_NUMBER_DIGITS: Final = 100


class _Refused(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def json_body(max_bytes: int | None = None) -> Any:
    """The request's JSON body, checked. ``max_bytes`` defaults to the service's
    ``max_body_bytes`` setting."""
    from fhir_alliance_service.app import current_service

    if request.mimetype not in JSON_TYPES:
        raise ApiError(415, "the body must be application/json or application/fhir+json")
    limit = max_bytes if max_bytes is not None else current_service().settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    """Strictly parse ``raw`` (UTF-8 JSON); :class:`ApiError` 400 naming where it is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad("", f"the body is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise _bad("", "the body is empty")
    duplicates: list[str] = []
    try:
        data = json.loads(
            text,
            object_pairs_hook=lambda pairs: _object(pairs, duplicates),
            parse_constant=_no_constant,
            parse_int=_checked_int,
            parse_float=_checked_float,
        )
    except json.JSONDecodeError as exc:
        raise _bad(
            "", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except _Refused as exc:
        raise _bad(exc.path, exc.message) from None
    except RecursionError:
        raise _bad("", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    if _nesting_depth(text) > MAX_DEPTH:
        raise _bad("", f"JSON nested deeper than {MAX_DEPTH} levels")
    if duplicates:
        raise _bad(_find_duplicate(data, "") or "", "duplicate object key")
    return data


def _bad(path: str, message: str) -> ApiError:
    return ApiError(400, message, issues=[Issue(path=path, message=message)])


class _DuplicateKeys(dict[str, Any]):
    """An object that had a key twice; remembered until the whole document is read, so that the
    error can name its full path."""

    duplicate: str = ""


def _object(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    marked = _DuplicateKeys(result)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.duplicate = key
            break
        seen.add(key)
    duplicates.append(marked.duplicate)
    return marked


def _find_duplicate(value: Any, path: str) -> str | None:
    """The path of the first duplicate key (depth-first), if any."""
    if isinstance(value, _DuplicateKeys):
        return ".".join(p for p in (path, value.duplicate) if p)
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _find_duplicate(item, ".".join(p for p in (path, str(key)) if p))
        if found is not None:
            return found
    return None


def _no_constant(name: str) -> Any:
    raise _Refused("", f"{name} is not a JSON number")


def _checked_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _Refused("", f"a number with more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _checked_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _Refused("", f"a number with more than {MAX_NUMBER_DIGITS} digits")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused("", "a number too large for a double")
    return value


_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET: Final = re.compile(r"[\[\]{}]")


def _nesting_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of valid JSON ``text``, brackets inside strings not counted."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest
