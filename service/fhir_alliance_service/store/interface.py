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
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "ApiKey",
    "ApiKeyNameTaken",
    "ApiKeyNamesShared",
    "AuditEntry",
    "AuditPushFailure",
    "AuditPushState",
    "IntakeEventBuilder",
    "IntakeEvents",
    "IntakeResult",
    "KindChangeRefused",
    "NewRecord",
    "OutboxItem",
    "PatientChangeRefused",
    "PendingRetractionChecks",
    "PullCursor",
    "PulledResource",
    "PutOutcome",
    "RETRACTION_DELETED",
    "RETRACTION_ENTERED_IN_ERROR",
    "RETRACTION_KEPT",
    "ReplayResult",
    "RetractionCheck",
    "SentResource",
    "Store",
    "StoredRecord",
    "SyncState",
    "SyncStatus",
    "api_key_name_folded",
]


class SyncState(StrEnum):
    QUEUED = "queued"  # waiting for a worker (possibly leased by one right now)
    HELD = "held"  # the consent gate said no; ``held_reason`` says why; re-run on consent change
    SENT = "sent"  # on the FHIR server; ``sent`` lists ids and versions
    FAILED = "failed"  # a transient failure; retried at ``next_attempt_at``
    DEAD_LETTERED = "dead-lettered"  # permanent failure; ``last_outcome``: the OperationOutcome
    SUPERSEDED = "superseded"  # a newer version of the record replaced it before it was sent


class AuditPushState(StrEnum):
    """Where an audit row stands with the FHIR server (``push_audit``; None: kept locally only)."""

    PENDING = "pending"  # to push: first try or a retry at ``push_next_at``
    PUSHED = "pushed"  # the server took it
    DEAD_LETTERED = "dead-lettered"  # refused for good; ``push_outcome``: the OperationOutcome


class PatientChangeRefused(ValueError):
    """``put_records`` found, inside its write transaction, that a new version names another
    patient than the record's newest stored version (nor an alias of it): a concurrent intake
    stored the record for another patient after the use case checked. Nothing was written; the use
    case answers as its own check does (422 at ``patient``). ``record_ids``: the refused records."""

    def __init__(self, record_ids: Sequence[str]) -> None:
        super().__init__(f"a record's patient cannot change ({len(record_ids)} record(s))")
        self.record_ids: tuple[str, ...] = tuple(record_ids)


class KindChangeRefused(ValueError):
    """``put_records`` found, inside its write transaction, that a new version is of another kind
    (or family) than the record's newest stored version: a concurrent intake stored a record of
    another kind under the same id after the use case checked. Nothing was written; the use case
    answers as its own check does (422 at ``id``). ``record_ids``: the refused records."""

    def __init__(self, record_ids: Sequence[str]) -> None:
        super().__init__(f"a record's kind cannot change ({len(record_ids)} record(s))")
        self.record_ids: tuple[str, ...] = tuple(record_ids)


