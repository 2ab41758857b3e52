"""A small stateful FHIR server on pytest-httpserver for the review's hostile-server cases:
Observation create (PUT to an id), read, update with If-Match, delete, search by identifier and
by ``_tag``, each of which can be made to misbehave the way a real server might."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.check import RUN_TAG_SYSTEM
from fhir_alliance.terminology import LABEL_TEST_DATA

STATEMENT = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "mode": "server",
            "resource": [
                {
                    "type": "Observation",
                    "interaction": [
                        {"code": c} for c in ("read", "create", "update", "delete", "search-type")
                    ],
                    "updateCreate": True,
                    "versioning": "versioned",
                    "searchParam": [{"name": "identifier"}, {"name": "_lastUpdated"}],
                }
            ],
        }
    ],
}


def tagged_observation(run_id: str, version: str = "4.0.1") -> list[dict[str, Any]]:
    """One base-FHIR Observation (no profile), tagged with the run id and HTEST, with an id."""
    return [
        {
            "resourceType": "Observation",
            "id": f"check-{run_id}",
            "meta": {
                "tag": [{"system": RUN_TAG_SYSTEM, "code": run_id}],
                "security": [{"system": LABEL_TEST_DATA[0], "code": LABEL_TEST_DATA[1]}],
            },
            "identifier": [{"system": "urn:check", "value": f"{run_id}-obs"}],
            "status": "final",
            "code": {"text": "check"},
        }
    ]


@dataclass
class StubFhir:
    """In-memory Observations. ``ignore_deletes``: DELETE answers 204 and keeps the resource.
    ``ignore_tag``: a ``_tag`` search is answered as if the parameter were unknown (FHIR's
    lenient handling: every Observation). ``fail_tag_search``: a ``_tag`` search answers 500.
    ``extra_tag_hits``: resources added to every ``_tag`` search's answer.
    ``fail_deletes``: DELETE answers 500. ``store_then_fail``: PUT stores, then answers 500.
    ``tag_extra_hits``: ``extra_tag_hits`` are given the searched tag (as if they carried it).
    ``fail_reads``: ids whose read answers 500. ``hold_if_match``: a PUT with If-Match waits
    for this event (``held`` is set while it waits). ``tag_search_prefer``: the ``Prefer``
    header of each ``_tag`` search. ``location``: the ``Location`` a PUT is answered with, a
    format string of ``base``, ``rid`` and ``version`` (a hostile server's, in tests)."""

    server: HTTPServer
    ignore_deletes: bool = False
    ignore_tag: bool = False
    fail_tag_search: bool = False
    fail_deletes: bool = False
    store_then_fail: bool = False
    extra_tag_hits: list[dict[str, Any]] = field(default_factory=list)
    tag_extra_hits: bool = False
    fail_reads: set[str] = field(default_factory=set)
    hold_if_match: threading.Event | None = None
    held: threading.Event = field(default_factory=threading.Event)
    tag_search_prefer: list[str | None] = field(default_factory=list)
    location: str = "{base}/Observation/{rid}/_history/{version}"
    store: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server.expect_request("/fhir/metadata").respond_with_json(STATEMENT)
        self.server.expect_request(re.compile(r"^/fhir/Observation.*")).respond_with_handler(
            self.handle
        )
        for rtype in ("Consent", "Provenance"):  # none are stored: their searches find nothing
            self.server.expect_request(f"/fhir/{rtype}", method="GET").respond_with_handler(
                self.empty_search
            )

    @property
    def base_url(self) -> str:
        return self.server.url_for("/fhir")

    def add_foreign(self, rid: str) -> None:
        """An Observation that is not ours (another user's, on a shared sandbox)."""
        self.store[rid] = {
            "resourceType": "Observation",
            "id": rid,
            "meta": {"versionId": "1"},
            "status": "final",
            "code": {"text": "someone else's"},
        }

    def _json(self, body: Any, status: int = 200, **headers: str) -> Response:
        return Response(
            json.dumps(body), status=status, headers=headers, content_type="application/fhir+json"
        )

    def handle(self, request: Request) -> Response:
        parts = request.path.split("/")[3:]  # after /fhir/Observation
        if not parts or parts == [""]:
            return self.search(request)
        rid = parts[0]
        if request.method == "PUT":
            return self.put(request, rid)
        if request.method == "DELETE":
            if self.fail_deletes:
                return self._json({"resourceType": "OperationOutcome", "issue": []}, 500)
            if not self.ignore_deletes:
                self.store.pop(rid, None)
            self.deleted.append(rid)
            return Response("", status=204)
        if rid in self.fail_reads:
            return self._json({"resourceType": "OperationOutcome", "issue": []}, 500)
        if rid not in self.store:
            return self._json({"resourceType": "OperationOutcome", "issue": []}, 404)
        res = self.store[rid]
        return self._json(res, ETag=f'W/"{res["meta"]["versionId"]}"')

    def put(self, request: Request, rid: str) -> Response:
        body = json.loads(request.get_data())
        current = self.store.get(rid)
        match = request.headers.get("If-Match")
        if match and self.hold_if_match is not None:
            self.held.set()
            self.hold_if_match.wait(timeout=30)
        if match and (current is None or match != f'W/"{current["meta"]["versionId"]}"'):
            return self._json({"resourceType": "OperationOutcome", "issue": []}, 412)
        version = int(current["meta"]["versionId"]) + 1 if current else 1
        body["id"] = rid
        body.setdefault("meta", {})["versionId"] = str(version)
        self.store[rid] = body
        if self.store_then_fail:  # stored, but the answer is an error (a lost response)
            return self._json({"resourceType": "OperationOutcome", "issue": []}, 500)
        location = self.location.format(base=self.base_url, rid=rid, version=version)
        return self._json(
            body, 201 if current is None else 200, ETag=f'W/"{version}"', Location=location
        )

    def empty_search(self, request: Request) -> Response:
        if self.fail_tag_search and "_tag" in parse_qs(request.query_string.decode()):
            return self._json({"resourceType": "OperationOutcome", "issue": []}, 500)
        return self._json({"resourceType": "Bundle", "type": "searchset", "entry": []})

    def search(self, request: Request) -> Response:
        query = parse_qs(request.query_string.decode())
        found = list(self.store.values())
        if "_tag" in query:
            self.tag_search_prefer.append(request.headers.get("Prefer"))
            if self.fail_tag_search:
                return self._json({"resourceType": "OperationOutcome", "issue": []}, 500)
            system, _, code = query["_tag"][0].partition("|")
            if not self.ignore_tag:
                found = [
                    r
                    for r in found
                    if {"system": system, "code": code} in r.get("meta", {}).get("tag", [])
                ]
            if self.tag_extra_hits:
                tag = {"system": system, "code": code}
                found += [hit | {"meta": {"tag": [tag]}} for hit in self.extra_tag_hits]
            else:
                found += self.extra_tag_hits
        if "identifier" in query:
            system, _, value = query["identifier"][0].partition("|")
            found = [
                r for r in found if {"system": system, "value": value} in r.get("identifier", [])
            ]
        entries = [{"resource": r, "search": {"mode": "match"}} for r in found]
        return self._json({"resourceType": "Bundle", "type": "searchset", "entry": entries})
