"""Two-way sync: patient aliases, per-server patient links, pull cursors, pulled resources (seen
id + versionId), remote-origin records, and the retraction / conflict marks of outbox items.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _at(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "patient_aliases",
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("alias", name="pk_patient_aliases"),
    )
    op.create_index("ix_patient_aliases_patient", "patient_aliases", ["patient"])
    op.create_table(
        "remote_patients",
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("remote", sa.Text(), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("server", "patient", name="pk_remote_patients"),
    )
    op.create_table(
        "pull_cursors",
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("last_updated", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _at("full_listing_at", nullable=True),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("server", "resource_type", name="pk_pull_cursors"),
    )
    op.create_table(
        "pulled_resources",
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=True),
        sa.Column("last_updated", sa.Text(), nullable=True),
        sa.Column("patient", sa.Text(), nullable=True),
        sa.Column("record_id", sa.String(64), nullable=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("body", sa.JSON(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _at("updated_at"),
        sa.PrimaryKeyConstraint(
            "server", "resource_type", "resource_id", name="pk_pulled_resources"
        ),
    )
    op.create_index(
        "ix_pulled_resources_server_resource_type_generation",
        "pulled_resources",
        ["server", "resource_type", "generation"],
    )
    with op.batch_alter_table("record_heads") as batch:
        batch.add_column(sa.Column("origin", sa.Text(), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("retraction", sa.String(32), nullable=True))
        batch.add_column(sa.Column("conflict", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("conflict")
        batch.drop_column("retraction")
    with op.batch_alter_table("record_heads") as batch:
        batch.drop_column("origin")
    for table in ("pulled_resources", "pull_cursors", "remote_patients", "patient_aliases"):
        op.drop_table(table)