class PutOutcome(StrEnum):
    CREATED = "created"  # a new record (version 1)
    UPDATED = "updated"  # changed content: a new version, queued
    UNCHANGED = "unchanged"  # same content as the newest version: nothing written
    STALE = "stale"  # a pulled copy older than the one seen before: nothing written


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
class ReplayResult:
    """What :meth:`Store.replay` did: how many dead-lettered items it re-queued, and the ones it
    superseded instead, each as (record id, its version, the record's newest version): a newer
    version of their record came after them, and sending them would put the older version over
    the newer one on the server."""

    requeued: int
    superseded: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class FlaggedConflicts:
    """What :meth:`Store.flagged_conflicts` found: how many conflicts wait for a person's
    decision, and the oldest of them (their sync status, by item id)."""

    count: int
    items: tuple[SyncStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class SentResource:
    """One FHIR resource as the server holds it after a send."""

    resource_type: str
    id: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class SentMark:
    """One item of :meth:`Store.mark_sent_many`: what :meth:`Store.mark_sent` takes for it."""

    item_id: int
    sent: Sequence[SentResource]
    audit: Sequence[AuditEntry]
    #: How the 412 this send settled was settled (the conflict policy ``overwrite``:
    #: ``overwritten``), noted with the send's record, in its write: a send that never went out
    #: or failed notes nothing. None: the item's conflict note is left as it is.
    conflict: str | None = None


#: The values of ``SyncStatus.retraction`` (written by ``sync/retract.py``): what the retraction
#: policy did with a sent record.
RETRACTION_KEPT = "kept"
RETRACTION_ENTERED_IN_ERROR = "entered-in-error"
RETRACTION_DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class RetractionCheck:
    """A patient noted for a retraction check (:meth:`Store.note_retraction_checks`). ``note``:
    the note's id, new each time the patient is noted: :meth:`Store.clear_retraction_check`
    clears this note only, never a later one."""

    patient: str
    note: str


@dataclass(frozen=True, slots=True)
class PendingRetractionChecks:
    """:meth:`Store.pending_retraction_checks`: the patients noted for a retraction check that
    are due (the next retraction pass of any worker makes them) and those leased (a check of
    them running, or one whose worker died: due once the lease ends)."""

    due: int = 0
    leased: int = 0

    @property
    def total(self) -> int:
        return self.due + self.leased


@dataclass(frozen=True, slots=True)
class SyncStatus:
    record_id: str
    record_version: int
    state: SyncState
    attempts: int = 0  # failed sends (transient failures) so far
    #: Leases that expired without a result since the item's last result (its worker stopped:
    #: a crash, or a database outage that kept it from recording one).
    lost_leases: int = 0
    held_reason: str | None = None
    next_attempt_at: datetime | None = None
    last_outcome: Mapping[str, Any] | None = None  # OperationOutcome of the last failure
    sent: tuple[SentResource, ...] = ()
    updated_at: datetime | None = None
    #: Two-way sync (``sync/retract.py``, ``sync/worker.py``): what became of data already shared
    #: after a revocation (``kept``, ``entered-in-error``, ``deleted``, ``failed``), and how a
    #: 412 on ``If-Match`` was settled (``overwritten``, ``kept-remote``, ``flagged``).
    retraction: str | None = None
    conflict: str | None = None
    item_id: int | None = None
    #: A conflict flagged for a person: the versions the server held then (someone else's
    #: writes): the If-Match of a person's ``overwrite``, what ``keep-remote`` records.
    conflict_versions: tuple[SentResource, ...] = ()
    #: A send of this item whose answer was lost may have landed, and it is not known yet
    #: whether it did (:meth:`Store.claim_landing_checks`): read back until it is.
    landing_unknown: bool = False


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
    attempts: int  # failed sends so far (0 on the first try)
    lease_owner: str
    lease_until: datetime
    #: This claim took the item over from a worker whose lease expired without a result (it
    #: crashed, hung, or could not reach the database to record one); counted in ``lost_leases``.
    taken_over: bool = False
    #: Leases lost in a row: workers that stopped on this item since its last result (any
    #: ``mark_*`` sets it back to 0). ``max_attempts`` of them in a row make a poison record,
    #: dead-lettered without another try.
    lost_leases: int = 0
    #: How a conflict on this item was settled so far (``SyncStatus.conflict``), and the
    #: server's versions it was flagged against (``SyncStatus.conflict_versions``): a person's
    #: ``overwrite`` decision is sent If-Match them.
    conflict: str | None = None
    conflict_versions: tuple[SentResource, ...] = ()
    #: An item of :meth:`Store.claim_landing_checks`: when it was left unsent (superseded, held
    #: or dead-lettered: its state's last change). None from :meth:`Store.claim`.
    left_unsent_at: datetime | None = None
    #: The conflict AuditEvent of an overwrite of this item (the conflict policy ``overwrite``)
    #: whose answer was lost, kept with its *landing unknown* note (``lost_overwrite`` of
    #: :meth:`Store.mark_dead`), or whose worker stopped between its send and its record (noted
    #: before the send, :meth:`Store.note_overwrite`; the claim taking the item over notes it
    #: landing unknown): found landed (a read-back, or the 412 of a retry finding ours), the item
    #: is recorded as that overwrite (``SentMark.conflict`` ``overwritten``, with it).
    lost_overwrite: AuditEntry | None = None
    #: The server's versions that overwrite was written over (as its 412 read them), kept with
    #: it: a read finding every resource still at its version shows it never landed. Empty when
    #: not known (a resource was not there or had no version id, or it was kept before).
    lost_overwrite_against: tuple[SentResource, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A local audit row: an AuditEvent or Provenance resource (FHIR JSON, no free text) about a
    record. ``action`` is a short machine word (``intake``, ``disclose``, ``hold``, ``dead-letter``,
    ``replay``, ``revoke``, …) for listing and metrics. The store writes each under a resource
    ``id`` no other row has: one whose ``id`` is taken gets another (``store/audit_queue.py``;
    intake's own write, ``put_records`` with :class:`IntakeEvents`, needs no such check: each of
    its events names the record version that write gives, and a version is written once)."""

    action: str
    record_id: str | None
    patient: str | None
    resource: Mapping[str, Any]
    at: datetime
    pushed: bool = False
    id: int | None = None
    #: The push queue (``audit_push.py``): None, kept locally only; PENDING, to push (intake of a
    #: row with PENDING queues it); failed pushes so far; the last failure's OperationOutcome.
    push_state: AuditPushState | None = None
    push_attempts: int = 0
    push_outcome: Mapping[str, Any] | None = None


class IntakeEventBuilder(Protocol):
    """How intake builds a record's ``intake`` AuditEvent (``audit.intake_event``)."""

    def __call__(
        self, record_id: str, patient: str, kind: str, version: int, at: datetime
    ) -> AuditEntry: ...


@dataclass(frozen=True, slots=True)
class IntakeEvents:
    """The ``intake`` AuditEvent of each record of one :meth:`Store.put_records` call, built
    before its write: ``entries[n]`` is about ``records[n]`` at ``versions[n]``, the version the
    caller expects it to get (from its read of the store). The versions are given in the write
    transaction: a record that gets another one there (another intake wrote it since the caller
    read the store) has its event built again by ``build``, for the version written (with the
    record's id, patient and kind and the entry's time), in that transaction. When every version
    is as expected (the common case) the entries are stored as given."""

    entries: Sequence[AuditEntry]
    versions: Sequence[int]
    build: IntakeEventBuilder


@dataclass(frozen=True, slots=True)
class AuditPushFailure:
    """One failed push of the audit row ``entry_id``: tried again at ``next_attempt_at``, or
    dead-lettered when it is None; ``outcome`` is the OperationOutcome either way."""

    entry_id: int
    outcome: Mapping[str, Any]
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str  # the public prefix of the key, e.g. "fa_3f9c1b2a"
    name: str
    scopes: frozenset[str]
    secret_hash: str  # hex digest; the secret itself is never stored
    created_at: datetime
    revoked_at: datetime | None = None


def api_key_name_folded(name: str) -> str:
    """An API key's name as names are compared: without surrounding blanks and without case
    (``str.casefold``), so ``" Front-Desk "`` and ``"front-desk"`` are one name. The store keeps
    it beside the name, and a unique index lets only one key not revoked hold it."""
    return name.strip().casefold()


class ApiKeyNameTaken(ValueError):
    """``add_api_key``: a key that is not revoked already has this name (compared by
    :func:`api_key_name_folded`); nothing was added. ``name`` and ``key_id`` are that key's."""

    def __init__(self, name: str, key_id: str) -> None:
        super().__init__(f"an API key named {name!r} already exists ({key_id})")
        self.name = name
        self.key_id = key_id


class ApiKeyNamesShared(RuntimeError):
    """The schema upgrade that makes names of keys not revoked unique (migration 0005) found keys
    not revoked that share a name; nothing was changed. ``shared``: each such name (as one of its
    keys spells it) with the ids of its keys. ``str(exc)`` is one line saying which keys and
    what to run."""

    def __init__(self, shared: Sequence[tuple[str, Sequence[str]]]) -> None:
        self.shared: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
            (name, tuple(key_ids)) for name, key_ids in shared
        )
        which = "; ".join(f"{name!r}: {', '.join(ids)}" for name, ids in self.shared)
        super().__init__(
            "the database was not upgraded: API keys that are not revoked share a name "
            f"(compared without case), and names must now be unique: {which}. Revoke all but "
            "one key of each name (fhir-alliance revoke-api-key KEY_ID), then run "
            "fhir-alliance db upgrade again"
        )


@dataclass(frozen=True, slots=True)
class PullCursor:
    """Where the pull of ``resource_type`` from ``server`` stands: the newest ``meta.lastUpdated``
    seen (as the server wrote it), how many full listings were made (``generation``) and when
    the last one was."""

    server: str
    resource_type: str
    last_updated: str | None = None
    generation: int = 0
    full_listing_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PulledResource:
    """A remote resource the pull has seen. ``origin``: ``ours`` (a resource the service pushed)
    or ``foreign``; ``state``: what the pull made of it (``merged``, ``unreadable``,
    ``conflict``, ``revoked``, ``deleted``, ``stored``, ``ignored``); ``record_id`` the local
    record it is merged into; ``body`` kept only for pulled Observations (read-only)."""

    server: str
    resource_type: str
    resource_id: str
    version_id: str | None
    last_updated: str | None
    patient: str | None
    record_id: str | None
    origin: str
    state: str
    body: Mapping[str, Any] | None = None
    generation: int = 0
    #: When this row was last saved here (read back from the store; ignored by ``save_pulled``).
    updated_at: datetime | None = None


class Store(Protocol):
    """Every method is one short transaction; none is held open across an HTTP call."""

    # -- lifecycle -----------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise if the database cannot be reached (``/readyz``)."""

    def schema_revision(self) -> str | None:
        """The migration the database is at (``alembic_version``; None: none recorded)."""

    def close(self) -> None: ...

    # -- intake --------------------------------------------------------------------------------
    def put_records(
        self,
        records: Sequence[NewRecord],
        *,
        audit: Sequence[AuditEntry] | IntakeEvents,
        at: datetime,
    ) -> list[IntakeResult]:
        """Store ``records`` and ``audit`` all-or-nothing, in one transaction. For each record: new
        → version 1 and an outbox item; same content as the newest version → UNCHANGED, nothing
        written; changed content → a new version and an outbox item (older unsent items of the
        record become SUPERSEDED, unless a worker's lease on one runs; one whose lease expired is
        noted *landing unknown*, see :meth:`claim`). ``audit`` entries whose ``record_id`` names
        an UNCHANGED record are not written. Intake's :class:`IntakeEvents` (one per record) are
        written for the records that get a version, each naming the version it got (built again
        for it when the caller expected another). A changed version of another kind or family
        than the record's newest version raises :class:`KindChangeRefused`, and one naming
        another patient than it (and not an alias of that patient) raises
        :class:`PatientChangeRefused` (when a batch has both, the kind's is raised); nothing
        written. Records pulled (:meth:`put_remote_records`) are checked for neither.
        The patient of each consent (family ``consent``) that gets a version (new, changed, a
        revocation folded in) is noted for a retraction check, due at once, in the same
        transaction (as :meth:`note_retraction_checks` notes, replacing a note there), so that
        any worker puts what was sent for them to the retraction policy, one that runs no
        retraction passes too; an UNCHANGED consent notes nothing."""

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

    def patient_token(self, patient: str) -> str:
        """The opaque id of ``patient`` in console URLs: ``store.patient_tokens.patient_token``
        under this database's secret (read once per store, then kept)."""

    def patient_for_token(self, token: str) -> str | None:
        """The patient key whose opaque id (:meth:`patient_token`) is ``token``, with one indexed
        read; None if no record names such a patient."""

    def sync_status(self, record_id: str) -> SyncStatus | None: ...

    def counts_by_state(self) -> dict[SyncState, int]: ...

    def list_by_state(
        self, state: SyncState, *, limit: int = 100, after: int | None = None
    ) -> list[SyncStatus]: ...

    # -- worker --------------------------------------------------------------------------------
    def claim(
        self,
        worker: str,
        *,
        limit: int,
        lease_seconds: float,
        now: datetime,
        per_patient: int = 1,
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` claimable items (QUEUED, or FAILED with ``next_attempt_at <= now``,
        not leased or with an expired lease), oldest first, at most the oldest pending item per
        patient; with ``per_patient`` > 1, when those fill fewer than ``limit``, also the claimed
        patients' next items in order (up to the first that is not claimable now, at most
        ``per_patient`` per patient in all), which the caller must then send in order.
        An item it would take whose record has a newer item (a version that came while the item
        was leased, so intake could not supersede it) is SUPERSEDED instead, never claimed: an
        older version never goes out after, or in one Bundle with, a newer one.
        PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so concurrent workers never get one item twice.
        An item whose lease expired without a result lost a lease: taking it over adds one to its
        ``lost_leases`` (not to ``attempts``, the failed sends) and sets ``taken_over``, so a
        record that kills every worker reaches ``max_attempts`` lost leases in a row and is
        dead-lettered instead of retried forever, while a database outage, which costs a lease
        but is followed by a result, is not held against the record.
        The worker that stopped may have done so after its send reached the server and before
        recording it: an item whose lease expired is noted *landing unknown* (see
        :meth:`mark_dead`) in the same transaction, due at ``now``, whether it is taken over or
        superseded here; so is one intake supersedes after its lease expired
        (:meth:`put_records`). A takeover that sends it drops the note; one that holds it, or
        dead-letters it, leaves it to be read back (:meth:`claim_landing_checks`)."""

    def release(
        self,
        item_ids: Sequence[int],
        worker: str,
        *,
        at: datetime,
        landing_check_at: datetime | None = None,
    ) -> int:
        """Hand back the leases ``worker`` holds on ``item_ids`` without a result (its lease was
        running out, it could not record results during a database outage, or the item is a
        second suspect in a batch): claimable at once, nothing counted and nothing forgotten
        (lost leases stay as they were). ``landing_check_at``: the items were sent and their
        results could not be recorded (a database outage): noted *landing unknown* in the same
        transaction, due then (an earlier note is kept). Returns how many."""

    def note_overwrite(
        self,
        item_id: int,
        worker: str,
        overwrite: AuditEntry,
        *,
        against: Sequence[SentResource] = (),
    ) -> bool:
        """Before an overwrite's send (the conflict policy ``overwrite``): write its conflict
        AuditEvent on the item (``OutboxItem.lost_overwrite``, replacing an earlier one; with
        ``against``, the server's versions it is written over, ``lost_overwrite_against``), while
        ``worker`` holds the lease on the pending item (compare-and-set, one short write; the
        state, its notes and ``updated_at`` are left alone; nothing is audited). Should the
        worker stop before recording the send (killed, or the database lost), the claim that
        takes the item over (or the hand-back after the outage) notes it *landing unknown*,
        and whoever finds ours on the server records the overwrite, with this AuditEvent; one
        that never went out is found not there: dropped while the server still holds every
        version of ``against``, else recorded as one whose landing is unknown (someone changed
        it since: :meth:`settle_lost_overwrite`, :meth:`record_landing_checks`). The worker's
        record of the send drops it: any ``mark_sent*``
        (a landed overwrite's mark carries the AuditEvent), and a failure answered by the
        server (``mark_held``, ``mark_failed`` or ``mark_dead`` without ``landing_check_at``)
        unless the item is noted *landing unknown* (an earlier send of it may have landed:
        kept with that note). Whether it was written (False: the lease is lost, or the item is
        no longer pending: send nothing)."""

    def settle_lost_overwrite(
        self, item_id: int, worker: str, *, audit: Sequence[AuditEntry]
    ) -> bool:
        """The item's kept overwrite (``OutboxItem.lost_overwrite``) is not what the server holds
        (its retry's 412 read someone else's version): drop it and add ``audit`` (its conflict
        AuditEvent recorded as *landing unknown*, or nothing when the read showed it never
        landed), in one compare-and-set while ``worker`` holds the lease on the pending item and
        the overwrite is still kept (the item's state, its notes and ``updated_at`` are left
        alone). Whether it was written (False: the lease is lost, or nothing is kept: nothing
        written, so an overwrite is settled once)."""

    def mark_sent(
        self,
        item_id: int,
        worker: str,
        *,
        sent: Sequence[SentResource],
        audit: Sequence[AuditEntry],
        at: datetime,
        conflict: str | None = None,
    ) -> bool:
        """Record a send. Returns False (and writes nothing) if ``worker`` no longer holds the
        lease: another worker took the item over. Same for the other ``mark_*``. ``conflict``
        (the conflict policy ``keep-remote``: ``sent`` lists the server's versions, someone
        else's): noted on the item in the same write."""

    def mark_sent_many(self, worker: str, marks: Sequence[SentMark], *, at: datetime) -> list[bool]:
        """:meth:`mark_sent` of several items (one transaction Bundle's) in one transaction: one
        answer per mark, in order. An item whose lease ``worker`` lost writes nothing (False);
        the others are recorded with their audit entries (and the mark's ``conflict``)."""

    def mark_sent_late(self, marks: Sequence[SentMark], *, at: datetime) -> int:
        """Record sends that reached the server although their worker no longer held the lease
        (:meth:`mark_sent_many` answered False: the send outlasted the lease). What landed is a
        fact whoever holds the item now: in one transaction each item becomes SENT (from
        SUPERSEDED, HELD, DEAD_LETTERED, or pending under another worker's lease, which it
        releases; the other worker's ``mark_*`` then finds it sent) and its audit entries are
        added (the disclosure happened), with the mark's ``conflict`` noted (the overwrite
        happened). An item SENT already keeps, per resource, the newer of
        the versions it lists and the one given (another worker sent the same item too: the
        server holds the later write); when one given is newer, a retraction noted on the item is
        cleared, since the server holds this send's write again. Version ids are compared as
        numbers where both are; else the one given wins. A send recorded already, the item
        SENT listing every one of its server versions (a read-back found it first,
        :meth:`record_landing_checks`), is the same write: nothing is written for it, its audit
        entries neither.
        An older version that landed after a newer item of its record was sent (neither had an
        If-Match: the record's first send) put older content over newer: the newer SENT item
        then lists the server's later versions (so that the next update's If-Match holds) and
        the record's newest version is queued again, unless an item of it waits already
        (queued, failed or held). Returns how many records were queued again."""

    def mark_held(
        self,
        item_id: int,
        worker: str,
        *,
        reason: str,
        audit: Sequence[AuditEntry],
        at: datetime,
        conflict: str | None = None,
        conflict_versions: Sequence[SentResource] = (),
    ) -> SyncState | None:
        """Hold the item with ``reason``: the state it was left in, HELD or SUPERSEDED (see
        :meth:`mark_dead`); None, nothing written, if ``worker`` no longer holds the lease. The
        same answer from :meth:`mark_failed` and :meth:`mark_dead`. ``conflict`` (the conflict
        policy ``flag``, ``flagged``): noted in the same write with ``conflict_versions``, the
        server's versions it was flagged against (those of an earlier flag replaced), so that
        the hold, the versions a person's decision is made against (:meth:`decide_conflict`)
        and the audit entries land together or not at all."""

    def mark_failed(
        self,
        item_id: int,
        worker: str,
        *,
        outcome: Mapping[str, Any],
        next_attempt_at: datetime,
        at: datetime,
        landing_check_at: datetime | None = None,
        lost_overwrite: AuditEntry | None = None,
        lost_overwrite_against: Sequence[SentResource] = (),
    ) -> SyncState | None: ...

    def mark_dead(
        self,
        item_id: int,
        worker: str,
        *,
        outcome: Mapping[str, Any],
        audit: Sequence[AuditEntry],
        at: datetime,
        count_attempt: bool = True,
        landing_check_at: datetime | None = None,
        lost_overwrite: AuditEntry | None = None,
        lost_overwrite_against: Sequence[SentResource] = (),
    ) -> SyncState | None:
        """Dead-letter the item with ``outcome``. ``count_attempt=False`` when the attempt that
        failed is already counted (a takeover after an expired lease, see :meth:`claim`).
        ``mark_held``, ``mark_failed`` and ``mark_dead`` leave the item SUPERSEDED instead (with
        the outcome and the audit entries) when its record has a newer item by then: what intake
        does to an unsent older version that is not leased.
        ``landing_check_at`` (``mark_failed`` and ``mark_dead``): the failed send's answer was
        lost, so it may have landed; the item is noted *landing unknown* in the same transaction,
        to be read back from then on once it is no longer pending (:meth:`claim_landing_checks`).
        The note stays until the item is recorded SENT (by any ``mark_sent*``, or by
        :meth:`record_landing_checks`) or found not to have landed.
        ``lost_overwrite`` (with ``landing_check_at``): the failed send was an overwrite (the
        conflict policy ``overwrite``), and this is its conflict AuditEvent, kept with the note
        in the same transaction (replacing an earlier one; without it an earlier one is kept),
        whoever holds the item by then, and handed out with the item
        (``OutboxItem.lost_overwrite``, by :meth:`claim` and :meth:`claim_landing_checks`), so
        that the send found landed is recorded as the overwrite it was: noted ``overwritten``
        with that AuditEvent (``SentMark``); ``lost_overwrite_against``: the server's versions
        it was written over, kept with it. It goes with the note: dropped when the item is
        recorded SENT or found not to have landed. Without ``landing_check_at`` (the server's
        answer said the send failed), an overwrite noted before the send
        (:meth:`note_overwrite`) is dropped, unless the item is noted *landing unknown* from
        before (``mark_held`` too)."""

    # -- sends whose landing is unknown (``sync/worker.py``, ``Worker._check_landings``) ---------
    def claim_landing_checks(
        self, *, limit: int, lease_seconds: float, now: datetime, record_id: str | None = None
    ) -> list[OutboxItem]:
        """Up to ``limit`` items noted *landing unknown* (see :meth:`mark_dead`) whose read-back
        is due at ``now`` and that are no longer pending (SUPERSEDED, HELD or DEAD_LETTERED:
        nothing else will send them, so nothing else will find out), oldest first, with what it
        takes to map them. Each read-back is moved to ``now + lease_seconds`` (a lease: another
        worker skips it meanwhile, and one left unsettled is due again then); on PostgreSQL rows
        another worker is claiming are skipped (``FOR UPDATE SKIP LOCKED``). A first, read-only
        look finds whether any is due, so a worker with nothing to read back writes nothing.
        The items come with ``lease_owner`` ``landing-check`` and ``lease_until`` the lease's
        end; their outbox lease is not touched. ``record_id``: that record's items only, due
        or not (a 412 met by a newer version of the record: they are read back now, before
        anything is written over what the server holds; :meth:`record_landing_checks` records
        each once, should another read-back have it in hand too)."""

    def record_landing_checks(
        self,
        landed: Sequence[SentMark],
        absent: Sequence[int],
        *,
        at: datetime,
        later: Mapping[int, datetime] | None = None,
        absent_audit: Mapping[int, Sequence[AuditEntry]] | None = None,
    ) -> list[bool]:
        """What read-backs found, in one transaction, for items still noted *landing unknown* and
        still not pending (another worker may have settled one since, or the item was queued
        again meanwhile: that one is left as it is). ``landed``: the send is on the server, ours:
        SENT with its versions and audit entries, the note dropped, exactly as
        :meth:`mark_sent_late` records a late send (an older version over a newer one queues the
        newest again; a lost overwrite's mark notes its ``conflict`` and carries its AuditEvent,
        ``OutboxItem.lost_overwrite``). ``absent``: not there, or someone else's: the note is
        dropped (a lost overwrite kept with it too), nothing recorded but ``absent_audit``'s
        entries of the item (item id → entries: a lost overwrite not found, which may have
        landed and been changed since, recorded *landing unknown*), added with the drop only
        (an item settled meanwhile adds nothing). ``later``: item id → when
        to read it back again, a read-back that could not tell (the item's mapping or its read
        failed): the note is kept (an item no longer noted is left as it is). Whether each of
        ``landed`` was recorded, in order."""

    def landing_unknown_count(self) -> int:
        """How many items are noted *landing unknown* (one count over the partial index):
        ``fhir-alliance status`` and ``fhir_alliance_landing_unknown``."""

    def release_held(self, patient: str, *, at: datetime) -> int:
        """Re-queue every HELD item of ``patient`` (their consents changed); returns how many.
        Items held for a person (a conflict flagged for a person to decide, a draft note before
        its signature: ``sql.HELD_FOR_A_PERSON``) stay held: a consent change decides nothing
        for them."""

    def release_all_held(self, *, notes: bool, at: datetime) -> int:
        """Re-queue every HELD item that :meth:`release_held` would re-queue, of every patient
        (the settings the gate asks with changed); with ``notes`` also those held as a draft or
        an unsigned note (``push_draft_notes`` was turned on). A conflict flagged for a person
        stays held. How many."""

    def replay(self, record_id: str | None = None, *, at: datetime) -> ReplayResult:
        """Re-queue DEAD_LETTERED items (one record's, or all); attempts start again at 0. An
        item whose record has a newer item is SUPERSEDED instead (and named in the result)."""

    # -- consents ------------------------------------------------------------------------------
    def consents_for_patient(self, patient: str) -> list[StoredRecord]:
        """Newest version of every consent record of ``patient``."""

    def pulled_consents_elsewhere(self, server: str) -> list[tuple[str, StoredRecord]]:
        """The newest version of every consent record pulled from a FHIR server other than
        ``server`` (its base URL), with the base URL it was pulled from: consents no pull of
        ``server`` will ever update."""

    def consent_identifiers(
        self, server: str | None, patients: Sequence[str]
    ) -> list[tuple[str, str, str, str | None]]:
        """``(record_id, patient, identifier, origin)`` of the newest version of every consent
        record filed under one of ``patients`` (keys as filed, aliases not followed) that was
        pulled from ``server`` (its base URL: ``origin``) or taken in here (``origin`` None;
        ``server`` None: those alone), by record id: one indexed query per chunk of patients, no
        body read, for a page of the pull or an intake's consents. Never those pulled from
        another server."""

    def consents_stamp(self, patient: str) -> str:
        """A cheap value that changes whenever any consent record of ``patient`` changes (one
        indexed query), so that compiled consent engines can be cached per patient."""

    def patient_consents_stamp(self, patient: str) -> tuple[list[str], str]:
        """:meth:`patient_keys` of ``patient`` and one stamp of the consents under all of them,
        read in one transaction: the stamp changes whenever an alias is added or any consent
        record under any key changes (the consult and the gate check their cache with it)."""

    # -- audit ---------------------------------------------------------------------------------
    def add_audit(self, entries: Sequence[AuditEntry]) -> None: ...

    def list_audit(
        self, *, record_id: str | None = None, limit: int = 100, after: int | None = None
    ) -> list[AuditEntry]: ...

    def audit_counts_by_day(
        self, actions: Sequence[str], *, since: datetime, until: datetime
    ) -> dict[date, dict[str, int]]:
        """Per UTC day of the audit entries at ``since`` or later and before ``until``: for each
        of ``actions``, how many distinct records have an entry of that action that day. One
        aggregate query; days and actions without an entry are left out."""
        ...

    # -- the audit push queue (``audit_push.py``; SQL in ``store/audit_queue.py``) -------------
    def claim_audit_pushes(
        self, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[AuditEntry]:
        """Up to ``limit`` PENDING audit rows due at ``now``, oldest first, leased: their next try
        moves to ``now + lease_seconds``, so that another pass skips them meanwhile and a pass
        that stops leaves them due again later (no failure counted)."""
        ...

    def record_audit_pushes(
        self, pushed: Sequence[int], failed: Sequence[AuditPushFailure], *, at: datetime
    ) -> None:
        """In one transaction: the rows ``pushed`` become PUSHED; each failure counts one push
        attempt and schedules a retry or dead-letters the row. Rows no longer PENDING are left
        as they are."""
        ...

    def audit_push_counts(self) -> dict[AuditPushState, int]:
        """Audit rows still queued: PENDING and DEAD_LETTERED (one indexed count; pushed rows
        and rows kept locally only are not counted)."""
        ...

    def replay_audit_pushes(self) -> int:
        """Re-queue every dead-lettered audit push (attempts start again); how many."""
        ...

    # -- API keys ------------------------------------------------------------------------------
    def add_api_key(self, key: ApiKey) -> None:
        """Store a new key. A key not revoked with the same name (:func:`api_key_name_folded`)
        makes it :class:`ApiKeyNameTaken`, decided by the database (a unique index), so two
        concurrent adds of one name cannot both succeed."""
        ...

    def find_api_key(self, key_id: str) -> ApiKey | None: ...

    def revoke_api_key(self, key_id: str, *, at: datetime) -> bool: ...

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first (``fhir-alliance list-api-keys``)."""
        ...

    # -- console sessions ----------------------------------------------------------------------
    def end_session(self, session_id: str, *, expires_at: datetime, at: datetime) -> None:
        """Record that the console session ``session_id`` signed out: :meth:`session_ended`
        answers True for it from now on, in every process sharing the database. Kept until
        ``expires_at`` (when its cookie has expired anyway); rows whose ``expires_at`` is before
        ``at`` are dropped in the same transaction. Ending a session twice changes nothing."""
        ...

    def session_ended(self, session_id: str) -> bool:
        """Whether the console session ``session_id`` signed out (one primary-key read)."""
        ...

    # -- operations ----------------------------------------------------------------------------
    def set_meta(self, name: str, value: str) -> None:
        """Small named facts: the FHIR server's last contact, its FHIR version, …"""

    def get_meta(self, name: str) -> str | None: ...

    # -- two-way sync (issue 11) ---------------------------------------------------------------
    def add_patient_alias(self, patient: str, alias: str, *, at: datetime) -> None:
        """File ``alias`` (another key: ``Patient/<id>`` or ``system|value``) as naming the same
        patient as ``patient``. Raises ValueError when ``alias`` already names another patient."""

    def patient_keys(self, patient: str) -> list[str]:
        """Every key of the patient ``patient`` names: the key records are filed under first,
        then its aliases (sorted); ``[patient]`` when it has none."""

    def set_remote_patient(self, server: str, patient: str, remote: str, *, at: datetime) -> None:
        """On ``server`` the patient ``patient`` is ``remote`` (``Patient/<id>``)."""

    def remote_patients(self, server: str) -> dict[str, str]:
        """Local patient key → its reference on ``server``."""

    def get_pull_cursor(self, server: str, resource_type: str) -> PullCursor | None: ...

    def save_pull_cursor(self, cursor: PullCursor, *, at: datetime) -> None: ...

    def pulled(
        self, server: str, resource_type: str, resource_ids: Sequence[str]
    ) -> dict[str, PulledResource]:
        """The pulled resources among ``resource_ids`` that were seen before, by id."""

    def pulled_of_records(
        self, server: str, resource_type: str, record_ids: Sequence[str]
    ) -> dict[str, PulledResource]:
        """The pulled resources of ``server`` that local records among ``record_ids`` were made
        from, by record id (when two, the one saved last). Not indexed: for the rare lookups
        (two consents with one business identifier), never per resource."""

    def pulled_states_of_records(self, record_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """For each of ``record_ids`` that was pulled (its newest version's ``origin`` a server's
        base URL), the ``state`` of the pulled resource of that server it was made from (when
        two, the one saved last) and that server; records taken in here, and pulled ones without
        such a row, are left out. Not indexed: for the consent loader's rare lookups (a consent taken in here
        and a pulled one with one business identifier that say otherwise), never per record."""

    def save_pulled(self, resources: Sequence[PulledResource], *, at: datetime) -> None:
        """Insert or replace these pulled resources (keyed by server, type and id)."""

    def mark_listed(
        self, server: str, resource_type: str, resource_ids: Sequence[str], generation: int
    ) -> None:
        """A full listing number ``generation`` found these resources on the server."""

    def unlisted(
        self, server: str, resource_type: str, generation: int, *, limit: int = 500
    ) -> list[PulledResource]:
        """Pulled resources not deleted and not seen by full listing ``generation``: gone."""

    def put_remote_records(
        self,
        records: Sequence[NewRecord],
        *,
        origin: str,
        audit: Sequence[AuditEntry],
        at: datetime,
        remote: Sequence[PulledResource] = (),
    ) -> list[IntakeResult]:
        """Like :meth:`put_records` for records pulled from the server ``origin``: new versions
        are stored with their origin and **no outbox item** (never pushed back). ``remote``: the
        server's copies the records were made from (by ``record_id``), saved as by
        :meth:`save_pulled` in the same transaction, where each is first compared with the copy
        saved before (``store/ordering.py``, read locked): a record whose copy is older, or
        the same version as a copy since deleted, is not written (``PutOutcome.STALE``), so two
        passes at once never put an older copy over a newer one. The patient of each pulled
        consent written is noted for a retraction check as :meth:`put_records` notes, in the same
        transaction: the pull's own retraction pass makes it, or, should the worker die first,
        any worker's next retraction turn."""

    def consent_stamps(self) -> dict[str, str]:
        """:meth:`consents_stamp` of every patient with consent records, in one query."""

    def patients_with_retraction(self, retraction: str) -> set[str]:
        """The patient keys of the sent items marked ``retraction`` (e.g. ``kept``), in one
        query."""

    def sent_items(self, patient: str) -> list[SyncStatus]:
        """The newest SENT item of each record of ``patient`` (and its aliases), with
        ``item_id``: what is on the server for that patient now."""

    def last_sent(self, record_id: str, *, before_version: int | None = None) -> SyncStatus | None:
        """The newest SENT item of ``record_id``: the versions the server had after our last
        send (the ``If-Match`` of the next update). With ``before_version``, the newest SENT item
        of an earlier record version than that (what the server held before that version went)."""

    def records_sent(self, record_ids: Sequence[str]) -> set[str]:
        """Those of ``record_ids`` that have a SENT item (one query for a batch: the worker looks
        up an If-Match, ``last_sent``, only for these)."""

    def sent_versions(self, record_id: str) -> set[SentResource]:
        """Every resource version that an item of ``record_id`` lists as sent (whichever item,
        a send recorded late by ``mark_sent_late`` too): the versions on the server that we
        wrote (the worker's 412 check, ``Worker._conflict``)."""

    def record_retraction(
        self,
        item_id: int,
        retraction: str | None,
        *,
        was: str | None,
        sent: Sequence[SentResource],
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> bool:
        """Record a retraction of a SENT item in one transaction: the versions the server holds
        of its resources after the retraction's writes (``sent``), what the policy did
        (``retraction``; a failure passes ``was``, the outcome unchanged) and the step's
        AuditEvent and Provenances (``audit``). Compare-and-set: only while the item's
        retraction is still ``was``, what the retraction pass read; False, and nothing written,
        when another pass recorded one meanwhile (its writes found ours on the server)."""

    # -- pending retraction checks (``sync/retract.py``, ``Worker._retraction_check``) ----------
    def note_retraction_checks(
        self, patients: Sequence[str], *, lease_until: datetime | None = None, keep: bool = False
    ) -> str:
        """Note that what was sent for each of ``patients`` (store keys) is to be put to the
        retraction policy (again), by whichever worker claims it (:meth:`claim_retraction_checks`):
        the note outlives the process that made it. One note per patient: noting again replaces
        it (with ``keep``, a patient noted already keeps their note, lease and id). ``lease_until``:
        the caller checks them now, nobody else until then; None: due at once. The new note's id
        (the same for every patient of the call that it noted)."""

    def claim_retraction_checks(
        self, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[RetractionCheck]:
        """Up to ``limit`` noted patients due at ``now`` (a note without a lease, or whose lease
        ended), in key order, each leased until ``now + lease_seconds`` (another worker skips
        it meanwhile; on PostgreSQL notes another worker is claiming are skipped, ``FOR UPDATE
        SKIP LOCKED``). A first, read-only look finds whether any is due."""

    def clear_retraction_check(self, check: RetractionCheck) -> bool:
        """Drop ``check``'s note once a check of its patient that began after the note was made
        succeeded; a later note of the patient stays. Whether it was dropped."""

    def pending_retraction_checks(self, *, now: datetime) -> PendingRetractionChecks:
        """How many patients are noted for a retraction check, due at ``now`` and leased, in one
        query: ``fhir-alliance status`` and ``fhir_alliance_retraction_checks_pending``."""

    def mark_conflict(self, item_id: int, conflict: str, *, at: datetime) -> bool:
        """Note a conflict on an item no worker holds (the pull's ``remote-edited`` note on a
        SENT item). False, and nothing written, when a worker holds it. The conflict policies
        note theirs with the outcome instead, never before it: ``flag`` and ``keep-remote`` with
        :meth:`mark_held`, :meth:`mark_sent` (``conflict``), ``overwrite`` with the record of its
        send (``SentMark.conflict``)."""

    def flagged_conflicts(self, *, limit: int = 100) -> FlaggedConflicts:
        """The conflicts that wait for a person's decision: items held for a person by the
        conflict policy (HELD, conflict ``flagged``) and not superseded, the ones
        :meth:`decide_conflict` can decide. How many, and the oldest ``limit`` of them (by item
        id); two bounded reads, whatever the outbox holds."""

    def decide_conflict(
        self,
        item_id: int,
        *,
        against: Sequence[SentResource],
        keep_remote: bool,
        conflict: str,
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> bool:
        """A person's decision on an item held for a person by the conflict policy (HELD,
        conflict ``flagged``, not superseded) against the server versions ``against`` (its
        ``conflict_versions`` as read, in their order), noted ``conflict``, with ``audit``, in one
        transaction (compare-and-set: False, nothing written, when the item is no longer so held,
        or is flagged against other versions: decided and flagged again meanwhile).
        ``keep_remote``: SENT, listing its ``conflict_versions`` as what the server holds (the
        item must have them); else QUEUED again (attempts from 0), to be sent If-Match them."""

    def record_sent_versions(
        self,
        item_id: int,
        sent: Sequence[SentResource],
        *,
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> None:
        """Replace the versions a SENT item lists (reconcile ``--fix`` wrote its resources
        again), with ``audit``, in one transaction."""

    def held_since(self) -> dict[str, datetime]:
        """Each patient key with HELD items, and when the oldest of them was held (its
        ``updated_at``), in one query: the worker's consent time pass (``sync/consent_times.py``).
        Only the items :meth:`release_held` would re-queue count (not those held for a person)."""

    def queue_again(
        self,
        record_id: str,
        *,
        conflict: str | None,
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> int | None:
        """Queue the newest version of ``record_id`` to be sent again (a new QUEUED item, noted
        ``conflict``, with ``audit``, in one transaction): the pull writes back a consent of ours
        that someone undid on the server. None, and nothing written, when the record is unknown
        or an item of it is queued, failed or held already (that one carries the version)."""
