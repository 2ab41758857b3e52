"""Tests of the operational routes: /healthz, /readyz, /metrics and the request id."""

from __future__ import annotations

import gc
import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fhir_alliance_service.app import create_app
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.store import SqlStore, make_engine
from fhir_alliance_service.store.interface import Store
from flask import Flask
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer

from tests.service.conftest import answer_metadata

SRS = {
    "kind": "instrument-administration",
    "id": "https://clinic.example.org/alliance-records|srs-ops-1",
    "instrument": "srs",
    "patient": {"reference": "Patient/example-client"},
    "effective": "2026-11-20T15:50:00+00:00",
    "rater": {"role": "client"},
    "responses": {"1": 9.1, "2": 8.7, "3": 8.0, "4": 9.2},
}


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _metric_lines(client: FlaskClient, headers: dict[str, str], name: str) -> list[str]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return [line for line in response.text.splitlines() if line.startswith(name)]


def test_healthz_needs_no_store(tmp_path: Path) -> None:
    """/healthz answers 200 even when the database is unreachable (it never touches the store)."""
    broken = SqlStore(make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db"))
    app = create_app({"database_url": "sqlite:///unused.db"}, store=broken)
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_ok_with_store_only(client: FlaskClient) -> None:
    """Without a FHIR server configured, a reachable store is enough."""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"] == {"store": "ok"}


def test_readyz_503_when_store_is_unreachable(tmp_path: Path) -> None:
    """A store that cannot connect makes /readyz a 503 OperationOutcome naming the store."""
    broken = SqlStore(make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db"))
    app = create_app({"database_url": "sqlite:///unused.db"}, store=broken)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/fhir+json"
    texts = [i["details"]["text"] for i in response.json["issue"]]
    assert texts == ["store is not reachable"]
    assert response.headers["Retry-After"]


def test_readyz_checks_the_fhir_server(sqlite_url: str, fhir_base_url: str) -> None:
    """With a reachable FHIR server (the test server, or FHIR_ALLIANCE_TEST_BASE_URL) it is ready."""
    app = create_app({"database_url": sqlite_url, "fhir_base_url": fhir_base_url})
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["fhir_alliance"].store.close()
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"store": "ok", "fhir_server": "ok"}


def test_readyz_503_when_fhir_server_is_down(sqlite_url: str) -> None:
    """Nothing listening at the FHIR base URL makes /readyz a 503 naming the FHIR server."""
    app = create_app(
        {"database_url": sqlite_url, "fhir_base_url": f"http://127.0.0.1:{_unused_port()}/fhir"}
    )
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["fhir_alliance"].store.close()
    assert response.status_code == 503
    assert [i["details"]["text"] for i in response.json["issue"]] == [
        "fhir_server is not reachable"
    ]


def test_readyz_503_when_fhir_server_errors(sqlite_url: str, httpserver: HTTPServer) -> None:
    """A FHIR server answering /metadata with 500 is not ready."""
    httpserver.expect_request("/fhir/metadata").respond_with_data("oops", status=500)
    app = create_app({"database_url": sqlite_url, "fhir_base_url": httpserver.url_for("/fhir")})
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["fhir_alliance"].store.close()
    assert response.status_code == 503


@pytest.mark.parametrize("setting", ["netrc", "proxy"])
def test_readyz_takes_no_credentials_or_proxy_from_the_environment(
    sqlite_url: str,
    httpserver: HTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
) -> None:
    """/readyz reaches the FHIR server as the library client does: a .netrc entry for the host is
    not sent along (``Authorization: Basic``) and proxy variables are not followed (the proxy
    named here does not listen)."""
    answer_metadata(httpserver)
    if setting == "netrc":
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine {httpserver.host} login clinic password netrc-s3cret\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
    else:
        nowhere = f"http://127.0.0.1:{_unused_port()}"
        for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(variable, nowhere)
        for variable in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(variable, raising=False)
    app = create_app({"database_url": sqlite_url, "fhir_base_url": httpserver.url_for("/fhir")})
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["fhir_alliance"].store.close()
    assert response.status_code == 200, response.json
    sent = [request.headers.get("Authorization") for request, _ in httpserver.log]
    assert sent == [None]


def test_readyz_asks_the_fhir_server_once_in_a_few_seconds(
    sqlite_url: str, httpserver: HTTPServer
) -> None:
    """/readyz is public: a burst of probes makes one request to the FHIR server, not one each
    (the answer is kept for READINESS_CACHE_SECONDS), and says the same each time."""
    answer_metadata(httpserver)
    app = create_app({"database_url": sqlite_url, "fhir_base_url": httpserver.url_for("/fhir")})
    try:
        client = app.test_client()
        statuses = [client.get("/readyz").status_code for _ in range(5)]
    finally:
        app.extensions["fhir_alliance"].store.close()
    assert statuses == [200] * 5
    assert len(httpserver.log) == 1


def test_metrics_queue_depth_is_read_from_the_store(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """A posted record shows as one queued item in fhir_alliance_queue_depth."""
    headers = auth_headers["read"]
    assert 'fhir_alliance_queue_depth{state="queued"} 0.0' in _metric_lines(
        client, headers, "fhir_alliance_queue_depth"
    )
    posted = client.post(
        "/v1/records",
        data=json.dumps(SRS),
        headers=auth_headers["write"],
        content_type="application/json",
    )
    assert posted.status_code == 201
    assert 'fhir_alliance_queue_depth{state="queued"} 1.0' in _metric_lines(
        client, headers, "fhir_alliance_queue_depth"
    )


def test_metrics_count_the_retraction_checks_pending(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """fhir_alliance_retraction_checks_pending{state}: the checks noted in the store, due now and
    leased (read at scrape time, the same from every process)."""
    headers = auth_headers["read"]
    name = "fhir_alliance_retraction_checks_pending"
    assert sorted(_metric_lines(client, headers, name + "{")) == [
        f'{name}{{state="due"}} 0.0',
        f'{name}{{state="leased"}} 0.0',
    ]
    store: Store = client.application.extensions["fhir_alliance"].store
    store.note_retraction_checks(["Patient/p1", "Patient/p2"])
    store.note_retraction_checks(["Patient/p3"], lease_until=datetime.now(UTC) + timedelta(hours=1))
    assert sorted(_metric_lines(client, headers, name + "{")) == [
        f'{name}{{state="due"}} 2.0',
        f'{name}{{state="leased"}} 1.0',
    ]


def test_metrics_label_routes_by_rule_not_path(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """Request latency is labelled with the URL rule; the raw id in the path never appears."""
    record_id = "6f1c1ad0-8f0e-5d6b-9a57-000000000001"
    client.get(f"/v1/records/{record_id}", headers=auth_headers["read"])
    lines = _metric_lines(client, auth_headers["read"], "fhir_alliance_request_latency_seconds")
    assert any('route="/v1/records/<record_id>"' in line for line in lines)
    assert not any(record_id in line for line in lines)


def test_metrics_needs_read_scope(
    client: FlaskClient, auth_headers: dict[str, dict[str, str]]
) -> None:
    """/metrics is not public: a consult key gets 403."""
    assert client.get("/metrics", headers=auth_headers["consult"]).status_code == 403


@pytest.mark.parametrize(
    ("offered", "kept"),
    [
        ("2f9c1b2a-0001-4a6b-9c1d-7e0f12345678", True),
        ("4BF92F3577B34DA6A3CE929D0E0E4736", True),
        ("req-2f9c1b2a-0001", False),
        ("x", False),
        ("bad id with spaces", False),
        ("a" * 200, False),
    ],
)
def test_request_id_is_echoed_or_generated(client: FlaskClient, offered: str, kept: bool) -> None:
    """A sane X-Request-ID is echoed; anything else is replaced by a generated one."""
    response = client.get("/healthz", headers={"X-Request-ID": offered})
    echoed = response.headers["X-Request-ID"]
    assert (echoed == offered) is kept
    assert 8 <= len(echoed) <= 64


def test_every_response_has_a_request_id(client: FlaskClient) -> None:
    """Refused requests (401, 404) carry a request id too."""
    assert client.get("/metrics").headers["X-Request-ID"]
    assert client.get("/nowhere").headers["X-Request-ID"]


def test_app_factory_keeps_apps_apart(app: Flask, sqlite_url: str) -> None:
    """Two apps from the factory have their own settings and store (no global app object)."""
    other = create_app({"database_url": sqlite_url, "max_body_bytes": 1234})
    try:
        assert other.extensions["fhir_alliance"] is not app.extensions["fhir_alliance"]
        assert other.config["MAX_CONTENT_LENGTH"] == 1234
        store: Store = other.extensions["fhir_alliance"].store
        assert store is not app.extensions["fhir_alliance"].store
    finally:
        other.extensions["fhir_alliance"].store.close()


def test_an_apps_fhir_client_is_closed_when_the_app_goes(
    sqlite_url: str, httpserver: HTTPServer
) -> None:
    """The FHIR client an app's request handlers share is closed with the app (Flask has no
    shutdown hook): its pooled connections to the server are let go."""
    answer_metadata(httpserver)
    app = create_app({"database_url": sqlite_url, "fhir_base_url": httpserver.url_for("/fhir")})
    state = app.extensions["fhir_alliance"]
    client = state.fhir.client()
    client.capabilities()
    pools = client.session.get_adapter(httpserver.url_for("/")).poolmanager.pools
    assert len(pools) == 1
    del app
    gc.collect()
    try:
        assert len(pools) == 0
    finally:
        state.store.close()


def test_app_serves_from_each_backend(database_url: str) -> None:
    """On SQLite and on PostgreSQL: ready, a record is taken in, and the queue depth shows it."""
    app = create_app({"database_url": database_url})
    try:
        store: Store = app.extensions["fhir_alliance"].store
        key = create_api_key(store, "backend check", ["read", "write"])
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        posted = client.post("/v1/records", json=SRS, headers={"X-API-Key": key})
        assert posted.status_code == 201, posted.json
        lines = _metric_lines(client, {"X-API-Key": key}, "fhir_alliance_queue_depth")
        assert 'fhir_alliance_queue_depth{state="queued"} 1.0' in lines
    finally:
        app.extensions["fhir_alliance"].store.close()


def test_wsgi_app_reads_the_environment_and_logs_json(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """gunicorn's entry point builds the app from FHIR_ALLIANCE_* and logs JSON lines to stderr."""
    import logging

    from fhir_alliance_service.app import wsgi_app
    from fhir_alliance_service.logs import JsonFormatter

    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FHIR_ALLIANCE_MAX_BODY_BYTES", "4321")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        app = wsgi_app()
        assert app.config["MAX_CONTENT_LENGTH"] == 4321
        app.test_client().get("/healthz", headers={"X-Request-ID": "0af7651916cd43dd"})
        added = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
        assert len(added) == 1
        lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
        assert {"message": "request", "request_id": "0af7651916cd43dd"}.items() <= lines[-1].items()
        app.extensions["fhir_alliance"].store.close()
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def test_serve_metrics_publishes_worker_counters(store: Store) -> None:
    """A worker's metrics server answers /metrics with its own counters and the queue depth, and
    stops when asked."""
    import requests
    from fhir_alliance_service.metrics import REGISTRY, SENDS, serve_metrics

    port = _unused_port()
    stop = serve_metrics(f"127.0.0.1:{port}", store)
    try:
        labels = {"resource_type": "Observation"}
        before = REGISTRY.get_sample_value("fhir_alliance_sends_total", labels) or 0.0
        SENDS.labels(resource_type="Observation").inc(3)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        stop()
    assert f'fhir_alliance_sends_total{{resource_type="Observation"}} {before + 3}' in text
    assert 'fhir_alliance_queue_depth{state="queued"} 0.0' in text
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
