"""Reading a type-level ``_history`` Bundle page for the pull: which resources were deleted, at
which version and when (see docs/two-way-sync.md, "Deletions"). Pure: no I/O.

A history entry is a deletion when its ``request.method`` is ``DELETE`` or its
``response.status`` is 410; its id comes from the resource, ``request.url``, ``response.location``
or ``fullUrl`` (whichever names one), its version from ``response.etag`` (or the URL's
``_history/<vid>``), its time from ``response.lastModified`` (or the resource's
``meta.lastUpdated``). Anything that is not such a Bundle raises InvalidResponseError naming the
element, never quoting content; so do URLs outside the base, and ids or versions of our type that
are not FHIR ids (``parse_location``, ``server_id``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_alliance.client.bundles import parse_location, server_id
from fhir_alliance.client.links import BaseUrl
from fhir_alliance.client.responses import version_from_etag
from fhir_alliance.errors import InvalidResponseError

__all__ = ["HistoryEntry", "history_entries"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of a history Bundle: the resource's id and version, the server's time stamp of
    that version (as written), and whether the entry records a deletion."""

    resource_id: str
    version_id: str | None
    stamp: str | None
    deleted: bool


def _status(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    head = text.strip().split(" ", 1)[0]
    return int(head) if head.isascii() and head.isdigit() else None  # not ² nor other scripts


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def history_entries(
    bundle: Mapping[str, Any], resource_type: str, base: BaseUrl
) -> Iterator[HistoryEntry]:
    """The entries of one page of ``[resource_type]/_history`` that concern ``resource_type``
    (a server may mix in others; they are skipped). Raises InvalidResponseError for a Bundle that
    is not a history Bundle, an entry that names no resource, or a URL the id is taken from that
    lies outside ``base`` or names an invalid id or version (``parse_location``)."""
    if bundle.get("type") != "history":
        raise InvalidResponseError("history answer is not a history Bundle (Bundle.type)")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidResponseError("history answer's Bundle.entry is not a list")
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidResponseError(f"history answer's {where} is not an object")
        resource = entry.get("resource")
        request = entry.get("request")
        response = entry.get("response")
        if resource is not None and not isinstance(resource, Mapping):
            raise InvalidResponseError(f"history answer's {where}.resource is not an object")
        if request is not None and not isinstance(request, Mapping):
            raise InvalidResponseError(f"history answer's {where}.request is not an object")
        if response is not None and not isinstance(response, Mapping):
            raise InvalidResponseError(f"history answer's {where}.response is not an object")
        request = request or {}
        response = response or {}
        deleted = request.get("method") == "DELETE" or _status(response.get("status")) == 410
        rtype: str | None = None
        rid: str | None = None
        vid = version_from_etag(_text(response.get("etag")))
        if resource is not None:
            rtype, rid = _text(resource.get("resourceType")), _text(resource.get("id"))
        urls = (
            ("request.url", request.get("url")),
            ("response.location", response.get("location")),
            ("fullUrl", entry.get("fullUrl")),
        )
        for name, value in urls:
            url = _text(value)
            if rid is not None:
                break
            named = (
                parse_location(url, base, source=f"history answer's {where}.{name}")
                if url is not None
                else None
            )
            if named is not None:
                rtype, rid, url_vid = named
                vid = vid or url_vid
        if rid is None or rtype is None:
            raise InvalidResponseError(f"history answer's {where} names no resource")
        if rtype != resource_type:
            continue
        meta = resource.get("meta") if resource is not None else None
        meta = meta if isinstance(meta, Mapping) else {}
        vid = vid or _text(meta.get("versionId"))
        source = f"history answer's {where}"
        rid = server_id(rid, resource_type=resource_type, source=source) or rid
        vid = server_id(vid, resource_type=resource_type, source=source, what="versionId")
        stamp = _text(response.get("lastModified")) or _text(meta.get("lastUpdated"))
        yield HistoryEntry(resource_id=rid, version_id=vid, stamp=stamp, deleted=deleted)
