"""API key names unique among keys not revoked, enforced by the database.

``create-api-key`` refused a name that a key not revoked already had, but only by reading first:
two runs at the same moment could both add one. ``api_keys.name_folded`` holds the name as names
are compared (without surrounding blanks and case: ``interface.api_key_name_folded``), and a
partial unique index over it lets only one key not revoked hold a name; revoked keys keep theirs,
so a name can be used again once its key is revoked.

A database whose keys not revoked already share a name is not upgraded: the upgrade stops with
:class:`~fhir_alliance_service.store.interface.ApiKeyNamesShared` (one line naming the keys)
before anything is changed, and no key is revoked or dropped behind the operator's back.
``list-api-keys`` and ``revoke-api-key`` work on the database at 0004, so that all but one key of
each such name can be revoked first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from alembic import op
from fhir_alliance_service.store.interface import ApiKeyNamesShared

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ACTIVE = sa.text("revoked_at IS NULL")
_INDEX = "uq_api_keys_active_name_folded"


def _folded(name: str) -> str:
    """``interface.api_key_name_folded`` as it was at this revision."""
    return name.strip().casefold()


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        # No key added or revoked by a running service between this check and the index.
        # (SQLite: the upgrade's transaction holds the write lock already.)
        op.execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
    rows = connection.execute(
        sa.text("SELECT key_id, name, revoked_at FROM api_keys ORDER BY created_at, key_id")
    ).all()
    active: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key_id, name, revoked_at in rows:
        if revoked_at is None:
            active[_folded(name)].append((key_id, name))
    shared = [
        (keys[0][1], [key_id for key_id, _ in keys]) for keys in active.values() if len(keys) > 1
    ]
    if shared:
        raise ApiKeyNamesShared(shared)

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("name_folded", sa.Text(), nullable=True))
    fill = sa.text("UPDATE api_keys SET name_folded = :folded WHERE key_id = :key_id")
    for key_id, name, _ in rows:
        connection.execute(fill, {"folded": _folded(name), "key_id": key_id})
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("name_folded", existing_type=sa.Text(), nullable=False)
    op.create_index(
        _INDEX,
        "api_keys",
        ["name_folded"],
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("name_folded")
