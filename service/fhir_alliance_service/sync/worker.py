"""The sync worker: claim → gate → map → validate → send → record, one batch at a time.

``Worker.run_once`` leases a batch from the outbox (one short transaction), asks the consent gate
about each item, validates the permitted items' resources, sends them as transaction Bundles of
``PUT`` to their deterministic ids (no transaction is open meanwhile), and records the outcomes in
short transactions: ``mark_sent_many`` for a Bundle's items together (server ids and versions, with
a disclosure AuditEvent and a Provenance per resource), ``mark_held``, ``mark_failed`` (transient,
with backoff) or ``mark_dead`` (permanent, with the OperationOutcome). ``run_forever`` polls until
``stop`` is set, finishing the batches in hand; ``run_batches`` (``sync_once``) runs until nothing
is claimable.

Pipelined (``_Pipeline``): a preparing thread claims and gates, maps and validates Bundle by
Bundle, and claims the next batch while the one before is sent (one batch ahead at most); the
calling thread sends; a recording thread writes each sent Bundle's outcome while the next one is on
its way. The FHIR server and our own work then overlap instead of waiting for each other.

Idempotence: a resource's id comes from its business identifier, so a send repeated after a lost
answer or a crash writes the same resource again (a new version, never a second resource).
Isolation: a transaction Bundle is all or nothing, so when one fails for good its items are sent
again one by one, and only the bad one is dead-lettered.

Logs carry counts, outbox item numbers, HTTP statuses and issue codes: never record content,
patient keys, identifiers, tokens or ``diagnostics``.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import random as _random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_alliance.client import BundleRequest, EntryOutcome, FhirClient
from fhir_alliance.errors import (
    AuthError,
    FhirAllianceError,
    InvalidResponseError,
    Issue,
    MultipleMatchesError,
    NotFoundError,
    PreconditionFailedError,
    ServerError,
    TransientServerError,
    TransportError,
    VersionConflictError,
    loggable_outcome,
)
from fhir_alliance.mapping.export import validate_fastest
from fhir_alliance.mapping.registry import mapper_for_kind
from fhir_alliance.terminology import CANONICAL_BASE
from fhir_alliance_service import audit
from fhir_alliance_service.config import Settings
from fhir_alliance_service.metrics import CONFLICTS, SEND_FAILURES, SEND_LATENCY, SENDS
from fhir_alliance_service.store.interface import (
    AuditEntry,
    OutboxItem,
    PulledResource,
    RetractionCheck,
    SentMark,
    SentResource,
    Store,
    SyncState,
)
from fhir_alliance_service.store.schema_watch import SchemaWatch
from fhir_alliance_service.sync.audit_push import push_pending_audit, queued_for_push
from fhir_alliance_service.sync.consent_times import ConsentTimePass
from fhir_alliance_service.sync.gate import (
    GateResult,
    copy_content,
    gate_item,
    sendable_forms,
    server_version,
)
from fhir_alliance_service.sync.gate_settings import regate_if_settings_changed
from fhir_alliance_service.sync.leases import LeaseLedger, is_store_outage
from fhir_alliance_service.sync.outcomes import outcome_to_store
from fhir_alliance_service.sync.pull import withdraw_consent_here
from fhir_alliance_service.sync.retract import Retractor
from fhir_alliance_service.sync.retry import decide_retry, is_transient
from fhir_alliance_service.sync.target import note_contact, target_fhir_version
from fhir_alliance_service.usecases.conflicts import DECIDED_OVERWRITE

__all__ = [
    "BatchReport",
    "Worker",
    "default_worker_id",
    "may_have_landed",
    "sync_once",
    "worker_stopped_outcome",
]

log = logging.getLogger("fhir_alliance_service.sync")

#: Statuses a proxy or load balancer answers for the server behind it (bad gateway, gateway
#: timeout): the request may have reached that server and been applied all the same.
GATEWAY_ANSWERS = frozenset({502, 504})

#: The longest wait between two read-backs of an item whose landing is unknown that failed.
LANDING_RECHECK_MAX = timedelta(hours=1)

#: Read-back failures that say "the server cannot be read now", not "this item": they end a pass
#: of read-backs (``Worker._check_landings``).
_SERVER_UNAVAILABLE = (TransportError, TransientServerError, AuthError)

#: Errors that say "this record cannot be mapped" (dead letter). Anything else, a database outage
#: above all, aborts the batch: its leases expire and the items are claimed again later.
_RECORD_ERRORS = (FhirAllianceError, ValueError, TypeError, LookupError)

#: ``meta.source`` of every resource the worker pushes: the system it came from.
SOURCE_URI = f"{CANONICAL_BASE}/sync-service"

#: The held reason of a record whose resource someone else changed (conflict policy ``flag``).
CONFLICT_HELD_REASON = (
    "changed on the FHIR server by someone else since our last send: a person must decide"
)

#: The conflict note of a record whose resource the policy ``overwrite`` wrote ours over.
OVERWRITTEN = "overwritten"

#: The outcome of the conflict AuditEvent of an overwrite whose answer was lost, recorded when
#: it is not found on the server and may have landed all the same (changed again since).
OVERWRITE_LANDING_UNKNOWN = "overwrite-landing-unknown"

#: The conflict note of a record whose consent someone deleted on the server while a version of
#: ours in force was on its way: a withdrawal (as the pull takes it), revoked here, never written
#: back in force whatever the conflict policy.
WITHDRAWN_ON_SERVER = "withdrawn-on-server"

#: Our consent statuses in force (FHIR ``Consent.status``): written back over a deletion, they
#: would undo the withdrawal the deletion is.
_IN_FORCE = frozenset({"active", "draft", "proposed"})

#: Most entries in one transaction Bundle (an item's resources are never split across Bundles).
DEFAULT_BUNDLE_ENTRIES = 250


def default_worker_id() -> str:
    """``host-pid-random``: unique per process, so a restarted worker never reuses a lease."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class BatchReport:
    """What one ``run_once`` did: items claimed and how each ended, resources sent."""

    claimed: int = 0
    sent: int = 0
    held: int = 0
    failed: int = 0
    dead: int = 0
    #: Ended SUPERSEDED instead of held, failed or dead: a newer version of its record was
    #: queued while it was in hand (that one carries the record now).
    superseded: int = 0
    lease_lost: int = 0  # a mark_* found another worker had taken the item over
    deferred: int = 0  # not sent: too little lease left; handed back, no attempt counted
    resources_sent: int = 0
    #: Why nothing was claimed, in plain words (e.g. the FHIR server could not be reached).
    error: str | None = None
    #: The FHIR server gave no usable answer (to ``/metadata``, its version known from an
    #: earlier contact; or to a send: no connection, a timeout, 503, a gateway's 502 or 504):
    #: ``sync-once`` exits 1 for it as when nothing could be claimed.
    unreachable: bool = False

    def add(self, other: BatchReport) -> None:
        for name in (
            "claimed",
            "sent",
            "held",
            "failed",
            "dead",
            "superseded",
            "lease_lost",
            "deferred",
            "resources_sent",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unreachable = self.unreachable or other.unreachable


@dataclass(slots=True)
class _Ready:
    """A permitted, validated item and the resources it sends."""

    item: OutboxItem
    resources: list[dict[str, Any]]
    #: (resource type, id) → the version we last wrote: sent as If-Match (two-way sync: a
    #: resource someone else changed since answers 412, settled by ``conflict_policy``).
    if_match: dict[tuple[str, str], str] = field(default_factory=dict)
    #: The patient's consents stamp the gate's PERMIT read (``GateResult.consents_stamp``):
    #: checked again just before the send and after it is recorded.
    consents_stamp: str | None = None
    #: The conflict AuditEvent of an overwrite (the conflict policy ``overwrite``): noted
    #: ``overwritten`` and audited with the send's record, once it landed (``_sent_mark``);
    #: kept with the item when its answer is lost (``OutboxItem.lost_overwrite``).
    overwrite: AuditEntry | None = None
    #: The server's versions the overwrite is written over, kept with it (``OutboxItem.
    #: lost_overwrite_against``); empty when not all known.
    overwrite_against: tuple[SentResource, ...] = ()


@dataclass(slots=True)
class _Sent:
    item: OutboxItem
    resources: list[SentResource] = field(default_factory=list)


def _validate(resource: Mapping[str, Any], version: str) -> None:
    # The compiled validator of the version (R4, R5) where it covers the type, else the models.
    validate_fastest(resource, version=version)


class Worker:
    """One worker process's loop over the outbox. ``tags`` are ``meta.tag`` codings added to every
    resource pushed (a deployment's own marker; the tests' run tag)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: FhirClient,
        *,
        worker_id: str | None = None,
        tags: Sequence[Mapping[str, str]] = (),
        bundle_entries: int = DEFAULT_BUNDLE_ENTRIES,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random: Callable[[], float] = _random.random,
        between_batches: Callable[[], object] | None = None,
    ) -> None:
        #: Called by ``run_forever`` after each batch is prepared, before the next claim, on the
        #: preparing thread while that batch is sent (the CLI's worker: the two-way sync's
        #: ``TwoWaySync.tick``, which pulls every ``pull_interval_seconds``).
        self.between_batches = between_batches
        self.settings = settings
        #: The store, through the ledger of the leases this worker holds: after a database
        #: outage they are handed back instead of expiring into lost leases (``sync/leases.py``).
        self.leases = LeaseLedger(store)
        self.store = self.leases.as_store()
        self.client = client
        self.worker_id = worker_id or default_worker_id()
        self.tags = [dict(t) for t in tags]
        self.bundle_entries = bundle_entries
        self.clock = clock
        self.random = random
        #: The recording thread while a pipeline runs (``_Pipeline``), else None (inline).
        self._recorder: ThreadPoolExecutor | None = None
        #: Held items whose consents a time boundary changed since: re-queued before claims.
        self.consent_times = ConsentTimePass(settings, self.store, clock=clock)
        #: Whether the held items were checked against the gate settings of the last worker
        #: (``gate_settings.py``): once, before this worker's first claim.
        self._gate_settings_checked = False
        #: The store's schema revision, re-read by ``run_forever`` at most every
        #: ``SCHEMA_CHECK_SECONDS``: another release's ``db upgrade`` stops this worker.
        self.schema = SchemaWatch(store.schema_revision)

    # ------------------------------------------------------------------ the loop

    def run_forever(self, stop: threading.Event) -> None:
        """Run batches until ``stop`` is set, or until the store's schema is no longer this
        release's (``self.schema.mismatch()`` says so; checked before each claim, at most every
        ``SCHEMA_CHECK_SECONDS``); sleep ``poll_interval_seconds`` when there is nothing to do.
        The batches in hand (the one being sent, the next one being prepared) are always
        finished before returning."""
        log.info("worker started", extra={"worker": self.worker_id})
        while not stop.is_set() and self.schema.mismatch() is None:
            try:
                # The two-way sync pass runs on the preparing thread between its claims, so a
                # long pull never leaves a claimed batch waiting (its lease running out).
                pipeline = _Pipeline(
                    self, stop=stop, poll=True, between=self._between_batches, watch_schema=True
                )
                pipeline.run(lambda report: None)
            except Exception as exc:  # never die on one bad batch; the leases expire
                log.error("batch failed: %s", type(exc).__name__)
                self.leases.abandon(exc)  # a database outage: handed back at the next claim
                self._between_batches()
                stop.wait(self.settings.poll_interval_seconds)
        log.info("worker stopped", extra={"worker": self.worker_id})

    def _between_batches(self) -> None:
        if self.between_batches is not None:
            try:
                self.between_batches()
            except Exception as exc:  # a failed pull never stops the pushes
                log.error("two-way sync pass failed: %s", type(exc).__name__)

    def run_once(self) -> BatchReport:
        """Claim one batch and take every item of it to sent, held, failed or dead (within the
        batch, preparing the next Bundle and recording the last overlap sending)."""
        return self.run_batches(max_batches=1)[0]

    def run_batches(
        self, *, max_batches: int | None = None, stop: threading.Event | None = None
    ) -> list[BatchReport]:
        """Run batches until nothing is claimable now (or ``max_batches``, or ``stop``), the
        next batch claimed and prepared while the one before is sent: one report per batch.
        A batch that claimed nothing, or could not reach the server, ends the run."""
        reports: list[BatchReport] = []
        _Pipeline(self, stop=stop, max_batches=max_batches, poll=False).run(reports.append)
        return reports

    # ------------------------------------------------------------------ claim

    def _claim_batch(self) -> _Batch:
        """The preparing thread's first step: the server's FHIR version, the audit rows queued by
        earlier batches, then a claim. A server that cannot be reached claims nothing, unless its
        version is known from an earlier contact: then the batch is claimed (its sends are tried,
        and retried if they fail) and noted ``unreachable``."""
        unreachable: list[ServerError] = []
        try:
            version = target_fhir_version(
                self.settings, self.store, self.client, on_unreachable=unreachable.append
            )
        except ServerError as exc:
            log.warning(
                "FHIR server unreachable; nothing claimed: %s%s",
                type(exc).__name__,
                f" {exc.status}" if exc.status else "",
            )
            return _Batch([], "", self.clock(), error="the FHIR server could not be reached")
        if self.settings.push_audit:  # audit rows queued by earlier batches (bounded)
            push_pending_audit(
                self.settings,
                self.store,
                self.client,
                now=self.clock,
                prepare=self._tagged,
                random=self.random,
            )
        self._check_landings(version)  # lost answers of items nothing will send again
        if not self._gate_settings_checked:  # recipients, purpose, push_* changed: go again
            regate_if_settings_changed(self.settings, self.store, at=self.clock())
            self._gate_settings_checked = True
        self.consent_times.run_if_due()  # a consent took effect or ended: held items go again
        now = self.clock()
        items = self.store.claim(
            self.worker_id,
            limit=self.settings.worker_batch_size,
            lease_seconds=self.settings.lease_seconds,
            now=now,
            # A client's consecutive items come together where the batch has room (a backfill of
            # few clients fills its batches); sent in claim order (``_Batch.blocked``).
            per_patient=self.settings.worker_batch_size,
        )
        batch = _Batch(items, version, now)
        batch.prepared.claimed = len(items)
        batch.prepared.unreachable = bool(unreachable)
        if items:
            # A send started after this point could end after the lease: another worker may take
            # the items meanwhile. Such items are handed back untried and claimed again later.
            margin = min(self.settings.fhir_timeout_seconds, self.settings.lease_seconds / 2)
            batch.last_start = min(i.lease_until for i in items) - timedelta(seconds=margin)
        return batch

    def _prepared_groups(self, batch: _Batch, halt: threading.Event) -> Iterator[list[_Ready]]:
        """Gate, map and validate the batch's items in order, yielding each Bundle's worth of
        permitted items as soon as it is full (an item's resources are never split)."""
        current: list[_Ready] = []
        size = 0
        batch.sent_before = frozenset(
            self.store.records_sent([item.record_id for item in batch.items])
        )
        for item in batch.items:
            if halt.is_set():
                return  # the sending side gave up: the leases expire, as after a crash
            if batch.is_blocked(item.patient):
                batch.defer(item)
                continue
            entry = self._prepare(item, batch)
            if entry is None:
                continue
            n = len(entry.resources)
            if current and size + n > self.bundle_entries:
                yield current
                current, size = [], 0
            current.append(entry)
            size += n
        if current:
            yield current

    def _finish_batch(self, batch: _Batch) -> BatchReport:
        """The sending thread's last step for a batch: wait for its recordings, hand back what was
        not tried, add the stages' counts up."""
        for recording in batch.recordings:
            recording.result()  # a database error while recording fails the batch here
        report = BatchReport(error=batch.error)
        for part in (batch.prepared, batch.sending, batch.recorded):
            report.add(part)
        if batch.deferred:
            # Handed back untried: not an attempt (an expired lease would count as one).
            report.deferred = len(batch.deferred)
            self.store.release(batch.deferred, self.worker_id, at=self.clock())
            log.warning(
                "lease running out or patient waiting: %d item(s) left for a later claim",
                report.deferred,
            )
        if batch.items:
            log.info(
                "batch done: claimed=%d sent=%d held=%d failed=%d dead=%d superseded=%d "
                "lease_lost=%d",
                report.claimed,
                report.sent,
                report.held,
                report.failed,
                report.dead,
                report.superseded,
                report.lease_lost,
            )
        return report

    # ------------------------------------------------------------------ gate and validate

    def _prepare(self, item: OutboxItem, batch: _Batch) -> _Ready | None:
        """Gate, map and validate one item (the preparing thread): its resources if it may go,
        else None once it is recorded held, failed or dead."""
        report = batch.prepared
        if item.taken_over and item.lost_leases >= self.settings.max_attempts:
            self._dead_after_takeovers(item, report)
            return None
        now = batch.now
        try:
            result: GateResult = gate_item(
                item, settings=self.settings, store=self.store, version=batch.version, at=now
            )
        except _RECORD_ERRORS as exc:  # a record that cannot be mapped: permanent
            self._fail(item, exc, report, batch)
            return None
        if result.hold is not None:
            self._hold(result, report, now)
            return None
        resources = [self._tagged(r) for r in result.resources]
        try:
            for resource in resources:
                _validate(resource, batch.version)
        except FhirAllianceError as exc:  # ProfileViolation: our mapping made something invalid
            self._fail(item, exc, report, batch)
            return None
        return _Ready(
            item, resources, self._if_match(item, batch.sent_before), result.consents_stamp
        )

    def _hold(self, result: GateResult, report: BatchReport, decided_at: datetime) -> None:
        """Record the gate's hold of ``result.item`` with its audit. A consent stored while the
        gate decided found nothing held to re-queue (the item was leased, not HELD): when the
        patient's consents changed since the ones the gate read, their held items are re-queued
        once this hold has landed, to be gated again (nothing is left held for good)."""
        item, hold = result.item, result.hold
        assert hold is not None
        entry = audit.hold_event(
            item.record_id,
            item.patient,
            item.record_version,
            hold.code,
            decided_at,
            recipient=self.settings.recipients[0],
            purpose=self.settings.purpose,
        )
        held = self._count(
            self.store.mark_held(
                item.item_id,
                self.worker_id,
                reason=hold.words,
                audit=[entry],
                at=self.clock(),
            ),
            report,
            "held",
        )
        if held and self._consents_changed(item.patient, result.consents_stamp):
            released = self.store.release_held(item.patient, at=self.clock())
            log.info(
                "item %d: consents changed while gated; %d held re-queued", item.item_id, released
            )

    def _consents_changed(
        self, patient: str, stamp: str | None, seen: dict[str, str] | None = None
    ) -> bool:
        """Whether ``patient``'s consents stamp differs now from ``stamp``, the one a gate
        decision read (None: the decision read no consents). ``seen``: stamps already read for
        this Bundle (cheap on SQLite either way: cached until the database changes)."""
        if stamp is None:
            return False
        if seen is None or patient not in seen:
            current = self.store.patient_consents_stamp(patient)[1]
            if seen is None:
                return current != stamp
            seen[patient] = current
        return seen[patient] != stamp

    def _still_permitted(self, entry: _Ready, batch: _Batch, seen: dict[str, str]) -> bool:
        """Whether ``entry`` may still go, asked just before its Bundle goes out: the gate ran
        when it was prepared (a Bundle, or a batch, ahead; a pull may run meanwhile). When the
        patient's consents changed since, it is gated again: held (recorded, left out of the
        Bundle) unless still permitted."""
        item = entry.item
        if not self._consents_changed(item.patient, entry.consents_stamp, seen):
            return True
        try:
            result: GateResult = gate_item(
                item,
                settings=self.settings,
                store=self.store,
                version=batch.version,
                at=self.clock(),
            )
        except _RECORD_ERRORS as exc:  # it mapped a moment ago; permanent if it no longer does
            self._fail(item, exc, batch.sending, batch)
            return False
        if result.hold is not None:
            self._hold(result, batch.sending, self.clock())
            return False
        entry.consents_stamp = result.consents_stamp
        return True

    def _tagged(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A copy with ``meta.source`` (this service, unless the mapping set one) and the
        configured ``meta.tag`` codings; the mapped resource itself is left as it was."""
        out = copy.copy(resource)
        meta = dict(out.get("meta") or {})
        meta.setdefault("source", SOURCE_URI)
        if self.tags:
            meta["tag"] = [*meta.get("tag", []), *self.tags]
        out["meta"] = meta
        return out

    # ------------------------------------------------------------------ send

    def _send_ready(self, batch: _Batch, group: list[_Ready]) -> None:
        """Send one prepared Bundle's worth of items (the calling thread), unless the lease is
        running out; an item whose patient has an earlier item of this batch still pending is
        handed back instead (it would overtake it)."""
        if batch.last_start is not None and self.clock() > batch.last_start:
            for entry in group:
                batch.defer(entry.item)
            return
        sendable: list[_Ready] = []
        stamps: dict[str, str] = {}  # the patients' consents stamps, read once per Bundle
        for entry in group:
            if batch.is_blocked(entry.item.patient):
                batch.defer(entry.item)
            elif self._still_permitted(entry, batch, stamps):
                sendable.append(entry)
        if sendable:
            self._send_group(sendable, batch)

    def _transaction(self, group: list[_Ready]) -> list[EntryOutcome]:
        requests = [
            BundleRequest.put(r, if_match=entry.if_match.get((r["resourceType"], r["id"])))
            for entry in group
            for r in entry.resources
        ]
        started = time.perf_counter()
        try:
            return self.client.transaction(requests, chunk_size=max(1, len(requests)))
        finally:
            SEND_LATENCY.observe(time.perf_counter() - started)

    def _lease_running_out(self, batch: _Batch) -> bool:
        """No send may start now: it could end after the lease, when another worker may have
        taken the items over (and sent them, or a newer version of them)."""
        return batch.last_start is not None and self.clock() > batch.last_start

    def _send_group(self, group: list[_Ready], batch: _Batch) -> bool:
        """Send ``group`` in one transaction Bundle and settle each item's answer. Whether the
        Bundle went out (False: the lease was running out, the items are handed back untried;
        or an overwrite's lease was lost before it went, ``_overwrite_noted``)."""
        report = batch.sending
        if self._lease_running_out(batch):
            # Checked before every send, an isolation's one-by-one sends and a conflict's
            # overwrite too: the answer to the Bundle before may have taken the lease.
            for entry in group:
                batch.defer(entry.item)
            return False
        # From here the send may land before its result is recorded (``LeaseLedger``: a
        # hand-back after a database outage notes these items *landing unknown*).
        self.leases.sending([entry.item.item_id for entry in group])
        group = [e for e in group if e.overwrite is None or self._overwrite_noted(e, report)]
        if not group:
            return False
        try:
            outcomes = self._transaction(group)
        except FhirAllianceError as exc:  # the client raised instead of reporting per entry
            for entry in group:
                self._send_failed(entry, exc, report, batch)
            return True
        # Map every answer back to its item by the request's index in the Bundle.
        by_index = {o.index: o for o in outcomes}
        by_item: list[list[EntryOutcome]] = []
        position = 0
        for entry in group:
            indexes = range(position, position + len(entry.resources))
            by_item.append([by_index[i] for i in indexes])
            position += len(entry.resources)
        failed = [(e, o) for e, o in zip(group, by_item, strict=True) if not all(x.ok for x in o)]
        answered = any(o.status is not None for o in outcomes)
        if not failed:
            self._record(batch, list(zip(group, by_item, strict=True)), answered=answered)
            return True
        if answered:
            note_contact(self.store, self.clock())
        error = next(
            (x.error for _, o in failed for x in o if x.error is not None),
            ServerError("bundle entry failed without a status"),
        )
        if len(group) == 1 and group[0].if_match and _stale_version(error):
            self._conflict(group[0], batch, error)
            return True
        if not is_transient(error) and len(group) > 1:
            # Atomic Bundle failed for good: find the bad item by sending each on its own.
            log.info(
                "transaction refused (%s); isolating %d items", error.status or "-", len(group)
            )
            for entry in group:
                if batch.is_blocked(entry.item.patient):
                    batch.defer(entry.item)  # an earlier item of its patient failed meanwhile
                else:
                    self._send_group([entry], batch)
            return True
        for entry, item_outcomes in zip(group, by_item, strict=True):
            item_error = next((x.error for x in item_outcomes if x.error is not None), error)
            self._send_failed(entry, item_error, report, batch)
        return True

    def _overwrite_noted(self, entry: _Ready, report: BatchReport) -> bool:
        """Before an overwrite goes out (``entry.overwrite``, always sent alone): its conflict
        AuditEvent is written on the item under this worker's lease (``Store.note_overwrite``),
        so that, should this worker stop between the send and its record (killed, or the
        database lost), whoever finds ours on the server records the overwrite with it rather
        than a plain send (the takeover's 412, or a read-back: the claim notes the item
        *landing unknown*). One that never went out is found not there: dropped, or replaced by
        the takeover's own overwrite. Whether it was written: False, the lease is lost (another
        worker holds the item and settles the conflict itself), and nothing is sent."""
        assert entry.overwrite is not None
        if self.store.note_overwrite(
            entry.item.item_id, self.worker_id, entry.overwrite, against=entry.overwrite_against
        ):
            return True
        report.lease_lost += 1
        log.warning("item %d: lease lost before its overwrite: not sent", entry.item.item_id)
        return False

    def _send_failed(
        self, entry: _Ready, error: BaseException, report: BatchReport, batch: _Batch
    ) -> None:
        """``entry``'s send failed: retried or dead-lettered (``_fail``). When it may have landed
        all the same (``may_have_landed``): unless a read-back finds at once that it did
        (``_landed_after_all``), the item is noted *landing unknown* with its failure,
        so that, should it end without a send that is answered (superseded, held,
        dead-lettered), it is read back later (``_check_landings``), never left untracked. An
        overwrite's conflict AuditEvent is kept with that note (``OutboxItem.lost_overwrite``), so
        that, found landed later, it is recorded as the overwrite it was."""
        lost = may_have_landed(error)
        if not (lost and self._landed_after_all(entry, report)):
            self._fail(
                entry.item,
                error,
                report,
                batch,
                landing_unknown=lost,
                lost_overwrite=entry.overwrite if lost else None,
                lost_overwrite_against=entry.overwrite_against if lost else (),
            )

    # ------------------------------------------------------------------ record

    def _record(
        self, batch: _Batch, sends: list[tuple[_Ready, list[EntryOutcome]]], *, answered: bool
    ) -> None:
        """Record a sent Bundle on the recording thread while the next one goes out (inline when
        no pipeline runs)."""

        def record() -> None:
            if answered:
                note_contact(self.store, self.clock())
            self._record_sent(sends, batch.recorded)

        if self._recorder is None:
            record()
        else:
            batch.recordings.append(self._recorder.submit(record))

    def _record_sent(
        self,
        sends: list[tuple[_Ready, list[EntryOutcome]]],
        report: BatchReport,
        *,
        disclosed: bool = True,
    ) -> None:
        """Record a Bundle's items as sent, in one store transaction (``mark_sent_many``); those
        whose lease was lost meanwhile all the same (``mark_sent_late``): they landed. Not
        ``disclosed``: the server's versions are a write another item of the record is recorded
        (and audited) for, so no disclosure AuditEvent or Provenance of their own
        (``_sent_mark``)."""
        at = self.clock()
        marks: list[SentMark] = []
        for entry, outcomes in sends:
            sent = [
                SentResource(
                    resource_type=o.resource_type or str(r["resourceType"]),
                    id=o.id or str(r["id"]),
                    version_id=o.version_id,
                )
                for r, o in zip(entry.resources, outcomes, strict=True)
            ]
            # A 201 (created): the resource was not there, deleted on the server since our last
            # send (an overwrite writing it again); its Provenance says CREATE.
            created = {
                (s.resource_type, s.id)
                for s, o in zip(sent, outcomes, strict=True)
                if o.status == 201
            }
            marks.append(
                self._sent_mark(
                    entry.item,
                    sent,
                    at,
                    overwrite=entry.overwrite,
                    created=created,
                    disclosed=disclosed,
                )
            )
        landed = self.store.mark_sent_many(self.worker_id, marks, at=at)
        for mark, recorded in zip(marks, landed, strict=True):
            if self._count(recorded, report, "sent"):
                report.resources_sent += len(mark.sent)
            if mark.conflict is not None:  # an overwrite that landed (recorded late too)
                CONFLICTS.labels(mark.conflict).inc()
        late = [mark for mark, recorded in zip(marks, landed, strict=True) if not recorded]
        if late:
            # The send outlasted the lease (its HTTP timeout is per socket operation, not for the
            # whole send): another worker or intake may have the item by now, but what landed
            # is on the server, a disclosure that must stay tracked and retractable. Recorded
            # whoever holds the item (SENT, with its audit): never left untracked.
            requeued = self.store.mark_sent_late(late, at=at)
            log.warning(
                "%d send(s) landed after the lease ran out: recorded late; %d record(s) whose "
                "newer version they overwrote queued again",
                len(late),
                requeued,
            )
        # Late ones too: a revocation that came meanwhile found nothing sent to retract.
        self._retract_if_revoked_in_flight([entry for entry, _ in sends])

    def _sent_mark(
        self,
        item: OutboxItem,
        sent: list[SentResource],
        at: datetime,
        *,
        overwrite: AuditEntry | None = None,
        created: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
        disclosed: bool = True,
    ) -> SentMark:
        """What recording ``item`` sent takes: the server's versions ``sent``, the disclosure
        AuditEvent and a Provenance per resource (queued for the server with ``push_audit``).
        For an overwrite, also ``conflict: overwritten`` and its conflict AuditEvent
        (``overwrite``; kept locally like every two-way sync event, never pushed). Not
        ``disclosed`` (a plain send found to be another item's recorded write): the versions
        alone, as one write is one disclosure."""
        if not disclosed and overwrite is None:
            return SentMark(item.item_id, sent, [])
        for resource in sent:
            SENDS.labels(resource.resource_type).inc()
        entries = [
            audit.disclosure_event(
                item.record_id,
                item.patient,
                item.record_version,
                sent,
                at,
                recipient=self.settings.recipients[0],
                purpose=self.settings.purpose,
                target_url=self.settings.fhir_base_url,
            ),
            *audit.provenance(
                sent,
                item.record_id,
                at,
                patient=item.patient,
                version=item.record_version,
                created=created,
            ),
        ]
        entries = queued_for_push(self.settings, entries)
        if overwrite is None:
            return SentMark(item.item_id, sent, entries)
        return SentMark(item.item_id, sent, [*entries, overwrite], conflict=OVERWRITTEN)

    def _retract_if_revoked_in_flight(self, sent: list[_Ready]) -> None:
        """A consent change stored while the Bundle was on its way (after the last check, before
        the record landed) is not stopped by the gate, and a retraction pass that ran meanwhile
        found nothing sent and took the patient as checked: such a patient's sends are checked
        now, by the retraction policy, once they are recorded as SENT (``Retractor``; on failure
        again by the later passes of any worker until one succeeds: ``_retraction_check``). A
        change stored after this check finds the sends SENT: the next pass handles it."""
        seen: dict[str, str] = {}
        patients = {
            entry.item.patient
            for entry in sent
            if self._consents_changed(entry.item.patient, entry.consents_stamp, seen)
        }
        if patients:
            log.warning("consents changed while a send was on its way: retraction check")
        self._retraction_check(patients)

    def _retraction_check(self, patients: set[str]) -> None:
        """Put what was sent for ``patients`` to the retraction policy now (``Retractor``). They
        are noted in the store first, under this worker's lease (``Store.note_retraction_checks``),
        and each note is cleared once its check succeeds: a check that fails, whatever the
        failure, is due at once for the next retraction pass of any worker sharing the store (the
        passes before may have taken the patient as checked, their consents unchanged since),
        and one this worker does not finish (it dies, or the database goes) is due once the
        lease ends, after a restart too. A database outage is raised."""
        if not patients:
            return
        ordered = sorted(patients)
        retractor = Retractor(self.settings, self.store, self.client, clock=self.clock)
        lease_until = self.clock() + timedelta(seconds=self.settings.lease_seconds)
        note = self.store.note_retraction_checks(ordered, lease_until=lease_until)
        for patient in ordered:
            try:
                failed = retractor.retract_patient(patient).failed
            except Exception as exc:
                status = exc.status if isinstance(exc, ServerError) else None
                log.warning("retraction check failed: %s %s", type(exc).__name__, status or "-")
                if is_store_outage(exc):
                    raise  # the notes left are due once the lease ends
                failed = 1
            if failed:  # a ServerError is audited; the next retraction passes try again
                retractor.check_later(patient)
            else:
                self.store.clear_retraction_check(RetractionCheck(patient, note))

    # ------------------------------------------------------------------ two-way sync: conflicts

    def _if_match(
        self, item: OutboxItem, sent_before: frozenset[str]
    ) -> dict[tuple[str, str], str]:
        """The versions of this record's resources after our last send, for If-Match (none for
        a record never sent, not in ``sent_before``: a PUT to its deterministic id creates it). A
        version sent before, version 1 included (the pull queues our newest version again), is
        written against them."""
        if item.conflict == DECIDED_OVERWRITE and item.conflict_versions:
            # A person decided to write ours over the version the conflict was flagged against:
            # against that version only, so a change made on the server since meets a 412 and
            # is flagged again. (Not known, flagged before they were noted: our last send's, a
            # 412 again, flagged again with them.)
            return {
                (s.resource_type, s.id): s.version_id
                for s in item.conflict_versions
                if s.version_id
            }
        if item.record_id not in sent_before:
            return {}
        last = self.store.last_sent(item.record_id)
        if last is None:
            return {}
        versions = {(s.resource_type, s.id): s.version_id for s in last.sent if s.version_id}
        # A remote edit the pull adopted (someone withdrew our consent on the server) is
        # accounted for: the next update is made against that version, unless our own write
        # landed after it (the pulled row is stale until the next pull sees our write).
        for rtype, rid in list(versions):
            seen = self.store.pulled(self.client.base.url, rtype, [rid]).get(rid)
            if (
                seen is not None
                and seen.state == "withdrawn"
                and seen.version_id
                and _pulled_after_ours(seen, versions[(rtype, rid)], last.updated_at)
            ):
                versions[(rtype, rid)] = seen.version_id
        return versions

    def _conflict(self, entry: _Ready, batch: _Batch, error: BaseException) -> None:
        """Someone else changed a resource we own since our last send (412 on If-Match): the
        conflict policy decides. ``overwrite``: send ours again without If-Match; ``keep-remote``:
        leave the server's version, record it as what the server holds; ``flag``: hold the record
        for a person. The outcome is on the record's status (``conflict``), in the metrics and
        in the audit."""
        item = entry.item
        report = batch.sending
        policy = self.settings.conflict_policy
        if self._lease_running_out(batch):
            # The 412 came after the lease: another worker may hold the item (or a newer version
            # of it) by now. Handed back; the next claim sends it again and settles any conflict.
            batch.defer(item)
            return
        log.warning(
            "item %d: changed on the server by someone else (412); policy %s", item.item_id, policy
        )
        now = self.clock()
        try:
            current = [self._read_or_gone(r) for r in entry.resources]
        except ServerError as exc:
            self._fail(item, exc, report, batch)
            return
        # A resource deleted on the server (404/410 on the read-back) is a remote change like an
        # edit: the server holds no version of it (``None``), and the policy settles it.
        held_by_server = [
            SentResource(
                str(mine["resourceType"]),
                str(mine["id"]),
                server_version(theirs) if theirs is not None else None,
            )
            for mine, theirs in zip(entry.resources, current, strict=True)
        ]
        gone = {
            (str(mine["resourceType"]), str(mine["id"]))
            for mine, theirs in zip(entry.resources, current, strict=True)
            if theirs is None
        }
        if isinstance(error, NotFoundError) and not gone:
            # A 404 or 410 to an update of resources that are all there is no deletion (a
            # server's answer about something else, a reference say): the send's failure, as
            # any other. Settled as a conflict, ours would be sent again into the same 404.
            self._fail(item, error, report, batch)
            return
        # Older sends of this record whose answer was lost, noted *landing unknown* on items
        # this one superseded: read back now, before anything is written over what the server
        # holds (their own read-back, later, would find this version there and could no longer
        # tell), so that one found there is recorded (a lost overwrite as the overwrite it was,
        # with its conflict AuditEvent; then ours below), and a lost overwrite not found is
        # audited as one that may have landed, unless the server still holds what it was
        # written over.
        self._check_landings(
            batch.version, record_id=item.record_id, written_over=policy == "overwrite"
        )
        if self._record_if_ours(entry, current, report):
            return  # our own write whose answer was lost (a crash, a timeout): not a conflict
        entry = self._settle_lost_overwrite(entry, current, written_over=policy == "overwrite")
        ours = self._our_versions(entry, current, batch)
        if ours is not None:
            # Our own later write (an older version of this record whose send outlasted its
            # lease landed after this one was prepared): no one else's edit, nothing to settle.
            # Sent again against it, and recorded and audited as any send.
            log.info("item %d: the 412 answered a version we wrote: sent again", item.item_id)
            self._send_group([replace(entry, if_match=ours)], batch)
            return
        outcome = {"overwrite": OVERWRITTEN, "keep-remote": "kept-remote"}.get(policy, "flagged")
        withdraw_here = False
        if any(rtype == "Consent" for rtype, _ in gone):
            # Our consent deleted on the server is a withdrawal (the pull's merge rule), never
            # undone by the policy: a version of ours in force is not written back (it is revoked
            # here, and that revocation is written next: no version held, so without If-Match);
            # a withdrawal of ours is written back (the EHR keeps the revocation itself).
            if any(_consent_in_force(r) for r in entry.resources):
                outcome, withdraw_here = WITHDRAWN_ON_SERVER, True
            else:
                outcome = OVERWRITTEN
        event = audit.two_way_event(
            "conflict",
            item.record_id,
            item.patient,
            now,
            version=item.record_version,
            resources=entry.resources,
            outcome_code=outcome,
        )
        if outcome == OVERWRITTEN:
            # Ours without If-Match. Noted, counted and audited with the send's own record, once
            # it landed (``_sent_mark``), never before: a send handed back untried (the read
            # above, or anything before the send, ended past the last moment a send may start;
            # another worker may hold the item by then) or one that fails overwrote nothing. The
            # item keeps what it was noted before; the claim that sends it meets the 412 again.
            # One whose answer was lost may have overwritten: its AuditEvent is kept with the
            # item's landing-unknown note (``_send_failed``), recorded with the send once ours is
            # found there (a read-back, or that 412: ``_record_if_ours``). It is written on the
            # item before the send (``_overwrite_noted``), so a worker that stops before its
            # record leaves it to whoever takes the item over. The server's versions it is
            # written over go with it: a later read that finds them still there shows that it
            # never landed (``_never_landed``); one that finds neither ours nor them records its
            # AuditEvent as ``overwrite-landing-unknown`` (``_settle_lost_overwrite``,
            # ``_landing_check``): it may have replaced someone's edit.
            against = tuple(held_by_server) if all(s.version_id for s in held_by_server) else ()
            overwrite = replace(entry, if_match={}, overwrite=event, overwrite_against=against)
            self._send_group([overwrite], batch)
            return
        # ``keep-remote`` and ``flag``: the outcome, the conflict noted and its AuditEvent in one
        # compare-and-set under this worker's lease. Nothing of it is written when another
        # worker took the item over (it settles the conflict itself) or a newer version
        # superseded it after the lease ran out (that version meets the conflict itself); and
        # a person is never shown a flag without the server's versions it is flagged against
        # (``usecases/conflicts.py``: an ``overwrite`` goes If-Match them, so a change made
        # since meets a 412 again).
        if withdraw_here and withdraw_consent_here(self.store, item.record_id, now):
            # First, before the item's outcome: a worker stopping between the two then leaves
            # the consent revoked here (the gate holds by it; the takeover finds it withdrawn),
            # never in force here while the EHR has withdrawn it.
            log.warning(
                "item %d: our consent was deleted on the server: revoked here", item.item_id
            )
        if outcome in ("kept-remote", WITHDRAWN_ON_SERVER):
            recorded: bool | SyncState | None = self.store.mark_sent(
                item.item_id,
                self.worker_id,
                sent=held_by_server,
                audit=[event],
                at=now,
                conflict=outcome,
            )
            field_name = "sent"
        else:
            recorded = self.store.mark_held(
                item.item_id,
                self.worker_id,
                reason=CONFLICT_HELD_REASON,
                audit=[event],
                at=now,
                conflict=outcome,
                conflict_versions=held_by_server,
            )
            field_name = "held"
        if self._count(recorded, report, field_name):
            CONFLICTS.labels(outcome).inc()

    def _settle_lost_overwrite(
        self,
        entry: _Ready,
        current: Sequence[Mapping[str, Any] | None],
        *,
        written_over: bool,
    ) -> _Ready:
        """The retry's 412 of an item whose overwrite's answer was lost (``OutboxItem.
        lost_overwrite``) read what the server holds now (``current``), and it is not ours: that
        overwrite did not land, or landed and was changed since. Unless the server still holds
        every version it was written over (``_never_landed``: it did not land), it may have
        replaced someone's edit, so its conflict AuditEvent is recorded, at the overwrite's
        time, with the outcome ``overwrite-landing-unknown``; either way it is no longer kept
        (``Store.settle_lost_overwrite``, under the lease, once), before the policy settles
        what the server holds now as a conflict of its own. ``entry`` without it.

        Those versions still there show only that it has not landed *yet* while a slow server
        may still be writing it (``_may_still_land``: within a lease of the overwrite, the time
        read-backs wait). Unless the policy writes ours over them now (``written_over``: an
        overwrite again, noted and audited with its own send), nothing of ours would follow,
        and an overwrite the server applied after this read would reach it unaudited: its
        AuditEvent is then recorded ``overwrite-landing-unknown`` too."""
        item = entry.item
        kept = item.lost_overwrite
        if kept is None:
            return entry
        found = {
            (str(mine["resourceType"]), str(mine["id"])): theirs
            for mine, theirs in zip(entry.resources, current, strict=True)
        }
        unknown = not _never_landed(item.lost_overwrite_against, found) or (
            not written_over and self._may_still_land(kept)
        )
        audit_entries = [_landing_unknown_event(kept)] if unknown else []
        if self.store.settle_lost_overwrite(item.item_id, self.worker_id, audit=audit_entries):
            log.warning(
                "item %d: an overwrite whose answer was lost is not on the server: %s",
                item.item_id,
                "audited, landing unknown" if unknown else "it never landed",
            )
        return replace(entry, item=replace(item, lost_overwrite=None, lost_overwrite_against=()))

    def _may_still_land(self, kept: AuditEntry) -> bool:
        """Whether a lost overwrite (its conflict AuditEvent ``kept``, at the overwrite's time)
        may still be applied by a slow server: less than a lease has passed since (the wait a
        read-back of a lost send makes before it is due, ``_fail``)."""
        return self.clock() < kept.at + timedelta(seconds=self.settings.lease_seconds)

    def _read_or_gone(self, resource: Mapping[str, Any]) -> dict[str, Any] | None:
        """The server's copy of ``resource`` (read back after a 412), None when it is not there
        (404, or 410 Gone: deleted)."""
        try:
            return self.client.read(str(resource["resourceType"]), str(resource["id"]))
        except NotFoundError:
            return None

    def _record_if_ours(
        self, entry: _Ready, current: Sequence[Mapping[str, Any] | None], report: BatchReport
    ) -> bool:
        """When every resource the server holds now (``current``, read back) has ``entry``'s
        content, our send landed: recorded as any send is, with its disclosure AuditEvent and
        Provenance (of the server's versions, which hold our content). Whether it was. An
        overwrite (``entry.overwrite``, or one of the item's whose answer was lost before,
        ``OutboxItem.lost_overwrite``: this is then its retry's 412) is recorded as that
        overwrite, with its conflict."""
        found = [theirs for theirs in current if theirs is not None]
        if len(found) != len(entry.resources) or not all(
            copy_content(mine) == copy_content(theirs)
            for mine, theirs in zip(entry.resources, found, strict=True)
        ):
            return False
        answers = [
            EntryOutcome(
                index=n,
                request=BundleRequest.put(mine),
                status=200,
                resource_type=str(theirs["resourceType"]),
                id=str(theirs["id"]),
                version_id=server_version(theirs),
            )
            for n, (mine, theirs) in enumerate(zip(entry.resources, found, strict=True))
        ]
        overwrite = entry.overwrite or entry.item.lost_overwrite
        # The server's versions may be a write another item of the record is recorded for
        # already (its read-back just now, ``_check_landings``: an older version of the same
        # content whose answer was lost): one write, one disclosure, already audited.
        written = [SentResource(a.resource_type or "", a.id or "", a.version_id) for a in answers]
        disclosed = overwrite is not None or not self._written_by_another_item(entry.item, written)
        self._record_sent(
            [(replace(entry, overwrite=overwrite), answers)], report, disclosed=disclosed
        )
        return True

    def _landed_after_all(self, entry: _Ready, report: BatchReport) -> bool:
        """A send whose answer never came (a timeout, a reset) or could not be read may have
        landed. Left to its retry, which writes it again and records it, unless its record got a
        newer item meanwhile: then the failure leaves the item SUPERSEDED, never retried. Nor is
        an overwrite's retry the same send: it goes with If-Match again and meets a 412 (or is
        held, or dead-lettered, first). So in both cases the resources are read back now, while
        this worker still holds the item: ours landed, it is recorded SENT
        (``_record_if_ours``; an overwrite with its conflict). Else (not there, someone else's,
        or the read fails too) it fails as before, noted *landing unknown*, an overwrite's
        conflict AuditEvent kept with the note (``OutboxItem.lost_overwrite``): a server still
        writing it, or one that cannot be read now, is read again later (``_check_landings``),
        or the retry's 412 finds ours (``_conflict``), and either records it as the overwrite,
        with that AuditEvent. Whether it was recorded."""
        item = entry.item
        if entry.overwrite is not None:
            why = "an overwrite"
        else:
            newest = self.store.sync_status(item.record_id)
            if newest is None or newest.item_id == item.item_id:
                return False
            why = "superseded meanwhile"
        try:
            current = [
                self.client.read(str(r["resourceType"]), str(r["id"])) for r in entry.resources
            ]
        except ServerError as exc:
            log.warning(
                "item %d: answer lost, %s, read-back failed: %s %s",
                item.item_id,
                why,
                type(exc).__name__,
                exc.status or "-",
            )
            return False
        if not self._record_if_ours(entry, current, report):
            return False
        log.info("item %d: answer lost, %s; read back: it landed", item.item_id, why)
        return True

    # ------------------------------------------------------------------ landing unknown

    def _check_landings(
        self, version: str, *, record_id: str | None = None, written_over: bool = False
    ) -> None:
        """Read back the sends whose answer was lost, of items noted *landing unknown* that
        nothing will send again now (superseded, held or dead-lettered; ``Store.
        claim_landing_checks``, under a lease, so that workers sharing the store read each once;
        ``record_id``: that record's, due or not: ``_conflict``).
        All of an item's resources on the server with the content of a form it was sent in
        (``sendable_forms``): it landed, and it is recorded SENT with the server's versions, its
        disclosure AuditEvent and Provenance (``mark_sent_late``'s rules: an older version that
        landed over a newer one has the newest queued again), then put to the retraction policy
        at once (a revocation may be why it is held). A lost overwrite
        (``OutboxItem.lost_overwrite``) is recorded as that overwrite, in the same transaction:
        noted ``overwritten`` with its conflict AuditEvent, and counted. Not there, someone
        else's, or server versions that another item of the record is recorded to have written
        (a newer version of ours written over it, with the same content or not, is tracked by
        its own send): the note is dropped and nothing is recorded, but for a lost overwrite
        that may have landed and been changed since (the server no longer holds every version
        it was written over): its conflict AuditEvent is recorded with the drop, outcome
        ``overwrite-landing-unknown`` (``_landing_check``; also when the server still holds
        them but may still be writing it, unless ``written_over``: the 412 calling it writes
        ours over them).
        An item whose read-back fails, whatever the reason (its record does not map now, the
        mapping crashes, the server's answer cannot be read), stays noted and is read back
        again after a wait as long as it has waited (``_recheck_at``: the waits double, from a
        lease to ``LANDING_RECHECK_MAX``), with one log line naming the item and the error type;
        the other items are read back all the same. A failure that says the server cannot be
        read now (no answer, 429 or 5xx, refused credentials: ``_SERVER_UNAVAILABLE``) also ends
        the pass: the items not read yet are read again when their lease ends. (The item it
        came with waits as any other: a resource the server fails on every time must not hold
        up the items after it.) What was found is recorded in one transaction; if that fails
        (not for want of the database: one item's stored data corrupted, a bug on its row), the
        items are recorded one at a time (``_record_landing_checks_apart``), and one whose own
        record fails waits as a failed read-back does, so it never keeps the others unrecorded.
        Only a database outage is raised (the batch is given up, the notes stay). Called before
        each claim, and for its record by each 412 (``_conflict``); nothing due costs one
        read."""
        items = self.store.claim_landing_checks(
            limit=self.settings.worker_batch_size,
            lease_seconds=self.settings.lease_seconds,
            now=self.clock(),
            record_id=record_id,
        )
        landed: list[SentMark] = []
        patients: list[str] = []  # each landed mark's
        absent: list[int] = []
        unfound: dict[int, list[AuditEntry]] = {}  # lost overwrites not found: landing unknown
        later: dict[int, datetime] = {}
        for n, item in enumerate(items):
            try:
                mark = self._landing_check(item, version, written_over=written_over)
            except Exception as exc:  # one item's failure never stops the others
                if is_store_outage(exc):
                    raise
                later[item.item_id] = due = self._recheck_at(item)
                status = exc.status if isinstance(exc, ServerError) else None
                unavailable = isinstance(exc, _SERVER_UNAVAILABLE)
                log.warning(
                    "item %d: landing unknown, read-back failed (%s %s): read back later, "
                    "in %.0f s%s",
                    item.item_id,
                    type(exc).__name__,
                    status or "-",
                    (due - self.clock()).total_seconds(),
                    f"; {len(items) - n - 1} other(s) when their lease ends" if unavailable else "",
                )
                if unavailable:
                    break
                continue
            if isinstance(mark, SentMark):
                landed.append(mark)
                patients.append(item.patient)
            else:
                absent.append(item.item_id)
                if mark is not None:
                    unfound[item.item_id] = [mark]
        if not (landed or absent or later):
            return
        try:
            recorded = self.store.record_landing_checks(
                landed, absent, at=self.clock(), later=later, absent_audit=unfound
            )
        except Exception as exc:  # one item's row must not keep the others unrecorded
            if is_store_outage(exc):
                raise
            log.warning(
                "landing unknown: recording %d read-back(s) at once failed (%s): "
                "recorded one at a time",
                len(landed) + len(absent) + len(later),
                type(exc).__name__,
            )
            recorded = self._record_landing_checks_apart(items, landed, absent, later, unfound)
        for mark, ok in zip(landed, recorded, strict=True):
            if ok and mark.conflict is not None:  # a lost overwrite that landed
                CONFLICTS.labels(mark.conflict).inc()
        if landed or absent:
            log.info(
                "landing unknown, read back: %d landed (recorded sent), %d not there "
                "(%d of them lost overwrites that may have landed: audited)",
                sum(recorded),
                len(absent),
                len(unfound),
            )
        # A revocation may be why the item is held: what landed goes to the retraction policy.
        self._retraction_check({p for p, ok in zip(patients, recorded, strict=True) if ok})

    def _record_landing_checks_apart(
        self,
        items: Sequence[OutboxItem],
        landed: Sequence[SentMark],
        absent: Sequence[int],
        later: Mapping[int, datetime],
        unfound: Mapping[int, Sequence[AuditEntry]],
    ) -> list[bool]:
        """``Store.record_landing_checks`` of a pass whose record in one transaction failed
        (not for want of the database): each item in a transaction of its own, so that one
        whose row cannot be recorded (its stored data corrupted, a bug on that row) no longer
        keeps the others unrecorded. An item whose own record fails stays noted and is read
        back again after a wait, as one whose read-back failed (``_recheck_at``), with one log
        line naming the item and the error type. The store's compare-and-set still records each
        once (the failed transaction recorded nothing), with its audit entries. A database
        outage is raised. Whether each of ``landed`` was recorded, in order."""
        by_id = {item.item_id: item for item in items}
        recheck = dict(later)  # the read-backs that could not tell, and the records that failed

        def record_one(item_id: int, marks: Sequence[SentMark], gone: Sequence[int]) -> bool:
            try:
                recorded = self.store.record_landing_checks(
                    marks,
                    gone,
                    at=self.clock(),
                    absent_audit={i: unfound[i] for i in gone if i in unfound},
                )
                return recorded == [True]
            except Exception as exc:
                if is_store_outage(exc):
                    raise
                recheck[item_id] = due = self._recheck_at(by_id[item_id])
                log.warning(
                    "item %d: landing unknown, recording its read-back failed (%s): "
                    "read back later, in %.0f s",
                    item_id,
                    type(exc).__name__,
                    (due - self.clock()).total_seconds(),
                )
                return False

        recorded = [record_one(mark.item_id, [mark], []) for mark in landed]
        for item_id in absent:
            record_one(item_id, [], [item_id])
        if recheck:
            self.store.record_landing_checks([], [], at=self.clock(), later=recheck)
        return recorded

    def _landing_check(
        self, item: OutboxItem, version: str, *, written_over: bool = False
    ) -> SentMark | AuditEntry | None:
        """Read ``item``'s resources back (``_check_landings``): what recording it SENT takes
        when a form it was sent in is on the server and ours, else None; the overwrite it was,
        with its conflict, when its lost send was one (``OutboxItem.lost_overwrite``). A lost
        overwrite not found (or found written by another item) may have landed and been
        changed since: its conflict AuditEvent as recorded then (outcome
        ``overwrite-landing-unknown``), unless the server still holds every version it was
        written over (``_never_landed``: it never landed; None) and either no server may still
        be writing it (``_may_still_land``: a read a 412 makes early, before the item is due)
        or ours is written over them now (``written_over``). Raises whatever the mapping or
        the reads raise."""
        forms = sendable_forms(item, store=self.store, version=version)
        current = self._read_back(forms)
        sent = self._landed_form(forms, current)
        if sent is None or self._written_by_another_item(item, sent):
            kept = item.lost_overwrite
            if kept is None or (
                _never_landed(item.lost_overwrite_against, current)
                and (written_over or not self._may_still_land(kept))
            ):
                return None
            return _landing_unknown_event(kept)
        return self._sent_mark(item, sent, self.clock(), overwrite=item.lost_overwrite)

    def _recheck_at(self, item: OutboxItem) -> datetime:
        """When to read back ``item`` again after a read-back that failed: after as long as it
        has been left unsent (``OutboxItem.left_unsent_at``), so each wait doubles the last, a
        lease at least and ``LANDING_RECHECK_MAX`` at most (a fix deployed for a record that
        does not map is then found within that time)."""
        now = self.clock()
        lease = timedelta(seconds=self.settings.lease_seconds)
        waited = now - item.left_unsent_at if item.left_unsent_at is not None else lease
        return now + min(max(waited, lease), max(LANDING_RECHECK_MAX, lease))

    def _read_back(
        self, forms: Sequence[Sequence[Mapping[str, Any]]]
    ) -> dict[tuple[str, str], Mapping[str, Any] | None]:
        """The server's copy of every resource of ``forms`` (None: not there, 404 or 410)."""
        current: dict[tuple[str, str], Mapping[str, Any] | None] = {}
        for form in forms:
            for resource in form:
                key = (str(resource["resourceType"]), str(resource["id"]))
                if key not in current:
                    try:
                        current[key] = self.client.read(*key)
                    except NotFoundError:
                        current[key] = None
        return current

    def _written_by_another_item(self, item: OutboxItem, sent: list[SentResource]) -> bool:
        """Whether every server version in ``sent`` is one an item of ``item``'s record lists as
        sent (``Store.sent_versions``): a later send of the same content wrote it, and the read
        says nothing of whether ``item``'s own send landed. Unversioned copies never are."""
        if not all(resource.version_id for resource in sent):
            return False
        return set(sent) <= self.store.sent_versions(item.record_id)

    @staticmethod
    def _landed_form(
        forms: Sequence[Sequence[Mapping[str, Any]]],
        current: Mapping[tuple[str, str], Mapping[str, Any] | None],
    ) -> list[SentResource] | None:
        """The server's versions of the first of ``forms`` whose every resource the server holds
        with that content (``copy_content``: ``meta`` and ``text`` aside); None when none is."""
        for form in forms:
            held: list[SentResource] = []
            for mine in form:
                key = (str(mine["resourceType"]), str(mine["id"]))
                theirs = current.get(key)
                if theirs is None or copy_content(mine) != copy_content(theirs):
                    break
                held.append(SentResource(key[0], key[1], server_version(theirs)))
            else:
                return held
        return None

    def _our_versions(
        self, entry: _Ready, current: Sequence[Mapping[str, Any] | None], batch: _Batch
    ) -> dict[tuple[str, str], str] | None:
        """The server's versions of ``entry``'s resources (``current``, read after a 412) when
        each is one we wrote, as the If-Match of the send again; None when any is someone else's.
        Ours: a version an item of this record lists as sent (``Store.sent_versions``, late
        records too), or one holding the content of a version of this record newer than the one
        last recorded as sent (a send of ours that landed but is not recorded yet: the worker
        whose lease it outlasted records it a moment later; our content, so nobody's edit is
        lost by writing the newer over it)."""
        item = entry.item
        recorded = self.store.sent_versions(item.record_id)
        older: list[list[dict[str, Any]]] | None = None
        versions: dict[tuple[str, str], str] = {}
        for theirs in current:
            if theirs is None:
                return None  # deleted on the server: not a version of ours
            key = (str(theirs["resourceType"]), str(theirs["id"]))
            version = server_version(theirs)
            if not version:
                return None
            versions[key] = version
            if SentResource(key[0], key[1], str(version)) in recorded:
                continue
            if older is None:
                older = self._older_contents(item, batch.version)
            if not any(
                copy_content(mine) == copy_content(theirs)
                for resources in older
                for mine in resources
                if (mine.get("resourceType"), mine.get("id")) == key
            ):
                return None
        if versions == entry.if_match:
            return None  # a 412 against the very versions we sent: not ours to explain
        return versions

    def _older_contents(self, item: OutboxItem, fhir_version: str) -> list[list[dict[str, Any]]]:
        """The resources of the record's versions between the one last recorded as sent and
        ``item``'s (the latest few): those whose send may have landed unrecorded, mapped as the
        worker maps them; a version that no longer maps is left out. The version last recorded
        is not among them: a remote edit that restores its content is someone else's edit."""
        last = self.store.last_sent(item.record_id)
        lowest = max(0 if last is None else last.record_version, item.record_version - 10)
        mapped: list[list[dict[str, Any]]] = []
        for version in range(item.record_version - 1, lowest, -1):
            record = self.store.get_record(item.record_id, version=version)
            if record is None:
                continue
            mapper = mapper_for_kind(record.kind)
            try:
                mapped.append(list(mapper.to_fhir(mapper.load(record.body), version=fhir_version)))
            except _RECORD_ERRORS:
                continue
        return mapped

    def _fail(
        self,
        item: OutboxItem,
        error: BaseException,
        report: BatchReport,
        batch: _Batch,
        *,
        landing_unknown: bool = False,
        lost_overwrite: AuditEntry | None = None,
        lost_overwrite_against: Sequence[SentResource] = (),
    ) -> None:
        """Record ``item``'s failure: retried (FAILED) or dead-lettered (``decide_retry``), or
        SUPERSEDED if its record got a newer item. ``landing_unknown``: the failed send's answer
        was lost, so it may have landed: the item is noted so in the same transaction, to be read
        back once it ends without a send that is answered, no sooner than a lease from now (a
        slow server may still be writing it); ``lost_overwrite``: that send was an overwrite,
        and this its conflict AuditEvent, kept with the note (``Store.mark_dead``), with the
        server's versions it was written over (``lost_overwrite_against``)."""
        now = self.clock()
        check_at = now + timedelta(seconds=self.settings.lease_seconds) if landing_unknown else None
        decision = decide_retry(
            error, attempts=item.attempts, settings=self.settings, now=now, random=self.random
        )
        if not decision.dead:
            batch.block(item.patient)  # pending again: the patient's later items wait behind it
        status = error.status if isinstance(error, ServerError) else None
        issues = loggable_outcome(decision.outcome)
        stored = outcome_to_store(error, decision.outcome)  # never the server's free text
        SEND_FAILURES.labels("transient" if decision.transient else "permanent").inc()
        if _no_answer(error):
            report.unreachable = True
        if decision.dead:
            log.warning(
                "item %d dead-lettered after %d attempt(s): %s %s %s",
                item.item_id,
                item.attempts + 1,
                type(error).__name__,
                status or "-",
                issues,
            )
            entry = audit.dead_letter_event(
                item.record_id,
                item.patient,
                item.record_version,
                now,
                recipient=self.settings.recipients[0],
                purpose=self.settings.purpose,
                status=status,
            )
            self._count(
                self.store.mark_dead(
                    item.item_id,
                    self.worker_id,
                    outcome=stored,
                    audit=[entry],
                    at=now,
                    landing_check_at=check_at,
                    lost_overwrite=lost_overwrite,
                    lost_overwrite_against=lost_overwrite_against,
                ),
                report,
                "dead",
            )
            return
        assert decision.next_attempt_at is not None
        log.info(
            "item %d failed, retry in %.1fs: %s %s",
            item.item_id,
            (decision.next_attempt_at - now).total_seconds(),
            type(error).__name__,
            status or "-",
        )
        self._count(
            self.store.mark_failed(
                item.item_id,
                self.worker_id,
                outcome=stored,
                next_attempt_at=decision.next_attempt_at,
                at=now,
                landing_check_at=check_at,
                lost_overwrite=lost_overwrite,
                lost_overwrite_against=lost_overwrite_against,
            ),
            report,
            "failed",
        )

    def _dead_after_takeovers(self, item: OutboxItem, report: BatchReport) -> None:
        """Dead-letter an item whose workers kept stopping without a result (a poison record
        that crashes or hangs whoever takes it): it is not tried again, so it can no longer
        block its patient's later items. The store already counted the lost leases."""
        now = self.clock()
        log.warning(
            "item %d dead-lettered: its workers stopped without a result %d time(s) in a row",
            item.item_id,
            item.lost_leases,
        )
        SEND_FAILURES.labels("permanent").inc()
        entry = audit.dead_letter_event(
            item.record_id,
            item.patient,
            item.record_version,
            now,
            recipient=self.settings.recipients[0],
            purpose=self.settings.purpose,
        )
        self._count(
            self.store.mark_dead(
                item.item_id,
                self.worker_id,
                outcome=worker_stopped_outcome(item.lost_leases),
                audit=[entry],
                at=now,
                count_attempt=False,
            ),
            report,
            "dead",
        )

    def _count(
        self, recorded: bool | SyncState | None, report: BatchReport, field_name: str
    ) -> bool:
        """Count a ``mark_*`` answer in ``field_name``, in ``superseded`` when the item was left
        SUPERSEDED instead, in ``lease_lost`` when nothing was written; whether it was written."""
        if recorded is SyncState.SUPERSEDED:
            report.superseded += 1
        elif recorded:
            setattr(report, field_name, getattr(report, field_name) + 1)
        else:
            report.lease_lost += 1
            log.warning("lease lost before recording (%s)", field_name)
        return bool(recorded)


@dataclass(slots=True)
class _Batch:
    """One claimed batch on its way through the pipeline. Each thread counts in a report of its
    own (``prepared``: the preparing thread; ``sending``: the calling thread; ``recorded``: the
    recording thread), added up when the batch is finished."""

    items: list[OutboxItem]
    version: str
    now: datetime
    error: str | None = None
    last_start: datetime | None = None
    prepared: BatchReport = field(default_factory=BatchReport)
    sending: BatchReport = field(default_factory=BatchReport)
    recorded: BatchReport = field(default_factory=BatchReport)
    recordings: list[Future[None]] = field(default_factory=list)
    #: Items handed back untried (the lease running out, or an earlier item of the same patient
    #: still pending in this batch), and the patients whose later items must wait.
    deferred: list[int] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The batch's records that have a send on the server (``Store.records_sent``, read once when
    #: preparing begins): only their items look up an If-Match.
    sent_before: frozenset[str] = frozenset()

    def block(self, patient: str) -> None:
        """An item of ``patient`` stays pending (failed, to be retried; or handed back): the
        patient's later items in this batch are handed back, never sent ahead of it."""
        with self.lock:
            self.blocked.add(patient)

    def is_blocked(self, patient: str) -> bool:
        with self.lock:
            return patient in self.blocked

    def defer(self, item: OutboxItem) -> None:
        with self.lock:
            self.deferred.append(item.item_id)
            self.blocked.add(item.patient)


class _Pipeline:
    """A worker's batches with their stages overlapped. A preparing thread claims a batch and
    gates, maps and validates it Bundle by Bundle; the calling thread sends each Bundle as soon
    as it is ready; a recording thread writes what was sent (``mark_sent_many``, audit) while the
    next Bundle is on its way. The preparing thread claims the next batch while the one before is
    being sent, never more than one batch ahead.

    Nothing about the outbox changes: every item is leased by the claim and finished by one
    compare-and-set ``mark_*``, as without the pipeline. A patient's order holds because an item
    in hand is still pending, so the next claim cannot take that patient's later items (the
    store's claim rule), and inside a batch a patient's items go out in claim order, the later
    ones handed back once an earlier one stays pending."""

    def __init__(
        self,
        worker: Worker,
        *,
        stop: threading.Event | None,
        poll: bool,
        max_batches: int | None = None,
        between: Callable[[], object] | None = None,
        watch_schema: bool = False,
    ) -> None:
        self.worker = worker
        #: Claim nothing more once the worker's schema watch finds the schema changed.
        self.watch_schema = watch_schema
        self.stop = stop or threading.Event()
        self.poll = poll
        self.max_batches = max_batches
        #: Run by the preparing thread after each batch it prepared, before its next claim.
        self.between = between
        #: Set when the calling thread gives up (an error): the preparing thread stops at once.
        self.halt = threading.Event()
        self.events: queue.SimpleQueue[tuple[str, _Batch | None, Any]] = queue.SimpleQueue()
        self.in_flight = 0  # batches claimed and not yet finished
        self.changed = threading.Condition()

    def run(self, on_batch: Callable[[BatchReport], object]) -> None:
        preparer = threading.Thread(
            target=self._prepare_batches, name="fhir-alliance-prepare", daemon=True
        )
        recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fhir-alliance-record")
        self.worker._recorder = recorder
        preparer.start()
        try:
            while True:
                kind, batch, payload = self.events.get()
                if kind == "group":
                    assert batch is not None
                    self.worker._send_ready(batch, payload)
                elif kind == "done":
                    assert batch is not None
                    report = self.worker._finish_batch(batch)
                    with self.changed:
                        self.in_flight -= 1
                        self.changed.notify_all()
                    on_batch(report)
                else:  # "exit": the preparing thread is done
                    if payload is not None:
                        raise payload
                    return
        finally:
            self.halt.set()
            with self.changed:
                self.changed.notify_all()
            preparer.join()
            recorder.shutdown(wait=True)  # what was sent is still recorded
            self.worker._recorder = None

    # -- the preparing thread

    def _wait_in_flight(self, at_most: int) -> bool:
        """Wait until at most ``at_most`` batches are in hand; False if the run was halted."""
        with self.changed:
            self.changed.wait_for(lambda: self.in_flight <= at_most or self.halt.is_set())
        return not self.halt.is_set()

    def _sleep(self) -> None:
        deadline = time.monotonic() + self.worker.settings.poll_interval_seconds
        while not (self.stop.is_set() or self.halt.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, 0.05))

    def _prepare_batches(self) -> None:
        error: BaseException | None = None
        try:
            self._loop()
        except BaseException as exc:  # handed to the calling thread, which raises it
            error = exc
        self.events.put(("exit", None, error))

    def _loop(self) -> None:
        worker = self.worker
        limit = worker.settings.worker_batch_size
        batches = 0
        while not (self.stop.is_set() or self.halt.is_set()):
            if self.max_batches is not None and batches >= self.max_batches:
                return
            # One batch ahead at most: claim while the batch before is being sent.
            if not self._wait_in_flight(1):
                return
            if self.watch_schema and worker.schema.mismatch() is not None:
                return  # the batches in hand are finished; run_forever returns
            batch = worker._claim_batch()
            if not batch.items and batch.error is None and self.in_flight:
                # The batches in hand hold their patients' next items back: claim again after.
                if not self._wait_in_flight(0):
                    return
                continue
            batches += 1
            with self.changed:
                self.in_flight += 1
            for group in worker._prepared_groups(batch, self.halt):
                self.events.put(("group", batch, group))
            self.events.put(("done", batch, None))
            if self.between is not None:
                self.between()
            if batch.error is not None or not batch.items:
                if not self.poll:
                    return
                self._sleep()
            elif len(batch.items) < limit and not self._wait_in_flight(0):
                # Nothing more was claimable: the next claim waits until the batches in hand
                # are done (their patients' next items may then be claimable).
                return


def _no_answer(error: BaseException) -> bool:
    """Whether a send that failed with ``error`` found no FHIR server to answer it: no usable
    answer at all (refused, no such host, a timeout, a reset), the server unavailable (503), or a
    gateway that could not reach it (502, 504)."""
    return isinstance(error, TransportError) or (
        isinstance(error, ServerError) and error.status in GATEWAY_ANSWERS | {503}
    )


def may_have_landed(error: BaseException) -> bool:
    """Whether a send that failed with ``error`` may have been applied by the server all the
    same: no answer came though the request may have arrived (a timeout, a reset:
    ``TransportError.may_have_arrived``); an answer came that could not be read
    (``InvalidResponseError``: not FHIR JSON, a location naming something else, or one larger
    than ``max_response_bytes``, ``ResponseTooLargeError``: the server answered, so the Bundle
    reached it); or a gateway's 502 or 504 (``GATEWAY_ANSWERS``), the proxy's answer, not the
    server's, which may have applied it. Not a failure before anything was sent (refused, no
    such host, a connect timeout), nor an answer of the server's own that can be read."""
    return (
        isinstance(error, InvalidResponseError)
        or (isinstance(error, TransportError) and error.may_have_arrived)
        or (isinstance(error, ServerError) and error.status in GATEWAY_ANSWERS)
    )


def worker_stopped_outcome(lost_leases: int) -> dict[str, Any]:
    """The OperationOutcome of an item dead-lettered because the workers that took it stopped
    without a result (their leases expired) ``lost_leases`` times in a row, ``max_attempts``."""
    message = (
        f"the workers sending this item stopped without a result {lost_leases} times in a row "
        "(their leases expired): not tried again, replay it after a fix"
    )
    issue = Issue(path="", message=message, code="exception")
    return {"resourceType": "OperationOutcome", "issue": [issue.to_fhir()]}


def _ascii_number(text: str) -> bool:
    """Whether ``text`` is ASCII digits (``str.isdigit`` alone takes a superscript ², which
    ``int`` refuses, and other scripts' digits, which it reads)."""
    return text.isascii() and text.isdigit()


def _pulled_after_ours(seen: PulledResource, ours: str, ours_at: datetime | None) -> bool:
    """Whether the pulled version ``seen`` is a later write than ``ours`` (the version our last
    send recorded at ``ours_at``): compared as numbers where both are (servers count versions
    up, whichever of the pull and our send was recorded first); else by when each was recorded
    here (unknown: the pulled one, as before)."""
    theirs = seen.version_id or ""
    if _ascii_number(theirs) and _ascii_number(ours):
        return int(theirs) > int(ours)
    if seen.updated_at is None or ours_at is None:
        return True
    return seen.updated_at > ours_at


def _never_landed(
    against: Sequence[SentResource], current: Mapping[tuple[str, str], Mapping[str, Any] | None]
) -> bool:
    """Whether the server's copies ``current`` show that an overwrite written over ``against``
    (the server's versions its 412 read) never landed: every resource is still at that version
    (a write of it would have made a new one). Not when ``against`` is not known (empty)."""
    if not against:
        return False
    for resource in against:
        theirs = current.get((resource.resource_type, resource.id))
        if theirs is None or server_version(theirs) != resource.version_id:
            return False
    return True


def _landing_unknown_event(kept: AuditEntry) -> AuditEntry:
    """A lost overwrite's conflict AuditEvent (``kept``, at the overwrite's time) as recorded
    when it is not found on the server and may have landed: ``overwrite-landing-unknown``."""
    return replace(kept, resource={**kept.resource, "outcomeDesc": OVERWRITE_LANDING_UNKNOWN})


def _stale_version(error: BaseException) -> bool:
    """A 412 (or a per-entry VersionConflictError) answering our If-Match, not a conditional
    request's "several matches"; also a 404 or 410, which some servers answer to an update
    If-Match of a resource deleted since (the read-back tells)."""
    if isinstance(error, VersionConflictError | NotFoundError):
        return True
    return isinstance(error, PreconditionFailedError) and not isinstance(
        error, MultipleMatchesError
    )


def _consent_in_force(resource: Mapping[str, Any]) -> bool:
    """Whether ``resource`` is a Consent of ours that would permit (active, or a draft)."""
    return resource.get("resourceType") == "Consent" and resource.get("status") in _IN_FORCE


def sync_once(
    settings: Settings, store: Store, client: FhirClient, *, max_batches: int | None = None
) -> BatchReport:
    """Run batches until nothing is claimable now (or ``max_batches``): ``fhir-alliance
    sync-once``. Items scheduled for a later retry stay scheduled. ``error`` is set when the FHIR
    server could not be reached, whether nothing was claimed for it or the claimed items'
    sends found no server (``BatchReport.unreachable``)."""
    total = BatchReport()
    for report in Worker(settings, store, client).run_batches(max_batches=max_batches):
        total.add(report)
        if report.error is not None:
            total.error = report.error
    if total.error is None and total.unreachable:
        total.error = "the FHIR server could not be reached"
    return total
