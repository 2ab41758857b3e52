"""Transaction and batch Bundles: build them from requests, and map each response entry back.

Pure: the client sends what :func:`build_bundle` makes and reads the answer with
:func:`entry_outcomes`. Every outcome keeps the index and the request it answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fhir_alliance.client.responses import etag_for, version_from_etag
from fhir_alliance.client.retry import Replay
from fhir_alliance.errors import InputError, InvalidResponseError, Issue, ServerError

__all__ = ["BundleRequest", "EntryOutcome", "build_bundle", "entry_outcomes", "search_token"]


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


def parse_location(location: str) -> tuple[str | None, str | None, str | None]:
    """``[base/]Type/id[/_history/vid]`` → (type, id, vid); Nones where absent.

    Plain string work (no urlsplit): this runs once per Bundle entry.
    """
    path = location.split("://", 1)[1] if "://" in location else location
    if "://" in location:
        slash = path.find("/")
        path = path[slash:] if slash >= 0 else ""
    path = path.split("?", 1)[0].split("#", 1)[0]
    segments = [s for s in path.split("/") if s]
    vid = None
    if len(segments) >= 2 and segments[-2] == "_history":
        vid = segments[-1]
        segments = segments[:-2]
    elif segments and segments[-1] == "_history":
        segments = segments[:-1]
    if len(segments) >= 2:
        return segments[-2], segments[-1], vid
    return None, None, vid


def _status_code(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    head = text.strip().split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def entry_outcomes(
    response: Mapping[str, Any],
    requests: Sequence[BundleRequest],
    *,
    offset: int = 0,
    error_for: Callable[[int, dict[str, Any] | None, BundleRequest], ServerError | None]
    | None = None,
) -> list[EntryOutcome]:
    """Map a transaction-response / batch-response back to the requests, entry by entry.

    The spec keeps response entries in request order; a response with a different count is
    refused. ``error_for(status, outcome, request)`` turns a failed entry into a :class:`ServerError`.
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
        rtype, rid, vid = parse_location(location) if location else (None, None, None)
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        if resource is not None:
            rtype = rtype or resource.get("resourceType")
            rid = rid or resource.get("id")
            meta = resource.get("meta")
            if vid is None and isinstance(meta, Mapping):
                vid = meta.get("versionId")
        outcome = resp.get("outcome") if isinstance(resp.get("outcome"), dict) else None
        if (
            outcome is None
            and resource is not None
            and resource.get("resourceType") == ("OperationOutcome")
        ):
            outcome, resource = resource, None
        error = None
        if status is None or not 200 <= status < 300:
            error = error_for(status or 0, outcome, req) if error_for else None
            if error is None:
                error = ServerError("bundle entry failed", status=status, outcome=outcome)
        if req.method == "DELETE" and rtype is None:
            rtype, _, rid = req.url.partition("/")
        out.append(
            EntryOutcome(
                index=offset + i,
                request=req,
                status=status,
                resource_type=rtype,
                id=rid,
                version_id=vid or version_from_etag(etag),
                etag=etag or (etag_for(vid) if vid else None),
                location=location,
                outcome=outcome,
                resource=resource,
                error=error,
            )
        )
    return out
