"""The Flask application factory: settings → store → request ids, auth, error handlers, routes
(the API and the clinic console).

No application object exists at import time. ``gunicorn 'fhir_alliance_service.app:wsgi_app()'``
builds one per worker process from the environment, with JSON logs.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from flask import Flask, Response, current_app, request

from fhir_alliance.errors import Issue
from fhir_alliance_service.api import register_blueprints
from fhir_alliance_service.auth import ApiKeyCache, register_auth
from fhir_alliance_service.config import Settings, load_settings, validated
from fhir_alliance_service.console import register_console
from fhir_alliance_service.errors import (
    html_error_page,
    operation_outcome,
    outcome_response,
    register_error_handlers,
    serves_without_store,
)
from fhir_alliance_service.logs import configure_logging, register_request_logging
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.store.schema_watch import SchemaWatch

if TYPE_CHECKING:
    from fhir_alliance_service.sync.subscriptions import NotificationGate
    from fhir_alliance_service.sync.target import FhirServerLink

__all__ = ["EXTENSION", "ServiceState", "create_app", "current_service", "wsgi_app"]

EXTENSION: Final = "fhir_alliance"


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What every request handler needs: the settings and the store (one per app), the app's
    cache of looked-up API keys, its link to the FHIR server (one client per process), its bounds
    on subscription notifications, and the watch on the store's schema revision."""

    settings: Settings
    store: Store
    api_keys: ApiKeyCache = field(default_factory=lambda: ApiKeyCache(0))
    fhir: FhirServerLink = field(init=False)
    notifications: NotificationGate = field(init=False)
    schema: SchemaWatch = field(init=False)

    def __post_init__(self) -> None:
        # the sync loads on use
        from fhir_alliance_service.sync.subscriptions import NotificationGate
        from fhir_alliance_service.sync.target import FhirServerLink

        object.__setattr__(self, "fhir", FhirServerLink(self.settings))
        gate = NotificationGate(self.settings.max_notifications_per_minute)
        object.__setattr__(self, "notifications", gate)
        object.__setattr__(self, "schema", SchemaWatch(self.store.schema_revision))


def create_app(
    config: Settings | Mapping[str, Any] | None = None, *, store: Store | None = None
) -> Flask:
    """Build the API. ``config``: ``Settings`` (checked again), or overrides applied over the environment,
    or None (the environment only). ``store``: an open store to use instead of opening
    ``settings.database_url`` (tests, embedding)."""
    settings = (
        validated(config) if isinstance(config, Settings) else load_settings(overrides=config)
    )
    if store is None:
        from fhir_alliance_service.store import open_store

        store = open_store(
            settings.database_url, write_wait_seconds=settings.sqlite_write_wait_seconds
        )
    app = Flask("fhir_alliance_service", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    state = ServiceState(
        settings=settings, store=store, api_keys=ApiKeyCache(settings.api_key_cache_seconds)
    )
    app.extensions[EXTENSION] = state
    # Flask has no shutdown hook: the FHIR clients close when the app goes or the process exits.
    weakref.finalize(app, state.fhir.close)
    register_request_logging(app)  # first: refused requests get an id too
    app.before_request(_refuse_if_schema_changed)
    register_auth(app)
    register_error_handlers(app)
    register_blueprints(app)
    register_console(app)
    app.after_request(_never_cached)
    return app


def _never_cached(response: Response) -> Response:
    """Every answer may carry patient data (a record, a patient's list, an OperationOutcome
    naming a field): no cache keeps it. A shared cache (a reverse proxy, an organisation's proxy)
    would otherwise keep a ``200`` to a ``GET`` sent with ``X-API-Key``, which, unlike
    ``Authorization``, does not stop it, and hand it to the next asker without a key. And no
    browser reads a JSON answer as another type. The console sets its own (the same and more)."""
    headers = response.headers
    headers.setdefault("Cache-Control", "no-store")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def current_service() -> ServiceState:
    """The settings and store of the app handling the current request."""
    state: ServiceState = current_app.extensions[EXTENSION]
    return state


#: What every route but ``/healthz`` answers once the store's schema changed under the process.
SCHEMA_CHANGED_MESSAGE: Final = "the store's schema changed; restart the service"
#: The same on a page people open in a browser (the console's): nothing of the cause.
UNAVAILABLE_PAGE_MESSAGE: Final = "the service is unavailable; please tell its administrator"


def _refuse_if_schema_changed() -> Response | None:
    """503 for every route but those reading nothing of the store (``/healthz``, and the console's
    stylesheet so that its 503 page is styled: :func:`~.errors.store_free`; ``/readyz`` is not
    one: not ready) once the store's schema is no longer this release's (another release's
    ``db upgrade`` ran while this process served):
    writing on would file records the old way (migration 0009's patient keys, for one). The
    revision is read at most once every ``SCHEMA_CHECK_SECONDS`` per process, not per request;
    the watch logs the one error line. Under a browser area (the console) the answer is that
    area's HTML error page, saying nothing of the cause."""
    if serves_without_store(request.endpoint) or current_service().schema.mismatch() is None:
        return None
    page = html_error_page(request.path)
    if page is not None:
        return page(503, UNAVAILABLE_PAGE_MESSAGE, {})
    issue = Issue(path="", message=SCHEMA_CHANGED_MESSAGE, code="exception")
    return outcome_response(503, operation_outcome([issue]))


def wsgi_app() -> Flask:
    """gunicorn's entry point: settings from the environment, JSON logs on stderr."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
