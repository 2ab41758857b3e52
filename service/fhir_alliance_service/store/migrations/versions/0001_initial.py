"""The initial schema: records and their heads, the outbox, audit, API keys and meta.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PENDING = sa.text("state IN ('queued', 'failed')")


def _id_column(name: str) -> sa.Column[int]:
    return sa.Column(
        name,
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def _at(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("record_id", "version", name="pk_records"),
    )
    op.create_table(
        "record_heads",
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("record_id", name="pk_record_heads"),
        sa.ForeignKeyConstraint(
            ["record_id", "version"],
            ["records.record_id", "records.version"],
            name="fk_record_heads_record_id_records",
        ),
    )
    op.create_index(
        "ix_record_heads_patient_family_record_id",
        "record_heads",
        ["patient", "family", "record_id"],
    )
    op.create_index("ix_record_heads_family_record_id", "record_heads", ["family", "record_id"])

    op.create_table(
        "outbox",
        _id_column("item_id"),
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("record_version", sa.Integer(), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("held_reason", sa.Text(), nullable=True),
        _at("next_attempt_at", nullable=True),
        sa.Column("last_outcome", sa.JSON(), nullable=True),
        sa.Column("sent", sa.JSON(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        _at("lease_until", nullable=True),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("item_id", name="pk_outbox"),
        sa.ForeignKeyConstraint(
            ["record_id", "record_version"],
            ["records.record_id", "records.version"],
            name="fk_outbox_record_id_records",
        ),
    )
    op.create_index(
        "ix_outbox_pending_item_id",
        "outbox",
        ["item_id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )
    op.create_index(
        "ix_outbox_pending_patient_item_id",
        "outbox",
        ["patient", "item_id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )
    op.create_index("ix_outbox_state_item_id", "outbox", ["state", "item_id"])
    op.create_index("ix_outbox_record_id_item_id", "outbox", ["record_id", "item_id"])
    op.create_index("ix_outbox_patient_state", "outbox", ["patient", "state"])

    op.create_table(
        "audit",
        _id_column("id"),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=True),
        sa.Column("patient", sa.Text(), nullable=True),
        sa.Column("resource", sa.JSON(), nullable=False),
        _at("at"),
        sa.Column("pushed", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_record_id_id", "audit", ["record_id", "id"])

    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(256), nullable=False),
        _at("created_at"),
        _at("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_api_keys"),
    )
    op.create_table(
        "meta",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_meta"),
    )


def downgrade() -> None:
    for table in ("meta", "api_keys", "audit", "outbox", "record_heads", "records"):
        op.drop_table(table)
