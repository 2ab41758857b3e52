"""A lost overwrite keeps its conflict AuditEvent until it is known whether it landed.

``outbox.lost_overwrite`` (JSON, NULL by default): the conflict policy ``overwrite`` wrote ours
over someone else's version, and the answer to that send was lost (a timeout, a reset) and could
not be read back at once, so the item is noted *landing unknown* (``landing_check_at``, migration
0010). The overwrite's conflict AuditEvent (``{"action", "at", "resource"}``) is kept with that
note, written in the same transaction as the failure: once a read-back, or the 412 of the item's
retry, finds ours on the server, the item is recorded SENT noted ``conflict: overwritten`` with
that AuditEvent, as an answered overwrite is; it goes with the note (recorded SENT, or found not
there). Before, it lived only in the worker's memory: a lost overwrite found later was recorded as
a plain send, someone else's edit overwritten without a conflict in the audit trail. Rows written
before this revision are NULL: an overwrite lost before it is not known now.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("lost_overwrite", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lost_overwrite")
