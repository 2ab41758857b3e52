"""The server's versions a conflict was flagged against, for a person's decision.

``outbox.conflict_versions`` (JSON, a list of ``{resource_type, id, version_id}`` like ``sent``):
the versions the FHIR server held when a record was held for a person by the conflict policy
``flag``. A person's ``overwrite`` decision is sent If-Match them (a change made on the server
after that meets a 412 and is flagged again); ``keep-remote`` records them as what the server
holds. Kept apart from ``sent``, which lists only versions we wrote.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("conflict_versions", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("conflict_versions")
