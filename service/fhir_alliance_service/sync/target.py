"""The clinic's FHIR server as the worker sees it: a client built from the settings, and the FHIR
version to map to (forced by ``fhir_version``, else the server's CapabilityStatement, remembered
in the store's meta so that a restart while the server is down still knows it). For the web
process, :class:`FhirServerLink`: one client shared by its request handlers, and whether the
server is ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Final

from fhir_alliance.client import (
    BearerTokenAuth,
    FhirClient,
    NoAuth,
    RetryPolicy,
    SmartBackendAuth,
)
from fhir_alliance.client.auth import Auth
from fhir_alliance.errors import FhirAllianceError, ServerError
from fhir_alliance.mapping.registry import FHIR_VERSIONS
from fhir_alliance_service.config import ConfigError, Settings
from fhir_alliance_service.store.interface import Store

__all__ = [
    "READINESS_CACHE_SECONDS",
    "READINESS_TIMEOUT_SECONDS",
    "FhirServerLink",
    "META_FHIR_BASE_URL",
    "META_FHIR_VERSION",
    "META_LAST_CONTACT",
    "client_from_settings",
    "note_contact",
    "target_fhir_version",
]

#: Store meta names: the server's FHIR version (as our mappers' wire version), the base URL it was
#: read from, and when the worker last had an answer from the server (ISO 8601, UTC).
META_FHIR_VERSION = "fhir_server.fhir_version"
META_FHIR_BASE_URL = "fhir_server.base_url"
META_LAST_CONTACT = "fhir_server.last_contact"

log = logging.getLogger(__name__)

#: How long a readiness check waits for the FHIR server's CapabilityStatement.
READINESS_TIMEOUT_SECONDS: Final = 3.0
#: How long a readiness answer is kept: ``/readyz`` is public, and a burst of probes must not turn
#: into as many requests to the EHR.
READINESS_CACHE_SECONDS: Final = 5.0

#: The worker's own retries of one HTTP call stay short: longer waits belong to the outbox, which
#: schedules the item again (``mark_failed``) instead of holding a batch in hand.
WORKER_RETRY = RetryPolicy(
    max_attempts=3, max_elapsed=20.0, backoff_base=0.25, backoff_max=4.0, max_retry_after=5.0
)


def _auth(settings: Settings) -> Auth:
    if settings.fhir_auth == "none":
        return NoAuth()
    if settings.fhir_auth == "bearer":
        if not settings.fhir_token:
            raise ConfigError(
                "FHIR_ALLIANCE_FHIR_TOKEN (or _FILE) is required with fhir_auth=bearer"
            )
        return BearerTokenAuth(settings.fhir_token)
    if settings.fhir_auth == "smart":
        if not settings.smart_client_id or not settings.smart_private_key_file:
            raise ConfigError(
                "FHIR_ALLIANCE_SMART_CLIENT_ID and FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE are "
                "required with fhir_auth=smart"
            )
        if not settings.smart_key_id:
            raise ConfigError("FHIR_ALLIANCE_SMART_KEY_ID is required with fhir_auth=smart")
        scopes = ["system/Observation.cruds", "system/Consent.cruds"]
        if settings.push_audit:
            scopes += ["system/AuditEvent.cu", "system/Provenance.cu"]
        try:
            pem = Path(settings.smart_private_key_file).read_bytes()
        except OSError:
            raise ConfigError("FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE cannot be read") from None
        return SmartBackendAuth(
            settings.smart_client_id,
            pem,
            key_id=settings.smart_key_id,
            algorithm=settings.smart_algorithm,
            scope=" ".join(scopes),
        )
    raise ConfigError("FHIR_ALLIANCE_FHIR_AUTH must be none, bearer or smart")


def client_from_settings(settings: Settings, *, retry: RetryPolicy | None = None) -> FhirClient:
    """A :class:`FhirClient` for ``settings.fhir_base_url`` with its auth (none, bearer, SMART
    backend services), CA bundle and timeout. ``retry`` replaces the worker's short in-call retry
    policy (:data:`WORKER_RETRY`)."""
    if not settings.fhir_base_url:
        raise ConfigError("FHIR_ALLIANCE_FHIR_BASE_URL is required to sync")
    timeout = settings.fhir_timeout_seconds
    return FhirClient(
        settings.fhir_base_url,
        auth=_auth(settings),
        timeout=(min(5.0, timeout), timeout),
        retry=retry or WORKER_RETRY,
        ca_bundle=settings.fhir_ca_bundle,
    )


def note_contact(store: Store, at: datetime) -> None:
    """Remember that the FHIR server answered at ``at``."""
    store.set_meta(META_LAST_CONTACT, at.isoformat())


def target_fhir_version(
    settings: Settings,
    store: Store,
    client: FhirClient,
    *,
    on_unreachable: Callable[[ServerError], object] | None = None,
) -> str:
    """The FHIR version to map to: ``settings.fhir_version`` when set, else the server's (from its
    CapabilityStatement, cached in the store's meta). When the server cannot be reached, the
    version it last announced at the same base URL is used (``on_unreachable`` is told the
    error); with none known the error is raised."""
    if settings.fhir_version:
        if settings.fhir_version not in FHIR_VERSIONS:
            raise ConfigError(
                f"FHIR_ALLIANCE_FHIR_VERSION must be one of {', '.join(FHIR_VERSIONS)}"
            )
        return settings.fhir_version
    try:
        version = client.capabilities().wire_version
    except ServerError as exc:
        if store.get_meta(META_FHIR_BASE_URL) == client.base.url:
            cached = store.get_meta(META_FHIR_VERSION)
            if cached in FHIR_VERSIONS:
                if on_unreachable is not None:
                    on_unreachable(exc)
                return cached
        raise
    if store.get_meta(META_FHIR_VERSION) != version:
        store.set_meta(META_FHIR_VERSION, version)
    if store.get_meta(META_FHIR_BASE_URL) != client.base.url:
        store.set_meta(META_FHIR_BASE_URL, client.base.url)
    return version


class FhirServerLink:
    """The FHIR server as one web process uses it. :meth:`client`: one :class:`FhirClient` shared by
    every request handler and thread (it is thread-safe), built on first use under a lock, so its
    SMART token, the server's discovery document and CapabilityStatement are fetched once and
    reused rather than once per request. :meth:`ready`: whether the server answers ``/metadata``,
    asked by a client of its own that sends no credentials, one question at a time, the answer
    kept for ``keep_for`` seconds. :meth:`close` ends both (the app closes it when it goes)."""

    def __init__(
        self,
        settings: Settings,
        *,
        keep_for: float = READINESS_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._keep_for = keep_for
        self._clock = clock
        self._lock = threading.Lock()
        self._readiness_lock = threading.Lock()
        self._client: FhirClient | None = None
        self._probe: FhirClient | None = None
        self._answer: tuple[float, bool] | None = None  # (kept until, ready)

    def client(self) -> FhirClient:
        """The shared client (:func:`client_from_settings`); ConfigError as that raises it."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = client_from_settings(self._settings)
                client = self._client
        return client

    def ready(self) -> bool:
        """Whether the server answered ``/metadata`` with a CapabilityStatement within
        :data:`READINESS_TIMEOUT_SECONDS`; callers at once wait for one answer and share it."""
        with self._readiness_lock:
            if self._answer is not None and self._clock() < self._answer[0]:
                return self._answer[1]
            ready = self._ask()
            self._answer = (self._clock() + self._keep_for, ready)
            return ready

    def _ask(self) -> bool:
        seconds = min(READINESS_TIMEOUT_SECONDS, self._settings.fhir_timeout_seconds)
        try:
            if self._probe is None:
                self._probe = FhirClient(
                    self._settings.fhir_base_url or "",
                    auth=NoAuth(),
                    timeout=(seconds, seconds),
                    deadline=seconds,
                    retry=RetryPolicy(max_attempts=1),
                    connect_retries=0,
                    ca_bundle=self._settings.fhir_ca_bundle,
                )
            self._probe.capabilities(refresh=True)
        except FhirAllianceError as exc:  # by type and status only: never the server's text
            log.warning(
                "FHIR server not ready",
                extra={
                    "error_type": type(exc).__name__,
                    "upstream_status": getattr(exc, "status", None),
                },
            )
            return False
        return True

    def close(self) -> None:
        """Close the clients built so far; a later call builds new ones."""
        with self._lock, self._readiness_lock:
            clients = [c for c in (self._client, self._probe) if c is not None]
            self._client = self._probe = None
        for client in clients:
            client.close()
