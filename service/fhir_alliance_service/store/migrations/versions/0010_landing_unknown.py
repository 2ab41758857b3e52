"""Sends that may have landed unrecorded are noted, so that they are read back until known.

``outbox.landing_check_at`` (a time, NULL by default): a send of the item whose answer was lost
(a timeout, a reset) may have landed on the FHIR server, and its item did not end SENT (it was
superseded by a newer version, held or dead-lettered before a send of it was answered). Once the
item is no longer pending, the worker reads its resources back at that time (and, while it reads,
the time is its lease): landed and ours, the item is recorded SENT with its disclosure audit, so
retraction and the next If-Match see it; not there, the note is dropped. A partial index finds
the few noted items by state and time (the worker's read-backs, the status count). Rows written
before this revision are NULL: a lost answer before it is not known now.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The noted items (the worker's read-backs and the status count read these through the index).
_LANDING_UNKNOWN = sa.text("landing_check_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("landing_check_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_outbox_landing_unknown_state_landing_check_at",
        "outbox",
        ["state", "landing_check_at"],
        sqlite_where=_LANDING_UNKNOWN,
        postgresql_where=_LANDING_UNKNOWN,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_landing_unknown_state_landing_check_at", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("landing_check_at")
