"""Reading a JSON request body safely: content type, size cap, strict syntax.

``json_body()`` is what every route that takes a body calls. Each refusal is an OperationOutcome
(through :class:`~fhir_alliance_service.errors.ApiError`), never a traceback:

* 415 unless ``Content-Type`` is ``application/json`` or ``application/fhir+json``;
* 413 over ``max_body_bytes`` (checked while reading, so also without ``Content-Length``);
* 400 for malformed JSON (with line and column), duplicate object keys (path named), ``NaN`` /
  ``Infinity``, numbers with absurdly many digits, nesting deeper than ``MAX_DEPTH``, or text that
  is not UTF-8. The syntax checks are the library's strict reader (``fhir_alliance.jsonio``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any, Final

from flask import request
from werkzeug.wsgi import get_content_length

from fhir_alliance import jsonio
from fhir_alliance.errors import InputError, Issue
from fhir_alliance_service.errors import ApiError

__all__ = ["JSON_TYPES", "MAX_DEPTH", "json_body", "parse_json", "single_query_args"]

JSON_TYPES: Final = frozenset({"application/json", "application/fhir+json"})
#: Deepest JSON nesting a body may have (arrays and objects): a hard cap against hostile nesting,
#: well below what any reader of ours could not handle (Python's recursion limit, orjson's 254),
#: and above what a consent at the provision limit needs (32 levels below the root: 70 levels in
#: our JSON form inside a list, about 76 as a FHIR R4 Consent in a CDS Hooks prefetch Bundle;
#: each provision level costs two, its object and its ``provisions`` array).
MAX_DEPTH: Final = 128
_SOURCE: Final = "body"
_CHUNK: Final = 1 << 16


def json_body(max_bytes: int | None = None) -> Any:
    """The request's JSON body, checked. ``max_bytes`` defaults to the service's
    ``max_body_bytes`` setting."""
    from fhir_alliance_service.app import current_service

    if request.mimetype not in JSON_TYPES:
        raise ApiError(415, "the body must be application/json or application/fhir+json")
    environ = request.environ
    limit = max_bytes if max_bytes is not None else current_service().settings.max_body_bytes
    length = get_content_length(environ)  # what ``request.content_length`` gives, read directly
    if length is not None and length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    # A server that ends the input stream at the body's end itself (gunicorn: Content-Length or
    # chunked) is read directly, within our limit (the app's MAX_CONTENT_LENGTH is the same
    # setting); otherwise through werkzeug's stream, which ends it at Content-Length.
    direct = max_bytes is None and environ.get("wsgi.input_terminated")
    stream = environ["wsgi.input"] if direct else request.stream
    return parse_json(_read_capped(stream, limit, length))


def _read_capped(stream: IO[bytes], limit: int, length: int | None) -> bytes:
    """The whole body, or 413 as soon as it passes ``limit`` (streams may return short reads).
    With a ``Content-Length`` within the limit (``length``), one read of that many bytes when
    the stream gives them all at once (it holds no more: the server or werkzeug ends it there)."""
    chunks: list[bytes] = []
    size = 0
    if length is not None:
        first = stream.read(length)
        if len(first) == length:
            return first
        chunks.append(first)
        size = len(first)
    while chunk := stream.read(min(_CHUNK, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """Strictly parse ``raw`` (UTF-8 JSON) with the library's reader; :class:`ApiError` 400 saying
    where it is wrong (line and column; the field path of a duplicate key)."""
    if not raw.strip():
        raise _bad("", "the body is empty")
    try:
        data = jsonio.parse_json(raw, source=_SOURCE, max_depth=MAX_DEPTH)
    except InputError as exc:
        issue = exc.issues[0] if exc.issues else None
        reason = issue.message if issue else exc.message
        where = _position(issue.path if issue else "")
        path = _duplicate_path(raw) if reason.startswith("duplicate key") else ""
        raise _bad(path or "", f"{reason}{where}") from None
    return data


def _bad(path: str, message: str) -> ApiError:
    return ApiError(400, message, issues=[Issue(path=path, message=message)])


def _position(location: str) -> str:
    """``body:3:7`` (jsonio's issue path) → `` at line 3 column 7``."""
    _, _, position = location.partition(":")
    line, _, column = position.partition(":")
    return f" at line {line} column {column}" if line and column else ""


def _duplicate_path(raw: bytes) -> str | None:
    """The dotted field path of the first duplicate key (only called after jsonio found one)."""
    try:
        tree = json.loads(raw, object_pairs_hook=_DuplicateMarker.from_pairs)
    except (ValueError, RecursionError):
        return None
    return _find_duplicate(tree, "")


class _DuplicateMarker(dict[str, Any]):
    """An object that had a key twice, remembered so that the full path can be named."""

    duplicate: str = ""

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) == len(pairs):
            return result
        marked = cls(result)
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                marked.duplicate = key
                break
            seen.add(key)
        return marked


def _find_duplicate(value: Any, path: str) -> str | None:
    """The path of the first duplicate key (depth-first), if any."""
    if isinstance(value, _DuplicateMarker):
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


def single_query_args(messages: Mapping[str, str] | None = None) -> dict[str, str]:
    """The request's query parameters, each given once; a parameter given twice is a 422 at its
    name (``messages`` may word why it may not repeat), since keeping its first value alone, as
    ``to_dict()`` does, would answer another question than the one asked."""
    words = messages or {}
    issues = [
        Issue(path=name, message=words.get(name, f"give {name} once"))
        for name, values in request.args.lists()
        if len(values) > 1
    ]
    if issues:
        raise InputError(f"invalid input at {', '.join(i.path for i in issues)}", issues=issues)
    return request.args.to_dict()
