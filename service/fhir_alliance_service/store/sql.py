"""``SqlStore``: the :class:`~fhir_alliance_service.store.interface.Store` contract over
SQLAlchemy 2 Core, for SQLite and PostgreSQL. Each method is one short transaction.

Choices the interface leaves open, made here:

* Intake is one transaction of a few bulk statements whatever the batch size: one lookup of the
  records' newest versions (``record_heads``), then bulk inserts and one update per 500 records,
  run as plain SQL on a raw DBAPI connection per thread (``raw.py``; PostgreSQL pipelines them).
  Two intakes racing on one record: SQLite's write lock serialises them; on PostgreSQL the later
  writer fails whole with ``IntegrityError`` (primary key of the version) and may simply retry.
  Intake's AuditEvents (``IntakeEvents``) come built for the versions the use case read; one
  whose record gets another version in the write (another intake committed it meanwhile) is
  built again there, so each stored event names the version written.
* A claimed FAILED item stays FAILED (with its last outcome) until the retry's ``mark_*``.
* ``mark_*`` succeeds while the item is pending and ``worker`` is its lease owner, even after
  the lease ran out, as long as no other worker has claimed it since; it releases the lease.
* A newer version supersedes older unsent items (queued, failed, held, dead-lettered) except
  one under an unexpired lease: that one is being sent right now, so it keeps its place and
  the new version waits behind it in patient order (one writer per record at a time). Unless it
  is sent, that older item is superseded later: by its ``mark_held``/``mark_failed``/
  ``mark_dead``, by the claim that would take it again (its lease ran out), or by ``replay``.
* ``patient_tokens`` rows are only ever inserted, so a store remembers the patients whose token
  it has committed and does not insert theirs again (up to ``KNOWN_TOKENS_MAX`` of them, then
  it starts over): intake of a known patient's record writes one statement less.
* The tokens' secret (``patient_tokens.META_PATIENT_TOKEN_KEY``, made by migration 0008) is
  read once per store and kept: computing a token reads nothing. Where it is missing (deleted by
  hand), the first store to need it inserts one unless another did meanwhile, then reads it back,
  so every store on the database uses the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import groupby
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from .audit_queue import (
    AuditQueueSql,
    audit_entry,
    audit_row,
    event_id_sql,
    ids_of_their_own,
    insert_audit,
)
from .engine import READ_ONLY, writer_turn
from .interface import (
    ApiKey,
    ApiKeyNameTaken,
    AuditEntry,
    FlaggedConflicts,
    IntakeEvents,
    IntakeResult,
    KindChangeRefused,
    NewRecord,
    OutboxItem,
    PatientChangeRefused,
    PendingRetractionChecks,
    PullCursor,
    PulledResource,
    PutOutcome,
    ReplayResult,
    RetractionCheck,
    SentMark,
    SentResource,
    StoredRecord,
    SyncState,
    SyncStatus,
    api_key_name_folded,
)
from .ordering import RemoteOrder, remote_order
from .patient_tokens import META_PATIENT_TOKEN_KEY, new_patient_token_key, patient_token
from .raw import RawSql, ThreadConnections
from .tables import (
    LANDING_UNKNOWN_SQL,
    UtcDateTime,
    api_keys,
    ended_sessions,
    meta,
    outbox,
    patient_aliases,
    patient_tokens,
    pull_cursors,
    pulled_resources,
    record_heads,
    remote_patients,
    retraction_checks,
)
from .tables import audit as audit_log
from .tables import records as record_versions

__all__ = ["SqlStore"]

#: Rows per IN (...) lookup: well under SQLite's and PostgreSQL's bound-parameter limits.
LOOKUP_CHUNK = 500
#: Patients whose ``patient_tokens`` row a store remembers having committed (then forgotten).
KNOWN_TOKENS_MAX = 100_000

_PENDING = (SyncState.QUEUED.value, SyncState.FAILED.value)
# An item in these states that is not leased is replaced by a newer version of its record.
_SUPERSEDABLE = (
    SyncState.QUEUED.value,
    SyncState.FAILED.value,
    SyncState.HELD.value,
    SyncState.DEAD_LETTERED.value,
)
#: States an item noted *landing unknown* is read back in: nothing will send it (again) now.
_LEFT_UNSENT = (
    SyncState.SUPERSEDED.value,
    SyncState.HELD.value,
    SyncState.DEAD_LETTERED.value,
)
# Said in every query of the read-backs so that both backends use the partial index on it.
_LANDING_UNKNOWN = text(LANDING_UNKNOWN_SQL)
#: The ``lease_owner`` of the items ``claim_landing_checks`` gives (their outbox lease is not set).
LANDING_CHECK_OWNER = "landing-check"
_newer = outbox.alias("newer")
#: The outbox row's record has a newer item: one of a later version, or of the same version
#: written after it. Sending the row would put an older version over a newer one, after it or in
#: one Bundle with it; it is superseded instead. By version first, not by item id alone: an item
#: queued again (``queue_again``) on PostgreSQL while an intake of the next version is still
#: uncommitted carries the older version under a larger item id.
_HAS_NEWER_ITEM = exists().where(
    _newer.c.record_id == outbox.c.record_id,
    or_(
        _newer.c.record_version > outbox.c.record_version,
        and_(
            _newer.c.record_version == outbox.c.record_version,
            _newer.c.item_id > outbox.c.item_id,
        ),
    ),
)
#: Held reasons that wait for a person, not for the patient's consents: a record someone else
#: changed on the FHIR server, flagged by the conflict policy (``sync.worker.CONFLICT_HELD_REASON``),
#: a draft note waiting for its signature (``sync.gate.HoldReason.DRAFT_NOTE``; signing stores
#: a new version, which supersedes the held one), and an unsigned entered-in-error note with
#: nothing on the server to correct (``sync.gate.HoldReason.UNSIGNED_NOTE``; only a new version
#: changes that). ``release_held`` leaves them held (re-sending a flagged record meets the same
#: 412 and flags it again) and ``held_since`` ignores them. The words are repeated here because the store must not import the sync package (which imports the
#: store); tests/review_sync/test_remote_edits.py pins them to their sources.
HELD_FOR_A_PERSON = (
    "changed on the FHIR server by someone else since our last send: a person must decide",
    "a draft note is not sent before the therapist signs it",
    "a note nobody signed is not sent, and the server holds nothing of it to correct",
)
#: An item held for a person by the conflict policy ``flag`` (``sync.worker._conflict``).
_FLAGGED_FOR_A_PERSON = and_(
    outbox.c.state == SyncState.HELD.value,
    outbox.c.held_reason == HELD_FOR_A_PERSON[0],
    outbox.c.conflict == "flagged",
)
#: A HELD item that a change of its patient's consents may release (the gate decides it again).
_HELD_FOR_CONSENTS = and_(
    outbox.c.state == SyncState.HELD.value,
    or_(outbox.c.held_reason.is_(None), outbox.c.held_reason.not_in(HELD_FOR_A_PERSON)),
)


#: A patient's keys (the one records are filed under, flagged, and its aliases) with the count
#: and the sum of versions of the consents under each: ``patient_consents_stamp`` in one query.
_KEYS_AND_CONSENT_STAMPS_SQL = """
    WITH canonical AS (
        SELECT COALESCE(
            (SELECT patient FROM patient_aliases WHERE alias = :patient),
            CAST(:patient AS TEXT)
        ) AS patient_key
    ),
    patient_keys AS (
        SELECT patient_key, 1 AS is_canonical FROM canonical
        UNION ALL
        SELECT alias, 0 FROM patient_aliases
        WHERE patient = (SELECT patient_key FROM canonical)
    )
    SELECT k.patient_key, k.is_canonical, COUNT(h.record_id), COALESCE(SUM(h.version), 0)
    FROM patient_keys AS k
    LEFT JOIN record_heads AS h ON h.patient = k.patient_key AND h.family = 'consent'
    GROUP BY k.patient_key, k.is_canonical
