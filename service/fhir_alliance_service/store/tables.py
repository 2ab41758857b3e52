"""The store's tables as SQLAlchemy Core metadata: what the queries in ``sql.py`` are written
against. The schema itself is created and changed only by the Alembic migrations in
``migrations/``; a test checks that they and this module agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ACTIVE_API_KEY_SQL",
    "LANDING_UNKNOWN_SQL",
    "UNSETTLED_PUSH_SQL",
    "PENDING_STATES_SQL",
    "UtcDateTime",
    "api_keys",
    "audit",
    "ended_sessions",
    "meta",
    "metadata",
    "outbox",
    "patient_aliases",
    "patient_tokens",
    "pull_cursors",
    "pulled_resources",
    "record_heads",
    "records",
    "remote_patients",
    "retraction_checks",
]


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in and out, on both backends. Naive datetimes are refused:
    the store cannot guess their zone. SQLite keeps naive UTC text (which sorts correctly);
    PostgreSQL keeps ``timestamptz``."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store: use UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

# Outbox states that keep later items of the same patient waiting (claim order).
PENDING_STATES_SQL = "state IN ('queued', 'failed')"

# Outbox items a send of which may have landed unrecorded (``landing_check_at``, migration 0010).
LANDING_UNKNOWN_SQL = "landing_check_at IS NOT NULL"

# Audit rows still in the push queue: to push (first try or a retry) or dead-lettered.
UNSETTLED_PUSH_SQL = "push_state IN ('pending', 'dead-lettered')"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Every version of every record; never updated, never deleted.
records = Table(
    "records",
    metadata,
    Column("record_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("identifier", Text, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("family", String(32), nullable=False),
    Column("patient", Text, nullable=False),
    Column("body", JSON, nullable=False),
    Column("content_hash", String(128), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),  # when this version was stored
)

#: One row per record naming its newest version: listing, paging and idempotent intake read this
#: small table instead of finding the maximum version among all versions.
record_heads = Table(
    "record_heads",
    metadata,
    Column("record_id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("family", String(32), nullable=False),
    Column("patient", Text, nullable=False),
    Column("content_hash", String(128), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),  # when version 1 was stored
    Column("updated_at", UtcDateTime, nullable=False),  # when the newest version was stored
    # None: a local record; else the base URL of the FHIR server it was pulled from (never pushed).
    Column("origin", Text),
    ForeignKeyConstraint(["record_id", "version"], ["records.record_id", "records.version"]),
    Index("ix_record_heads_patient_family_record_id", "patient", "family", "record_id"),
    Index("ix_record_heads_family_record_id", "family", "record_id"),
)

#: One row per record version to sync; ``state`` is a ``SyncState`` value.
outbox = Table(
    "outbox",
    metadata,
    Column("item_id", AutoId, primary_key=True, autoincrement=True),
    Column("record_id", String(64), nullable=False),
    Column("record_version", Integer, nullable=False),
    Column("patient", Text, nullable=False),
    Column("state", String(16), nullable=False),
    # Failed sends (transient failures); ``lost_leases``: leases that expired without a result,
    # since the last result (a worker stopped on it: a poison record, or a database outage).
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("lost_leases", Integer, nullable=False, server_default=text("0")),
    Column("held_reason", Text),
    Column("next_attempt_at", UtcDateTime),
    Column("last_outcome", JSON),
    Column("sent", JSON),
    Column("lease_owner", String(200)),
    Column("lease_until", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # Two-way sync marks of a sent item (``sync/retract.py``, the worker's 412 policy).
    Column("retraction", String(32)),
    Column("conflict", String(32)),
    # The server's versions when a conflict was flagged for a person (migration 0006): the
    # If-Match of a person's overwrite, what keep-remote records. Never versions we wrote.
    Column("conflict_versions", JSON),
    # A send of this item whose answer was lost (a timeout, a reset) may have landed (migration
    # 0010): when to read its resources back, once the item is no longer pending (a lease of the
    # worker reading them meanwhile). NULL: nothing unknown (recorded SENT, or found not there).
    Column("landing_check_at", UtcDateTime),
    # The conflict AuditEvent (``{"action", "at", "resource"}``) of an overwrite (the conflict
    # policy ``overwrite``) whose answer was lost (migration 0012): kept with the landing-unknown
    # note, recorded with the send (``conflict: overwritten``) once ours is found on the server,
    # dropped with the note. Also written before the overwrite's send, under the worker's lease
    # (``note_overwrite``): a worker that stops before its record leaves it to the takeover
    # (whose claim notes the item landing unknown). NULL: no overwrite of this item is waiting
    # to be known.
    Column("lost_overwrite", JSON),
    ForeignKeyConstraint(["record_id", "record_version"], ["records.record_id", "records.version"]),
    # Claim: scan pending items oldest first; check "an older pending item of this patient".
    Index(
        "ix_outbox_pending_item_id",
        "item_id",
        sqlite_where=text(PENDING_STATES_SQL),
        postgresql_where=text(PENDING_STATES_SQL),
    ),
    Index(
        "ix_outbox_pending_patient_item_id",
        "patient",
        "item_id",
        sqlite_where=text(PENDING_STATES_SQL),
        postgresql_where=text(PENDING_STATES_SQL),
    ),
    Index("ix_outbox_state_item_id", "state", "item_id"),
    Index("ix_outbox_record_id_item_id", "record_id", "item_id"),
    Index("ix_outbox_patient_state", "patient", "state"),
    # The read-backs due (by state, then time) and their count: a handful of rows, not the outbox.
    Index(
        "ix_outbox_landing_unknown_state_landing_check_at",
        "state",
        "landing_check_at",
        sqlite_where=text(LANDING_UNKNOWN_SQL),
        postgresql_where=text(LANDING_UNKNOWN_SQL),
    ),
)

#: Local audit trail: AuditEvent / Provenance resources, optionally pushed to the FHIR server.
audit = Table(
    "audit",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("action", String(32), nullable=False),
    Column("record_id", String(64)),
    Column("patient", Text),
    Column("resource", JSON, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("pushed", Boolean, nullable=False, server_default=text("false")),
    # The push queue (``push_audit`` on): NULL kept locally only; ``pending`` (due at
    # ``push_next_at``, which is also the lease of the pass pushing it), ``pushed``,
    # ``dead-lettered`` (``push_outcome`` holds the OperationOutcome). See ``audit_push.py``.
    Column("push_state", String(16)),
    Column("push_attempts", Integer, nullable=False, server_default=text("0")),
    Column("push_next_at", UtcDateTime),
    Column("push_outcome", JSON),
    Index("ix_audit_record_id_id", "record_id", "id"),
    Index("ix_audit_at", "at"),
    Index(
        "ix_audit_unsettled_push_state_id",
        "push_state",
        "id",
        sqlite_where=text(UNSETTLED_PUSH_SQL),
        postgresql_where=text(UNSETTLED_PUSH_SQL),
    ),
)

# API keys that are not revoked (only these must have names of their own).
ACTIVE_API_KEY_SQL = "revoked_at IS NULL"

#: API keys: the public prefix, scopes and a hash of the secret (never the secret).
#: ``name_folded``: the name as names are compared (``interface.api_key_name_folded``); the
#: database lets only one key not revoked have it (migration 0005), revoked keys keep theirs.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("secret_hash", String(256), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    Column("name_folded", Text, nullable=False),
    Index(
        "uq_api_keys_active_name_folded",
        "name_folded",
        unique=True,
        sqlite_where=text(ACTIVE_API_KEY_SQL),
        postgresql_where=text(ACTIVE_API_KEY_SQL),
    ),
)

#: Console sessions signed out (migration 0007): a signed session cookie naming one of these ids
#: opens nothing any more, in any process. A row is dropped once its cookie has expired anyway
#: (``expires_at``), so the table holds at most a working day's sign-outs.
ended_sessions = Table(
    "ended_sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("expires_at", UtcDateTime, nullable=False),
    Index("ix_ended_sessions_expires_at", "expires_at"),
)

#: Patients whose sends are to be put to the retraction policy (again) by any worker's next
#: retraction pass (migration 0011, ``sync/retract.py``): a check that failed, or one a worker
#: is making (under its lease: another takes it over once the lease ends). ``note``: a new id each
#: time the patient is noted, so that a check which began before a later note does not clear it.
#: ``lease_until``: NULL, due at once; else nobody else checks the patient until then.
retraction_checks = Table(
    "retraction_checks",
    metadata,
    Column("patient", Text, primary_key=True),
    Column("note", String(36), nullable=False),
    Column("lease_until", UtcDateTime),
)

#: Small named facts (the FHIR server's last contact, its FHIR version, …).
meta = Table(
    "meta",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)


#: Keys that name the same patient as ``patient`` (the key records are filed under): a patient
#: known by reference and by identifiers is one patient (``usecases/consents.py``).
patient_aliases = Table(
    "patient_aliases",
    metadata,
    Column("alias", Text, primary_key=True),
    Column("patient", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_patient_aliases_patient", "patient"),
)

#: How a local patient is named on each FHIR server the service syncs with (``Patient/<id>``).
remote_patients = Table(
    "remote_patients",
    metadata,
    Column("server", Text, primary_key=True),
    Column("patient", Text, primary_key=True),
    Column("remote", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

#: Where the incremental pull of one resource type from one server stands.
pull_cursors = Table(
    "pull_cursors",
    metadata,
    Column("server", Text, primary_key=True),
    Column("resource_type", String(64), primary_key=True),
    Column("last_updated", Text),  # newest meta.lastUpdated seen, as the server wrote it
    Column("generation", Integer, nullable=False, server_default=text("0")),  # full listings
    Column("full_listing_at", UtcDateTime),
    Column("updated_at", UtcDateTime, nullable=False),
)

#: Every remote resource the pull has seen: (id, versionId) for dedupe, the listing generation
#: it was last seen in (deletions), and for pulled Observations their content (read-only).
pulled_resources = Table(
    "pulled_resources",
    metadata,
    Column("server", Text, primary_key=True),
    Column("resource_type", String(64), primary_key=True),
    Column("resource_id", String(64), primary_key=True),
    Column("version_id", String(64)),
    Column("last_updated", Text),
    Column("patient", Text),
    Column("record_id", String(64)),
    Column("origin", String(16), nullable=False),  # ours | foreign
    Column("state", String(32), nullable=False),  # merged | unreadable | conflict | deleted | …
    Column("body", JSON),
    Column("generation", Integer, nullable=False, server_default=text("0")),
    Column("updated_at", UtcDateTime, nullable=False),
    Index(
        "ix_pulled_resources_server_resource_type_generation",
        "server",
        "resource_type",
        "generation",
    ),
)

#: The opaque id (``store/patient_tokens.py``) of every patient key that has a record: the
#: console looks a patient up by the id in its URL (migration 0003).
patient_tokens = Table(
    "patient_tokens",
    metadata,
    Column("token", String(36), primary_key=True),
    Column("patient", Text, nullable=False),
)
