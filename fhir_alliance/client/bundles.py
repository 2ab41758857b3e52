"""Transaction and batch Bundles: build them from requests, and map each response entry back.

Pure: the client sends what :func:`build_bundle` makes and reads the answer with
:func:`entry_outcomes`. Every outcome keeps the index and the request it answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from fhir_alliance.client.links import BaseUrl, is_fhir_id, is_resource_type, unsafe_segment
from fhir_alliance.client.responses import etag_for, version_from_etag
from fhir_alliance.client.retry import Replay
from fhir_alliance.errors import (
    InputError,
    InvalidResponseError,
    Issue,
    ServerError,
    UnsafeLinkError,
)

__all__ = [
    "BundleRequest",
    "EntryOutcome",
    "answered_identity",
    "build_bundle",
    "entry_outcomes",
    "parse_location",
    "search_token",
    "server_id",
]


def search_token(system: str, value: str) -> str:
    """``system|value`` for a token search, with FHIR's escapes for ``\\ , $ |`` in each part."""

    def esc(text: str) -> str:
        return (
            text.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|")
        )

    return f"{esc(system)}|{esc(value)}"


@dataclass(frozen=True, slots=True)
class BundleRequest:
    """One entry of a transaction or batch. Build with the class methods."""

    method: str
    url: str
    resource: Mapping[str, Any] | None = None
    if_match: str | None = None
    if_none_exist: str | None = None

    @classmethod
    def create(
        cls, resource: Mapping[str, Any], *, if_none_exist: Mapping[str, str] | None = None
    ) -> BundleRequest:
        """POST (a conditional create when ``if_none_exist`` gives search params)."""
        rtype = _resource_type(resource)
        body = {k: v for k, v in resource.items() if k != "id"}
        return cls(
            "POST",
            rtype,
            body,
            if_none_exist=urlencode(dict(if_none_exist)) if if_none_exist else None,
        )

    @classmethod
    def put(cls, resource: Mapping[str, Any], *, if_match: str | None = None) -> BundleRequest:
        """PUT to the resource's own id (update, or create at a deterministic id)."""
        rtype = _resource_type(resource)
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            raise InputError(
                "PUT needs a resource id", issues=[Issue(path="id", message="required")]
            )
        return cls(
            "PUT", f"{rtype}/{rid}", resource, if_match=etag_for(if_match) if if_match else None
        )

    @classmethod
    def delete(cls, resource_type: str, resource_id: str) -> BundleRequest:
        return cls("DELETE", f"{resource_type}/{resource_id}")

    @property
    def replay(self) -> Replay:
        if self.method in ("GET", "HEAD", "PUT", "DELETE"):
            return Replay.IDEMPOTENT
        return Replay.IF_REFUSED if self.if_none_exist else Replay.NEVER


def _resource_type(resource: Mapping[str, Any]) -> str:
    rtype = resource.get("resourceType") if isinstance(resource, Mapping) else None
    if not isinstance(rtype, str) or not rtype:
        raise InputError(
            "resource without resourceType", issues=[Issue(path="resourceType", message="required")]
        )
    return rtype


