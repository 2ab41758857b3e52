"""Console sessions ended on the server when they sign out.

``ended_sessions`` holds the id of every console session signed out (``console/session.py``)
until its cookie would have expired anyway (``expires_at``, indexed for pruning). Before, signing
out only deleted the cookie in the browser that signed out: a copy of it kept opening the console
for up to 8 hours. Session cookies signed before this revision carry no session id and are no
longer accepted: their browsers are asked to sign in again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ended_sessions",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name="pk_ended_sessions"),
    )
    op.create_index("ix_ended_sessions_expires_at", "ended_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_ended_sessions_expires_at", table_name="ended_sessions")
    op.drop_table("ended_sessions")
