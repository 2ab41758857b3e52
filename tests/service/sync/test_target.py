"""The target server: a client built from the settings (auth, CA bundle, timeout) and the FHIR
version to map to (forced, read from the CapabilityStatement, or remembered in the store)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fhir_alliance_service.config import ConfigError, Settings
from fhir_alliance_service.store import SqlStore
from fhir_alliance_service.sync.target import (
    META_FHIR_VERSION,
    FhirServerLink,
    client_from_settings,
    target_fhir_version,
)
from pytest_httpserver import HTTPServer

from fhir_alliance.client import BearerTokenAuth, FhirClient, NoAuth, SmartBackendAuth
from fhir_alliance.errors import NotFoundError, ServerError
from tests.client.test_smart_auth import CLIENT_ID, make_endpoint
from tests.service.conftest import answer_metadata, private_key_file
from tests.service.sync.conftest import QUICK_RETRY

BASE = "https://ehr.example.org/fhir"


def test_no_base_url_is_a_config_error() -> None:
    """Without a FHIR base URL there is nothing to sync to: a clear ConfigError."""
    with pytest.raises(ConfigError, match="FHIR_BASE_URL"):
        client_from_settings(Settings())


def test_auth_none_and_bearer() -> None:
    """fhir_auth none sends nothing; bearer uses the token; timeout is (connect, read)."""
    plain = client_from_settings(Settings(fhir_base_url=BASE, fhir_timeout_seconds=12))
    assert isinstance(plain.auth, NoAuth) and plain.timeout == (5.0, 12.0)
    bearer = client_from_settings(Settings(fhir_base_url=BASE, fhir_auth="bearer", fhir_token="t"))
    assert isinstance(bearer.auth, BearerTokenAuth)
    with pytest.raises(ConfigError, match="TOKEN"):
        client_from_settings(Settings(fhir_base_url=BASE, fhir_auth="bearer"))


def test_smart_backend_services_from_aprivate_key_file(tmp_path: Path) -> None:
    """fhir_auth smart loads the private key file and asks for audit scopes when pushing audit."""
    pem = private_key_file(ec.generate_private_key(ec.SECP384R1()), tmp_path / "key.pem")
    settings = Settings(
        fhir_base_url=BASE,
        fhir_auth="smart",
        smart_client_id="client",
        smart_private_key_file=str(pem),
        smart_key_id="kid-1",
        smart_algorithm="ES384",
        push_audit=True,
    )
    client = client_from_settings(settings)
    assert isinstance(client.auth, SmartBackendAuth)
    assert "system/AuditEvent.cu" in client.auth.scope
    with pytest.raises(ConfigError, match="cannot be read"):
        client_from_settings(
            Settings(**{**_fields(settings), "smart_private_key_file": str(tmp_path / "none")})
        )


def _fields(settings: Settings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def test_a_forced_version_wins(sync_store: SqlStore) -> None:
    """settings.fhir_version is used without asking the server."""
    settings = Settings(fhir_base_url="http://127.0.0.1:9/fhir", fhir_version="5.0.0")
    with FhirClient(settings.fhir_base_url or "", retry=QUICK_RETRY) as client:
        assert target_fhir_version(settings, sync_store, client) == "5.0.0"


def test_version_from_capabilities_is_remembered(
    httpserver: HTTPServer, sync_store: SqlStore
) -> None:
    """The server's R5 CapabilityStatement gives 5.0.0, kept in meta for when it is down later."""
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "5.0.0",
        "format": ["json"],
        "date": "2026-01-01",
    }
    httpserver.expect_ordered_request("/fhir/metadata").respond_with_json(statement)
    httpserver.expect_ordered_request("/fhir/metadata").respond_with_data("down", status=503)
    base = httpserver.url_for("/fhir")
    settings = Settings(fhir_base_url=base)
    with FhirClient(base, retry=QUICK_RETRY) as client:
        assert target_fhir_version(settings, sync_store, client) == "5.0.0"
    assert sync_store.get_meta(META_FHIR_VERSION) == "5.0.0"
    with FhirClient(base, retry=QUICK_RETRY) as restarted:  # a new process: nothing cached
        assert target_fhir_version(settings, sync_store, restarted) == "5.0.0"


def test_unknown_version_and_server_down_raises(
    httpserver: HTTPServer, sync_store: SqlStore
) -> None:
    """With nothing remembered and the server down, the error is raised (nothing is guessed)."""
    httpserver.expect_request("/fhir/metadata").respond_with_data("down", status=503)
    base = httpserver.url_for("/fhir")
    with FhirClient(base, retry=QUICK_RETRY) as client, pytest.raises(ServerError):
        target_fhir_version(Settings(fhir_base_url=base), sync_store, client)


THREADS = 8  # more than gunicorn's gthread default of web_threads (4)
T = TypeVar("T")


def _at_once(call: Callable[[], T], count: int = THREADS) -> list[T]:
    """``call()`` from ``count`` threads released together; their results."""
    start = threading.Barrier(count)

    def run() -> T:
        start.wait()
        return call()

    with ThreadPoolExecutor(count) as pool:
        return [f.result() for f in [pool.submit(run) for _ in range(count)]]


def test_one_link_shares_one_client_and_one_smart_token_across_threads(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    """Request threads of one web process build one client between them and read with one SMART
    token (the EHR's token endpoint is asked once); closing the link closes that client."""
    endpoint, key = make_endpoint(httpserver, "RS384")
    httpserver.expect_request("/fhir/Consent/c-1").respond_with_data("{}", status=404)
    pem = private_key_file(key, tmp_path / "key.pem")
    link = FhirServerLink(
        Settings(
            fhir_base_url=httpserver.url_for("/fhir"),
            fhir_auth="smart",
            smart_client_id=CLIENT_ID,
            smart_private_key_file=str(pem),
            smart_key_id=endpoint.kid,
        )
    )

    def read() -> FhirClient:
        client = link.client()
        with pytest.raises(NotFoundError):
            client.read("Consent", "c-1")
        return client

    clients = _at_once(read)
    assert len({id(c) for c in clients}) == 1
    assert endpoint.refusals == []
    assert len(endpoint.issued) == 1
    link.close()
    assert link.client() is not clients[0]  # a closed link builds a new client when asked again
    link.close()


def test_readiness_is_asked_once_for_threads_at_once_and_again_once_stale(
    httpserver: HTTPServer,
) -> None:
    """Probes arriving together share one request to the server; after ``keep_for`` seconds the
    next probe asks again."""
    answer_metadata(httpserver)
    now = [100.0]
    link = FhirServerLink(
        Settings(fhir_base_url=httpserver.url_for("/fhir")), keep_for=5.0, clock=lambda: now[0]
    )
    try:
        assert _at_once(link.ready) == [True] * THREADS
        assert len(httpserver.log) == 1
        now[0] += 4.9
        assert link.ready() and len(httpserver.log) == 1
        now[0] += 0.2
        assert link.ready() and len(httpserver.log) == 2
    finally:
        link.close()
