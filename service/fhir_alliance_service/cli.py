"""The service's subcommands of ``fhir-alliance`` (serve, worker, sync-once, status, replay,
create-api-key, db upgrade, load), registered through the ``fhir_alliance.commands`` entry point."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add the service's sub-parsers (filled in as the commands land)."""
