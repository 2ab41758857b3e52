"""The storage interface the API, the CLI and the worker use; one contract, two backends.

``SqlStore`` (``store/sql.py``) implements it over SQLAlchemy 2 for SQLite (WAL, the embedded
default) and PostgreSQL (psycopg 3; workers claim with ``FOR UPDATE SKIP LOCKED``). The contract
tests in ``tests/service/store/`` run against both.

Shapes:

* A **record** is one domain record (alliance observation or consent) in our JSON form. Its
  ``record_id`` is opaque and stable: ``fhir_alliance.mapping._ids.resource_id(identifier)``, the
  UUIDv5 of its business identifier ``system|value`` (the same id its primary FHIR resource gets),
  so that URLs and logs never carry the identifier itself. Each change of content makes a new
  ``version`` (1, 2, …); re-posting identical content changes nothing.
* An **outbox item** is one record version waiting to be synced. Intake writes the record, its
  audit entry and its outbox item in one transaction. A newer version of a record supersedes an
  older item that has not been sent. Items of one patient are claimed in intake order: an item is
  not claimable while an older item of the same patient is queued, leased or failed-and-waiting
  (held and dead-lettered items do not block).
* The **sync status** of a record is the state of its newest outbox item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "ApiKey",
    "AuditEntry",
    "IntakeResult",
    "NewRecord",
    "OutboxItem",
    "PutOutcome",
    "SentResource",
    "Store",
    "StoredRecord",
    "SyncState",
    "SyncStatus",
]


class SyncState(StrEnum):
    QUEUED = "queued"  # waiting for a worker (possibly leased by one right now)
    HELD = "held"  # the consent gate said no; ``held_reason`` says why; re-run on consent change
    SENT = "sent"  # on the FHIR server; ``sent`` lists ids and versions
    FAILED = "failed"  # a transient failure; retried at ``next_attempt_at``
    DEAD_LETTERED = "dead-lettered"  # permanent failure; ``last_outcome``: the OperationOutcome
    SUPERSEDED = "superseded"  # a newer version of the record replaced it before it was sent


class PutOutcome(StrEnum):
    CREATED = "created"  # a new record (version 1)
    UPDATED = "updated"  # changed content: a new version, queued
    UNCHANGED = "unchanged"  # same content as the newest version: nothing written


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A validated record ready to store. ``family`` is ``observation`` or ``consent`` (which
    mapper); ``patient`` the patient key (the reference as posted, e.g. ``Patient/123``, or an
    identifier token ``system|value``); ``body`` our JSON form (``MAPPER.dump(record)``);
    ``content_hash`` a hash of the canonical body (same content, same hash)."""

    record_id: str
    identifier: str  # the business identifier system|value
    kind: str
    family: str
    patient: str
    body: Mapping[str, Any]
    content_hash: str


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record_id: str
    identifier: str
    kind: str
    family: str
    patient: str
    version: int
    body: Mapping[str, Any]
    content_hash: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class IntakeResult:
    record_id: str
    version: int
    outcome: PutOutcome


@dataclass(frozen=True, slots=True)
class SentResource:
    """One FHIR resource as the server holds it after a send."""

    resource_type: str
    id: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class SyncStatus:
    record_id: str
    record_version: int
    state: SyncState
    attempts: int = 0
    held_reason: str | None = None
    next_attempt_at: datetime | None = None
    last_outcome: Mapping[str, Any] | None = None  # OperationOutcome of the last failure
    sent: tuple[SentResource, ...] = ()
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A claimed item: what a worker needs to gate, map and send one record version."""

    item_id: int
    record_id: str
    record_version: int
    kind: str
    family: str
    patient: str
    body: Mapping[str, Any]
    attempts: int  # failures so far (0 on the first try)
    lease_owner: str
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A local audit row: an AuditEvent or Provenance resource (FHIR JSON, no free text) about a
    record. ``action`` is a short machine word (``intake``, ``disclose``, ``hold``, ``dead-letter``,
    ``replay``, ``revoke``, …) for listing and metrics."""

    action: str
    record_id: str | None
    patient: str | None
    resource: Mapping[str, Any]
    at: datetime
    pushed: bool = False
    id: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str  # the public prefix of the key, e.g. "fa_3f9c1b2a"
    name: str
    scopes: frozenset[str]
    secret_hash: str  # hex digest; the secret itself is never stored
    created_at: datetime
    revoked_at: datetime | None = None


