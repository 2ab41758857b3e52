"""The HTTP API's blueprints, one per resource family; each module exposes a Blueprint ``bp``
(``blueprint`` is accepted too).

``register_blueprints`` adds the operational routes and the CDS consult, and the record and
consent routes where those modules exist.
"""

from __future__ import annotations

import importlib
from typing import Final

from flask import Flask

__all__ = ["BLUEPRINT_MODULES", "register_blueprints"]

#: Modules whose ``bp`` is registered, in order; missing optional ones are skipped.
BLUEPRINT_MODULES: Final = (
    "fhir_alliance_service.api.ops",
    "fhir_alliance_service.api.cds",
    "fhir_alliance_service.api.records",
    "fhir_alliance_service.api.consents",
)
_REQUIRED: Final = frozenset({"fhir_alliance_service.api.ops", "fhir_alliance_service.api.cds"})


def register_blueprints(app: Flask) -> None:
    for name in BLUEPRINT_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name in _REQUIRED or exc.name != name:
                raise
            continue
        blueprint = getattr(module, "bp", None) or getattr(module, "blueprint", None)
        if blueprint is None:
            raise RuntimeError(f"{name} has no Blueprint named bp")
        app.register_blueprint(blueprint)
