"""An overwrite whose answer was lost, applied by a slow server only after its retry's 412 has
read the version it was written over, against the test FHIR server: the retry under a policy
that writes nothing of ours (``keep-remote``, ``flag``) cannot tell whether it will land, and
records its conflict AuditEvent ``overwrite-landing-unknown``, never nothing. The lost answer
and the server's delay are injected by a pytest-httpserver proxy in front of the server."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.usecases.intake import intake_records
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import FhirClient
from tests.fhir_server.plugin import FhirTestServer
from tests.service.sync import records as R
from tests.service.sync import remote
from tests.service.sync.conftest import QUICK_RETRY, now, sync_settings

RECORD = R.RECORD_SYSTEM
FHIR_JSON = "application/fhir+json"


class SlowServerProxy:
    """Forwards every request to the test FHIR server, except the ``hold``-th ``POST`` (a
    transaction Bundle): kept unapplied, answered after the client gave up (its answer lost),
    and reads answer 503 until ``reads_down`` is cleared; ``release`` applies it then."""

    def __init__(self, httpserver: HTTPServer, server: FhirTestServer) -> None:
        self.server = server
        self.base_url = httpserver.url_for("/fhir").rstrip("/")
        self.posts = 0
        self.hold: int | None = None
        self.held: list[tuple[bytes, dict[str, str]]] = []
        self.reads_down = False
        httpserver.expect_request(re.compile(r"^/fhir(/.*)?$")).respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        headers = {
            name: request.headers[name]
            for name in ("Content-Type", "If-Match", "Prefer", "Accept")
            if name in request.headers
        }
        if request.method == "POST":
            self.posts += 1
            if self.posts == self.hold:
                self.held.append((request.get_data(), headers))
                self.reads_down = True
                time.sleep(0.45)  # the client's read timeout is 0.3 s
                return Response("{}", status=200, content_type=FHIR_JSON)
        elif request.method == "GET" and self.reads_down:
            body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
            return Response(json.dumps(body), status=503, content_type=FHIR_JSON)
        path = request.path.removeprefix("/fhir")
        answer = self.server.http.request(
            request.method,
            self.server.base_url + path,
            params=list(request.args.items(multi=True)),
            data=request.get_data(),
            headers=headers,
        )
        upstream, ours = self.server.base_url.encode(), self.base_url.encode()
        kept = {
            name: answer.headers[name].replace(self.server.base_url, self.base_url)
            for name in ("Content-Type", "ETag", "Location", "Last-Modified")
            if name in answer.headers
        }
        return Response(
            answer.content.replace(upstream, ours), status=answer.status_code, headers=kept
        )

    def release(self) -> None:
        """The slow server applies the Bundle it held."""
        [(body, headers)] = self.held
        answer = self.server.http.post(self.server.base_url, data=body, headers=headers)
        answer.raise_for_status()


class Rig:
    def __init__(self, proxy: SlowServerProxy, store: SqlStore, sqlite_url: str) -> None:
        self.proxy = proxy
        self.store = store
        self.sqlite_url = sqlite_url
        self.run = R.run_token()

    def worker(self, *, policy: str, later: float = 0.0) -> Worker:
        settings = sync_settings(
            self.proxy.base_url, self.sqlite_url, fhir_version="4.0.1", conflict_policy=policy
        )
        client = FhirClient(self.proxy.base_url, retry=QUICK_RETRY, timeout=(1.0, 0.3))

        def clock() -> datetime:
            return now() + timedelta(seconds=later)

        return Worker(settings, self.store, client, clock=clock, tags=[self.proxy.server.run_tag])

    def intake(self, *payloads: dict[str, Any]) -> list[str]:
        return [r.record_id for r in intake_records(self.store, list(payloads), at=now())]

    def on_server(self) -> dict[str, Any]:
        response = self.proxy.server.http.get(
            self.proxy.server.url("Observation"),
            params={"identifier": f"{RECORD}|trust-{self.run}-1"},
        )
        response.raise_for_status()
        [entry] = response.json()["entry"]
        resource: dict[str, Any] = entry["resource"]
        return resource

    def conflict_events(self, record_id: str) -> list[str]:
        return [
            str(e.resource.get("outcomeDesc"))
            for e in self.store.list_audit(record_id=record_id)
            if e.action == "conflict"
        ]


@pytest.fixture
def rig(
    httpserver: HTTPServer, fhir_server: FhirTestServer, sync_store: SqlStore, sqlite_url: str
) -> Iterator[Rig]:
    yield Rig(SlowServerProxy(httpserver, fhir_server), sync_store, sqlite_url)


@pytest.mark.parametrize("policy", ["keep-remote", "flag"])
def test_an_overwrite_the_server_applies_after_the_retrys_412_is_audited(
    rig: Rig, policy: str
) -> None:
    """A rating sent (server version 1), edited by someone else (version 2), changed here: its
    update meets a 412 and the policy ``overwrite`` writes ours; the server keeps that Bundle
    unapplied past the client's timeout (the answer lost, reads failing). The retry, under
    ``policy`` (changed since, or another worker's), meets a 412, reads version 2 still there
    and settles it by its policy; then the server applies the overwrite, and our content is
    there. The audit trail says so: the overwrite's conflict AuditEvent, recorded
    ``overwrite-landing-unknown`` (it used to be dropped as one that never landed), then the
    policy's own; no disclosure is claimed for it."""
    [record_id] = rig.intake(R.sharing_consent(rig.run), R.rating(rig.run, 1, value=4))[1:]
    assert rig.worker(policy="overwrite").run_once().sent == 2
    theirs = remote.update(rig.proxy.server, rig.on_server(), valueInteger=1)
    assert theirs["meta"]["versionId"] == "2"
    rig.intake(R.rating(rig.run, 1, value=5))
    rig.proxy.hold = rig.proxy.posts + 2  # the update (412 passed on), then the overwrite
    rig.worker(policy="overwrite").run_once()
    assert len(rig.proxy.held) == 1 and rig.store.landing_unknown_count() == 1
    rig.proxy.reads_down = False
    disclosed = [e.action for e in rig.store.list_audit(record_id=record_id)].count("disclose")

    rig.worker(policy=policy, later=10).run_once()  # the retry's 412: version 2 still there
    rig.proxy.release()
    ours = rig.on_server()  # ours reached the server, after that read
    assert ours["meta"]["versionId"] == "3" and ours.get("valueInteger") != 1
    settled = {"keep-remote": "kept-remote", "flag": "flagged"}[policy]
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown", settled]
    actions = [e.action for e in rig.store.list_audit(record_id=record_id)]
    assert actions.count("disclose") == disclosed
    rig.worker(policy=policy, later=200).run_once()
    assert rig.conflict_events(record_id) == ["overwrite-landing-unknown", settled]
