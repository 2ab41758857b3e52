"""The HTTP API's blueprints, one per resource family.

``register_blueprints`` adds the operational routes (``ops``), the CDS consult (``cds``), the
two-way sync's notification and alias routes (``two_way``) and the
``/v1`` record, consent and session-note routes (``records``, ``consents``, ``notes``). Every view declares its scope
(``auth.require_scope``); the app refuses any that does not.
"""

from __future__ import annotations

from flask import Flask

__all__ = ["register_blueprints"]


def register_blueprints(app: Flask) -> None:
    from fhir_alliance_service.api import cds, consents, notes, ops, records, two_way

    app.register_blueprint(ops.bp)
    app.register_blueprint(cds.bp)
    app.register_blueprint(records.blueprint)
    app.register_blueprint(consents.blueprint)
    app.register_blueprint(notes.blueprint)
    app.register_blueprint(two_way.blueprint)
