"""Pending retraction checks are kept in the store, not in a worker's memory.

``retraction_checks`` holds one row per patient whose sends are to be put to the retraction
policy (again): a check that failed (the FHIR server's error, a database outage, a bug), or one
a worker is making right now (``lease_until``: until then nobody else takes it; a worker that
dies leaves it to the others once it ends). Any worker's next retraction pass claims the due
rows, and a check that succeeds deletes its row unless the patient was noted again meanwhile
(``note``, a new id per note). Before, such a check was remembered by the process that failed
it only: after a restart, or in another worker, it waited for the full pass. The table starts
empty: checks failed before this revision are not known (the full pass finds them).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retraction_checks",
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("note", sa.String(36), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("patient", name="pk_retraction_checks"),
    )


def downgrade() -> None:
    op.drop_table("retraction_checks")
