"""Patient tokens keyed with the installation's secret.

Before, a patient's console id (``/console/patients/<id>``) was the UUIDv5 of the patient key
in a fixed public namespace: anyone could compute it from a guessed reference or MRN and look for
it in browser history or a proxy log. Now it is an HMAC-SHA256 of the key under a random secret
made here once and kept in ``meta`` (``console.patient_token_key``), shaped as a UUID version 8
(``store/patient_tokens.py``). Every ``patient_tokens`` row is rewritten; old console URLs of
patients stop working. Downgrading writes the UUIDv5 tokens back and drops the secret. The secret
is never logged.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# What ``store/patient_tokens.py`` says at this revision (a test checks that the two agree), and
# the namespace of the tokens before it (migration 0003).
_META_NAME = "console.patient_token_key"
_PUBLIC_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir-alliance.org/console/patient")
_BATCH = 1_000

_meta = sa.table("meta", sa.column("name", sa.String), sa.column("value", sa.Text))
_tokens = sa.table("patient_tokens", sa.column("token", sa.String), sa.column("patient", sa.Text))


def _keyed(secret: str, patient: str) -> str:
    digest = bytearray(
        hmac.new(secret.encode("utf-8"), patient.encode("utf-8"), hashlib.sha256).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


def _public(patient: str) -> str:
    return str(uuid.uuid5(_PUBLIC_NAMESPACE, patient))


def _rewrite(token_of: Callable[[str], str]) -> None:
    """Replace every row by one for the same patient under ``token_of(patient)``."""
    connection = op.get_bind()
    patients = connection.execute(sa.select(_tokens.c.patient).distinct()).scalars().all()
    connection.execute(_tokens.delete())
    for start in range(0, len(patients), _BATCH):
        batch = patients[start : start + _BATCH]
        connection.execute(_tokens.insert(), [{"token": token_of(p), "patient": p} for p in batch])


def upgrade() -> None:
    connection = op.get_bind()
    query = sa.select(_meta.c.value).where(_meta.c.name == _META_NAME)
    secret = connection.execute(query).scalar_one_or_none()
    if secret is None:
        secret = secrets.token_urlsafe(32)
        connection.execute(_meta.insert().values(name=_META_NAME, value=secret))
    _rewrite(lambda patient: _keyed(secret, patient))


def downgrade() -> None:
    _rewrite(_public)
    op.get_bind().execute(_meta.delete().where(_meta.c.name == _META_NAME))