"""


class _AutocommitReader(ThreadConnections):
    """One raw autocommit DBAPI connection per thread (and process) for the hottest read, the
    consent stamp that every consult and gate decision runs.

    Through SQLAlchemy that read cost a pool checkout, a ``BEGIN`` and the result wrapping, about
    seven times the query itself. Here the statement runs directly (the DBAPI module keeps it
    prepared: sqlite3's statement cache, psycopg's automatic prepare) and, in autocommit, is its
    own read transaction: a fresh snapshot of everything committed before it started, by any
    process, so a stamp is never stale. Nothing is held between calls: sqlite3 ends a statement's
    implicit read transaction once its rows are fetched, and PostgreSQL at the statement's end.

    A thread's connection is closed when the thread ends (its thread-local goes) or on
    :meth:`close`; a forked child opens its own. A PostgreSQL connection that fails is dropped
    and the call retried once on a new one (a restarted server). Errors come out as SQLAlchemy's
    ``DBAPIError`` with the parameters hidden.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._retries = 1 if engine.dialect.name == "postgresql" else 0
        self._sqlite = engine.dialect.name == "sqlite"

    def rows_while_unchanged(
        self, statement: str, params: Mapping[str, Any], key: str
    ) -> list[tuple[Any, ...]]:
        """:meth:`rows`, given again while the database has not changed. On SQLite, this
        thread's connection asks ``PRAGMA data_version`` (its own read transaction: it moves
        whenever any other connection, of any process, has committed since, and this connection
        never writes); while it has not moved, the rows read for ``key`` under it are given
        again. Rows read while a commit lands are kept under the older version, so they are read
        again next time: never stale. PostgreSQL has no such counter: every call reads."""
        if not self._sqlite:
            return self.rows(statement, params)
        connection = self._connection()
        try:
            version = connection.execute("PRAGMA data_version").fetchone()[0]
        except self._dbapi_error:
            return self.rows(statement, params)  # which drops the connection or raises
        seen: _SeenRows | None = getattr(self._local, "seen", None)
        if seen is None or seen.connection is not connection or seen.version != version:
            seen = self._local.seen = _SeenRows(connection, version)
        found = seen.rows.get(key)
        if found is None:
            found = self.rows(statement, params)
            if len(seen.rows) >= SEEN_ROWS_MAX:
                seen.rows.clear()
            seen.rows[key] = found
        return found

    def rows(self, statement: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        attempts_left = self._retries
        while True:
            try:
                return list(self._connection().execute(statement, params).fetchall())
            except self._dbapi_error as error:
                self._drop()
                if attempts_left == 0:
                    raise DBAPIError.instance(
                        statement, params, error, self._dbapi_error, hide_parameters=True
                    ) from error
                attempts_left -= 1


#: Keys whose rows a thread keeps for one ``data_version`` of its SQLite connection.
SEEN_ROWS_MAX = 1024


class _SeenRows:
    """Rows read on one connection while its ``PRAGMA data_version`` was ``version``."""

    __slots__ = ("connection", "rows", "version")

    def __init__(self, connection: Any, version: int) -> None:
        self.connection = connection
        self.version = version
        self.rows: dict[str, list[tuple[Any, ...]]] = {}


def _chunks(values: Sequence[str], size: int = LOOKUP_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(slots=True)
class _Head:
    version: int
    content_hash: str
    is_new: bool  # no row in record_heads yet (inserted by this batch)
    patient: str  # the patient of the newest version (stored, or written by this batch)
    kind: tuple[str, str]  # the (kind, family) of the record, which never changes


AnyRow = Row[*tuple[Any, ...]]

_RECORD_COLUMNS = (
    record_versions.c.record_id,
    record_versions.c.version,
    record_versions.c.identifier,
    record_versions.c.kind,
    record_versions.c.family,
    record_versions.c.patient,
    record_versions.c.body,
    record_versions.c.content_hash,
    record_heads.c.created_at.label("first_created_at"),
    record_versions.c.created_at.label("version_created_at"),
)


#: ``record_landing_checks``'s ``later``: a read-back that could not tell is due again then.
_LANDING_CHECK_LATER = (  # run as executemany
    update(outbox)
    .where(outbox.c.item_id == bindparam("b_item_id"), _LANDING_UNKNOWN)
    .values(landing_check_at=bindparam("b_check_at", type_=outbox.c.landing_check_at.type))
)

#: ``mark_sent``'s compare-and-set for ``mark_sent_many``, built once for a Bundle's items.
_MARK_SENT = (  # run as executemany: no expanding IN in it
    update(outbox)
    .where(
        outbox.c.item_id == bindparam("b_item_id"),
        outbox.c.lease_owner == bindparam("b_worker"),
        or_(*(outbox.c.state == state for state in _PENDING)),
    )
    .values(
        state=SyncState.SENT.value,
        sent=bindparam("b_sent", type_=outbox.c.sent.type),
        held_reason=None,
        next_attempt_at=None,
        updated_at=bindparam("b_at", type_=outbox.c.updated_at.type),
        lease_owner=None,
        lease_until=None,
        lost_leases=0,
        landing_check_at=None,
        lost_overwrite=null(),  # SQL NULL, not JSON ``null`` (as None would write): nothing kept
        # ``SentMark.conflict``: an overwrite's note, written with its send; NULL keeps the note.
        conflict=func.coalesce(
            bindparam("b_conflict", type_=outbox.c.conflict.type), outbox.c.conflict
        ),
    )
)


def _noted_if_lease_lost(at: datetime) -> Any:
    """``landing_check_at`` for an item taken from a lease that expired without a result (a
    claim taking it over or superseding it, intake superseding it): the worker that held it may
    have stopped after its send reached the server and before recording it, so the item is
    noted *landing unknown*, due at ``at`` (an earlier note is kept). An item never leased, or
    handed back, keeps what it had. The old ``lease_until`` is read: SQL's SET sees the row as
    it was."""
    return case(
        (
            outbox.c.lease_until.is_not(None),
            func.coalesce(outbox.c.landing_check_at, literal(at, UtcDateTime())),
        ),
        else_=outbox.c.landing_check_at,
    )


#: ``lost_overwrite`` for a result that says the send did not land (``_finish`` without
#: ``landing_check_at``): an overwrite noted before its send (``note_overwrite``) overwrote
#: nothing and goes, unless the item is noted *landing unknown* (an earlier send of it may have
#: landed: the overwrite stays with the note). SQL's SET sees the row as it was.
_KEPT_WITH_NOTE_ONLY = case(
    (outbox.c.landing_check_at.is_(None), null()), else_=outbox.c.lost_overwrite
)


def _unless_newer(state: SyncState) -> Any:
    """``state`` for a ``mark_*`` result, or SUPERSEDED when the item's record got a newer item
    while the item was leased (intake supersedes an unleased older item at once)."""
    return case((_HAS_NEWER_ITEM, SyncState.SUPERSEDED.value), else_=state.value)


def _queue_newest(
    connection: Connection, record_id: str, *, conflict: str | None, at: datetime
) -> int | None:
    """A new QUEUED item for the newest version of ``record_id`` (noted with ``conflict``), in
    the caller's write transaction: its id, or None when the record is unknown or an item of it
    is already waiting (queued, failed or held), which then carries the newest version."""
    head = connection.execute(
        select(record_heads.c.version, record_heads.c.patient).where(
            record_heads.c.record_id == record_id
        )
    ).one_or_none()
    if head is None:
        return None
    waiting = (SyncState.QUEUED.value, SyncState.FAILED.value, SyncState.HELD.value)
    pending = connection.execute(
        select(outbox.c.item_id)
        .where(outbox.c.record_id == record_id, outbox.c.state.in_(waiting))
        .limit(1)
    ).first()
    if pending is not None:
        return None
    result = connection.execute(
        insert(outbox).values(
            record_id=record_id,
            record_version=head.version,
            patient=head.patient,
            state=SyncState.QUEUED.value,
            attempts=0,
            conflict=conflict,
            created_at=at,
            updated_at=at,
        )
    )
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row
    return int(key[0])


def _later_version(given: str | None, listed: str | None) -> bool:
    """Whether version id ``given`` is a later write than ``listed`` (``mark_sent_late``):
    compared as numbers where both are (servers count versions up); else a different one is."""
    if given is None or given == listed:
        return False
    if listed is None:
        return True
    # ASCII digits only: a superscript ² passes isdigit(), not int(); other scripts' digits
    # are no server's version numbers.
    if given.isascii() and given.isdigit() and listed.isascii() and listed.isdigit():
        return int(given) > int(listed)
    return True


def _later_versions(
    listed: Sequence[Mapping[str, Any]] | None, given: Sequence[SentResource]
) -> tuple[list[dict[str, Any]], bool]:
    """``given`` (a send's resources) as an item's ``sent`` column, each resource with the later
    of its given version and the one ``listed`` (the item's column) names; and whether any given
    one is later (or not listed)."""
    versions = {(e["resource_type"], e["id"]): e.get("version_id") for e in listed or ()}
    merged: list[SentResource] = []
    newer = False
    for resource in given:
        key = (resource.resource_type, resource.id)
        version = resource.version_id
        if key in versions and not _later_version(version, versions[key]):
            version = versions[key]  # the server holds the other send's later write
        else:
            newer = True
        merged.append(SentResource(key[0], key[1], version))
    return _sent_json(merged), newer


def _stored_record(row: AnyRow) -> StoredRecord:
    return StoredRecord(
        record_id=row.record_id,
        identifier=row.identifier,
        kind=row.kind,
        family=row.family,
        patient=row.patient,
        version=row.version,
        body=row.body,
        content_hash=row.content_hash,
        created_at=row.first_created_at,
        updated_at=row.version_created_at,
    )


def _sync_status(row: AnyRow) -> SyncStatus:
    return SyncStatus(
        record_id=row.record_id,
        record_version=row.record_version,
        state=SyncState(row.state),
        attempts=row.attempts,
        lost_leases=row.lost_leases,
        held_reason=row.held_reason,
        next_attempt_at=row.next_attempt_at,
        last_outcome=row.last_outcome,
        sent=_sent_resources(row.sent),
        updated_at=row.updated_at,
        retraction=row.retraction,
        conflict=row.conflict,
        item_id=row.item_id,
        conflict_versions=_sent_resources(row.conflict_versions),
        landing_unknown=row.landing_check_at is not None,
    )


def _sent_json(versions: Sequence[SentResource]) -> list[dict[str, Any]]:
    return [
        {"resource_type": v.resource_type, "id": v.id, "version_id": v.version_id} for v in versions
    ]


def _recorded_already(row: AnyRow, mark: SentMark) -> bool:
    """Whether ``row`` (an outbox row's ``state`` and ``sent``) is SENT listing every server
    version of ``mark`` already: the same writes (a server gives each write its own version),
    recorded once. Not when a version id is missing: two writes cannot be told apart then."""
    if row.state != SyncState.SENT.value or not mark.sent:
        return False
    if not all(resource.version_id for resource in mark.sent):
        return False
    return set(mark.sent) <= set(_sent_resources(row.sent))


def _sent_resources(column: Sequence[Mapping[str, Any]] | None) -> tuple[SentResource, ...]:
    return tuple(
        SentResource(entry["resource_type"], entry["id"], entry.get("version_id"))
        for entry in column or ()
    )


def _lost_overwrite_json(entry: AuditEntry, against: Sequence[SentResource] = ()) -> dict[str, Any]:
    """An overwrite's conflict AuditEvent as ``outbox.lost_overwrite`` keeps it (its record and
    patient are the item's; a two-way sync event is kept locally, never pushed), with the
    server's versions it was written over (``against``: a key added after migration 0012, so
    absent from the rows kept before; none known then)."""
    kept: dict[str, Any] = {
        "action": entry.action,
        "at": entry.at.isoformat(),
        "resource": entry.resource,
    }
    if against:
        kept["against"] = _sent_json(against)
    return kept


def _lost_overwrite(row: AnyRow) -> AuditEntry | None:
    """``row``'s ``lost_overwrite`` (with its ``record_id`` and ``patient``) as the entry given."""
    kept = row.lost_overwrite
    if kept is None:
        return None
    return AuditEntry(
        action=kept["action"],
        record_id=row.record_id,
        patient=row.patient,
        resource=kept["resource"],
        at=datetime.fromisoformat(kept["at"]),
    )


def _leased_to(worker: str, item_ids: Sequence[int]) -> tuple[ColumnElement[bool], ...]:
    """The compare-and-set of a worker's writes on its items: each of ``item_ids`` still pending
    and ``worker`` the holder of its lease."""
    return (
        outbox.c.item_id.in_(list(item_ids)),
        outbox.c.lease_owner == worker,
        outbox.c.state.in_(_PENDING),
    )


def _lost_overwrite_against(row: AnyRow) -> tuple[SentResource, ...]:
    """The server's versions ``row``'s ``lost_overwrite`` was written over (none: not known)."""
    kept = row.lost_overwrite
    return _sent_resources(kept.get("against")) if isinstance(kept, Mapping) else ()


def _leased_items(
    connection: Connection,
    item_ids: Sequence[int],
    *,
    owner: str,
    lease_until: datetime,
    taken_over: AbstractSet[int] = frozenset(),
    left_unsent: bool = False,
) -> list[OutboxItem]:
    """The outbox items ``item_ids`` with their record versions' bodies, in item order, as
    ``owner`` holds them until ``lease_until`` (``taken_over``: those taken from an expired
    lease; ``left_unsent``: items of a landing check, with ``left_unsent_at``)."""
    rows = connection.execute(
        select(
            outbox.c.item_id,
            outbox.c.record_id,
            outbox.c.record_version,
            outbox.c.patient,
            outbox.c.attempts,
            outbox.c.lost_leases,
            outbox.c.conflict,
            outbox.c.conflict_versions,
            outbox.c.updated_at,
            outbox.c.lost_overwrite,
            record_versions.c.kind,
            record_versions.c.family,
            record_versions.c.body,
        )
        .join(
            record_versions,
            and_(
                record_versions.c.record_id == outbox.c.record_id,
                record_versions.c.version == outbox.c.record_version,
            ),
        )
        .where(outbox.c.item_id.in_(item_ids))
        .order_by(outbox.c.item_id)
    )
    return [
        OutboxItem(
            item_id=row.item_id,
            record_id=row.record_id,
            record_version=row.record_version,
            kind=row.kind,
            family=row.family,
            patient=row.patient,
            body=row.body,
            attempts=row.attempts,
            lost_leases=row.lost_leases,
            lease_owner=owner,
            lease_until=lease_until,
            taken_over=row.item_id in taken_over,
            conflict=row.conflict,
            conflict_versions=_sent_resources(row.conflict_versions),
            left_unsent_at=row.updated_at if left_unsent else None,
            lost_overwrite=_lost_overwrite(row),
            lost_overwrite_against=_lost_overwrite_against(row),
        )
        for row in rows
    ]


#: What an :class:`ApiKey` is read from (``name_folded`` is derived from ``name``).
_API_KEY_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.name,
    api_keys.c.scopes,
    api_keys.c.secret_hash,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def _api_key(row: AnyRow) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        scopes=frozenset(row.scopes),
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _pulled(row: AnyRow) -> PulledResource:
    return PulledResource(
        server=row.server,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        version_id=row.version_id,
        last_updated=row.last_updated,
        patient=row.patient,
        record_id=row.record_id,
        origin=row.origin,
        state=row.state,
        body=row.body,
        generation=row.generation,
        updated_at=row.updated_at,
    )


#: The columns of a pulled resource's row an insert-or-replace sets again.
PULLED_REPLACED = (
    "version_id",
    "last_updated",
    "patient",
    "record_id",
    "origin",
    "state",
    "body",
    "generation",
    "updated_at",
)


def _pulled_row(resource: PulledResource, at: datetime) -> dict[str, Any]:
    """The ``pulled_resources`` row of ``resource``, saved at ``at``."""
    return {
        "server": resource.server,
        "resource_type": resource.resource_type,
        "resource_id": resource.resource_id,
        "version_id": resource.version_id,
        "last_updated": resource.last_updated,
        "patient": resource.patient,
        "record_id": resource.record_id,
        "origin": resource.origin,
        "state": resource.state,
        "body": None if resource.body is None else dict(resource.body),
        "generation": resource.generation,
        "updated_at": at,
    }


def _first_unserialisable(records: Sequence[NewRecord], audit: Sequence[AuditEntry]) -> str | None:
    """Where the first value that JSON cannot carry is, e.g. ``records[2].body: …``."""
    values = [(f"records[{n}].body", r.body) for n, r in enumerate(records)]
    values += [(f"audit[{n}].resource", e.resource) for n, e in enumerate(audit)]
    for path, value in values:
        try:
            orjson.dumps(value)
        except TypeError as error:
            return f"{path} is not JSON-serialisable: {error}"
    return None


def _intake_events_written(
    records: Sequence[NewRecord], events: IntakeEvents, results: Sequence[IntakeResult]
) -> list[AuditEntry]:
    """In intake's write: the event of each record that got a version (none for one UNCHANGED),
    naming that version. One built for another version (another intake wrote the record after
    the use case read the store) is built again for the version written; the others, the common
    case, are stored as built."""
    written: list[AuditEntry] = []
    for record, entry, expected, result in zip(
        records, events.entries, events.versions, results, strict=True
    ):
        if result.outcome is not PutOutcome.CREATED and result.outcome is not PutOutcome.UPDATED:
            continue
        if result.version != expected:
            entry = events.build(
                record.record_id, record.patient, record.kind, result.version, entry.at
            )
        written.append(entry)
    return written


_audit_row = audit_row


def _insert_mark_audit(
    connection: Connection, marks: Sequence[SentMark], recorded: Sequence[bool]
) -> None:
    """The audit entries of the ``marks`` whose send was ``recorded``, in ``connection``'s
    transaction."""
    insert_audit(
        connection,
        [entry for mark, ok in zip(marks, recorded, strict=True) if ok for entry in mark.audit],
    )


class SqlStore(AuditQueueSql):
    """The store over one SQLAlchemy engine; build it with :func:`open_store`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = engine.execution_options(**{READ_ONLY: True})
        self._writer_turn = writer_turn(engine)
        self._dialect = engine.dialect.name
        self._stamp_reader = _AutocommitReader(engine)
        self._raw = RawSql(engine, self._writer_turn)
        self._stamp_sql = _KEYS_AND_CONSENT_STAMPS_SQL
        #: Patients whose token row a transaction of this store has committed (module docstring).
        self._known_tokens: set[str] = set()
        #: The patient tokens' secret, once read (module docstring).
        self._token_secret: str | None = None
        if self._dialect == "postgresql":
            self._stamp_sql = _KEYS_AND_CONSENT_STAMPS_SQL.replace(":patient", "%(patient)s")

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer_turn(), self._engine.begin() as connection:
            yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.begin() as connection:
            yield connection

    # -- lifecycle -----------------------------------------------------------------------------
    def ping(self) -> None:
        with self._read() as connection:
            connection.execute(select(1)).scalar_one()

    def schema_revision(self) -> str | None:
        with self._read() as connection:
            revision: str | None = connection.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalar()
            return revision

    @property
    def raw(self) -> RawSql:
        """The raw DBAPI access of the intake path (``raw.py``)."""
        return self._raw

    def close(self) -> None:
        self._stamp_reader.close()
        self._raw.close()
        self._engine.dispose()

    # -- intake --------------------------------------------------------------------------------
    def put_records(
        self,
        records: Sequence[NewRecord],
        *,
        audit: Sequence[AuditEntry] | IntakeEvents,
        at: datetime,
    ) -> list[IntakeResult]:
        return self._put_checked(records, audit, at, None)

    def put_remote_records(
        self,
        records: Sequence[NewRecord],
        *,
        origin: str,
        audit: Sequence[AuditEntry],
        at: datetime,
        remote: Sequence[PulledResource] = (),
    ) -> list[IntakeResult]:
        return self._put_checked(records, audit, at, origin, remote)

    def _put_checked(
        self,
        records: Sequence[NewRecord],
        audit: Sequence[AuditEntry] | IntakeEvents,
        at: datetime,
        origin: str | None,
        remote: Sequence[PulledResource] = (),
    ) -> list[IntakeResult]:
        try:
            return self._put_records(records, audit, at, origin, remote)
        except (TypeError, StatementError):
            # The transaction is rolled back; say which value could not be stored (the drivers
            # word this differently, and SQLAlchemy's message would not name the record).
            entries = audit.entries if isinstance(audit, IntakeEvents) else audit
            problem = _first_unserialisable(records, entries)
            if problem is None:
                raise
            raise TypeError(problem) from None

    def _put_records(
        self,
        records: Sequence[NewRecord],
        audit: Sequence[AuditEntry] | IntakeEvents,
        at: datetime,
        origin: str | None = None,
        remote: Sequence[PulledResource] = (),
    ) -> list[IntakeResult]:
        # On the raw DBAPI connection of this thread (``raw.py``): one transaction of a lookup
        # and a few prepared bulk statements, without SQLAlchemy's per-statement machinery.
        results: list[IntakeResult] = []
        record_rows: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        changed_ids: list[str] = []  # records that existed before this batch and got a version
        written: set[str] = set()  # records that got a new version in this batch
        queued_in_batch: dict[str, dict[str, Any]] = {}  # record id → its newest item row
        tokens_written: list[str] = []  # patients whose token row this transaction inserts
        moved: list[str] = []  # records whose new version names another patient (refused)
        rekinded: list[str] = []  # records whose new version is of another kind (refused)
        token_secret = self._patient_token_secret()  # before the write transaction: it may write
        with self._raw.transaction():
            stale, remote_rows = self._remote_order_checked(remote, at)
            heads = self._load_heads([record.record_id for record in records])
            for record in records:
                head = heads.get(record.record_id)
                if record.record_id in stale:
                    version = head.version if head is not None else 0
                    results.append(IntakeResult(record.record_id, version, PutOutcome.STALE))
                    continue
                if head is not None and head.content_hash == record.content_hash:
                    results.append(
                        IntakeResult(record.record_id, head.version, PutOutcome.UNCHANGED)
                    )
                    continue
                if head is None:
                    head = heads[record.record_id] = _Head(
                        1,
                        record.content_hash,
                        is_new=True,
                        patient=record.patient,
                        kind=(record.kind, record.family),
                    )
                    outcome = PutOutcome.CREATED
                else:
                    # Nor can its kind (the intake's rule too, checked again here for the same
                    # reason: two intakes creating one id with different kinds both pass it).
                    if origin is None and head.kind != (record.kind, record.family):
                        rekinded.append(record.record_id)
                        continue
                    # A record's patient cannot change (the intake's rule, checked again here,
                    # in the write transaction: a concurrent intake may have stored the record for
                    # another patient since the use case read it). Pulled records (``origin``) are
                    # not the intake's.
                    if (
                        origin is None
                        and head.patient != record.patient
                        and not self._same_patient(head.patient, record.patient)
                    ):
                        moved.append(record.record_id)
                        continue
                    head.patient = record.patient
                    if not head.is_new:
                        changed_ids.append(record.record_id)
                    # A version queued earlier in this batch is superseded straight away.
                    if record.record_id in queued_in_batch:
                        queued_in_batch[record.record_id]["state"] = SyncState.SUPERSEDED.value
                    head.version += 1
                    head.content_hash = record.content_hash
                    outcome = PutOutcome.UPDATED
                written.add(record.record_id)
                results.append(IntakeResult(record.record_id, head.version, outcome))
                record_rows.append(
                    {
                        "record_id": record.record_id,
                        "version": head.version,
                        "identifier": record.identifier,
                        "kind": record.kind,
                        "family": record.family,
                        "patient": record.patient,
                        "body": record.body,
                        "content_hash": record.content_hash,
                        "created_at": at,
                    }
                )
                item = {
                    "record_id": record.record_id,
                    "record_version": head.version,
                    "patient": record.patient,
                    "state": SyncState.QUEUED.value,
                    "attempts": 0,
                    "created_at": at,
                    "updated_at": at,
                }
                outbox_rows.append(item)
                queued_in_batch[record.record_id] = item
            # Raised inside the transaction: rolled back, nothing of the batch kept.
            if rekinded:
                raise KindChangeRefused(list(dict.fromkeys(rekinded)))
            if moved:
                raise PatientChangeRefused(list(dict.fromkeys(moved)))
            if record_rows:
                tokens_written = self._write_versions(
                    record_rows, heads, changed_ids, at, token_secret, origin
                )
                if origin is None:  # pulled records are never pushed back
                    self._raw.insert(outbox, outbox_rows)
                self._note_consent_changes(record_rows)
            if isinstance(audit, IntakeEvents):
                # Intake's own events name the version each record got here (built again for it
                # when another intake wrote the record after the use case read the store), and
                # a version is written once: no id to look up (one round trip more in the most
                # contended write made concurrent posts of one record run out of retries).
                stored = _intake_events_written(records, audit, results)
            else:
                kept = [
                    entry
                    for entry in audit
                    if entry.record_id is None
                    or entry.record_id in written
                    or (entry.record_id not in heads and entry.record_id not in stale)
                ]
                stored = kept if origin is None else ids_of_their_own(kept, self._taken_event_ids)
            self._raw.insert(audit_log, [_audit_row(entry) for entry in stored])
            self._raw.insert(pulled_resources, remote_rows, suffix=self._pulled_upsert)
        if tokens_written:  # committed: their rows exist for good
            if len(self._known_tokens) + len(tokens_written) > KNOWN_TOKENS_MAX:
                self._known_tokens = set()
            self._known_tokens.update(tokens_written)
        return results

    #: ``note_retraction_checks``' insert-or-replace, for the raw connection (both databases).
    _retraction_note_upsert = (
        " ON CONFLICT (patient) DO UPDATE SET note = excluded.note, "
        "lease_until = excluded.lease_until"
    )

    def _note_consent_changes(self, record_rows: Sequence[Mapping[str, Any]]) -> None:
        """In the write transaction of intake or of a pull: note the patient of each consent
        version written for a retraction check (``note_retraction_checks``, due at once), so
        that a revocation or a narrowed consent is put to the retraction policy by any worker,
        whether or not it runs retraction passes, and is never lost to a process that dies after
        the write (a pulling worker restarted takes every patient's consents as checked)."""
        patients = sorted({row["patient"] for row in record_rows if row["family"] == "consent"})
        if not patients:
            return
        note = str(uuid.uuid4())
        self._raw.insert(
            retraction_checks,
            [{"patient": p, "note": note, "lease_until": None} for p in patients],
            suffix=self._retraction_note_upsert,
        )

    #: ``save_pulled``'s insert-or-replace, for the raw connection (SQLite and PostgreSQL).
    _pulled_upsert = " ON CONFLICT (server, resource_type, resource_id) DO UPDATE SET " + ", ".join(
        f"{name} = excluded.{name}" for name in PULLED_REPLACED
    )

    def _remote_order_checked(
        self, remote: Sequence[PulledResource], at: datetime
    ) -> tuple[set[str], list[dict[str, Any]]]:
        """In the write transaction: the record ids whose pulled copy (``remote``) is older than
        the copy saved before (or the same version as one since deleted), and the rows of the
        other copies to save. The saved rows are read ``FOR UPDATE`` on PostgreSQL (SQLite's
        writers take turns), so a concurrent pass writing the same resources waits, then
        compares with what that pass saved."""
        if not remote:
            return set(), []
        lock = " FOR UPDATE" if self._raw.is_postgresql else ""
        saved: dict[tuple[str, str, str], tuple[str | None, str | None, str]] = {}
        keys = sorted({(r.server, r.resource_type, r.resource_id) for r in remote})
        for (server, resource_type), group in groupby(keys, key=lambda k: k[:2]):
            ids = [k[2] for k in group]
            for chunk in _chunks(ids):
                rows = self._raw.query(
                    "SELECT resource_id, version_id, last_updated, state "  # noqa: S608 (placeholders)
                    "FROM pulled_resources WHERE server = ? AND resource_type = ? "
                    f"AND resource_id IN ({self._raw.placeholders(len(chunk))}){lock}",
                    [server, resource_type, *chunk],
                )
                for resource_id, version_id, last_updated, state in rows:
                    saved[(server, resource_type, resource_id)] = (version_id, last_updated, state)
        stale: set[str] = set()
        kept: dict[tuple[str, str, str], dict[str, Any]] = {}
        for copy in remote:  # in order: a later copy of the batch is compared with an earlier
            key = (copy.server, copy.resource_type, copy.resource_id)
            before = saved.get(key)
            if before is not None:
                order = remote_order(before[0], before[1], copy.version_id, copy.last_updated)
                revived = before[2] == "deleted" and copy.state != "deleted"
                if order is RemoteOrder.OLDER or (order is RemoteOrder.SAME and revived):
                    if copy.record_id is not None:
                        stale.add(copy.record_id)
                    continue
            saved[key] = (copy.version_id, copy.last_updated, copy.state)
            kept[key] = _pulled_row(copy, at)
        return stale, list(kept.values())

    def _taken_event_ids(
        self, records: Collection[str | None], event_ids: Collection[str] | None
    ) -> set[str]:
        """``TakenEventIds`` (``audit_queue.py``) on the raw connection, in the pull's write."""
        event_id = event_id_sql("postgresql" if self._raw.is_postgresql else "sqlite")
        known = [record for record in records if record is not None]
        about: list[str] = []
        if known:
            about.append(f"record_id IN ({self._raw.placeholders(len(known))})")
        if None in records:
            about.append("record_id IS NULL")
        statement = f"SELECT {event_id} FROM audit WHERE ({' OR '.join(about)})"  # noqa: S608 (placeholders)
        params: list[Any] = list(known)
        if event_ids is not None:
            statement += f" AND {event_id} IN ({self._raw.placeholders(len(event_ids))})"
            params += list(event_ids)
        return {str(value) for (value,) in self._raw.query(statement, params) if value is not None}

    def _load_heads(self, record_ids: Sequence[str]) -> dict[str, _Head]:
        """The head of each of ``record_ids`` that exists, with its newest version's kind (joined
        by primary key in the same query: ``record_heads`` keeps no kind)."""
        heads: dict[str, _Head] = {}
        unique = list(dict.fromkeys(record_ids))
        for chunk in _chunks(unique):
            rows = self._raw.query(
                "SELECT h.record_id, h.version, h.content_hash, h.patient, r.kind, r.family "  # noqa: S608 (placeholders)
                "FROM record_heads AS h JOIN records AS r "
                "ON r.record_id = h.record_id AND r.version = h.version "
                f"WHERE h.record_id IN ({self._raw.placeholders(len(chunk))})",
                chunk,
            )
            for record_id, version, content_hash, patient, kind, family in rows:
                heads[record_id] = _Head(
                    version, content_hash, is_new=False, patient=patient, kind=(kind, family)
                )
        return heads

    def _same_patient(self, stored: str, new: str) -> bool:
        """``stored`` is ``new`` or one of its keys (``patient_keys``: its canonical patient and
        that patient's aliases), read in the write transaction under way (only for a record whose
        patient key differs: rare)."""
        if stored == new:
            return True
        raw = self._raw
        rows = raw.query("SELECT patient FROM patient_aliases WHERE alias = ?", [new])
        canonical = rows[0][0] if rows else new
        if stored == canonical:
            return True
        return bool(
            raw.query(
                "SELECT 1 FROM patient_aliases WHERE patient = ? AND alias = ?", [canonical, stored]
            )
        )

    def _write_versions(
        self,
        record_rows: list[dict[str, Any]],
        heads: dict[str, _Head],
        changed_ids: list[str],
        at: datetime,
        token_secret: str,
        origin: str | None = None,
    ) -> list[str]:
        """Write the versions, heads and tokens (under ``token_secret``); returns the patients
        whose token row it inserted."""
        raw = self._raw
        raw.insert(record_versions, record_rows)
        newest = {row["record_id"]: row for row in record_rows}  # last version per record wins
        raw.insert(
            record_heads,
            [
                {
                    "record_id": record_id,
                    "version": heads[record_id].version,
                    "family": row["family"],
                    "patient": row["patient"],
                    "content_hash": heads[record_id].content_hash,
                    "created_at": at,
                    "updated_at": at,
                    "origin": origin,
                }
                for record_id, row in newest.items()
                if heads[record_id].is_new
            ],
        )
        # Keep the console's token of each patient (already known ones are left alone; those
        # this store committed before are not even sent).
        known = self._known_tokens
        new_patients = sorted({row["patient"] for row in newest.values()} - known)
        raw.insert(
            patient_tokens,
            [{"token": patient_token(token_secret, p), "patient": p} for p in new_patients],
            suffix=" ON CONFLICT (token) DO NOTHING",
        )
        changed = list(dict.fromkeys(changed_ids))
        if not changed:
            return new_patients
        stamp = raw.bind_processor(record_heads.c.updated_at)
        when = stamp(at) if stamp is not None else at
        raw.executemany(
            "UPDATE record_heads SET version = ?, content_hash = ?, family = ?, patient = ?, "
            "updated_at = ? WHERE record_id = ?",
            [
                (
                    heads[record_id].version,
                    heads[record_id].content_hash,
                    newest[record_id]["family"],
                    newest[record_id]["patient"],
                    when,
                    record_id,
                )
                for record_id in changed
            ],
        )
        # Older unsent items of changed records: superseded, unless a worker holds them right now
        # (they are being sent; the new version waits behind them in patient order). One whose
        # lease expired without a result is noted *landing unknown* (``_noted_if_lease_lost``):
        # its worker may have stopped after its send landed.
        for chunk in _chunks(changed):
            raw.execute(
                "UPDATE outbox SET state = ?, lease_owner = NULL, lease_until = NULL, "  # noqa: S608
                "landing_check_at = CASE WHEN lease_until IS NOT NULL "
                "THEN COALESCE(landing_check_at, ?) ELSE landing_check_at END, "
                f"updated_at = ? WHERE record_id IN ({raw.placeholders(len(chunk))}) "
                f"AND state IN ({raw.placeholders(len(_SUPERSEDABLE))}) "
                "AND (lease_until IS NULL OR lease_until <= ?)",
                [SyncState.SUPERSEDED.value, when, when, *chunk, *_SUPERSEDABLE, when],
            )
        return new_patients

    # -- reading -------------------------------------------------------------------------------
    def get_record(self, record_id: str, *, version: int | None = None) -> StoredRecord | None:
        wanted = record_heads.c.version if version is None else version
        query = (
            select(*_RECORD_COLUMNS)
            .join(record_heads, record_heads.c.record_id == record_versions.c.record_id)
            .where(record_versions.c.record_id == record_id, record_versions.c.version == wanted)
        )
        with self._read() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else _stored_record(row)

    def get_records(self, record_ids: Sequence[str]) -> dict[str, StoredRecord]:
        # Intake's batch lookup: on this thread's raw connection, one read transaction per chunk.
        raw = self._raw
        body = raw.result_processor(record_versions.c.body)
        first_created = raw.result_processor(record_heads.c.created_at)
        version_created = raw.result_processor(record_versions.c.created_at)
        found: dict[str, StoredRecord] = {}
        for chunk in _chunks(list(dict.fromkeys(record_ids))):
            rows = raw.query(
                "SELECT r.record_id, r.identifier, r.kind, r.family, r.patient, r.version, "  # noqa: S608
                "r.body, r.content_hash, h.created_at, r.created_at "
                "FROM record_heads AS h JOIN records AS r "
                "ON r.record_id = h.record_id AND r.version = h.version "
                f"WHERE h.record_id IN ({raw.placeholders(len(chunk))})",
                chunk,
            )
            for row in rows:
                found[row[0]] = StoredRecord(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    row[5],
                    body=row[6] if body is None else body(row[6]),
                    content_hash=row[7],
                    created_at=row[8] if first_created is None else first_created(row[8]),
                    updated_at=row[9] if version_created is None else version_created(row[9]),
                )
        return found

    def _newest_records(self, *columns: Any) -> Select[*tuple[Any, ...]]:
        """The newest version of each record (``columns``: a record's, by default) joined to its
        head."""
        chosen = columns or _RECORD_COLUMNS
        return (
            select(*chosen)
            .select_from(record_versions)
            .join(
                record_heads,
                and_(
                    record_heads.c.record_id == record_versions.c.record_id,
                    record_heads.c.version == record_versions.c.version,
                ),
            )
        )

    def list_records(
        self,
        *,
        patient: str | None = None,
        family: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[StoredRecord]:
        query = self._newest_records()
        if patient is not None:
            query = query.where(record_heads.c.patient == patient)
        if family is not None:
            query = query.where(record_heads.c.family == family)
        if after is not None:
            query = query.where(record_heads.c.record_id > after)
        query = query.order_by(record_heads.c.record_id).limit(limit)
        with self._read() as connection:
            return [_stored_record(row) for row in connection.execute(query)]

    def patients(self) -> list[str]:
        query = select(record_heads.c.patient).distinct().order_by(record_heads.c.patient)
        with self._read() as connection:
            return list(connection.execute(query).scalars())

    def sync_status(self, record_id: str) -> SyncStatus | None:
        # The newest version's newest item (an item queued again may carry an older version
        # under a larger id: see _HAS_NEWER_ITEM).
        query = (
            select(outbox)
            .where(outbox.c.record_id == record_id)
            .order_by(outbox.c.record_version.desc(), outbox.c.item_id.desc())
            .limit(1)
        )
        with self._read() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else _sync_status(row)

    def counts_by_state(self) -> dict[SyncState, int]:
        query = select(outbox.c.state, func.count()).group_by(outbox.c.state)
        counts = dict.fromkeys(SyncState, 0)
        with self._read() as connection:
            for state, count in connection.execute(query):
                counts[SyncState(state)] = count
        return counts

    def list_by_state(
        self, state: SyncState, *, limit: int = 100, after: int | None = None
    ) -> list[SyncStatus]:
        query = select(outbox).where(outbox.c.state == SyncState(state).value)
        if after is not None:
            query = query.where(outbox.c.item_id > after)
        query = query.order_by(outbox.c.item_id).limit(limit)
        with self._read() as connection:
            return [_sync_status(row) for row in connection.execute(query)]

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
        if limit <= 0:
            return []
        older = outbox.alias("older")
        candidates = (
            select(outbox.c.item_id, outbox.c.lease_until, outbox.c.patient)
            .where(
                outbox.c.state.in_(_PENDING),
                or_(
                    outbox.c.state == SyncState.QUEUED.value,
                    outbox.c.next_attempt_at <= now,
                ),
                or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now),
                ~exists().where(
                    older.c.patient == outbox.c.patient,
                    older.c.state.in_(_PENDING),
                    older.c.item_id < outbox.c.item_id,
                ),
            )
            .order_by(outbox.c.item_id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=outbox)
        )
        lease_until = now + timedelta(seconds=lease_seconds)
        with self._write() as connection:
            while True:
                heads = list(connection.execute(candidates))
                leases = {row.item_id: row.lease_until for row in heads}
                if per_patient > 1 and 0 < len(heads) < limit:
                    leases.update(
                        self._followers(
                            connection,
                            heads,
                            room=limit - len(heads),
                            per_patient=per_patient,
                            now=now,
                        )
                    )
                # Items of a record that got a newer version while they were leased: superseded,
                # not claimed; then choose again (a superseded head let its patient's next go).
                if not leases or not self._supersede_stale(connection, list(leases), now):
                    break
            item_ids = list(leases)
            if not item_ids:
                return []
            # A lease that is still set here expired without a result (every ``mark_*`` and
            # ``release`` clears it): the worker holding it stopped, a crash or a database
            # outage. It counts as a lost lease, apart from the failed sends in ``attempts``;
            # the next result forgets them. A record that kills every worker taking it still
            # reaches ``max_attempts`` lost leases in a row and is dead-lettered. Its send may
            # have landed before the worker stopped: noted *landing unknown* (dropped by this
            # claim's send, read back if it ends held or dead-lettered instead).
            connection.execute(
                update(outbox)
                .where(outbox.c.item_id.in_(item_ids))
                .values(
                    lease_owner=worker,
                    lease_until=lease_until,
                    lost_leases=outbox.c.lost_leases
                    + case((outbox.c.lease_until.is_not(None), 1), else_=0),
                    landing_check_at=_noted_if_lease_lost(now),
                    updated_at=now,
                )
            )
            return _leased_items(
                connection,
                item_ids,
                owner=worker,
                lease_until=lease_until,
                taken_over={i for i, lease in leases.items() if lease is not None},
            )

    @staticmethod
    def _supersede_stale(connection: Connection, item_ids: Sequence[int], at: datetime) -> int:
        """Supersede those of ``item_ids`` whose record has a newer item, as intake supersedes an
        unsent older version (no audit entry; the lease goes; one that expired is noted
        *landing unknown*: its worker may have sent it); how many."""
        result = connection.execute(
            update(outbox)
            .where(outbox.c.item_id.in_(list(item_ids)), _HAS_NEWER_ITEM)
            .values(
                state=SyncState.SUPERSEDED.value,
                lease_owner=None,
                lease_until=None,
                landing_check_at=_noted_if_lease_lost(at),
                updated_at=at,
            )
        )
        return int(result.rowcount)

    def _followers(
        self,
        connection: Connection,
        heads: Sequence[AnyRow],
        *,
        room: int,
        per_patient: int,
        now: datetime,
    ) -> dict[int, datetime | None]:
        """The claimed patients' next items (item id → lease) for ``claim(per_patient=…)``: each
        patient's pending items after its head, in order, up to the first one not claimable now
        (failed and not due, or leased), at most ``per_patient`` per patient with the head and
        ``room`` in all.

        Safe beside concurrent claims: another worker can only ever claim a patient's oldest
        pending item, which is the head this claim holds (locked here until commit, leased
        after), so a patient's later items are taken by no one else meanwhile; on PostgreSQL the
        followers are locked too (``FOR UPDATE``), against intake superseding them mid-claim."""
        claimable = and_(
            or_(outbox.c.state == SyncState.QUEUED.value, outbox.c.next_attempt_at <= now),
            or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now),
        )
        head_ids = [row.item_id for row in heads]
        patients = list(dict.fromkeys(row.patient for row in heads))
        by_patient: dict[str, list[AnyRow]] = {}
        for chunk in _chunks(patients):
            rows = connection.execute(
                select(
                    outbox.c.item_id,
                    outbox.c.patient,
                    outbox.c.lease_until,
                    case((claimable, 1), else_=0).label("claimable"),
                )
                .where(
                    outbox.c.patient.in_(list(chunk)),
                    outbox.c.state.in_(_PENDING),
                    outbox.c.item_id.not_in(head_ids),
                )
                .order_by(outbox.c.item_id)
                .with_for_update(of=outbox)
            )
            for row in rows:
                by_patient.setdefault(row.patient, []).append(row)
        taken: dict[int, datetime | None] = {}
        for patient in patients:  # oldest head first
            for row in by_patient.get(patient, [])[: per_patient - 1]:
                if not row.claimable or len(taken) >= room:
                    break  # nothing after a waiting item: it would overtake it
                taken[row.item_id] = row.lease_until
        return taken

    def release(
        self,
        item_ids: Sequence[int],
        worker: str,
        *,
        at: datetime,
        landing_check_at: datetime | None = None,
    ) -> int:
        if not item_ids:
            return 0
        values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "updated_at": at}
        if landing_check_at is not None:
            values["landing_check_at"] = func.coalesce(
                outbox.c.landing_check_at, literal(landing_check_at, UtcDateTime())
            )
        with self._write() as connection:  # one batch's items: a short IN list
            result = connection.execute(
                update(outbox)
                .where(
                    *_leased_to(worker, item_ids),
                )
                .values(**values)
            )
            return int(result.rowcount)

    def note_overwrite(
        self,
        item_id: int,
        worker: str,
        overwrite: AuditEntry,
        *,
        against: Sequence[SentResource] = (),
    ) -> bool:
        with self._write() as connection:
            result = connection.execute(
                update(outbox)
                .where(
                    *_leased_to(worker, [item_id]),
                )
                .values(lost_overwrite=_lost_overwrite_json(overwrite, against))
            )
            return int(result.rowcount) == 1

    def settle_lost_overwrite(
        self, item_id: int, worker: str, *, audit: Sequence[AuditEntry]
    ) -> bool:
        with self._write() as connection:
            result = connection.execute(
                update(outbox)
                .where(
                    *_leased_to(worker, [item_id]),
                    outbox.c.lost_overwrite.is_not(None),
                )
                .values(lost_overwrite=null())
            )
            if int(result.rowcount) != 1:
                return False
            if audit:
                connection.execute(insert(audit_log), [_audit_row(entry) for entry in audit])
            return True

    def _finish(
        self,
        item_id: int,
        worker: str,
        values: Mapping[str, Any],
        audit_entries: Sequence[AuditEntry],
        *,
        landing_check_at: datetime | None = None,
        lost_overwrite: AuditEntry | None = None,
        lost_overwrite_against: Sequence[SentResource] = (),
    ) -> SyncState | None:
        """Compare-and-set: apply ``values`` only while ``worker`` holds the lease on a pending
        item; the lease is released either way it lands, and the lost leases are forgotten
        (a result: the worker did not stop on this item). The state the item was left in
        (``_unless_newer``: SUPERSEDED perhaps), or None when the lease was lost.
        ``landing_check_at``: the item is noted *landing unknown* in the same transaction, also
        when the lease was lost (a send whose answer was lost may have landed, whoever holds the
        item now), unless it is SENT (then it is tracked already); with ``lost_overwrite``, the
        lost send's overwrite is kept with the note (``Store.mark_dead``). Without it, an
        overwrite noted before the send (``note_overwrite``) is kept only on an item noted
        *landing unknown* already (unless ``values`` say otherwise: ``mark_sent``)."""
        kept: dict[str, Any] = {}
        if landing_check_at is not None:
            values = {**values, "landing_check_at": landing_check_at}
            if lost_overwrite is not None:
                kept["lost_overwrite"] = _lost_overwrite_json(
                    lost_overwrite, lost_overwrite_against
                )
                values = {**values, **kept}
        elif "lost_overwrite" not in values:
            values = {**values, "lost_overwrite": _KEPT_WITH_NOTE_ONLY}
        with self._write() as connection:
            written = connection.execute(
                update(outbox)
                .where(
                    *_leased_to(worker, [item_id]),
                )
                .values(lease_owner=None, lease_until=None, lost_leases=0, **values)
                .returning(outbox.c.state)
            ).scalar_one_or_none()
            if written is None:
                if landing_check_at is not None:
                    connection.execute(
                        update(outbox)
                        .where(
                            outbox.c.item_id == item_id,
                            outbox.c.state != SyncState.SENT.value,
                        )
                        .values(
                            landing_check_at=func.coalesce(
                                outbox.c.landing_check_at,
                                bindparam("b_check_at", landing_check_at, type_=UtcDateTime()),
                            ),
                            **kept,
                        )
                    )
                return None
            insert_audit(connection, audit_entries)
            return SyncState(written)

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
        sent_json = _sent_json(sent)
        values = {
            "state": SyncState.SENT.value,
            "sent": sent_json,
            "held_reason": None,
            "next_attempt_at": None,
            "landing_check_at": None,
            "lost_overwrite": null(),
            "updated_at": at,
        }
        if conflict is not None:  # keep-remote: noted with the outcome, never before it
            values["conflict"] = conflict
        return self._finish(item_id, worker, values, audit) is not None

    def mark_sent_many(self, worker: str, marks: Sequence[SentMark], *, at: datetime) -> list[bool]:
        # One transaction for a Bundle's items: which items ``worker`` still holds, read once
        # (locked on PostgreSQL; SQLite's write lock is held), then one executemany of the same
        # compare-and-set update as ``_finish`` (its WHERE still guards every row) and the audit
        # entries of the items that landed in one insert. Was one statement per item.
        ids = [mark.item_id for mark in marks]
        owned: set[int] = set()
        with self._write() as connection:
            for start in range(0, len(ids), LOOKUP_CHUNK):
                owned.update(
                    connection.execute(
                        select(outbox.c.item_id)
                        .where(
                            *_leased_to(worker, ids[start : start + LOOKUP_CHUNK]),
                        )
                        .with_for_update()
                    ).scalars()
                )
            landed = [mark.item_id in owned for mark in marks]
            updates = [
                {
                    "b_item_id": mark.item_id,
                    "b_worker": worker,
                    "b_sent": _sent_json(mark.sent),
                    "b_at": at,
                    "b_conflict": mark.conflict,
                }
                for mark, ok in zip(marks, landed, strict=True)
                if ok
            ]
            if updates:
                connection.execute(_MARK_SENT, updates)
            _insert_mark_audit(connection, marks, landed)
        return landed

    def mark_sent_late(self, marks: Sequence[SentMark], *, at: datetime) -> int:
        if not marks:
            return 0
        ids = [mark.item_id for mark in marks]
        requeued = 0
        with self._write() as connection:
            rows = {
                row.item_id: row
                for row in connection.execute(
                    select(outbox.c.item_id, outbox.c.record_id, outbox.c.state, outbox.c.sent)
                    .where(outbox.c.item_id.in_(ids))  # one Bundle's items: a short IN list
                    .with_for_update()
                )
            }
            # A send a read-back recorded already (``record_landing_checks``: the item was noted
            # *landing unknown* when its lease was taken, while this worker was still sending) is
            # the same write: not recorded, nor its disclosure audited, twice.
            fresh = [
                mark
                for mark in marks
                if mark.item_id in rows and not _recorded_already(rows[mark.item_id], mark)
            ]
            for mark in fresh:
                requeued += self._record_late(connection, rows[mark.item_id], mark, at)
            insert_audit(connection, [entry for mark in fresh for entry in mark.audit])
        return requeued

    @classmethod
    def _record_late(cls, connection: Connection, row: AnyRow, mark: SentMark, at: datetime) -> int:
        """``mark_sent_late`` of one item (``row``: its id, record, state and ``sent``, read
        locked), its audit entries aside: how many records were queued again (0 or 1)."""
        sent_json, newer = _later_versions(row.sent, mark.sent)
        values: dict[str, Any] = {
            "sent": sent_json,
            "landing_check_at": None,
            "lost_overwrite": null(),
            "updated_at": at,
        }
        if mark.conflict is not None:  # an overwrite that landed: noted with it
            values["conflict"] = mark.conflict
        if row.state != SyncState.SENT.value:
            values.update(
                state=SyncState.SENT.value,
                held_reason=None,
                next_attempt_at=None,
                lease_owner=None,
                lease_until=None,
                lost_leases=0,
            )
        elif newer:
            values["retraction"] = None  # our write is on the server again
        connection.execute(update(outbox).where(outbox.c.item_id == mark.item_id).values(**values))
        return cls._overtaken(connection, row.record_id, mark, at)

    @staticmethod
    def _overtaken(connection: Connection, record_id: str, mark: SentMark, at: datetime) -> int:
        """``mark_sent_late``'s older version that landed after a newer one was sent: the newest
        SENT item lists the server's later versions (the If-Match of the next update; a
        retraction noted on it is cleared), and the record's newest version is queued again
        unless an item of it waits already (queued, failed or held). 1 if queued, else 0."""
        newest = connection.execute(
            select(outbox.c.item_id, outbox.c.sent)
            .where(
                outbox.c.record_id == record_id,
                outbox.c.state == SyncState.SENT.value,
                outbox.c.item_id > mark.item_id,
            )
            .order_by(outbox.c.item_id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        if newest is None:
            return 0
        sent_json, newer = _later_versions(newest.sent, mark.sent)
        if not newer:
            return 0  # the newer version's write came after ours: the server holds it
        connection.execute(
            update(outbox)
            .where(outbox.c.item_id == newest.item_id)
            .values(sent=sent_json, retraction=None, updated_at=at)
        )
        # An item still waiting carries the newest version already.
        return 0 if _queue_newest(connection, record_id, conflict=None, at=at) is None else 1

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
        values: dict[str, Any] = {
            "state": _unless_newer(SyncState.HELD),
            "held_reason": reason,
            "next_attempt_at": None,
            "updated_at": at,
        }
        if conflict is not None:
            # A flag: the hold, the conflict and the versions it is flagged against in one
            # compare-and-set, so that no one (another worker, a person deciding) ever sees a
            # conflict noted without its hold, or a hold with an earlier flag's versions.
            values.update(conflict=conflict, conflict_versions=_sent_json(conflict_versions))
        return self._finish(item_id, worker, values, audit)

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
    ) -> SyncState | None:
        values = {
            "state": _unless_newer(SyncState.FAILED),
            "attempts": outbox.c.attempts + 1,
            "last_outcome": dict(outcome),
            "next_attempt_at": next_attempt_at,
            "updated_at": at,
        }
        return self._finish(
            item_id,
            worker,
            values,
            (),
            landing_check_at=landing_check_at,
            lost_overwrite=lost_overwrite,
            lost_overwrite_against=lost_overwrite_against,
        )

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
        values = {
            "state": _unless_newer(SyncState.DEAD_LETTERED),
            "attempts": outbox.c.attempts + (1 if count_attempt else 0),
            "last_outcome": dict(outcome),
            "next_attempt_at": None,
            "updated_at": at,
        }
        return self._finish(
            item_id,
            worker,
            values,
            audit,
            landing_check_at=landing_check_at,
            lost_overwrite=lost_overwrite,
            lost_overwrite_against=lost_overwrite_against,
        )

    # -- sends whose landing is unknown --------------------------------------------------------
    def claim_landing_checks(
        self, *, limit: int, lease_seconds: float, now: datetime, record_id: str | None = None
    ) -> list[OutboxItem]:
        if limit <= 0:
            return []
        due: tuple[Any, ...] = (_LANDING_UNKNOWN, outbox.c.state.in_(_LEFT_UNSENT))
        if record_id is None:
            due = (*due, outbox.c.landing_check_at <= now)
        else:  # the record's, due or not (``record_landing_checks`` records each once)
            due = (*due, outbox.c.record_id == record_id)
        with self._read() as connection:  # nothing due (nearly always): no write at all
            if connection.execute(select(outbox.c.item_id).where(*due).limit(1)).first() is None:
                return []
        candidates = (
            select(outbox.c.item_id)
            .where(*due)
            .order_by(outbox.c.item_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        lease_until = now + timedelta(seconds=lease_seconds)
        with self._write() as connection:
            item_ids = list(connection.execute(candidates).scalars())
            if not item_ids:
                return []
            connection.execute(
                update(outbox)
                .where(outbox.c.item_id.in_(item_ids))
                .values(landing_check_at=lease_until)
            )
            return _leased_items(
                connection,
                item_ids,
                owner=LANDING_CHECK_OWNER,
                lease_until=lease_until,
                left_unsent=True,
            )

    def record_landing_checks(
        self,
        landed: Sequence[SentMark],
        absent: Sequence[int],
        *,
        at: datetime,
        later: Mapping[int, datetime] | None = None,
        absent_audit: Mapping[int, Sequence[AuditEntry]] | None = None,
    ) -> list[bool]:
        ids = [mark.item_id for mark in landed] + list(absent)
        if not (ids or later):
            return []
        with self._write() as connection:  # a read-back pass's items: a short IN list
            if later:
                # Kept noted, read back again then (never a note made where there is none).
                connection.execute(
                    _LANDING_CHECK_LATER,
                    [{"b_item_id": i, "b_check_at": due} for i, due in later.items()],
                )
            if not ids:
                return []
            rows = {
                row.item_id: row
                for row in connection.execute(
                    select(outbox.c.item_id, outbox.c.record_id, outbox.c.state, outbox.c.sent)
                    .where(
                        outbox.c.item_id.in_(ids),
                        _LANDING_UNKNOWN,
                        outbox.c.state.in_(_LEFT_UNSENT),
                    )
                    .with_for_update()
                )
            }
            recorded = [mark.item_id in rows for mark in landed]
            for mark, ok in zip(landed, recorded, strict=True):
                if ok:
                    self._record_late(connection, rows[mark.item_id], mark, at)
            gone = [item_id for item_id in absent if item_id in rows]
            if gone:
                # Only the note: ``updated_at`` says when the item's state changed (a hold's
                # age counts for the consent time pass, ``held_since``).
                connection.execute(
                    update(outbox)
                    .where(outbox.c.item_id.in_(gone))
                    .values(landing_check_at=None, lost_overwrite=null())
                )
                # A lost overwrite not found, which may have landed: its AuditEvent, with the drop.
                unfound = [e for i in gone for e in (absent_audit or {}).get(i, ())]
                if unfound:
                    connection.execute(insert(audit_log), [_audit_row(e) for e in unfound])
            _insert_mark_audit(connection, landed, recorded)
        return recorded

    def landing_unknown_count(self) -> int:
        query = select(func.count()).select_from(outbox).where(_LANDING_UNKNOWN)
        with self._read() as connection:
            return int(connection.execute(query).scalar_one())

    def release_held(self, patient: str, *, at: datetime) -> int:
        keys = self.patient_keys(patient)  # a patient's aliases are the same patient
        with self._write() as connection:
            result = connection.execute(
                update(outbox)
                .where(outbox.c.patient.in_(keys), _HELD_FOR_CONSENTS)
                .values(state=SyncState.QUEUED.value, held_reason=None, updated_at=at)
            )
            return int(result.rowcount)

    def release_all_held(self, *, notes: bool, at: datetime) -> int:
        released = [_HELD_FOR_CONSENTS]
        if notes:  # the draft and unsigned-note holds, not a conflict flagged for a person
            released.append(
                and_(
                    outbox.c.state == SyncState.HELD.value,
                    outbox.c.held_reason.in_(HELD_FOR_A_PERSON[1:]),
                )
            )
        with self._write() as connection:
            result = connection.execute(
                update(outbox)
                .where(or_(*released))
                .values(state=SyncState.QUEUED.value, held_reason=None, updated_at=at)
            )
            return int(result.rowcount)

    def replay(self, record_id: str | None = None, *, at: datetime) -> ReplayResult:
        dead = [outbox.c.state == SyncState.DEAD_LETTERED.value]
        if record_id is not None:
            dead.append(outbox.c.record_id == record_id)
        # A dead letter whose record has a newer item would overwrite that newer version (or go
        # in one Bundle with it): superseded, never re-queued.
        stale = (
            update(outbox)
            .where(*dead, _HAS_NEWER_ITEM)
            .values(state=SyncState.SUPERSEDED.value, updated_at=at)
            .returning(outbox.c.record_id, outbox.c.record_version)
        )
        requeue = (
            update(outbox)
            .where(*dead)
            .values(
                state=SyncState.QUEUED.value,
                attempts=0,
                lost_leases=0,
                next_attempt_at=None,
                updated_at=at,
            )
        )
        with self._write() as connection:
            superseded = sorted((r, v) for r, v in connection.execute(stale))
            newest: dict[str, int] = {}
            for chunk in _chunks(list(dict.fromkeys(r for r, _ in superseded))):
                rows = connection.execute(
                    select(outbox.c.record_id, func.max(outbox.c.record_version))
                    .where(outbox.c.record_id.in_(list(chunk)))
                    .group_by(outbox.c.record_id)
                )
                newest.update((r, v) for r, v in rows)
            requeued = int(connection.execute(requeue).rowcount)
        return ReplayResult(requeued, tuple((r, version, newest[r]) for r, version in superseded))

    # -- consents ------------------------------------------------------------------------------
    def consents_for_patient(self, patient: str) -> list[StoredRecord]:
        query = (
            self._newest_records()
            .where(record_heads.c.patient == patient, record_heads.c.family == "consent")
            .order_by(record_heads.c.record_id)
        )
        with self._read() as connection:
            return [_stored_record(row) for row in connection.execute(query)]

    def pulled_consents_elsewhere(self, server: str) -> list[tuple[str, StoredRecord]]:
        query = (
            self._newest_records()
            .add_columns(record_heads.c.origin)
            .where(
                record_heads.c.family == "consent",
                record_heads.c.origin.is_not(None),
                record_heads.c.origin != server,
            )
            .order_by(record_heads.c.record_id)
        )
        with self._read() as connection:
            return [(row.origin, _stored_record(row)) for row in connection.execute(query)]

    def consent_identifiers(
        self, server: str | None, patients: Sequence[str]
    ) -> list[tuple[str, str, str, str | None]]:
        taken_here = record_heads.c.origin.is_(None)
        origin = taken_here if server is None else or_(record_heads.c.origin == server, taken_here)
        found: list[tuple[str, str, str, str | None]] = []
        with self._read() as connection:
            for chunk in _chunks(sorted(set(patients))):
                query = self._newest_records(
                    record_heads.c.record_id,
                    record_heads.c.patient,
                    record_versions.c.identifier,
                    record_heads.c.origin,
                ).where(
                    record_heads.c.patient.in_(chunk),
                    record_heads.c.family == "consent",
                    origin,
                )
                found.extend(
                    (r.record_id, r.patient, r.identifier, r.origin)
                    for r in connection.execute(query)
                )
        return sorted(found, key=lambda row: row[0])

    def consents_stamp(self, patient: str) -> str:
        # Versions only ever grow and records are never deleted, so (count, sum of versions)
        # changes with every new consent record and every new version of one.
        query = select(func.count(), func.coalesce(func.sum(record_heads.c.version), 0)).where(
            record_heads.c.patient == patient, record_heads.c.family == "consent"
        )
        with self._read() as connection:
            count, total = connection.execute(query).one()
        return f"{count}:{total}"

    # -- audit ---------------------------------------------------------------------------------
    def patient_consents_stamp(self, patient: str) -> tuple[list[str], str]:
        # One statement (the consult and the gate call this on every decision): the patient's
        # keys and, per key, (count, sum of versions) of its consents; run on a raw autocommit
        # connection, a fresh snapshot per call (see _AutocommitReader).
        # On SQLite the rows are read again only once the database has changed (any commit, by
        # any connection): ``PRAGMA data_version`` costs a tenth of the query.
        rows = self._stamp_reader.rows_while_unchanged(
            self._stamp_sql, {"patient": patient}, patient
        )
        canonical = [key for key, is_canonical, _, _ in rows if is_canonical]
        aliases = sorted(key for key, is_canonical, _, _ in rows if not is_canonical)
        stamps = {key: f"{count}:{total}" for key, _, count, total in rows}
        keys = canonical + aliases
        return keys, ";".join(f"{key}={stamps[key]}" for key in keys)

    def add_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        with self._write() as connection:
            insert_audit(connection, entries)

    def list_audit(
        self, *, record_id: str | None = None, limit: int = 100, after: int | None = None
    ) -> list[AuditEntry]:
        query = select(audit_log)
        if record_id is not None:
            query = query.where(audit_log.c.record_id == record_id)
        if after is not None:
            query = query.where(audit_log.c.id > after)
        query = query.order_by(audit_log.c.id).limit(limit)
        with self._read() as connection:
            return [audit_entry(row) for row in connection.execute(query)]

    def audit_counts_by_day(
        self, actions: Sequence[str], *, since: datetime, until: datetime
    ) -> dict[date, dict[str, int]]:
        if not actions:
            return {}
        # The UTC day as ISO text: SQLite keeps naive UTC text, PostgreSQL a timestamptz.
        if self._dialect == "postgresql":
            utc_day = func.to_char(func.timezone("UTC", audit_log.c.at), "YYYY-MM-DD")
        else:
            utc_day = func.substr(audit_log.c.at, 1, 10)
        day = utc_day.label("day")
        query = (
            select(day, audit_log.c.action, func.count(audit_log.c.record_id.distinct()))
            .where(
                audit_log.c.action.in_(list(actions)),
                audit_log.c.record_id.is_not(None),
                audit_log.c.at >= since,
                audit_log.c.at < until,
            )
            .group_by(day, audit_log.c.action)
        )
        counts: dict[date, dict[str, int]] = {}
        with self._read() as connection:
            for day_text, action, count in connection.execute(query):
                counts.setdefault(date.fromisoformat(day_text), {})[action] = int(count)
        return counts

    # -- API keys ------------------------------------------------------------------------------
    def add_api_key(self, key: ApiKey) -> None:
        folded = api_key_name_folded(key.name)
        try:
            with self._write() as connection:
                connection.execute(
                    insert(api_keys).values(
                        key_id=key.key_id,
                        name=key.name,
                        name_folded=folded,
                        scopes=sorted(key.scopes),
                        secret_hash=key.secret_hash,
                        created_at=key.created_at,
                        revoked_at=key.revoked_at,
                    )
                )
        except IntegrityError:
            # The unique index on active names (or, far less likely, the key id). The failed
            # transaction is gone: look for the key that holds the name in a new one.
            holder = None if key.revoked_at is not None else self._active_api_key_named(folded)
            if holder is None:
                raise
            raise ApiKeyNameTaken(holder.name, holder.key_id) from None

    def _active_api_key_named(self, folded: str) -> ApiKey | None:
        query = select(*_API_KEY_COLUMNS).where(
            api_keys.c.name_folded == folded, api_keys.c.revoked_at.is_(None)
        )
        with self._read() as connection:
            row = connection.execute(query).first()
        return None if row is None else _api_key(row)

    # find, list and revoke read and write only columns every schema revision has, so that the
    # CLI can list and revoke keys on a database not yet upgraded (keys sharing a name stop the
    # upgrade to 0005 until all but one are revoked).
    def find_api_key(self, key_id: str) -> ApiKey | None:
        with self._read() as connection:
            row = connection.execute(
                select(*_API_KEY_COLUMNS).where(api_keys.c.key_id == key_id)
            ).one_or_none()
        return None if row is None else _api_key(row)

    def list_api_keys(self) -> list[ApiKey]:
        query = select(*_API_KEY_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.key_id)
        with self._read() as connection:
            return [_api_key(row) for row in connection.execute(query)]

    def revoke_api_key(self, key_id: str, *, at: datetime) -> bool:
        with self._write() as connection:
            result = connection.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            return result.rowcount == 1

    # -- console sessions ----------------------------------------------------------------------
    def end_session(self, session_id: str, *, expires_at: datetime, at: datetime) -> None:
        add = self._upsert(ended_sessions).values(session_id=session_id, expires_at=expires_at)
        with self._write() as connection:
            connection.execute(ended_sessions.delete().where(ended_sessions.c.expires_at < at))
            connection.execute(add.on_conflict_do_nothing(index_elements=["session_id"]))

    def session_ended(self, session_id: str) -> bool:
        query = select(ended_sessions.c.session_id).where(ended_sessions.c.session_id == session_id)
        with self._read() as connection:
            return connection.execute(query).first() is not None

    # -- operations ----------------------------------------------------------------------------
    def set_meta(self, name: str, value: str) -> None:
        upsert = postgresql.insert(meta) if self._dialect == "postgresql" else sqlite.insert(meta)
        statement = upsert.values(name=name, value=value)
        statement = statement.on_conflict_do_update(
            index_elements=[meta.c.name], set_={"value": statement.excluded.value}
        )
        with self._write() as connection:
            connection.execute(statement)

    def get_meta(self, name: str) -> str | None:
        with self._read() as connection:
            value: str | None = connection.execute(
                select(meta.c.value).where(meta.c.name == name)
            ).scalar_one_or_none()
        return value

    # -- two-way sync (issue 11) ---------------------------------------------------------------
    def _upsert(self, table: Any) -> Any:
        return postgresql.insert(table) if self._dialect == "postgresql" else sqlite.insert(table)

    # -- patient tokens (the console's opaque patient ids) ---------------------------------------
    def patient_token(self, patient: str) -> str:
        return patient_token(self._patient_token_secret(), patient)

    def _patient_token_secret(self) -> str:
        secret = self._token_secret
        if secret is None:
            secret = self.get_meta(META_PATIENT_TOKEN_KEY)
            if secret is None:  # only where it was deleted: migration 0008 makes it
                add = self._upsert(meta).values(
                    name=META_PATIENT_TOKEN_KEY, value=new_patient_token_key()
                )
                with self._write() as connection:
                    connection.execute(add.on_conflict_do_nothing(index_elements=["name"]))
                secret = self.get_meta(META_PATIENT_TOKEN_KEY)
                assert secret is not None
            self._token_secret = secret
        return secret

    def patient_for_token(self, token: str) -> str | None:
        query = select(patient_tokens.c.patient).where(patient_tokens.c.token == token)
        with self._read() as connection:
            patient: str | None = connection.execute(query).scalar_one_or_none()
        return patient

    def add_patient_alias(self, patient: str, alias: str, *, at: datetime) -> None:
        if alias == patient:
            return
        with self._write() as connection:
            # The patient may itself be an alias: file under the key it names.
            canonical = connection.execute(
                select(patient_aliases.c.patient).where(patient_aliases.c.alias == patient)
            ).scalar_one_or_none()
            patient = canonical or patient
            if alias == patient:
                return
            known = connection.execute(
                select(patient_aliases.c.patient).where(patient_aliases.c.alias == alias)
            ).scalar_one_or_none()
            if known is not None:
                if known != patient:
                    raise ValueError("this alias already names another patient")
                return
            if connection.execute(
                select(func.count()).where(patient_aliases.c.patient == alias)
            ).scalar_one():
                raise ValueError("this alias has aliases of its own: register them on it")
            connection.execute(
                insert(patient_aliases).values(alias=alias, patient=patient, created_at=at)
            )

    def patient_keys(self, patient: str) -> list[str]:
        with self._read() as connection:
            canonical = connection.execute(
                select(patient_aliases.c.patient).where(patient_aliases.c.alias == patient)
            ).scalar_one_or_none()
            canonical = canonical or patient
            aliases = connection.execute(
                select(patient_aliases.c.alias)
                .where(patient_aliases.c.patient == canonical)
                .order_by(patient_aliases.c.alias)
            ).scalars()
            return [canonical, *aliases]

    def set_remote_patient(self, server: str, patient: str, remote: str, *, at: datetime) -> None:
        statement = self._upsert(remote_patients).values(
            server=server, patient=patient, remote=remote, created_at=at
        )
        statement = statement.on_conflict_do_update(
            index_elements=[remote_patients.c.server, remote_patients.c.patient],
            set_={"remote": statement.excluded.remote},
        )
        with self._write() as connection:
            connection.execute(statement)

    def remote_patients(self, server: str) -> dict[str, str]:
        with self._read() as connection:
            rows = connection.execute(
                select(remote_patients.c.patient, remote_patients.c.remote).where(
                    remote_patients.c.server == server
                )
            )
            return {patient: remote for patient, remote in rows}

    def get_pull_cursor(self, server: str, resource_type: str) -> PullCursor | None:
        with self._read() as connection:
            row = connection.execute(
                select(pull_cursors).where(
                    pull_cursors.c.server == server, pull_cursors.c.resource_type == resource_type
                )
            ).one_or_none()
        if row is None:
            return None
        return PullCursor(
            server=row.server,
            resource_type=row.resource_type,
            last_updated=row.last_updated,
            generation=row.generation,
            full_listing_at=row.full_listing_at,
        )

    def save_pull_cursor(self, cursor: PullCursor, *, at: datetime) -> None:
        values = {
            "last_updated": cursor.last_updated,
            "generation": cursor.generation,
            "full_listing_at": cursor.full_listing_at,
            "updated_at": at,
        }
        statement = self._upsert(pull_cursors).values(
            server=cursor.server, resource_type=cursor.resource_type, **values
        )
        statement = statement.on_conflict_do_update(
            index_elements=[pull_cursors.c.server, pull_cursors.c.resource_type], set_=values
        )
        with self._write() as connection:
            connection.execute(statement)

    def pulled(
        self, server: str, resource_type: str, resource_ids: Sequence[str]
    ) -> dict[str, PulledResource]:
        found: dict[str, PulledResource] = {}
        with self._read() as connection:
            for chunk in _chunks(list(dict.fromkeys(resource_ids))):
                rows = connection.execute(
                    select(pulled_resources).where(
                        pulled_resources.c.server == server,
                        pulled_resources.c.resource_type == resource_type,
                        pulled_resources.c.resource_id.in_(chunk),
                    )
                )
                for row in rows:
                    found[row.resource_id] = _pulled(row)
        return found

    def pulled_of_records(
        self, server: str, resource_type: str, record_ids: Sequence[str]
    ) -> dict[str, PulledResource]:
        found: dict[str, PulledResource] = {}
        with self._read() as connection:
            for chunk in _chunks(list(dict.fromkeys(record_ids))):
                rows = connection.execute(
                    select(pulled_resources)
                    .where(
                        pulled_resources.c.server == server,
                        pulled_resources.c.resource_type == resource_type,
                        pulled_resources.c.record_id.in_(chunk),
                    )
                    .order_by(pulled_resources.c.updated_at, pulled_resources.c.resource_id)
                )
                for row in rows:
                    found[row.record_id] = _pulled(row)
        return found

    def pulled_states_of_records(self, record_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        with self._read() as connection:
            for chunk in _chunks(list(dict.fromkeys(record_ids))):
                rows = connection.execute(
                    select(
                        pulled_resources.c.record_id,
                        pulled_resources.c.state,
                        pulled_resources.c.server,
                    )
                    .join(
                        record_heads,
                        and_(
                            record_heads.c.record_id == pulled_resources.c.record_id,
                            record_heads.c.origin == pulled_resources.c.server,
                        ),
                    )
                    .where(
                        pulled_resources.c.resource_type == "Consent",
                        pulled_resources.c.record_id.in_(chunk),
                    )
                    .order_by(pulled_resources.c.updated_at, pulled_resources.c.resource_id)
                )
                for row in rows:
                    found[row.record_id] = (row.state, row.server)
        return found

    def save_pulled(self, resources: Sequence[PulledResource], *, at: datetime) -> None:
        if not resources:
            return
        rows = [
            _pulled_row(r, at)
            for r in {(r.resource_type, r.resource_id): r for r in resources}.values()
        ]
        statement = self._upsert(pulled_resources)
        replaced = PULLED_REPLACED
        statement = statement.on_conflict_do_update(
            index_elements=[
                pulled_resources.c.server,
                pulled_resources.c.resource_type,
                pulled_resources.c.resource_id,
            ],
            set_={name: getattr(statement.excluded, name) for name in replaced},
        )
        with self._write() as connection:
            connection.execute(statement, rows)

    def mark_listed(
        self, server: str, resource_type: str, resource_ids: Sequence[str], generation: int
    ) -> None:
        with self._write() as connection:
            for chunk in _chunks(list(resource_ids)):
                connection.execute(
                    update(pulled_resources)
                    .where(
                        pulled_resources.c.server == server,
                        pulled_resources.c.resource_type == resource_type,
                        pulled_resources.c.resource_id.in_(chunk),
                    )
                    .values(generation=generation)
                )

    def unlisted(
        self, server: str, resource_type: str, generation: int, *, limit: int = 500
    ) -> list[PulledResource]:
        query = (
            select(pulled_resources)
            .where(
                pulled_resources.c.server == server,
                pulled_resources.c.resource_type == resource_type,
                pulled_resources.c.generation < generation,
                pulled_resources.c.state != "deleted",
            )
            .order_by(pulled_resources.c.resource_id)
            .limit(limit)
        )
        with self._read() as connection:
            return [_pulled(row) for row in connection.execute(query)]

    def consent_stamps(self) -> dict[str, str]:
        query = (
            select(record_heads.c.patient, func.count(), func.sum(record_heads.c.version))
            .where(record_heads.c.family == "consent")
            .group_by(record_heads.c.patient)
        )
        with self._read() as connection:
            return {
                patient: f"{count}:{total}" for patient, count, total in connection.execute(query)
            }

    def patients_with_retraction(self, retraction: str) -> set[str]:
        query = (
            select(outbox.c.patient)
            .where(outbox.c.state == SyncState.SENT.value, outbox.c.retraction == retraction)
            .distinct()
        )
        with self._read() as connection:
            return set(connection.execute(query).scalars())

    def sent_items(self, patient: str) -> list[SyncStatus]:
        keys = self.patient_keys(patient)
        newer = outbox.alias("newer")
        query = (
            select(outbox)
            .where(
                outbox.c.patient.in_(keys),
                outbox.c.state == SyncState.SENT.value,
                ~exists().where(
                    newer.c.record_id == outbox.c.record_id,
                    newer.c.state == SyncState.SENT.value,
                    newer.c.item_id > outbox.c.item_id,
                ),
            )
            .order_by(outbox.c.item_id)
        )
        with self._read() as connection:
            return [_sync_status(row) for row in connection.execute(query)]

    def last_sent(self, record_id: str, *, before_version: int | None = None) -> SyncStatus | None:
        query = (
            select(outbox)
            .where(outbox.c.record_id == record_id, outbox.c.state == SyncState.SENT.value)
            .order_by(outbox.c.item_id.desc())
            .limit(1)
        )
        if before_version is not None:
            query = query.where(outbox.c.record_version < before_version)
        with self._read() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else _sync_status(row)

    def records_sent(self, record_ids: Sequence[str]) -> set[str]:
        unique = sorted(set(record_ids))
        found: set[str] = set()
        with self._read() as connection:
            for start in range(0, len(unique), LOOKUP_CHUNK):
                query = (
                    select(outbox.c.record_id)
                    .where(
                        outbox.c.record_id.in_(unique[start : start + LOOKUP_CHUNK]),
                        outbox.c.state == SyncState.SENT.value,
                    )
                    .distinct()
                )
                found.update(connection.execute(query).scalars())
        return found

    def sent_versions(self, record_id: str) -> set[SentResource]:
        query = select(outbox.c.sent).where(
            outbox.c.record_id == record_id, outbox.c.sent.is_not(None)
        )
        with self._read() as connection:
            rows = connection.execute(query).all()
        return {resource for row in rows for resource in _sent_resources(row.sent)}

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
        column = outbox.c.retraction
        as_read = column.is_(None) if was is None else column == was
        with self._write() as connection:
            result = connection.execute(
                update(outbox)
                .where(
                    outbox.c.item_id == item_id,
                    outbox.c.state == SyncState.SENT.value,
                    as_read,
                )
                .values(sent=_sent_json(sent), retraction=retraction, updated_at=at)
            )
            if result.rowcount != 1:
                return False
            insert_audit(connection, audit)
            return True

    # -- pending retraction checks --------------------------------------------------------------
    def note_retraction_checks(
        self, patients: Sequence[str], *, lease_until: datetime | None = None, keep: bool = False
    ) -> str:
        note = str(uuid.uuid4())
        unique = sorted(set(patients))
        if not unique:
            return note
        with self._write() as connection:
            for chunk in _chunks(unique):
                statement = self._upsert(retraction_checks).values(
                    [{"patient": p, "note": note, "lease_until": lease_until} for p in chunk]
                )
                index = [retraction_checks.c.patient]
                connection.execute(
                    statement.on_conflict_do_nothing(index_elements=index)
                    if keep
                    else statement.on_conflict_do_update(
                        index_elements=index,
                        set_={
                            "note": statement.excluded.note,
                            "lease_until": statement.excluded.lease_until,
                        },
                    )
                )
        return note

    def claim_retraction_checks(
        self, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[RetractionCheck]:
        if limit <= 0:
            return []
        lease = retraction_checks.c.lease_until
        due = or_(lease.is_(None), lease <= now)
        with self._read() as connection:  # nothing due (nearly always): no write at all
            query = select(retraction_checks.c.patient).where(due).limit(1)
            if connection.execute(query).first() is None:
                return []
        candidates = (
            select(retraction_checks.c.patient, retraction_checks.c.note)
            .where(due)
            .order_by(retraction_checks.c.patient)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._write() as connection:
            rows = connection.execute(candidates).all()
            if rows:
                connection.execute(
                    update(retraction_checks)
                    .where(retraction_checks.c.patient.in_([row.patient for row in rows]))
                    .values(lease_until=now + timedelta(seconds=lease_seconds))
                )
        return [RetractionCheck(row.patient, row.note) for row in rows]

    def clear_retraction_check(self, check: RetractionCheck) -> bool:
        with self._write() as connection:
            result = connection.execute(
                retraction_checks.delete().where(
                    retraction_checks.c.patient == check.patient,
                    retraction_checks.c.note == check.note,
                )
            )
            return result.rowcount == 1

    def pending_retraction_checks(self, *, now: datetime) -> PendingRetractionChecks:
        lease = retraction_checks.c.lease_until
        due = or_(lease.is_(None), lease <= now)
        query = select(
            func.count(), func.coalesce(func.sum(case((due, 1), else_=0)), 0)
        ).select_from(retraction_checks)
        with self._read() as connection:
            total, due_now = connection.execute(query).one()
        return PendingRetractionChecks(due=int(due_now), leased=int(total) - int(due_now))

    def mark_conflict(self, item_id: int, conflict: str, *, at: datetime) -> bool:
        unheld = outbox.c.lease_owner.is_(None)  # no worker holds it
        with self._write() as connection:
            result = connection.execute(
                update(outbox).where(outbox.c.item_id == item_id, unheld).values(conflict=conflict)
            )
            return result.rowcount == 1

    def flagged_conflicts(self, *, limit: int = 100) -> FlaggedConflicts:
        flagged = and_(_FLAGGED_FOR_A_PERSON, ~_HAS_NEWER_ITEM)  # what decide_conflict decides
        count = select(func.count()).select_from(outbox).where(flagged)
        oldest = select(outbox).where(flagged).order_by(outbox.c.item_id).limit(limit)
        with self._read() as connection:
            return FlaggedConflicts(
                count=connection.execute(count).scalar_one(),
                items=tuple(_sync_status(row) for row in connection.execute(oldest)),
            )

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
        values: dict[str, Any] = {"held_reason": None, "conflict": conflict, "updated_at": at}
        # Flagged against exactly ``against``: the column's text as mark_held (a flag) wrote
        # it (the same serializer, through the column's type; JSON has no portable equality).
        noted = cast(outbox.c.conflict_versions, Text)
        if against:
            shown = bindparam("against", _sent_json(against), type_=outbox.c.conflict_versions.type)
            same = noted == cast(shown, Text)
        else:
            same = or_(outbox.c.conflict_versions.is_(None), noted.in_(["[]", "null"]))
        flagged = [outbox.c.item_id == item_id, _FLAGGED_FOR_A_PERSON, ~_HAS_NEWER_ITEM, same]
        if keep_remote:
            flagged.append(outbox.c.conflict_versions.is_not(None))
            values.update(
                state=SyncState.SENT.value,
                sent=outbox.c.conflict_versions,
                landing_check_at=None,
                lost_overwrite=null(),
            )
        else:
            values.update(
                state=SyncState.QUEUED.value, attempts=0, lost_leases=0, next_attempt_at=None
            )
        with self._write() as connection:
            result = connection.execute(update(outbox).where(*flagged).values(**values))
            if result.rowcount != 1:
                return False
            insert_audit(connection, audit)
            return True

    def record_sent_versions(
        self,
        item_id: int,
        sent: Sequence[SentResource],
        *,
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> None:
        sent_json = _sent_json(sent)
        with self._write() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.item_id == item_id, outbox.c.state == SyncState.SENT.value)
                .values(sent=sent_json, updated_at=at)
            )
            insert_audit(connection, audit)

    def held_since(self) -> dict[str, datetime]:
        query = (
            select(outbox.c.patient, func.min(outbox.c.updated_at))
            .where(_HELD_FOR_CONSENTS)  # what release_held would re-queue
            .group_by(outbox.c.patient)
        )
        with self._read() as connection:
            return {patient: held for patient, held in connection.execute(query)}

    def queue_again(
        self,
        record_id: str,
        *,
        conflict: str | None,
        audit: Sequence[AuditEntry],
        at: datetime,
    ) -> int | None:
        with self._write() as connection:
            item_id = _queue_newest(connection, record_id, conflict=conflict, at=at)
            if item_id is not None:
                insert_audit(connection, audit)
            return item_id