class Store(Protocol):
    """Every method is one short transaction; none is held open across an HTTP call."""

    # -- lifecycle -----------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise if the database cannot be reached (``/readyz``)."""

    def close(self) -> None: ...

    # -- intake --------------------------------------------------------------------------------
    def put_records(
        self, records: Sequence[NewRecord], *, audit: Sequence[AuditEntry], at: datetime
    ) -> list[IntakeResult]:
        """Store ``records`` and ``audit`` all-or-nothing, in one transaction. For each record: new
        → version 1 and an outbox item; same content as the newest version → UNCHANGED, nothing
        written; changed content → a new version and an outbox item (older unsent items of the
        record become SUPERSEDED). ``audit`` entries whose ``record_id`` names an UNCHANGED record are
        not written."""

    # -- reading -------------------------------------------------------------------------------
    def get_record(self, record_id: str, *, version: int | None = None) -> StoredRecord | None: ...

    def get_records(self, record_ids: Sequence[str]) -> dict[str, StoredRecord]:
        """The newest version of each of ``record_ids`` that exists, by record id, in a few
        queries whatever their number (intake checks a whole batch with one call)."""

    def list_records(
        self,
        *,
        patient: str | None = None,
        family: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[StoredRecord]:
        """Newest version of each record, ordered by ``record_id``; ``after`` pages (keyset)."""

    def patients(self) -> list[str]: ...

    def sync_status(self, record_id: str) -> SyncStatus | None: ...

    def counts_by_state(self) -> dict[SyncState, int]: ...

    def list_by_state(
        self, state: SyncState, *, limit: int = 100, after: int | None = None
    ) -> list[SyncStatus]: ...

    # -- worker --------------------------------------------------------------------------------
    def claim(
        self, worker: str, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` claimable items (QUEUED, or FAILED with ``next_attempt_at <= now``,
        not leased or with an expired lease), oldest first, at most the oldest pending item per
        patient. PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so concurrent workers never get one
        item twice."""

    def mark_sent(
        self,
        item_id: int,
        worker: str,
        *,
        sent: Sequence[SentResource],
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> bool:
        """Record a send. Returns False (and writes nothing) if ``worker`` no longer holds the
        lease: another worker took the item over. Same for the other ``mark_*``."""

    def mark_held(
        self, item_id: int, worker: str, *, reason: str, audit: Sequence[AuditEntry], at: datetime
    ) -> bool: ...

    def mark_failed(
        self,
        item_id: int,
        worker: str,
        *,
        outcome: Mapping[str, Any],
        next_attempt_at: datetime,
        at: datetime,
    ) -> bool: ...

    def mark_dead(
        self,
        item_id: int,
        worker: str,
        *,
        outcome: Mapping[str, Any],
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> bool: ...

    def release_held(self, patient: str, *, at: datetime) -> int:
        """Re-queue every HELD item of ``patient`` (their consents changed); returns how many."""

    def replay(self, record_id: str | None = None, *, at: datetime) -> int:
        """Re-queue DEAD_LETTERED items (one record's, or all); attempts start again at 0."""

    # -- consents ------------------------------------------------------------------------------
    def consents_for_patient(self, patient: str) -> list[StoredRecord]:
        """Newest version of every consent record of ``patient``."""

    def consents_stamp(self, patient: str) -> str:
        """A cheap value that changes whenever any consent record of ``patient`` changes (one
        indexed query), so that compiled consent engines can be cached per patient."""

    # -- audit ---------------------------------------------------------------------------------
    def add_audit(self, entries: Sequence[AuditEntry]) -> None: ...

    def list_audit(
        self, *, record_id: str | None = None, limit: int = 100, after: int | None = None
    ) -> list[AuditEntry]: ...

    # -- API keys ------------------------------------------------------------------------------
    def add_api_key(self, key: ApiKey) -> None: ...

    def find_api_key(self, key_id: str) -> ApiKey | None: ...

    def revoke_api_key(self, key_id: str, *, at: datetime) -> bool: ...

    # -- operations ----------------------------------------------------------------------------
    def set_meta(self, name: str, value: str) -> None:
        """Small named facts: the FHIR server's last contact, its FHIR version, …"""

    def get_meta(self, name: str) -> str | None: ...
