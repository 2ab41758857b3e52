"""The clinic console: sync status and alliance trends in the browser, under ``/console/``.

Server-rendered pages (Flask/Jinja2) with charts drawn on the server as SVG (``charts.py``), no
JavaScript. ``register_console(app)`` adds the blueprint and lets the app's deny-by-default check
accept a console session cookie on console pages (``session.py``). See ``docs/console.md``.
"""

from __future__ import annotations

from flask import Flask

__all__ = ["register_console"]


def register_console(app: Flask) -> None:
    from fhir_alliance_service.auth import SESSION_AUTHENTICATOR
    from fhir_alliance_service.console.session import session_api_key
    from fhir_alliance_service.console.views import blueprint

    app.extensions[SESSION_AUTHENTICATOR] = session_api_key
    app.register_blueprint(blueprint)
