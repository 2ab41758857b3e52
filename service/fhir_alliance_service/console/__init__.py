"""The clinic console: sync status and alliance trends in the browser, under ``/console/``.

Server-rendered pages (Flask/Jinja2) with charts drawn on the server as SVG (``charts.py``), no
JavaScript. ``register_console(app)`` adds the blueprint, lets the app's deny-by-default check
accept a console session cookie on console pages (``session.py``), and has the app answer the
errors routing finds under ``/console/`` (404, 405) and its 503 for a store whose schema changed
with the console's error page, not an OperationOutcome. See ``docs/console.md``.
"""

from __future__ import annotations

from flask import Flask

__all__ = ["register_console"]


def register_console(app: Flask) -> None:
    from fhir_alliance_service.auth import SESSION_AUTHENTICATOR
    from fhir_alliance_service.console.session import session_api_key
    from fhir_alliance_service.console.views import blueprint, error_page_without_view
    from fhir_alliance_service.errors import HTML_ERROR_PAGES

    app.extensions[SESSION_AUTHENTICATOR] = session_api_key
    # An unknown console address (404) or a method a page does not take (405) is found by
    # routing, before any console view, and the app's 503 once the store's schema changed comes
    # before any view too: the app answers them with this page.
    pages = app.extensions.setdefault(HTML_ERROR_PAGES, {})
    pages[f"{blueprint.url_prefix}/"] = error_page_without_view
    app.register_blueprint(blueprint)
