"""Reconcile: prove the clinic's server holds exactly what it should, and repair it.

For every local record whose newest send is on the server (SENT, not retracted), each resource the
mapping gives **now** is looked up on the server by its business identifier:

* **missing**: no resource carries the identifier;
* **duplicated**: more than one does, or one at another id than ours (e.g. a copy created
  outside the service);
* **drifted**: the resource at our id differs from what the mapping gives now (``meta`` and
  ``text`` aside): someone edited it, or the mapping changed since.

``fix=True`` repairs, each repair audited: duplicates not at our deterministic id are deleted; a
missing or drifted resource is written again (``PUT`` to its id, ``If-Match`` the version found)
only with the consent gate's permit, asked again now: a record it would hold is reported
``held`` with the gate's reason code, never written. The gate is asked when a record's check
starts; when the patient's consents changed by the time a resource is to be written (the
searches take a while; a revocation may be stored meanwhile), it is asked again first, as the
worker does just before a Bundle goes out. The record's status then lists the versions written.
A write sends the record's data to the server as the worker's send does, so it is audited as
one: a ``disclose`` AuditEvent per record (the worker's shape, the resources written; an id of
its own) and a Provenance of each version written (``CREATE`` for a missing resource, ``UPDATE``
for a drifted one), both queued for the server with ``push_audit``, and a local
``reconcile-write`` AuditEvent per resource saying why (``missing``, ``drifted``); all stored in
the one transaction that records the versions written. A deleted duplicate is a
``reconcile-delete`` AuditEvent only (a delete writes no version, and discloses nothing). A
record the gate holds is a decision not to disclose, audited as the worker audits a hold: one
``hold`` AuditEvent per record and run (however many of its resources were held), the worker's
shape with the gate's reason code, under an id naming the step (never the id of the worker's hold
of the same version), local only. What writes no version is stored with ``Store.add_audit``.
What a record's fix did on the server (each deletion, each version written) is recorded even
when a later step of it raises something other than a server error (a bug, the database, an
interrupt): the error propagates once that is stored.

The report names records by their opaque record id and resources by ``Type/id``: never business
identifiers or content (it may be pasted into a ticket).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_alliance.client import FhirClient
from fhir_alliance.errors import NotFoundError, ServerError
from fhir_alliance.model.common import Identifier
from fhir_alliance_service import audit
from fhir_alliance_service.config import Settings
from fhir_alliance_service.store.interface import (
    AuditEntry,
    SentResource,
    Store,
    StoredRecord,
    SyncState,
    SyncStatus,
)
from fhir_alliance_service.sync.audit_push import queued_for_push
from fhir_alliance_service.sync.gate import GateResult, regate_stored
from fhir_alliance_service.sync.target import target_fhir_version

__all__ = ["Finding", "ReconcileReport", "Reconciler"]

log = logging.getLogger("fhir_alliance_service.sync.reconcile")

MISSING = "missing"
DUPLICATED = "duplicated"
DRIFTED = "drifted"


@dataclass(slots=True)
class Finding:
    """One resource that is not as it should be. ``found`` lists the server's ``Type/id`` of
    every resource carrying the identifier; ``fixed``: repaired by ``--fix`` (``held``: the gate
    now holds the record, so it was not written; ``held_reason``: why, the gate's machine code,
    :class:`~fhir_alliance_service.sync.gate.HoldReason`)."""

    problem: str
    record_id: str
    resource: str  # Type/id the mapping gives
    found: list[str] = field(default_factory=list)
    fixed: bool = False
    held: bool = False
    held_reason: str | None = None


@dataclass(slots=True)
class ReconcileReport:
    records: int = 0
    resources: int = 0
    findings: list[Finding] = field(default_factory=list)

    def count(self, problem: str) -> int:
        return sum(1 for f in self.findings if f.problem == problem)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "resources": self.resources,
            "missing": self.count(MISSING),
            "duplicated": self.count(DUPLICATED),
            "drifted": self.count(DRIFTED),
            "fixed": sum(1 for f in self.findings if f.fixed),
            "findings": [asdict(f) for f in self.findings],
        }


def _content(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "text")}


def _identifier(resource: Mapping[str, Any]) -> Identifier | None:
    identifiers = resource.get("identifier")
    if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], Mapping):
        system, value = identifiers[0].get("system"), identifiers[0].get("value")
        if isinstance(system, str) and isinstance(value, str):
            return Identifier(system, value)
    return None


class Reconciler:
    """Compares the store with the server ``client`` talks to (``run``). ``tags``: ``meta.tag``
    codings for what ``fix`` writes (as the worker's)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: FhirClient,
        *,
        tags: Sequence[Mapping[str, str]] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.tags = [dict(t) for t in tags]  # meta.tag codings added to what fix writes
        self.clock = clock

    def run(self, *, patient: str | None = None, fix: bool = False) -> ReconcileReport:
        """Check every sent record (of ``patient`` and its aliases, if given); repair with
        ``fix``."""
        report = ReconcileReport()
        version = target_fhir_version(self.settings, self.store, self.client)
        keys = self.store.patient_keys(patient) if patient is not None else [None]
        for key in keys:
            after: str | None = None
            while True:
                page = self.store.list_records(patient=key, limit=200, after=after)
                if not page:
                    break
                after = page[-1].record_id
                for record in page:
                    status = self.store.sync_status(record.record_id)
                    if status is None or status.state is not SyncState.SENT:
                        continue  # never sent, superseded, held, pulled: nothing expected
                    if status.retraction is not None or status.record_version != record.version:
                        continue
                    self._check(record, status, version, fix, report)
        log.info(
            "reconcile: records=%d resources=%d missing=%d duplicated=%d drifted=%d",
            report.records,
            report.resources,
            report.count(MISSING),
            report.count(DUPLICATED),
            report.count(DRIFTED),
        )
        return report

    def _check(
        self,
        record: StoredRecord,
        status: SyncStatus,
        version: str,
        fix: bool,
        report: ReconcileReport,
    ) -> None:
        now = self.clock()
        gated = self._regate(record, status, version, now)
        if gated is None:
            return  # no longer maps: the worker dead-letters such records
        report.records += 1
        findings: list[tuple[Finding, dict[str, Any], dict[str, Any] | None]] = []
        for expected in gated.resources:
            report.resources += 1
            rtype, rid = str(expected["resourceType"]), str(expected["id"])
            identifier = _identifier(expected)
            if identifier is None:
                continue
            found = self.client.find_by_identifier(rtype, identifier, limit=50)
            ours = next((r for r in found if r.get("id") == rid), None)
            names = [f"{rtype}/{r.get('id')}" for r in found]
            if len(found) > 1 or (found and ours is None):
                findings.append(
                    (Finding(DUPLICATED, record.record_id, f"{rtype}/{rid}", names), expected, ours)
                )
            if ours is None:
                findings.append(
                    (Finding(MISSING, record.record_id, f"{rtype}/{rid}", names), expected, None)
                )
            elif _content(ours) != _content(expected):
                findings.append(
                    (Finding(DRIFTED, record.record_id, f"{rtype}/{rid}", names), expected, ours)
                )
        for finding, _, _ in findings:
            report.findings.append(finding)
        if fix and findings:
            self._fix(record, status, gated, version, findings)

    def _gate_now(
        self, record: StoredRecord, status: SyncStatus, gated: GateResult, version: str
    ) -> GateResult | None:
        """``gated`` while the patient's consents are the ones it read; else the gate asked
        again, now (``None``: the record no longer maps, so nothing of it is written)."""
        if gated.consents_stamp is None:
            return gated  # it read no consents (a consent record, a held draft)
        if self.store.patient_consents_stamp(record.patient)[1] == gated.consents_stamp:
            return gated
        return self._regate(record, status, version, self.clock())

    def _regate(
        self, record: StoredRecord, status: SyncStatus, version: str, at: datetime
    ) -> GateResult | None:
        """The consent gate asked about ``record`` at ``at`` (None: it no longer maps)."""
        return regate_stored(
            record,
            item_id=status.item_id or 0,
            owner="reconcile",
            settings=self.settings,
            store=self.store,
            version=version,
            at=at,
        )

    def _fix(
        self,
        record: StoredRecord,
        status: SyncStatus,
        gated: GateResult,
        version: str,
        findings: list[tuple[Finding, dict[str, Any], dict[str, Any] | None]],
    ) -> None:
        """Repair ``findings`` of ``record``, then record what was done in one transaction. What
        was deleted and written is recorded even when a later step raises something other than
        a server error (a bug, the database, an interrupt): a version written on the server is
        never left unrecorded and unaudited. The error then propagates."""
        now = self.clock()
        done = _Repairs()
        try:
            self._repair(record, status, gated, version, findings, done)
        except BaseException:
            try:
                self._record(record, status, done, now)
            except Exception as exc:  # the original error is the one to raise
                log.error(
                    "reconcile: %d write(s) made before a failure not recorded: %s",
                    len(done.written),
                    type(exc).__name__,
                )
            raise
        self._record(record, status, done, now)

    def _repair(
        self,
        record: StoredRecord,
        status: SyncStatus,
        gated: GateResult,
        version: str,
        findings: list[tuple[Finding, dict[str, Any], dict[str, Any] | None]],
        done: _Repairs,
    ) -> None:
        """Delete duplicates and write missing and drifted resources, each noted in ``done`` as
        soon as the server has done it (a server error leaves that finding open; anything else
        propagates)."""
        gate: GateResult | None = gated
        for finding, expected, ours in findings:
            try:
                if finding.problem == DUPLICATED:
                    deleted: list[str] = []
                    done.steps.append(deleted)
                    for name in finding.found:
                        if name == finding.resource:
                            continue
                        rtype, _, rid = name.partition("/")
                        with contextlib.suppress(NotFoundError):  # already gone: fine
                            self.client.delete(rtype, rid)
                        deleted.append(name)
                    finding.fixed = True
                    continue
                # Asked again just before the write when the consents changed since.
                gate = None if gate is None else self._gate_now(record, status, gate, version)
                if gate is None:
                    continue  # no longer maps: left open (the worker dead-letters such records)
                if gate.hold is not None:
                    finding.held = True  # the gate would hold it now: never written
                    finding.held_reason = gate.hold.code
                    done.held = done.held or gate.hold.code
                    continue
                replaced = _version(ours) if ours is not None else None
                result = self.client.update(self._stamped(expected, ours), if_match=replaced)
                done.steps.append(_Written(finding.problem, expected, result.version_id, replaced))
                finding.fixed = True
            except ServerError as exc:
                log.warning("reconcile fix failed: %s %s", type(exc).__name__, exc.status or "-")

    def _record(
        self, record: StoredRecord, status: SyncStatus, done: _Repairs, now: datetime
    ) -> None:
        """Store what ``done`` holds, all in one transaction: per deletion a ``reconcile-delete``
        event; per write a ``reconcile-write`` event and the Provenance of the version written,
        one ``disclose`` event naming every resource written, and the record's status listing
        those versions; a ``hold`` event when the gate held the record."""
        entries: list[AuditEntry] = []
        written: dict[tuple[str, str], str | None] = {}
        for step in done.steps:
            if isinstance(step, list):
                if step:
                    entries.append(
                        audit.two_way_event(
                            "reconcile-delete",
                            record.record_id,
                            record.patient,
                            now,
                            version=record.version,
                            resources=[
                                {"resourceType": n.partition("/")[0], "id": n.partition("/")[2]}
                                for n in step
                            ],
                            outcome_code="duplicate",
                        )
                    )
                continue
            rtype, rid = str(step.resource["resourceType"]), str(step.resource["id"])
            written[(rtype, rid)] = step.version_id
            entries.append(
                audit.two_way_event(
                    "reconcile-write",
                    record.record_id,
                    record.patient,
                    now,
                    version=record.version,
                    resources=[step.resource],
                    outcome_code=step.problem,
                )
            )
            entries += queued_for_push(
                self.settings,
                [
                    audit.write_provenance(
                        "reconcile-write",
                        SentResource(rtype, rid, step.version_id),
                        record.record_id,
                        now,
                        patient=record.patient,
                        version=record.version,
                        activity="CREATE" if step.problem == MISSING else "UPDATE",
                        revises=step.replaced,
                    )
                ],
            )
        if written:
            # What was written went to the clinic's server as a send does: a disclosure, audited
            # (and pushed with push_audit) as the worker's, beside the step's local event.
            entries += queued_for_push(
                self.settings,
                [
                    audit.disclosure_event(
                        record.record_id,
                        record.patient,
                        record.version,
                        [SentResource(t, i, v) for (t, i), v in written.items()],
                        now,
                        recipient=self.settings.recipients[0],
                        purpose=self.settings.purpose,
                        target_url=self.settings.fhir_base_url,
                        step="reconcile-write",
                    )
                ],
            )
        if done.held is not None:
            # A decision not to disclose, audited as the worker audits a hold: once per record
            # and run, under an id of its own; local only, as every held decision's event.
            entries.append(
                audit.hold_event(
                    record.record_id,
                    record.patient,
                    record.version,
                    done.held,
                    now,
                    recipient=self.settings.recipients[0],
                    purpose=self.settings.purpose,
                    step="reconcile-write",
                )
            )
        if written and status.item_id is not None:
            sent = [
                SentResource(
                    s.resource_type, s.id, written.get((s.resource_type, s.id), s.version_id)
                )
                for s in status.sent
            ]
            self.store.record_sent_versions(status.item_id, sent, audit=entries, at=now)
        else:
            self.store.add_audit(entries)  # no version written: the item stays as it is

    def _stamped(
        self, expected: Mapping[str, Any], ours: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """What the worker would send: ``meta.source`` ours; the tags the server copy carries
        (a deployment's marker) kept."""
        from fhir_alliance_service.sync.worker import SOURCE_URI

        meta = dict(expected.get("meta") or {})
        meta.setdefault("source", SOURCE_URI)
        tags = list(self.tags)
        kept = (ours or {}).get("meta", {}).get("tag") or []
        tags += [t for t in kept if t not in tags]
        if tags:
            meta["tag"] = tags
        return {**expected, "meta": meta}


@dataclass(frozen=True, slots=True)
class _Written:
    """A resource ``fix`` wrote on the server: why (``problem``), what, the version the server
    gave it and the one it replaced (None: it was missing)."""

    problem: str
    resource: dict[str, Any]
    version_id: str | None
    replaced: str | None


@dataclass(slots=True)
class _Repairs:
    """What one record's ``fix`` has done on the server so far, in order: per duplicated
    finding the ``Type/id`` deleted (a list), and each resource written; ``held``: the gate's
    reason code when it held the record."""

    steps: list[list[str] | _Written] = field(default_factory=list)
    held: str | None = None

    @property
    def written(self) -> list[_Written]:
        return [s for s in self.steps if isinstance(s, _Written)]


def _version(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) else None
