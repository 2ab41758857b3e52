"""Audit reads by time, the audit push queue, and lost leases counted apart from failed sends.

* ``audit.at`` is indexed: the console's and the metrics' reads by time range no longer scan the
  whole trail.
* With ``push_audit`` on, an AuditEvent or Provenance the FHIR server refused is no longer left
  behind: ``push_state`` (``pending`` | ``pushed`` | ``dead-lettered``; NULL: kept locally only),
  ``push_attempts``, ``push_next_at`` (the retry time, and the lease of a pass pushing it) and
  ``push_outcome`` (the last OperationOutcome) make it a queue like the outbox; a partial index
  finds the rows still queued (pending or dead-lettered). Rows pushed before this revision are marked ``pushed``; rows not pushed
  before it stay local (whether pushing was on when they were written is not known).
* ``outbox.lost_leases``: leases that expired without a result, counted apart from ``attempts``
  (failed sends), so that a database outage that stopped a worker from recording a result is not
  held against the record, while a record that kills every worker taking it is still
  dead-lettered.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Rows still in the queue (the claim and the status counts read these through the index).
_UNSETTLED_PUSH = sa.text("push_state IN ('pending', 'dead-lettered')")


def upgrade() -> None:
    op.create_index("ix_audit_at", "audit", ["at"])
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("push_state", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("push_attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("push_next_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("push_outcome", sa.JSON(), nullable=True))
    op.execute("UPDATE audit SET push_state = 'pushed' WHERE pushed")
    op.create_index(
        "ix_audit_unsettled_push_state_id",
        "audit",
        ["push_state", "id"],
        sqlite_where=_UNSETTLED_PUSH,
        postgresql_where=_UNSETTLED_PUSH,
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(
            sa.Column("lost_leases", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lost_leases")
    op.drop_index("ix_audit_unsettled_push_state_id", table_name="audit")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("push_outcome")
        batch.drop_column("push_next_at")
        batch.drop_column("push_attempts")
        batch.drop_column("push_state")
    op.drop_index("ix_audit_at", table_name="audit")
