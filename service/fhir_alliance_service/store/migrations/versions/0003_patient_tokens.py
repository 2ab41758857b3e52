"""Patient tokens: the opaque id of every patient key (UUIDv5), so that the console finds a
patient by the id in its URL with one indexed read instead of hashing every patient key.

Existing patients are backfilled here; intake adds new ones in the transaction that stores
their first record.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The namespace of ``store/patient_tokens.py`` at the time of this migration (a test checks
# that the two agree).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir-alliance.org/console/patient")
_BATCH = 1_000


def upgrade() -> None:
    tokens = op.create_table(
        "patient_tokens",
        sa.Column("token", sa.String(36), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("token", name="pk_patient_tokens"),
    )
    connection = op.get_bind()
    query = sa.text("SELECT DISTINCT patient FROM record_heads")
    patients = connection.execute(query).scalars().all()
    batch: list[dict[str, str]] = []
    for patient in patients:
        batch.append({"token": str(uuid.uuid5(_NAMESPACE, patient)), "patient": patient})
        if len(batch) == _BATCH:
            op.bulk_insert(tokens, batch)
            batch = []
    if batch:
        op.bulk_insert(tokens, batch)


def downgrade() -> None:
    op.drop_table("patient_tokens")