def build_bundle(kind: str, requests: Sequence[BundleRequest]) -> dict[str, Any]:
    """A ``transaction`` or ``batch`` Bundle, entries in the order given.

    The resources are referenced, not copied: serialise the Bundle before changing them.
    """
    if kind not in ("transaction", "batch"):
        raise InputError("bundle kind must be transaction or batch", issues=[Issue("kind", "")])
    entries = []
    for req in requests:
        request: dict[str, Any] = {"method": req.method, "url": req.url}
        if req.if_match:
            request["ifMatch"] = req.if_match
        if req.if_none_exist:
            request["ifNoneExist"] = req.if_none_exist
        entry: dict[str, Any] = {"request": request}
        if req.resource is not None:
            # No copy: the Bundle is serialised at once (a deep copy cost a third of the time).
            entry["resource"] = (
                req.resource if isinstance(req.resource, dict) else dict(req.resource)
            )
            if req.method == "POST":
                entry["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    """What became of one request: ``index`` into the input, ``request`` itself, and the answer.

    ``error`` is set when this entry (or, in a transaction, its whole chunk) failed.
    """

    index: int
    request: BundleRequest
    status: int | None
    resource_type: str | None = None
    id: str | None = None
    version_id: str | None = None
    etag: str | None = None
    location: str | None = None
    outcome: dict[str, Any] | None = None
    resource: dict[str, Any] | None = None
    error: ServerError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


#: What a server-given id must be to become a request path (FHIR's id syntax, not a dot segment).
_ID_RULE = "not 1-64 of A-Z a-z 0-9 - ., or a dot segment"


def server_id(
    value: object, *, resource_type: str, source: str, what: str = "FHIR id"
) -> str | None:
    """An id (or, with ``what="versionId"``, a version) the server gave, checked before it can
    become a path or a header: None when absent, InvalidResponseError when it is not a FHIR id
    (``source`` says where it came from; the value itself is not quoted)."""
    if value is None:
        return None
    if not is_fhir_id(value):
        raise InvalidResponseError(
            f"server gave {resource_type} an invalid {what} in {source} ({_ID_RULE})"
        )
    return str(value)


def parse_location(
    location: str,
    base: BaseUrl,
    *,
    source: str,
    resource_type: str | None = None,
    resource_id: str | None = None,
) -> tuple[str, str, str | None] | None:
    """``[base/]Type/id[/_history/vid]`` from a server's answer → (type, id, vid), checked;
    None when the path below the base has another shape (``Type``, ``Type?query``): it names no
    resource, and nothing is taken from it.

    Server data, so untrusted: a relative location is resolved against ``base`` and must stay
    inside it (:meth:`BaseUrl.check_link`: no dot or encoded-slash segments); its type must be a
    resource type name (``resource_type`` when given) and its id and version FHIR ids (the id
    ``resource_id`` when given). Else InvalidResponseError, naming ``source`` and never quoting
    the location, so that no later read, update or delete can be steered outside what was
    written.

    An absolute location under another origin or path (a server behind a proxy that names
    itself by its internal address: common, and harmless, because the location is only read,
    never requested) gives its trailing ``Type/id[/_history/vid]``, checked the same way; dot or
    encoded-slash segments and credentials are refused there too.
    """

    def refused(why: str) -> InvalidResponseError:
        return InvalidResponseError(f"{source} {why}")

    try:
        url = base.check_link(location)
        segments = _segments_of(url)[len(base.segments) :]
    except UnsafeLinkError as exc:
        foreign = _foreign_tail(location)
        if foreign is None:
            why = exc.message.removeprefix("server link refused: ")
            raise refused(f"is refused: {why}") from None
        segments = foreign
        if segments and not is_resource_type(segments[0]):
            return None  # another origin's path that names no resource: nothing taken from it
    if len(segments) == 4 and segments[2] == "_history":
        rtype, rid, vid = segments[0], segments[1], segments[3]
    elif len(segments) == 2:
        rtype, rid, vid = segments[0], segments[1], None
    else:
        return None
    if not is_resource_type(rtype):
        raise refused("names no resource type")
    if resource_type is not None and rtype != resource_type:
        raise refused(f"names a {rtype}, not the {resource_type} sent")
    if not is_fhir_id(rid):
        raise refused(f"has an invalid FHIR id ({_ID_RULE})")
    if resource_id is not None and rid != resource_id:
        raise refused(f"names another {resource_type or rtype} than the one sent")
    if vid is not None and not is_fhir_id(vid):
        raise refused(f"has an invalid versionId ({_ID_RULE})")
    return rtype, rid, vid


def _segments_of(url: str) -> list[str]:
    """The non-empty path segments of an absolute URL (query and fragment dropped)."""
    path = url.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0]
    return [s for s in path.split("/")[1:] if s]


def _foreign_tail(location: str) -> list[str] | None:
    """The trailing ``Type/id[/_history/vid]`` segments of an absolute ``location`` that lies
    outside the base (another origin or path); None when it is not such a URL, or is unsafe
    (credentials, dot or encoded-slash segments, not parseable): then it stays refused."""
    text = location.strip()
    if "://" not in text.split("?", 1)[0] and not text.startswith("//"):
        return None  # a relative link outside the base: only dot segments get there
    try:
        parts = urlsplit(text if "://" in text else "https:" + text)
        _ = parts.port
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    segments = [s for s in parts.path.split("/") if s]
    if any(unsafe_segment(s) for s in segments):
        return None
    if len(segments) >= 4 and segments[-2] == "_history":
        return segments[-4:]
    return segments[-2:]


def answered_identity(
    base: BaseUrl,
    *,
    location: str | None,
    etag: str | None,
    resource: Mapping[str, Any] | None,
    resource_type: str | None,
    resource_id: str | None,
    where: str,
) -> tuple[str | None, str | None, str | None]:
    """(type, id, version) that a server's answer to a request names: from ``location`` first
    (:func:`parse_location`), then the returned ``resource``, then ``etag``; Nones where nothing
    names them. Each value used is checked, and ``resource_type``/``resource_id`` (what the
    request was sent to, when known) must match: else InvalidResponseError, ``where`` naming the
    answer ("the write answer's", "the answer's Bundle.entry[2]")."""
    expected = resource_type or "the resource"
    named = (
        parse_location(
            location,
            base,
            source=f"{where} location",
            resource_type=resource_type,
            resource_id=resource_id,
        )
        if location
        else None
    )
    rtype, rid, vid = named if named is not None else (None, None, None)
    if resource is not None:
        body_type = resource.get("resourceType")
        if resource_type is not None and body_type != resource_type:
            raise InvalidResponseError(
                f"{where} resource is of another type than the {resource_type} sent"
            )
        if rid is None:
            rid = server_id(resource.get("id"), resource_type=expected, source=f"{where} id")
            if resource_id is not None and rid not in (None, resource_id):
                raise InvalidResponseError(f"{where} id names another {expected} than the one sent")
        rtype = rtype or (body_type if isinstance(body_type, str) else None)
        meta = resource.get("meta")
        if vid is None and isinstance(meta, Mapping):
            vid = server_id(
                meta.get("versionId"),
                resource_type=expected,
                source=f"{where} meta.versionId",
                what="versionId",
            )
    if vid is None:
        vid = server_id(
            version_from_etag(etag),
            resource_type=expected,
            source=f"{where} ETag",
            what="versionId",
        )
    return rtype, rid, vid


def _status_code(text: object) -> int | None:
    """The HTTP status an entry's ``response.status`` starts with; None unless ASCII digits
    (``str.isdigit`` alone takes a superscript ², which ``int`` refuses, and other scripts'
    digits, which it reads)."""
    if not isinstance(text, str):
        return None
    head = text.strip().split(" ", 1)[0]
    return int(head) if head.isascii() and head.isdigit() else None


def _target(request: BundleRequest) -> tuple[str | None, str | None]:
    """The resource type (and id) a write or delete entry was sent to, which its answer must
    name; (None, None) for other requests (a search's answer is a Bundle)."""
    if request.method not in ("POST", "PUT", "DELETE"):
        return None, None
    rtype, _, rid = request.url.partition("?")[0].partition("/")
    return rtype, (rid or None) if request.method != "POST" else None


def entry_outcomes(
    response: Mapping[str, Any],
    requests: Sequence[BundleRequest],
    *,
    base: BaseUrl,
    offset: int = 0,
    error_for: Callable[[int, dict[str, Any] | None, BundleRequest], ServerError | None]
    | None = None,
) -> list[EntryOutcome]:
    """Map a transaction-response / batch-response back to the requests, entry by entry.

    The spec keeps response entries in request order; a response with a different count is
    refused. ``error_for(status, outcome, request)`` turns a failed entry into a :class:`ServerError`.
    A successful entry whose answer names an unusable id or version (a ``location`` outside
    ``base``, of another type or id than sent, not FHIR ids: :func:`answered_identity`) gets that
    InvalidResponseError as its ``error`` and no id: it is not ``ok``.
    """
    if response.get("resourceType") != "Bundle" or response.get("type") not in (
        "transaction-response",
        "batch-response",
    ):
        raise InvalidResponseError("bundle answer is not a transaction- or batch-response")
    entries = response.get("entry") or []
    if not isinstance(entries, list) or len(entries) != len(requests):
        raise InvalidResponseError("bundle answer has a different number of entries than sent")
    out: list[EntryOutcome] = []
    for i, (req, entry) in enumerate(zip(requests, entries, strict=True)):
        resp = entry.get("response") if isinstance(entry, Mapping) else None
        if not isinstance(resp, Mapping):
            raise InvalidResponseError("bundle answer entry without a response")
        status = _status_code(resp.get("status"))
        location = resp.get("location") if isinstance(resp.get("location"), str) else None
        etag = resp.get("etag") if isinstance(resp.get("etag"), str) else None
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        outcome = resp.get("outcome") if isinstance(resp.get("outcome"), dict) else None
        if (
            outcome is None
            and resource is not None
            and resource.get("resourceType") == ("OperationOutcome")
        ):
            outcome, resource = resource, None
        error: ServerError | None = None
        rtype = rid = vid = None
        if status is None:
            # Answered, but not with a status that can be read: it may have been applied.
            error = InvalidResponseError(
                f"the answer's Bundle.entry[{i}] has no readable response.status",
                outcome=outcome,
            )
        elif not 200 <= status < 300:
            error = error_for(status, outcome, req) if error_for else None
            if error is None:
                error = ServerError("bundle entry failed", status=status, outcome=outcome)
        else:
            sent_type, sent_id = _target(req)
            try:
                rtype, rid, vid = answered_identity(
                    base,
                    location=location,
                    etag=etag,
                    resource=resource,
                    resource_type=sent_type,
                    resource_id=sent_id,
                    where=f"the answer's Bundle.entry[{i}]",
                )
            except InvalidResponseError as exc:
                error = exc
        if req.method == "DELETE" and rtype is None:
            rtype, _, rid = req.url.partition("/")
        out.append(
            EntryOutcome(
                index=offset + i,
                request=req,
                status=status,
                resource_type=rtype,
                id=rid,
                version_id=vid,
                etag=etag_for(vid) if vid else None,
                location=location,
                outcome=outcome,
                resource=resource,
                error=error,
            )
        )
    return out
