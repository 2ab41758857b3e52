"""The consent time pass: held records decided again once time alone changed what a consent says.

Held records are re-queued (``store.release_held``) when a patient's consent records change. A
consent whose ``period`` starts or ends, a provision's ``period`` (at any depth), or a status
change in its history dated later, changes no record when that moment comes, so nothing would
re-queue them: a rating held before a consent took effect would stay held for good, and so would
one held by a deny consent that has since ended.

Before its claims (at most every :data:`PASS_SECONDS`, and on its first claim), the worker looks,
for each patient with held records (``store.held_since``: the oldest hold), for such a boundary of
that patient's consents (read as the gate reads them, R4 and R5 alike: the stored domain form)
that passed since that hold; if there is one, the patient's held records are re-queued and the
gate decides them again, now. A record held again gets a new held time, after the boundary, so
one boundary re-queues a record once. What is decided is read from the store on each pass: a
restarted worker finds the same answer. (Each patient's boundaries are kept in memory under the
patient's consent stamp, only to spare re-reading consents that did not change; the gate's cache
of compiled engines is left alone.)

The worker gates a record at its claim and records the hold a moment later (within the lease), so
the held time may be a little after the moment the gate decided. A boundary is therefore taken as
passed since the hold when it lies in ``(held - lease_seconds, now - lease_seconds]``: a boundary
inside that gap is not missed, a record is re-queued once per boundary, and a boundary counts
``lease_seconds`` after it passes (a minute by default).

A consent that ends while records are queued needs nothing here: the gate decides at the claim.
Logs carry counts only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from fhir_alliance.errors import FhirAllianceError
from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from fhir_alliance.model.consent import ConsentRecord, Period, Provision
from fhir_alliance_service.config import Settings
from fhir_alliance_service.store.interface import Store, StoredRecord

__all__ = ["PASS_SECONDS", "ConsentTimePass", "consent_boundaries"]

log = logging.getLogger("fhir_alliance_service.sync.consent_times")

#: How often the worker runs the pass (it also runs on a worker's first claim).
PASS_SECONDS = 60.0


def _period_ends(period: Period | None) -> Iterator[datetime]:
    if period is not None:
        yield from (t for t in (period.start, period.end) if t is not None)


def _provision_boundaries(provision: Provision) -> Iterator[datetime]:
    yield from _period_ends(provision.period)
    for nested in provision.provisions:
        yield from _provision_boundaries(nested)


def consent_boundaries(record: ConsentRecord) -> set[datetime]:
    """The instants at which time alone changes what ``record`` says: its period's start and end,
    each provision's period's (at any depth), and each status change in its history. Not the
    provisions' ``data_period``: that is about the data's dates, which time does not change."""
    instants = [
        *_period_ends(record.period),
        *_provision_boundaries(record.provision),
        *(change.at for change in record.history),
    ]
    return {t for t in instants if t.tzinfo is not None}


def _stored_boundaries(rows: list[StoredRecord]) -> frozenset[datetime]:
    """The boundaries of the stored consents that can be read (one that cannot holds the
    patient's records whatever the time: the gate's rule)."""
    found: set[datetime] = set()
    for row in rows:
        try:
            record = CONSENT_MAPPER.load(row.body)
        except (FhirAllianceError, ValueError, TypeError):
            continue
        if isinstance(record, ConsentRecord):
            found |= consent_boundaries(record)
    return frozenset(found)


class ConsentTimePass:
    """The pass for one worker: :meth:`run_if_due` before each claim, :meth:`run` to run it now."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        every_seconds: float = PASS_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.every = timedelta(seconds=every_seconds)
        self._next: datetime | None = None
        #: patient key -> (its consent stamp, its consents' boundaries)
        self._boundaries: dict[str, tuple[str, frozenset[datetime]]] = {}

    def run_if_due(self) -> int:
        """Run the pass if it is due (the first call always is); how many items it re-queued.
        A failure is logged, never raised: the claims go on (the next pass tries again)."""
        now = self.clock()
        if self._next is not None and now < self._next:
            return 0
        self._next = now + self.every
        try:
            return self.run(now)
        except Exception as exc:  # a consent time pass never stops the pushes
            log.error("consent time pass failed: %s", type(exc).__name__)
            return 0

    def run(self, now: datetime | None = None) -> int:
        """Re-queue the held items of every patient a consent boundary passed for since their
        oldest hold (see the module docstring); how many items."""
        now = self.clock() if now is None else now
        margin = timedelta(seconds=self.settings.lease_seconds)
        until = now - margin
        released = patients = 0
        held_since = self.store.held_since()
        self._boundaries = {p: b for p, b in self._boundaries.items() if p in held_since}
        for patient, held in sorted(held_since.items()):
            since = held - margin
            if since >= until:
                continue
            if any(since < t <= until for t in self._boundaries_of(patient)):
                released += self.store.release_held(patient, at=now)
                patients += 1
        if released:
            log.info(
                "consent time pass: %d held item(s) of %d patient(s) re-queued", released, patients
            )
        return released

    def _boundaries_of(self, patient: str) -> frozenset[datetime]:
        """The boundaries of the consents under every key of ``patient`` (read again only once
        the patient's consent stamp changed)."""
        keys, stamp = self.store.patient_consents_stamp(patient)
        known = self._boundaries.get(patient)
        if known is not None and known[0] == stamp:
            return known[1]
        rows = [row for key in keys for row in self.store.consents_for_patient(key)]
        boundaries = _stored_boundaries(rows)
        self._boundaries[patient] = (stamp, boundaries)
        return boundaries
