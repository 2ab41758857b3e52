"""Strict JSON reading for everything a user hands us: ``map`` and ``decide`` inputs, files or stdin.

Python's ``json`` module lets the last of two equal keys win silently, parses a 5,000-digit
number only to fail later with a bare ``ValueError``, accepts ``NaN``, and raises ``RecursionError``
on deep nesting. Here every one of those is an :class:`~fhir_alliance.errors.InputError` whose issue
path says where, ``source:line:column``, and whose message says why::

    read_input(path_or_dash, *, max_bytes)                -> bytes      # over the cap: an error
    parse_json(data, *, source, max_depth=None)           -> Any        # exactly one JSON value
    parse_json_documents(data, *, source, max_depth=None) -> list[Any]  # one, or NDJSON lines

Errors are :class:`~fhir_alliance.errors.JsonInputError` (an ``InputError``) with ``line``,
``column`` and, for a duplicate key, its ``field_path`` (``responses.2``).

A UTF-8 byte-order mark is accepted and dropped. A string escaping half of a UTF-16 surrogate pair
(``"\\ud800"``) is refused, as I-JSON (RFC 7493) requires. Numbers are Python ``int`` and ``float``
as with ``json``; a number literal longer than :data:`MAX_NUMBER_CHARS` characters, or one that
overflows to infinity, is refused.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from fhir_alliance.errors import Issue, JsonInputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_NUMBER_CHARS",
    "parse_json",
    "parse_json_documents",
    "read_input",
]

#: Largest input read by default (the consents of one patient, or a batch of records, fit easily).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

#: Longest number literal accepted. A FHIR decimal has at most 18 significant digits; the margin
#: leaves room for a sign, a fraction and an exponent.
MAX_NUMBER_CHARS = 64

_WHITESPACE = " \t\r\n"


def _error(
    source: str,
    reason: str,
    *,
    line: int | None = None,
    column: int | None = None,
    field_path: str | None = None,
) -> JsonInputError:
    where = source if line is None else f"{source}:{line}:{column}"
    return JsonInputError(
        f"{where}: {reason}",
        issues=[Issue(path=where, message=reason)],
        line=line,
        column=column,
        field_path=field_path,
    )


def read_input(
    path_or_dash: str, *, max_bytes: int = DEFAULT_MAX_BYTES, stdin: BinaryIO | None = None
) -> bytes:
    """The bytes of a file, or of standard input for ``"-"``; more than ``max_bytes`` is an error
    (nothing is ever silently cut). ``stdin`` defaults to ``sys.stdin.buffer``."""
    source = "stdin" if path_or_dash == "-" else path_or_dash
    try:
        if path_or_dash == "-":
            data = (stdin or sys.stdin.buffer).read(max_bytes + 1)
        else:
            with Path(path_or_dash).open("rb") as handle:
                data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise _error(source, f"cannot read the input ({type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise _error(source, f"input larger than {max_bytes} bytes; nothing was read")
    return data


def _text(data: bytes | str, source: str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
        raise _error(source, "not UTF-8 text", line=line, column=column) from None


class _BadValue(ValueError):
    """Raised from inside the decoder's hooks; the position is found afterwards."""


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _BadValue(f"number longer than {MAX_NUMBER_CHARS} characters")
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _BadValue(f"number longer than {MAX_NUMBER_CHARS} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise _BadValue("number too large for a decimal")
    return value


def _parse_constant(literal: str) -> Any:
    raise _BadValue(f"{literal} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadValue(f"duplicate key {json.dumps(key)}")
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_parse_constant,
)


def _decode_at(text: str, index: int, source: str) -> tuple[Any, int]:
    """One JSON value starting at ``index``; returns it and the index after it."""
    try:
        value, end = _DECODER.raw_decode(text, index)
    except json.JSONDecodeError as exc:
        raise _error(source, exc.msg, line=exc.lineno, column=exc.colno) from None
    except _BadValue as exc:
        problem = _locate_bad_value(text, index)
        if problem is None:
            raise _error(source, str(exc)) from None
        line, column = _line_column(text, problem.offset)
        raise _error(
            source, problem.reason, line=line, column=column, field_path=problem.field_path
        ) from None
    except RecursionError:
        raise _error(source, "JSON nested too deeply") from None
    except ValueError as exc:  # int() of a huge literal, should the hooks ever let one pass
        raise _error(source, f"unreadable value ({type(exc).__name__})") from None
    if _SURROGATE_ESCAPE.search(text, index, end):  # rare: only then walk the text again
        problem = _locate_bad_value(text, index)
        if problem is not None:
            line, column = _line_column(text, problem.offset)
            raise _error(
                source, problem.reason, line=line, column=column, field_path=problem.field_path
            )
    return value, end


def _line_column(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def parse_json(data: bytes | str, *, source: str, max_depth: int | None = None) -> Any:
    """Exactly one JSON value (surrounding whitespace allowed), parsed strictly; with
    ``max_depth``, nesting deeper than that many arrays and objects is an error."""
    text = _text(data, source)
    value, end = _decode_at(text, _skip_whitespace(text, 0), source)
    end = _skip_whitespace(text, end)
    if end != len(text):
        line, column = _line_column(text, end)
        raise _error(source, "extra data after the JSON value", line=line, column=column)
    # A value holds no more nested containers than the text has brackets opening one (strings
    # may hold more): a text with few of them needs no walk (the usual API body, 5 to 10).
    if max_depth is not None and text.count("{") + text.count("[") > max_depth:
        _check_depth(value, max_depth, source)
    return value


def _check_depth(value: Any, max_depth: int | None, source: str) -> None:
    """Refuse ``value`` nested deeper than ``max_depth`` containers (iteratively: no recursion)."""
    if max_depth is None:
        return
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise _error(source, f"JSON nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def parse_json_documents(
    data: bytes | str, *, source: str, max_depth: int | None = None
) -> list[Any]:
    """One JSON value, or several each starting on a new line (NDJSON, JSON lines, or pretty-printed
    values one after another); an empty input gives ``[]``. ``max_depth`` as for :func:`parse_json`."""
    text = _text(data, source)
    documents: list[Any] = []
    index = _skip_whitespace(text, 0)
    while index < len(text):
        value, end = _decode_at(text, index, source)
        _check_depth(value, max_depth, source)
        documents.append(value)
        index = _skip_whitespace(text, end)
        if index < len(text) and "\n" not in text[end:index]:
            line, column = _line_column(text, index)
            raise _error(
                source,
                "extra data after a JSON value (several values must each start on a new line)",
                line=line,
                column=column,
            )
    return documents


def _skip_whitespace(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


# Finding where a hook refused a value: the C decoder cannot say, so walk the same text again.
# This runs only after an error, over text the decoder has already read up to the bad value.

_PLAIN_DECODER = json.JSONDecoder()
#: An escaped UTF-16 surrogate; whether it is half of a pair is decided on the decoded string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

#: A JSON number (RFC 8259, section 6).
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


_SURROGATE_REASON = "a string escapes half of a UTF-16 surrogate pair (not text)"


class _Problem(NamedTuple):
    offset: int
    reason: str
    field_path: str | None = None


def _locate_bad_value(text: str, start: int) -> _Problem | None:
    """The first duplicate key or refused number at or after ``start``."""
    try:
        return _walk(text, _skip_whitespace(text, start), ())[1]
    except (ValueError, RecursionError, IndexError):
        return None


def _walk(text: str, index: int, path: tuple[str, ...]) -> tuple[int, _Problem | None]:
    """Walk the value at ``index`` (at field ``path``); returns the index after it and the first
    problem found."""
    char = text[index]
    if char == "{":
        seen: set[str] = set()
        index = _skip_whitespace(text, index + 1)
        if text[index] == "}":
            return index + 1, None
        while True:
            key_start = index
            key, index = _PLAIN_DECODER.raw_decode(text, index)
            if _LONE_SURROGATE.search(key):
                return index, _Problem(key_start, _SURROGATE_REASON, ".".join(path) or None)
            if key in seen:
                reason = f"duplicate key {json.dumps(key)}"
                return index, _Problem(key_start, reason, ".".join((*path, key)))
            seen.add(key)
            index = _skip_whitespace(text, _skip_whitespace(text, index) + 1)  # past ':'
            index, problem = _walk(text, index, (*path, key))
            if problem:
                return index, problem
            index = _skip_whitespace(text, index)
            if text[index] == "}":
                return index + 1, None
            index = _skip_whitespace(text, index + 1)  # past ','
    if char == "[":
        index = _skip_whitespace(text, index + 1)
        if text[index] == "]":
            return index + 1, None
        position = 0
        while True:
            index, problem = _walk(text, index, (*path, str(position)))
            if problem:
                return index, problem
            index = _skip_whitespace(text, index)
            if text[index] == "]":
                return index + 1, None
            index = _skip_whitespace(text, index + 1)
            position += 1
    if char in "-0123456789NI":
        match = _NUMBER.match(text, index)
        if not match:
            return index, _Problem(index, "NaN and Infinity are not JSON")
        literal = match.group(0)
        if len(literal) > MAX_NUMBER_CHARS:
            reason = f"number longer than {MAX_NUMBER_CHARS} characters"
            return match.end(), _Problem(index, reason)
        if not math.isfinite(float(literal)):
            return match.end(), _Problem(index, "number too large for a decimal")
        return match.end(), None
    value, end = _PLAIN_DECODER.raw_decode(text, index)
    if isinstance(value, str) and _LONE_SURROGATE.search(value):
        return end, _Problem(index, _SURROGATE_REASON, ".".join(path) or None)
    return end, None
