"""Pushing the audit trail to the FHIR server (``push_audit``), with the outbox's guarantees.

The worker stores each disclosure's AuditEvent and Provenances with the send, marked PENDING
(``AuditPushState``, :func:`queued_for_push`), in the same transaction; a retraction's
entered-in-error marks and ``reconcile --fix`` writes store their Provenances so with their
AuditEvent (which, like every two-way sync event, stays local). :func:`push_pending_audit` then claims due PENDING
rows under a lease (``Store.claim_audit_pushes``), ``PUT``\\ s them in a batch Bundle (each entry
stands alone; ids are deterministic, so a push repeated after a lost answer writes the same
resource) and records every outcome in one transaction (``Store.record_audit_pushes``):

* taken by the server: PUSHED;
* refused for now (429, 5xx, timeouts, resets, refused credentials; the same rules as records,
  ``sync/retry.py``): tried again after an exponential backoff with full jitter (never sooner
  than ``Retry-After``); after ``max_attempts`` failures, dead-lettered;
* refused for good (400, 422, 409, …): dead-lettered at once with the server's OperationOutcome.

Nothing is dropped: dead letters stay in the audit table, are counted by ``fhir-alliance status``
and ``fhir_alliance_audit_push_depth{state="dead-lettered"}``, and ``fhir-alliance replay
--audit`` queues them again. A pass that stops half-way (a killed worker, a database outage)
leaves its rows leased; they are due again when the lease ends, no failure counted. A push that
fails never fails the record it is about: the record was sent.

Logs carry counts and HTTP statuses only, never the resources.
"""

from __future__ import annotations

import logging
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fhir_alliance.client import BundleRequest, EntryOutcome, FhirClient
from fhir_alliance.errors import FhirAllianceError, ServerError
from fhir_alliance_service.config import Settings
from fhir_alliance_service.metrics import AUDIT_PUSHES
from fhir_alliance_service.store.interface import (
    AuditEntry,
    AuditPushFailure,
    AuditPushState,
    Store,
)
from fhir_alliance_service.sync.outcomes import outcome_to_store
from fhir_alliance_service.sync.retry import decide_retry

__all__ = ["AuditPushReport", "push_pending_audit", "queued_for_push"]

log = logging.getLogger("fhir_alliance_service.sync")

#: Most batches one call pushes, so that a long backlog never keeps a worker from its records.
MAX_BATCHES_PER_PASS = 10


@dataclass(slots=True)
class AuditPushReport:
    """What one pass did: audit rows pushed, scheduled again, dead-lettered."""

    pushed: int = 0
    retried: int = 0
    dead: int = 0


def queued_for_push(settings: Settings, entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """``entries`` as they are stored to be pushed: with ``push_audit``, PENDING (the worker's
    next batch pushes them, :func:`push_pending_audit`; a failed push never fails the change they
    are about); without, kept locally only. Only what goes to the server goes through here:
    disclosures' AuditEvents and every Provenance."""
    if not settings.push_audit:
        return list(entries)
    return [replace(e, push_state=AuditPushState.PENDING) for e in entries]


def push_pending_audit(
    settings: Settings,
    store: Store,
    client: FhirClient,
    *,
    now: Callable[[], datetime],
    prepare: Callable[[dict[str, Any]], dict[str, Any]] = dict,
    random: Callable[[], float] = _random.random,
) -> AuditPushReport:
    """Push the audit rows due now, a batch (``worker_batch_size`` rows) at a time, until none is
    due, a push fails or :data:`MAX_BATCHES_PER_PASS` batches are done. ``prepare`` gives the
    resource as sent (the worker adds ``meta.source`` and its tags)."""
    report = AuditPushReport()
    limit = min(settings.worker_batch_size, client.max_bundle_entries)
    for _ in range(MAX_BATCHES_PER_PASS):
        entries = store.claim_audit_pushes(
            limit=limit, lease_seconds=settings.lease_seconds, now=now()
        )
        if not entries:
            break
        errors = _push(client, entries, prepare)
        failures = _failures(settings, entries, errors, now(), random, report)
        pushed = [e.id for e, error in zip(entries, errors, strict=True) if error is None]
        store.record_audit_pushes([i for i in pushed if i is not None], failures, at=now())
        report.pushed += len(pushed)
        AUDIT_PUSHES.labels("pushed").inc(len(pushed))
        if failures or len(entries) < limit:
            break
    return report


def _push(
    client: FhirClient,
    entries: Sequence[AuditEntry],
    prepare: Callable[[dict[str, Any]], dict[str, Any]],
) -> list[BaseException | None]:
    """Each entry's error (None: the server took it)."""
    requests = [BundleRequest.put(prepare(dict(e.resource))) for e in entries]
    try:
        outcomes = client.batch(requests, chunk_size=len(requests))
    except FhirAllianceError as exc:  # the whole Bundle: unreachable, 5xx, refused credentials
        return [exc] * len(entries)
    return [_error(o) for o in outcomes]


def _error(outcome: EntryOutcome) -> BaseException | None:
    if outcome.ok:
        return None
    if outcome.error is not None:
        return outcome.error
    return ServerError("batch entry answered without an error status", status=outcome.status)


def _failures(
    settings: Settings,
    entries: Sequence[AuditEntry],
    errors: Sequence[BaseException | None],
    at: datetime,
    random: Callable[[], float],
    report: AuditPushReport,
) -> list[AuditPushFailure]:
    failures = []
    statuses: dict[str, int] = {}
    for entry, error in zip(entries, errors, strict=True):
        if error is None or entry.id is None:
            continue
        decision = decide_retry(
            error, attempts=entry.push_attempts, settings=settings, now=at, random=random
        )
        next_at = None if decision.dead else decision.next_attempt_at
        failures.append(
            AuditPushFailure(entry.id, outcome_to_store(error, decision.outcome), next_at)
        )
        outcome = "dead-lettered" if decision.dead else "retried"
        AUDIT_PUSHES.labels(outcome).inc()
        if decision.dead:
            report.dead += 1
        else:
            report.retried += 1
        status = error.status if isinstance(error, ServerError) else None
        key = f"{type(error).__name__} {status or '-'} {outcome}"
        statuses[key] = statuses.get(key, 0) + 1
    for key, count in sorted(statuses.items()):
        log.warning("audit push failed: %d row(s) %s", count, key)
    return failures
