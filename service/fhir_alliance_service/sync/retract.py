"""Retraction: what happens to data already on the clinic's server once the patient's consents no
longer permit it (a revocation here, on the server, or an expiry).

Further pushes stop without this module: the gate runs before every send, so a queued record of a
patient whose share was revoked is held when it is claimed. This module deals with what was sent
before. For each patient whose consents changed (and for every patient on a full pass), each
record whose newest send is still on the server is put to the gate again, now; one that would be
held is retracted by ``settings.retraction_policy``:

* ``none``: left on the server; the record's status says ``kept``;
* ``entered-in-error``: each resource sent is read and written back with status
  ``entered-in-error`` (``If-Match`` its version, so a concurrent edit is not overwritten);
* ``delete``: each resource sent is deleted (a resource already gone counts as deleted).

Every step is an AuditEvent (``retract-kept``, ``retract-entered-in-error``, ``retract-delete``,
``retract-failed``) and the outcome is on the record's sync status (``retraction``). Each
resource version an entered-in-error mark writes also gets a Provenance
(``audit.write_provenance``), stored with the step's AuditEvent (``retract-failed`` too, for the
marks made before a failure) and, with ``push_audit``, queued for the server; a delete writes no
version and has its AuditEvent only. A retraction's record (the versions the server holds after
its writes, the outcome, the AuditEvent and Provenances) is one store write
(``Store.record_retraction``), made only while no other pass has recorded a retraction of the
send. Before its first write on the server the patient is noted in the store under a lease: a
process that dies, or loses the database, between a write and its record leaves a check due,
which finds the marks (entered-in-error, our content, at a version not recorded) and records them
with their Provenances. A failure is audited, and the patient is noted in the store
(``Store.note_retraction_checks``): the next pass of any worker sharing the store checks them
again, after a restart too, until a check succeeds (:meth:`Retractor.check_later`). Intake
notes the patient of every consent version it stores the same way, in the consent's own write
(``Store.put_records``): a revocation made through the API is checked by any worker, one that
runs no retraction passes (``worker --no-pull``, :meth:`Retractor.run_noted`) included. ``kept``
means kept under the policy in force then: once
the policy is ``entered-in-error`` or ``delete``, a kept record still not permitted is retracted by
it on the next pass (a worker starting up checks the patients who have one); an entered-in-error
or deleted record is never retracted again. Consent records are never retracted: the EHR needs the
revocation itself. Only consents decide: a draft note sent while ``push_draft_notes`` was on stays
on the server once the setting is off; and a record the gate would hold under the ``recipients``
and ``purpose`` now in force is left alone while the patient's consents still permit it under
earlier ones that a worker ran with (``gate_settings.earlier_audiences``): a clinic renaming its
EHR in the settings has not had the patient withdraw anything.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_alliance.client import FhirClient
from fhir_alliance.errors import NotFoundError, ServerError
from fhir_alliance_service import audit
from fhir_alliance_service.config import Settings
from fhir_alliance_service.metrics import RETRACTIONS
from fhir_alliance_service.store.interface import (
    RETRACTION_DELETED,
    RETRACTION_ENTERED_IN_ERROR,
    RETRACTION_KEPT,
    AuditEntry,
    OutboxItem,
    RetractionCheck,
    SentResource,
    Store,
    StoredRecord,
    SyncStatus,
)
from fhir_alliance_service.sync.audit_push import queued_for_push
from fhir_alliance_service.sync.gate import (
    FAMILY_CONSENT,
    copy_content,
    regate_stored,
    sendable_forms,
    server_version,
)
from fhir_alliance_service.sync.gate_settings import earlier_audiences
from fhir_alliance_service.sync.target import target_fhir_version

__all__ = ["RetractReport", "Retractor"]

log = logging.getLogger("fhir_alliance_service.sync.retract")

#: The record status values this module writes (``SyncStatus.retraction``).
KEPT = RETRACTION_KEPT
ENTERED_IN_ERROR = RETRACTION_ENTERED_IN_ERROR
DELETED = RETRACTION_DELETED

#: The consents stamp of a patient without consent records (``Store.consents_stamp``).
NO_CONSENTS = "0:0"


@dataclass(slots=True)
class RetractReport:
    patients: int = 0
    checked: int = 0
    kept: int = 0
    entered_in_error: int = 0
    deleted: int = 0
    failed: int = 0
    retracted_records: list[str] = field(default_factory=list)


class Retractor:
    """Retraction passes for one store and server. It remembers (per process) the consent stamp
    of each patient it checked, so a pass looks only at patients whose consents changed."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: FhirClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.clock = clock
        self._checked: dict[str, str] = {}
        #: The last claim of noted checks came back full: more are likely due (a backlog, e.g.
        #: after a bulk load of consents, each noting its patient), so the caller should run
        #: :meth:`run_noted` again soon rather than after its interval.
        self.more_noted = False
        # The gate as the consents alone answer it: a draft sent while ``push_draft_notes`` was
        # on is not retracted because the setting is off now (it says what to send next, not
        # what the patient permits), and a consent that no longer permits the draft still
        # retracts it (the draft rule, checked first, would hide that answer).
        self._gate_settings = replace(settings, push_draft_notes=True)

    def seed(self) -> None:
        """Take the patients' consent stamps as checked (a worker starting up). Under a policy that
        retracts, a patient with a record ``kept`` (under ``none``, in force when it was checked)
        is left unchecked: the first pass retracts it under the policy now in force."""
        stamps = self.store.consent_stamps()
        if self.settings.retraction_policy != "none":
            # One query for the patients with a kept send (not one per patient), then their keys.
            unchecked = {
                key
                for patient in self.store.patients_with_retraction(KEPT)
                for key in self.store.patient_keys(patient)
            }
            stamps = {p: stamp for p, stamp in stamps.items() if p not in unchecked}
        self._checked.update(stamps)

    def _to_check(self, retraction: str | None) -> bool:
        """Whether a send whose status says ``retraction`` is put to the gate again: one not
        retracted yet, and one ``kept`` (by the policy ``none`` in force then) once the policy
        retracts. Entered-in-error and deleted ones are done."""
        if retraction is None:
            return True
        return retraction == KEPT and self.settings.retraction_policy != "none"

    def run_pass(self, *, everyone: bool = False) -> RetractReport:
        """Check every patient whose consents changed since the last pass (all of them on the
        first pass, or with ``everyone``: expiries change no stamp), and the patients noted for a
        check in the store (:meth:`check_later`; claimed under a lease, so that workers sharing
        the store check each once). A patient whose check fails is noted for the next pass."""
        report = RetractReport()
        noted = self._claim_noted()
        stamps = self.store.consent_stamps()
        # A patient checked before and without consent records now (a pulled consent whose
        # patient was changed on the server moved to another patient): their stamp changed too.
        for patient in self._checked.keys() - stamps.keys():
            stamps[patient] = NO_CONSENTS
        checked: dict[str, bool] = {}  # patient -> checked without a failure, in this pass
        for patient, stamp in sorted(stamps.items()):
            if not everyone and self._checked.get(patient) == stamp:
                continue
            checked[patient] = self._check(patient, report)
            if report.failed == 0:
                self._checked[patient] = stamp
        self._check_noted(noted, checked, report)
        return report

    def run_noted(self) -> RetractReport:
        """Only the checks noted in the store (:meth:`check_later`, claimed under a lease as
        :meth:`run_pass` claims them), none of the patients whose consents changed: what a
        worker that runs no retraction passes (``worker --no-pull``) makes, so that a check owed
        (one that failed, or that a worker did not finish) never waits for a worker that
        pulls."""
        report = RetractReport()
        self._check_noted(self._claim_noted(), {}, report)
        return report

    def _claim_noted(self) -> list[RetractionCheck]:
        limit = self.settings.worker_batch_size
        claimed = self.store.claim_retraction_checks(
            limit=limit, lease_seconds=self.settings.lease_seconds, now=self.clock()
        )
        self.more_noted = len(claimed) >= limit
        return claimed

    def _check_noted(
        self, noted: list[RetractionCheck], checked: dict[str, bool], report: RetractReport
    ) -> None:
        """Check each patient of ``noted`` (unless ``checked`` in this pass already) and clear
        the note of each check that went without a failure."""
        for check in noted:
            ok = checked.get(check.patient)
            if ok is None:
                ok = checked[check.patient] = self._check(check.patient, report)
            if ok:  # a check that began after the note: done (a later note stays)
                self.store.clear_retraction_check(check)

    def _check(self, patient: str, report: RetractReport) -> bool:
        """:meth:`retract_patient`: whether it went without a failure. A patient whose check
        failed (audited), or raised, is noted for the next pass of any worker first."""
        failed = report.failed
        try:
            self.retract_patient(patient, report)
        except Exception:
            try:
                self.check_later(patient)
            except Exception as exc:  # the store is what failed: the error raised says so
                log.warning("retraction check not noted: %s", type(exc).__name__)
            raise
        if report.failed > failed:
            self.check_later(patient)
            return False
        return True

    def check_later(self, patient: str) -> None:
        """Note ``patient`` in the store for a retraction check by the next pass of any worker
        sharing it (this one restarted included), until one succeeds, whether or not their
        consents change again: a check that failed would otherwise wait for the full pass."""
        self.store.note_retraction_checks([patient])

    def retract_patient(self, patient: str, report: RetractReport | None = None) -> RetractReport:
        """Retract, by the policy, what was sent for ``patient`` and is no longer permitted.
        Before the first retraction that may write on the server, the patient is noted in the
        store under a lease (unless noted already: :meth:`_note_writes`), and the note is
        cleared once the check went without a failure: a process that dies, or loses the
        database, between a write on the server and its record leaves the check due for the
        next pass of any worker once the lease ends, which finds the writes and records them."""
        report = report or RetractReport()
        report.patients += 1
        failed = report.failed
        version: str | None = None  # the server's, asked once a record is to be checked
        earlier: list[Settings] | None = None  # read once a record is no longer permitted
        note: str | None = None
        for status in self.store.sent_items(patient):
            if status.item_id is None or not self._to_check(status.retraction):
                continue
            record = self.store.get_record(status.record_id, version=status.record_version)
            if record is None or record.family == FAMILY_CONSENT:
                continue
            if version is None:
                version = target_fhir_version(self.settings, self.store, self.client)
            report.checked += 1
            now = self.clock()
            gated = regate_stored(
                record,
                item_id=status.item_id,
                owner="retraction",
                settings=self._gate_settings,
                store=self.store,
                version=version,
                at=now,
            )
            if gated is None:
                continue  # a record that no longer maps: the worker dead-letters such records
            if gated.permitted:
                continue
            if earlier is None:
                earlier = self._earlier_gate_settings()
            if any(
                self._permitted_under(record, status.item_id, gate, version) for gate in earlier
            ):
                continue  # the settings changed, not the consents: what was sent stays
            if note is None and self.settings.retraction_policy != "none":
                note = self._note_writes(patient)
            self._retract(status, gated.item, version, report)
        if note is not None and report.failed == failed:
            self.store.clear_retraction_check(RetractionCheck(patient, note))
        return report

    def _note_writes(self, patient: str) -> str:
        """Note ``patient`` for a check under a lease before a retraction writes on the server
        (a note there already is kept: it is cleared by its own check, or due); the note's id,
        the one :meth:`retract_patient` clears (a kept note has another)."""
        lease_until = self.clock() + timedelta(seconds=self.settings.lease_seconds)
        return self.store.note_retraction_checks([patient], lease_until=lease_until, keep=True)

    def _permitted_under(
        self, record: StoredRecord, item_id: int, settings: Settings, version: str
    ) -> bool:
        gated = regate_stored(
            record,
            item_id=item_id,
            owner="retraction",
            settings=settings,
            store=self.store,
            version=version,
            at=self.clock(),
        )
        return gated is not None and gated.permitted

    def _earlier_gate_settings(self) -> list[Settings]:
        """The gate settings of the earlier recipients and purposes a worker ran with (not the
        ones in force now), to ask whether the consents still permit a record under them."""
        current = (tuple(sorted(set(self.settings.recipients))), self.settings.purpose)
        return [
            replace(self._gate_settings, recipients=recipients, purpose=purpose)
            for recipients, purpose in earlier_audiences(self.store)
            if (recipients, purpose) != current
        ]

    def _retract(
        self, status: SyncStatus, item: OutboxItem, version: str, report: RetractReport
    ) -> None:
        """Retract the send ``status`` (of the record ``item``, mapped to FHIR ``version``) by
        the policy, and record it in one store write (:meth:`Store.record_retraction`): the
        versions the server holds after our writes (a deleted resource none), the outcome, the
        step's AuditEvent and a Provenance of each version an entered-in-error mark wrote, or
        found written by a process that died before its record (:meth:`_mark_entered_in_error`).
        A failure records the marks made before it with the ``retract-failed``
        AuditEvent, the outcome unchanged; the next pass finds them made and writes, and
        attests, only the rest. Nothing is recorded when another pass recorded a retraction of
        the send meanwhile: that pass found our writes on the server and recorded them."""
        assert status.item_id is not None
        policy = self.settings.retraction_policy
        patient = item.patient
        now = self.clock()
        # What the server holds as each resource is done: the versions our writes made (the
        # If-Match of the record's next update, once the patient consents again), a deleted
        # one none (the next PUT creates it again). Kept even when a later resource fails.
        held = list(status.sent)
        written: list[AuditEntry] = []  # a Provenance of each version our marks wrote
        forms: list[Sequence[Mapping[str, Any]]] = []  # what the send carried, once asked

        def sent_forms() -> list[Sequence[Mapping[str, Any]]]:
            if not forms:
                forms.extend(sendable_forms(item, store=self.store, version=version))
            return forms

        try:
            if policy == "entered-in-error":
                for n, resource in enumerate(status.sent):
                    marked = self._mark_entered_in_error(resource, status.item_id, sent_forms)
                    if marked is None:
                        continue
                    held[n], replaced = marked
                    written.append(
                        audit.write_provenance(
                            "retract-entered-in-error",
                            held[n],
                            status.record_id,
                            now,
                            patient=patient,
                            version=status.record_version,
                            activity="UPDATE",
                            revises=replaced,
                        )
                    )
                outcome, step, listed = ENTERED_IN_ERROR, "retract-entered-in-error", held
            elif policy == "delete":
                for n, resource in enumerate(status.sent):
                    self._delete(resource)
                    held[n] = replace(resource, version_id=None)
                outcome, step, listed = DELETED, "retract-delete", list(status.sent)
            else:
                outcome, step, listed = KEPT, "retract-kept", list(status.sent)
        except ServerError as exc:
            log.warning(
                "retraction of item %d failed: %s %s",
                status.item_id,
                type(exc).__name__,
                exc.status or "-",
            )
            failure = audit.two_way_event(
                "retract-failed",
                status.record_id,
                patient,
                now,
                version=status.record_version,
                resources=status.sent,
                outcome_code=f"http-{exc.status}" if exc.status else "not-reached",
                failed=True,
            )
            entries = [failure, *queued_for_push(self.settings, written)]
            if self._record(status, status.retraction, held, entries, now):
                report.failed += 1
                RETRACTIONS.labels("failed").inc()
            return
        entry = audit.two_way_event(
            step,
            status.record_id,
            patient,
            now,
            version=status.record_version,
            resources=listed,
            outcome_code=f"policy-{policy}",
        )
        entries = [entry, *queued_for_push(self.settings, written)]
        if self._record(status, outcome, held, entries, now):
            RETRACTIONS.labels(outcome).inc()
            report.retracted_records.append(status.record_id)
            if outcome == ENTERED_IN_ERROR:
                report.entered_in_error += 1
            elif outcome == DELETED:
                report.deleted += 1
            else:
                report.kept += 1

    def _record(
        self,
        status: SyncStatus,
        outcome: str | None,
        held: list[SentResource],
        entries: list[AuditEntry],
        now: datetime,
    ) -> bool:
        """:meth:`Store.record_retraction` of ``status``'s send, as read: whether it was."""
        assert status.item_id is not None
        recorded = self.store.record_retraction(
            status.item_id,
            outcome,
            was=status.retraction,
            sent=held,
            audit=entries,
            at=now,
        )
        if not recorded:
            log.info("retraction of item %d: recorded by another pass meanwhile", status.item_id)
        return recorded

    def _mark_entered_in_error(
        self,
        resource: SentResource,
        item_id: int,
        forms: Callable[[], list[Sequence[Mapping[str, Any]]]],
    ) -> tuple[SentResource, str | None] | None:
        """Mark ``resource`` entered-in-error on the server: the version written and the one it
        replaced (when the server named it). A copy entered-in-error already, at a version the
        send does not list, that holds our content (a form the send carried, ``forms``, marked
        entered-in-error) is a mark of ours never recorded (its process died, or lost the
        database, before the store write): its version, and the one the send lists as the one
        it replaced. None when there is nothing to write or record: gone; marked and recorded;
        or marked by someone else (their content), left as found."""
        try:
            current = self.client.read(resource.resource_type, resource.id)
        except NotFoundError:
            return None  # already gone from the server: nothing left to mark
        version = server_version(current)
        if current.get("status") != "entered-in-error":
            written = self.client.update(
                {**current, "status": "entered-in-error"}, if_match=version
            )
            return SentResource(resource.resource_type, resource.id, written.version_id), version
        if version is None or version == resource.version_id:
            return None
        if not _marked_from(current, forms()):
            return None
        log.info("retraction of item %d: a mark of ours found unrecorded, recorded", item_id)
        return SentResource(resource.resource_type, resource.id, version), resource.version_id

    def _delete(self, resource: SentResource) -> None:
        # Already gone (404 or 410): deleted is what we wanted.
        with contextlib.suppress(NotFoundError):
            self.client.delete(resource.resource_type, resource.id)


def _marked_from(current: Mapping[str, Any], forms: Sequence[Sequence[Mapping[str, Any]]]) -> bool:
    """Whether ``current`` (a copy read from the server) holds the content of a resource of
    ``forms`` (what a send carried) marked entered-in-error: what our mark writes over our
    send, ``meta`` and ``text`` aside (``copy_content``)."""
    key = (current.get("resourceType"), current.get("id"))
    found = copy_content(current)
    return any(
        copy_content({**mine, "status": "entered-in-error"}) == found
        for form in forms
        for mine in form
        if (mine.get("resourceType"), mine.get("id")) == key
    )
