"""Alembic environment: always handed an open connection by ``store.schema`` (no alembic.ini)."""

from __future__ import annotations

from alembic import context
from fhir_alliance_service.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through fhir_alliance_service.store.upgrade(url)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
