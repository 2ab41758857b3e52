"""Pull: read the Consents (and, optionally, Observations) of our patients from the clinic's FHIR
server, merge them under the source-of-truth rule, and re-run the consent gate for every patient
whose consents changed. See docs/two-way-sync.md.

* **Which patients**: every patient key the store knows, named on the server as it is here
  (``Patient/<id>``) or, for a patient known here only by identifier, as the server's
  ``Patient?identifier=`` answer says (one match only; the link and an alias are stored).
* **Incremental**: ``[type]?patient=…&_lastUpdated=ge<newest seen - overlap>``,
  page by page (memory stays flat: one page at a time, one store lookup per page); every resource
  is compared with the copy seen before (``pulled_resources``, ``store/ordering.py``): the same
  version is a duplicate, an older copy is skipped as stale (never merged over a newer one), and
  a foreign Consent whose order is unsure is merged only if it permits nothing (one that may
  permit is held as unreadable until a copy of sure order comes). A patient seen
  for the first time is read in full. A bad answer (``PASS_ENDING``) ends the pass with
  ``PullReport.error``.
* **Deletions**: where the server's CapabilityStatement offers ``history-type`` for the type
  (and ``pull_deletions`` is ``auto``), each pass reads ``[type]/_history?_since=<newest history
  stamp seen - overlap>`` page by page (one page in memory, one store lookup per page): a DELETE
  entry (or a 410) of a resource we track, not already deleted and not followed by a newer
  version we have read, is a deletion. The full listing then runs only every
  ``pull_safety_listing_seconds`` (a safety net for history a server trims or garbles), and at
  once in a pass whose history answer cannot be read (history is then off for this puller).
  Each listing first notes the newest history stamp (``_history?_count=1``): history is read
  from there on, never from the start (without a stamp the pass lists again).
  Elsewhere every ``pull_full_listing_seconds`` the pull lists everything of our patients; a
  resource seen before and missing from a complete listing was deleted.
* **Source of truth**: a Consent written by someone else (foreign) belongs to the server: it is
  mapped with the library (IHE PCF / LEAP shapes included) and stored as a *remote-origin* consent
  record (never pushed back) that joins the patient's engine, deny-overrides. One that cannot be
  read is stored as unreadable, which holds the patient's records (never "no consent"); so is one
  with the business identifier (compared as URIs) of another foreign Consent of the patient, or
  of a consent of ours, that says otherwise (two versions of one consent: ``SAME_IDENTIFIER``),
  read again until the server holds one version. A copy of ours that says what ours says is not
  read as a consent (``OURS_COPY_STATE``): ours decides. Deleted on the server, it is revoked
  here. A Consent **we** pushed belongs to us: our own versions are skipped; someone else's edit that withdraws it (status no longer active, for a draft no longer
  a draft either, or a deletion) is adopted at once as a local revocation (so the next push carries it); an edit that undoes our
  withdrawal (a consent revoked, expired or withdrawn here set back to active, draft or proposed
  there) is never adopted: our version is queued to be written back at once, ``If-Match`` the
  server's version (a conflict, ``withdrawal-reasserted``); any other edit (of an active consent
  left active, of a draft left a draft) is a conflict, counted and noted on the record
  (``remote-edited``): our version is queued again, ``If-Match`` our last written version, so
  its 412 is settled by the conflict policy (overwrite, keep-remote, flag).
* **Observations** (``pull_observations``) are kept read-only in ``pulled_resources``; never
  pushed back.

Logs carry counts only: never resource content, patient keys or identifiers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_alliance.client import FhirClient
from fhir_alliance.client.bundles import search_token
from fhir_alliance.consent import ActorDirectory
from fhir_alliance.consent.identity import consent_identifier, says_the_same
from fhir_alliance.errors import (
    FhirAllianceError,
    InputError,
    InvalidResponseError,
    LimitExceededError,
    NotFoundError,
    ServerError,
    UnprocessableError,
    UnsafeLinkError,
)
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from fhir_alliance.mapping.consent import from_consent
from fhir_alliance.model.common import Identifier
from fhir_alliance.model.consent import (
    REVOCABLE_STATUSES,
    ConsentRecord,
    ConsentRevocation,
    ConsentStatus,
    apply_revocation,
)
from fhir_alliance.terminology import IDENTIFIER_SYSTEM_ALIASES
from fhir_alliance_service import audit
from fhir_alliance_service.config import Settings
from fhir_alliance_service.metrics import CONFLICTS, PULLED
from fhir_alliance_service.store.interface import (
    AuditEntry,
    IntakeResult,
    NewRecord,
    PullCursor,
    PulledResource,
    PutOutcome,
    Store,
    StoredRecord,
)
from fhir_alliance_service.store.ordering import RemoteOrder, parse_instant, remote_order
from fhir_alliance_service.sync.history import HistoryEntry, history_entries
from fhir_alliance_service.usecases.consents import (
    PULLED_DELETED_MARK,
    PULLED_GONE_STATES,
    canonical_patient_key,
)
from fhir_alliance_service.usecases.intake import content_hash, intake_records

__all__ = [
    "ORIGIN_FOREIGN",
    "ORIGIN_OURS",
    "PASS_ENDING",
    "PullReport",
    "Puller",
    "TwoWaySync",
    "foreign_record_id",
    "withdraw_consent_here",
]

log = logging.getLogger("fhir_alliance_service.sync.pull")

ORIGIN_OURS = "ours"
ORIGIN_FOREIGN = "foreign"
FAMILY_CONSENT = "consent"

#: Patients named in one search (``patient=a,b,…``): URLs of a few KB, well under common limits
#: (8 KB and more); fewer searches matter on servers that scan per search (the test server).
PATIENTS_PER_QUERY = 100
#: Resources per page asked for (the server may give fewer).
PAGE_SIZE = 500
#: Pages one search may take before the client refuses (a bound, not a target).
MAX_PAGES = 100_000
#: How deletions were looked for, per type, in :attr:`PullReport.deletions`.
DELETIONS_HISTORY = "history"
DELETIONS_LISTING = "listing"
DELETIONS_NONE = "none"  # an incremental pass on a server without usable history
#: The history answers that mean "this server's history is not usable" (the pass lists instead):
#: not a history Bundle, refused (400/422), not there (404), a link outside the base, too long.
HISTORY_UNUSABLE = (
    InvalidResponseError,
    UnprocessableError,
    NotFoundError,
    UnsafeLinkError,
    LimitExceededError,
)
#: What a FHIR server's answers can raise that ends a pull pass (``PullReport.error`` names the
#: type; the patients changed so far are re-gated): the server said no or could not be read
#: (``ServerError``), a link off the server (``UnsafeLinkError``), an answer or a search over
#: the client's bounds (``LimitExceededError``).
PASS_ENDING = (ServerError, UnsafeLinkError, LimitExceededError)
#: Where the newest ``_history`` stamp seen is kept: a pull cursor row of its own.
HISTORY_CURSOR = "{}/_history"
#: Why a foreign Consent that may permit is held as unreadable although it reads: whether it is
#: newer than the copy seen before cannot be told (``store/ordering.py``).
ORDER_UNSURE = "Consent.meta (cannot tell whether this copy is newer than the one read before)"
#: Why a foreign Consent that reads is held as unreadable: another Consent of its patient on the
#: server has its business identifier (compared as URIs) and says otherwise. Two versions of one
#: consent (an older, active one beside the newer, revoked one); which counts is not for the pull
#: to guess, and reading both lets the older one's permit answer.
SAME_IDENTIFIER = (
    "Consent.identifier (another Consent of the patient has this identifier and says otherwise)"
)
#: The state of the pulled row of a Consent held for :data:`SAME_IDENTIFIER`: read again, it is
#: merged again (not skipped as a duplicate), so the listing after the server settled on one
#: version releases it.
SAME_IDENTIFIER_STATE = "same-identifier"
#: The state of the pulled row of a foreign Consent with the business identifier of one of ours
#: that says what ours says (a copy of it under another resource id): not read as a consent of
#: its own (ours decides), so that it cannot outlive a revocation of ours. One that says
#: otherwise is held for :data:`SAME_IDENTIFIER`.
OURS_COPY_STATE = "copy-of-ours"
#: States of a pulled row whose Consent does not stand on the server as a consent of its patient
#: (deleted, moved to a patient not ours, a copy of ours); the consent loader reads them too.
_GONE_STATES = PULLED_GONE_STATES
assert OURS_COPY_STATE in _GONE_STATES
#: Unreadable consents are stored with this body: loading it fails, so the gate holds.
UNREADABLE_KIND = "consent"
#: The start of an unreadable consent's stored identifier (its record id follows).
UNREADABLE_IDENTIFIER = "urn:fhir-alliance:unreadable|"
#: In the body of a pulled consent that could not be read and was then deleted on the server:
#: the consent loader (``usecases/consents.py``) skips it.
DELETED_MARK = PULLED_DELETED_MARK
#: Why a foreign Consent was ignored (``PullReport.ignored_why``): its patient is a reference on
#: another server base; a patient none of ours (by reference, identifier or alias); no patient
#: could be read from it at all (none given, or not a ``Patient/<id>`` reference or identifier).
IGNORED_OTHER_SERVER = "other server"
IGNORED_NOT_OURS = "not our patient"
IGNORED_NO_PATIENT = "no patient"
IGNORED_WHY = (IGNORED_OTHER_SERVER, IGNORED_NOT_OURS, IGNORED_NO_PATIENT)
#: The conflict of a consent of ours withdrawn here that someone put back in force on the server:
#: our version is written back (the record's ``conflict``, the metric's and the audit's outcome).
REASSERTED = "withdrawal-reasserted"
#: The conflict of a consent of ours someone else edited on the server and left active (or left a
#: draft, for a draft of ours): our version is queued again and the conflict policy settles it at its send (the record's
#: ``conflict`` until then).
REMOTE_EDITED = "remote-edited"
#: Server statuses (R4 and R5) of a Consent not in force yet (what a draft of ours is written as,
#: and R4's ``proposed``, which the library reads as a draft too).
_NOT_YET_IN_FORCE = frozenset({"draft", "proposed"})
#: Server statuses (R4 and R5) under which a Consent is, or may come, in force.
_MAY_BE_IN_FORCE = _NOT_YET_IN_FORCE | {"active"}


def foreign_record_id(server: str, resource_id_on_server: str) -> str:
    """The local record id of a foreign Consent: stable per server and resource id, never equal
    to the id of a record of ours."""
    return resource_id(Identifier(f"{server}/Consent", resource_id_on_server), "/pulled")


@dataclass(slots=True)
class PullReport:
    """What one pull did, by resource: read, skipped as already seen, merged, unreadable,
    adopted withdrawals of ours, conflicts, deletions; and the patients whose consents changed.
    ``ignored_why`` counts the foreign Consents ignored (``ignored``) by why (:data:`IGNORED_WHY`).
    ``deletions`` says, per resource type, how deletions were looked for (``history``,
    ``listing`` or ``none``); ``history_pages``/``history_entries`` what ``_history`` gave."""

    read: int = 0
    duplicates: int = 0
    merged: int = 0
    unreadable: int = 0
    withdrawn: int = 0
    conflicts: int = 0
    deleted: int = 0
    observations: int = 0
    ignored: int = 0
    ignored_why: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    full_listing: bool = False
    deletions: dict[str, str] = field(default_factory=dict)
    history_pages: int = 0
    history_entries: int = 0
    history_failed: str | None = None
    released: int = 0
    #: Copies not merged because the copy seen before is newer (an older version after a newer
    #: one: a lagging replica, a cache), or because whether they are newer is unsure and they
    #: would keep or put a consent in force (see ``store/ordering.py``).
    stale: int = 0
    #: Consents of ours withdrawn here that someone put back in force on the server, queued to be
    #: written back (counted in ``conflicts`` too).
    reasserted: int = 0
    #: Foreign consents pulled under another base URL, which no pull reads any more, that may
    #: permit: revoked here (``Puller._withdraw_pulled_elsewhere``).
    withdrawn_elsewhere: int = 0
    changed_patients: set[str] = field(default_factory=set)
    error: str | None = None


def _meta(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = resource.get("meta")
    return meta if isinstance(meta, Mapping) else {}


def _search_instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Puller:
    """One pull pass over the server ``client`` talks to (``pull()``); the worker loop runs it
    every ``settings.pull_interval_seconds``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: FhirClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.server = client.base.url
        #: References read as the consent engine reads them, on our server's base.
        self._directory = ActorDirectory(base=self.server)
        self.clock = clock
        self.page_size = page_size
        self._links: list[tuple[str, str]] = []  # patient links found, saved after their read
        self._history_off: set[str] = set()  # types whose _history answer could not be read
        #: Whether the consents pulled from another base URL were withdrawn (once per puller,
        #: after its first pass without error: ``_withdraw_pulled_elsewhere``).
        self._elsewhere_checked = False
        #: Patients whose foreign consents were deleted or moved away in this pass: their
        #: consents held for :data:`SAME_IDENTIFIER` are read again (:meth:`_recheck_versions`).
        self._recheck: set[str] = set()
        #: Consents held for :data:`SAME_IDENTIFIER` by this pass (compared with what it read).
        self._held_now: set[str] = set()
        #: Patients a new version of whose consent of ours this pass read (our own write): their
        #: consents held for :data:`SAME_IDENTIFIER` are read again, a copy of ours may agree now.
        self._ours_read: set[str] = set()

    # ------------------------------------------------------------------ patients

    def patient_map(self) -> tuple[dict[str, str], set[str]]:
        """Remote reference → local patient key, and the remote references seen for the first
        time (read in full, whatever the cursor says). New links are stored by
        :meth:`_save_links` once their first read has succeeded (a failed pass reads them in
        full again)."""
        linked = self.store.remote_patients(self.server)
        new: set[str] = set()
        self._links = []
        for key in self.store.patients():
            if key in linked:
                continue
            remote = key if "|" not in key else self._resolve(key)
            if remote is None:
                continue
            self._links.append((key, remote))
            linked[key] = remote
            new.add(remote)
        # Filed under the key as linked: the patient's engine reads the consents of every key of
        # the patient (aliases included), so no lookup of the canonical key is needed here.
        by_remote: dict[str, str] = {}
        for key, remote in sorted(linked.items()):
            by_remote.setdefault(remote, key)
        return by_remote, new

    def _save_links(self) -> None:
        now = self.clock()
        for key, remote in self._links:
            self.store.set_remote_patient(self.server, key, remote, at=now)
            if remote != key:
                try:  # the server's reference names the same patient as the identifier here
                    self.store.add_patient_alias(key, remote, at=now)
                except ValueError:
                    log.warning("patient link not aliased: the reference names another patient")
        self._links = []

    def _resolve(self, token: str) -> str | None:
        """The server's ``Patient/<id>`` of the patient key ``token`` (``system|value``, stored
        in canonical form): one search for the identifier under the canonical system and the
        other systems that are the same one (the OIDs of the US NPI and SSN), so that a server
        keeping the OID spelling still finds the patient; None unless exactly one matches."""
        system, _, value = token.partition("|")
        others = (alias for alias, same in IDENTIFIER_SYSTEM_ALIASES.items() if same == system)
        spellings = [system, *sorted(others)]
        try:
            found = list(
                self.client.search(
                    "Patient",
                    {
                        "identifier": ",".join(search_token(s, value) for s in spellings),
                        "_count": "2",
                    },
                    max_pages=1,
                )
            )
        except PASS_ENDING as exc:
            status = getattr(exc, "status", None)
            log.info("patient lookup failed: %s %s", type(exc).__name__, status or "-")
            return None
        if len(found) != 1 or not isinstance(found[0].get("id"), str):
            return None  # none or several: which one is meant is unknown, so none
        return f"Patient/{found[0]['id']}"

    # ------------------------------------------------------------------ the pass

    def pull(self, *, full_listing: bool | None = None) -> PullReport:
        """Read what changed, merge it, re-run the gate for changed patients. ``full_listing``
        forces (True) or skips (False) the listing that notices deletions; None: when due."""
        report = PullReport()
        # A pass that ended early leaves its own marks (its deletions stay noted).
        self._held_now, self._ours_read = set(), set()
        try:
            patients, new = self.patient_map()
            types = ["Consent"] + (["Observation"] if self.settings.pull_observations else [])
            for resource_type in types:
                self._pull_type(resource_type, patients, new, full_listing, report)
            self._save_links()
        except PASS_ENDING as exc:
            status = getattr(exc, "status", None)  # a ServerError's; never the server's text
            report.error = f"{type(exc).__name__} {status or ''}".strip()
            log.warning("pull stopped: %s", report.error)
        if report.error is None and not self._elsewhere_checked:
            self._withdraw_pulled_elsewhere(report)
            self._elsewhere_checked = True
        now = self.clock()
        for patient in sorted(report.changed_patients):
            report.released += self.store.release_held(patient, at=now)
        log.info(
            "pull done: read=%d duplicates=%d merged=%d unreadable=%d withdrawn=%d "
            "conflicts=%d deleted=%d observations=%d ignored=%d pages=%d released=%d",
            report.read,
            report.duplicates,
            report.merged,
            report.unreadable,
            report.withdrawn,
            report.conflicts,
            report.deleted,
            report.observations,
            report.ignored,
            report.pages,
            report.released,
        )
        return report

    def _withdraw_pulled_elsewhere(self, report: PullReport) -> None:
        """Foreign consents pulled under another base URL (``FHIR_BASE_URL`` changed since: the
        same server under another name, or another server) are read by no pull any more: a
        revocation or deletion there would never reach them. Those that may permit are revoked
        here (audited, outcome ``other-server``), so a stale permit cannot keep releasing data;
        the consents of the server now configured were all read by this pass without error, so
        what they permit goes on. Denies, withdrawn and unreadable ones stay as they are: they
        only narrow sharing."""
        now = self.clock()
        by_origin: dict[str, list[NewRecord]] = {}
        for origin, stored in self.store.pulled_consents_elsewhere(self.server):
            if not _may_permit(stored.body):
                continue
            copy = _revoked_copy(self.store, stored.record_id, now)
            if copy is not None:
                by_origin.setdefault(origin, []).append(copy)
        for origin, withdrawn in sorted(by_origin.items()):
            entries = [
                audit.two_way_event(
                    "pull", new.record_id, new.patient, now, outcome_code="other-server"
                )
                for new in withdrawn
            ]
            results = self.store.put_remote_records(withdrawn, origin=origin, audit=entries, at=now)
            for new, result in zip(withdrawn, results, strict=True):
                if result.outcome is not PutOutcome.UNCHANGED:
                    report.withdrawn_elsewhere += 1
                    report.changed_patients.add(new.patient)
        if report.withdrawn_elsewhere:
            log.warning(
                "consents pulled under another FHIR base URL withdrawn: %d",
                report.withdrawn_elsewhere,
            )

    def merge(self, resource_type: str, resources: Sequence[dict[str, Any]]) -> PullReport:
        """Merge resources read outside a pull pass (a subscription notification's focus) as a
        pull would, and re-run the gate for the patients whose consents changed."""
        return self.merge_pages(resource_type, [list(resources)])

    def merge_pages(self, resource_type: str, pages: Iterable[list[dict[str, Any]]]) -> PullReport:
        """:meth:`merge` of resources that come a page at a time (read as they are merged: one
        page in memory), the patients looked up once."""
        report = PullReport()
        self._held_now, self._ours_read = set(), set()
        patients, _ = self.patient_map()
        # New patient links are left to the next pull, which reads those patients in full.
        for page in pages:
            self._merge_page(resource_type, page, patients, None, report)
        if resource_type == "Consent":
            self._recheck_versions(patients, report)
        now = self.clock()
        for patient in sorted(report.changed_patients):
            report.released += self.store.release_held(patient, at=now)
        return report

    def _pull_type(
        self,
        resource_type: str,
        patients: Mapping[str, str],
        new: set[str],
        full_listing: bool | None,
        report: PullReport,
    ) -> None:
        now = self.clock()
        cursor = self.store.get_pull_cursor(self.server, resource_type) or PullCursor(
            self.server, resource_type
        )
        history = self._history_offered(resource_type)
        every = (
            self.settings.pull_safety_listing_seconds
            if history
            else self.settings.pull_full_listing_seconds
        )
        due = (
            cursor.full_listing_at is None
            or (now - cursor.full_listing_at).total_seconds() >= every
        )
        full = due if full_listing is None else full_listing
        history_key = HISTORY_CURSOR.format(resource_type)
        history_at: str | None = None
        if history:
            saved = self.store.get_pull_cursor(self.server, history_key)
            history_at = saved.last_updated if saved is not None else None
            if history_at is None and full_listing is None:
                full = True  # history needs a start (else all of it is read): the listing's
            try:
                if full:  # the listing notices what came before; history takes over after it
                    history_at = self._history_head(resource_type) or history_at
                elif history_at is not None:
                    history_at = self._history_deletions(resource_type, history_at, report)
                    report.deletions[resource_type] = DELETIONS_HISTORY
            except HISTORY_UNUSABLE as exc:
                self._history_off.add(resource_type)
                report.history_failed = type(exc).__name__
                log.warning(
                    "%s history unusable (%s %s): listing instead",
                    resource_type,
                    type(exc).__name__,
                    getattr(exc, "status", None) or "-",
                )
                history, full = False, True
        if full:
            report.deletions[resource_type] = DELETIONS_LISTING
        report.deletions.setdefault(resource_type, DELETIONS_NONE)
        generation = cursor.generation + 1 if full else cursor.generation
        report.full_listing = report.full_listing or full
        since = None
        last_seen = parse_instant(cursor.last_updated)
        if not full and last_seen is not None:
            since = last_seen - timedelta(seconds=self.settings.pull_overlap_seconds)
        newest = cursor.last_updated
        newest_at = last_seen
        remotes = sorted(patients)
        groups: list[tuple[list[str], datetime | None]] = [(remotes, since)]
        if since is not None and new:
            groups = [
                ([r for r in remotes if r not in new], since),
                (sorted(new & set(remotes)), None),
            ]
        for refs, after in groups:
            for page in self._pages(resource_type, refs, after):
                report.pages += 1
                self._merge_page(
                    resource_type, page, patients, generation if full else None, report
                )
                for resource in page:
                    stamp = _meta(resource).get("lastUpdated")
                    at = parse_instant(stamp if isinstance(stamp, str) else None)
                    if at is not None and (newest_at is None or at > newest_at):
                        newest_at, newest = at, str(stamp)
        if full:
            self._deletions(resource_type, generation, report)
        if resource_type == "Consent":
            self._recheck_versions(patients, report)
        saved_at = self.clock()
        if history and history_at is not None:
            cursor_row = PullCursor(self.server, history_key, last_updated=history_at)
            self.store.save_pull_cursor(cursor_row, at=saved_at)
        self.store.save_pull_cursor(
            PullCursor(
                self.server,
                resource_type,
                last_updated=newest,
                generation=generation,
                full_listing_at=now if full else cursor.full_listing_at,
            ),
            at=saved_at,
        )

    # ------------------------------------------------------------------ _history

    def _history_offered(self, resource_type: str) -> bool:
        """Read deletions from ``[type]/_history``: allowed by ``pull_deletions``, offered by the
        server's CapabilityStatement (``history-type``), and not found unusable by this puller."""
        if self.settings.pull_deletions != "auto" or resource_type in self._history_off:
            return False
        try:
            capabilities = self.client.capabilities()
        except ServerError as exc:
            log.info("no CapabilityStatement (%s): deletions by listing", type(exc).__name__)
            return False
        return capabilities.resource(resource_type).supports("history-type")

    def _history_head(self, resource_type: str) -> str | None:
        """The newest stamp in ``[type]/_history`` (its first page of one entry: history is
        newest first), taken before a full listing: where the next pass's history read starts.
        A server that put the oldest first only makes that read longer, never miss anything."""
        pages = self.client.search_pages(
            f"{resource_type}/_history", [("_count", "1")], max_pages=1
        )
        first = next(pages, None)  # the next page is never asked for
        newest = (
            _newest(history_entries(first, resource_type, self.client.base))
            if first is not None
            else None
        )
        return newest[1] if newest is not None else None

    def _history_deletions(
        self, resource_type: str, history_at: str | None, report: PullReport
    ) -> str | None:
        """Read ``[type]/_history`` since ``history_at`` (minus the overlap), one page at a time,
        and apply the deletions of resources we track; the newest stamp seen (the next start)."""
        params = [("_count", str(self.page_size))]
        start = parse_instant(history_at)
        if start is not None:
            since = start - timedelta(seconds=self.settings.pull_overlap_seconds)
            params.append(("_since", _search_instant(since)))
        newest_at = start
        pages = self.client.search_pages(f"{resource_type}/_history", params, max_pages=MAX_PAGES)
        for bundle in pages:
            report.history_pages += 1
            entries = list(history_entries(bundle, resource_type, self.client.base))
            report.history_entries += len(entries)
            page_newest = _newest(entries)
            if page_newest is not None and (newest_at is None or page_newest[0] > newest_at):
                newest_at, history_at = page_newest
            # Per id, the newest entry of the page says what the resource is now (on equal
            # stamps the first: history is newest first).
            latest: dict[str, tuple[datetime | None, bool, str | None, str | None]] = {}
            for entry in entries:
                at = parse_instant(entry.stamp)
                known = latest.get(entry.resource_id)
                if known is None or (at is not None and (known[0] is None or at > known[0])):
                    latest[entry.resource_id] = (at, entry.deleted, entry.version_id, entry.stamp)
            deleted = {rid: facts for rid, facts in latest.items() if facts[1]}
            if not deleted:
                continue
            tracked = self.store.pulled(self.server, resource_type, sorted(deleted))
            gone: list[PulledResource] = []
            for rid, row in tracked.items():
                at, _, version, stamp = deleted[rid]
                if row.state == "deleted":
                    continue  # seen before (the overlap, a repeated page): deduplicated
                seen_at = parse_instant(row.last_updated)
                if at is not None and seen_at is not None and seen_at > at:
                    continue  # a version written after the deletion was read: re-created
                gone.append(
                    _replace_state(
                        row,
                        "deleted",
                        row.generation,
                        version_id=version or row.version_id,
                        last_updated=stamp or row.last_updated,
                    )
                )
            if gone:
                self._delete(resource_type, gone, report)
        return history_at

    def _pages(
        self, resource_type: str, refs: Sequence[str], since: datetime | None
    ) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(refs), PATIENTS_PER_QUERY):
            chunk = refs[start : start + PATIENTS_PER_QUERY]
            # No _sort: the cursor is the newest stamp of the whole pass, saved at its end, so
            # order does not matter (and the test server refuses _sort=_lastUpdated when
            # nothing matches).
            params: list[tuple[str, str]] = [
                ("patient", ",".join(chunk)),
                ("_count", str(self.page_size)),
            ]
            if since is not None:
                params.append(("_lastUpdated", f"ge{_search_instant(since)}"))
            for bundle in self.client.search_pages(resource_type, params, max_pages=MAX_PAGES):
                entries = bundle.get("entry")
                resources = [
                    e["resource"]
                    for e in (entries if isinstance(entries, list) else [])
                    if isinstance(e, Mapping)
                    and isinstance(e.get("resource"), dict)
                    and e["resource"].get("resourceType") == resource_type
                    and isinstance(e["resource"].get("id"), str)
                    and (e.get("search") or {}).get("mode", "match") == "match"
                ]
                yield resources

    # ------------------------------------------------------------------ merge

    def _patient_of(
        self, resource: Mapping[str, Any], patients: Mapping[str, str]
    ) -> tuple[str | None, str]:
        """The local patient key ``resource`` is about, or None and why not (one of
        :data:`IGNORED_WHY`). The reference is read as the consent engine's directory reads it
        (:meth:`ActorDirectory.normalize`): a ``/_history/<version>`` is dropped and an absolute
        reference on our server's base is read as the relative one. A reference or identifier
        the store knows as an alias of one of our patients names that patient."""
        subject = resource.get("patient") or resource.get("subject")
        if not isinstance(subject, Mapping):
            return None, IGNORED_NO_PATIENT
        reference = subject.get("reference")
        if isinstance(reference, str) and reference:
            normal = self._directory.normalize(reference)
            found = patients.get(normal)
            if found is not None:
                return found, ""
            if "://" in normal:
                return None, IGNORED_OTHER_SERVER  # absolute, and not on our base
            kind, slash, rid = normal.partition("/")
            if kind != "Patient" or not slash or not rid or "/" in rid:
                return None, IGNORED_NO_PATIENT  # not a Patient/<id> reference
            return self._known_alias(normal, patients)
        if reference is not None:
            return None, IGNORED_NO_PATIENT
        identifier = subject.get("identifier")
        if not isinstance(identifier, Mapping):
            return None, IGNORED_NO_PATIENT
        system, value = identifier.get("system"), identifier.get("value")
        if not (isinstance(system, str) and system and isinstance(value, str) and value):
            return None, IGNORED_NO_PATIENT
        # Filed under the canonical key: any spelling of the identifier names the patient.
        return self._known_alias(canonical_patient_key(f"{system}|{value}"), patients)

    def _as_read(self, resource: Mapping[str, Any], patient: str) -> Mapping[str, Any]:
        """``resource`` with its patient reference written as the patient is known here, so
        that the mapped consent names the patient as the consent engine knows it (the engine's
        directory is not given our base, and links references to identifiers, not to other
        references): ``patient`` itself when that key is a reference, else the reference as
        :meth:`_patient_of` read it (no ``_history``, relative when on our base). A patient
        named by identifier is left as written."""
        field_name = "patient" if resource.get("patient") else "subject"
        subject = resource.get(field_name)
        reference = subject.get("reference") if isinstance(subject, Mapping) else None
        if not isinstance(subject, Mapping) or not isinstance(reference, str):
            return resource
        written = self._directory.normalize(reference) if "|" in patient else patient
        if written == reference:
            return resource
        return {**resource, field_name: {**subject, "reference": written}}

    def _known_alias(self, key: str, patients: Mapping[str, str]) -> tuple[str | None, str]:
        """``key`` (``Patient/<id>`` or ``system|value``) as one of our patients: itself a key we
        pull for, or a key of the same patient as one (its aliases, ``store.patient_keys``)."""
        ours = set(patients.values())
        keys = self.store.patient_keys(key)
        for candidate in keys:
            if candidate in ours:
                return candidate, ""
        if len(keys) > 1:  # an alias of a patient not linked on this server yet: its first key
            return keys[0], ""
        return None, IGNORED_NOT_OURS

    def _merge_page(
        self,
        resource_type: str,
        page: list[dict[str, Any]],
        patients: Mapping[str, str],
        generation: int | None,
        report: PullReport,
    ) -> None:
        if not page:
            return
        report.read += len(page)
        ids = [str(r["id"]) for r in page]
        seen = self.store.pulled(self.server, resource_type, ids)
        fresh: list[dict[str, Any]] = []
        unsure: set[str] = set()  # ids of copies that may or may not be newer
        for resource in page:
            copy = self._row(
                resource, patient=None, record_id=None, origin="", state="", generation=0
            )
            before = seen.get(copy.resource_id)
            order = (
                RemoteOrder.NEWER
                if before is None
                else remote_order(
                    before.version_id, before.last_updated, copy.version_id, copy.last_updated
                )
            )
            # The same version is a duplicate (deleted since: a copy read again stays deleted),
            # unless it is held for another version's identifier: that is decided again.
            if order is RemoteOrder.SAME and (
                before is None or before.state != SAME_IDENTIFIER_STATE
            ):
                report.duplicates += 1
                PULLED.labels(resource_type, "duplicate").inc()
                continue
            if order is RemoteOrder.OLDER:
                report.stale += 1
                PULLED.labels(resource_type, "stale").inc()
                continue
            if order is RemoteOrder.UNSURE:
                unsure.add(copy.resource_id)
            seen[copy.resource_id] = copy  # a later copy in the page is compared with this one
            fresh.append(resource)
        if generation is not None:
            self.store.mark_listed(self.server, resource_type, ids, generation)
        if not fresh:
            return
        if resource_type == "Consent":
            rows = self._merge_consents(fresh, patients, generation or 0, report, unsure)
        else:
            rows = self._keep_observations(fresh, patients, generation or 0, report)
        self.store.save_pulled(rows, at=self.clock())

    def _row(
        self,
        resource: Mapping[str, Any],
        *,
        patient: str | None,
        record_id: str | None,
        origin: str,
        state: str,
        generation: int,
        body: Mapping[str, Any] | None = None,
    ) -> PulledResource:
        meta = _meta(resource)
        version = meta.get("versionId")
        stamp = meta.get("lastUpdated")
        return PulledResource(
            server=self.server,
            resource_type=str(resource["resourceType"]),
            resource_id=str(resource["id"]),
            version_id=version if isinstance(version, str) else None,
            last_updated=stamp if isinstance(stamp, str) else None,
            patient=patient,
            record_id=record_id,
            origin=origin,
            state=state,
            body=body,
            generation=generation,
        )

    def _keep_observations(
        self,
        page: list[dict[str, Any]],
        patients: Mapping[str, str],
        generation: int,
        report: PullReport,
    ) -> list[PulledResource]:
        rows = []
        for resource in page:
            patient, _ = self._patient_of(resource, patients)
            source = _meta(resource).get("source")
            ours = isinstance(source, str) and source.startswith(_our_source())
            state = "ours" if ours else "stored"
            rows.append(
                self._row(
                    resource,
                    patient=patient,
                    record_id=None,
                    origin=ORIGIN_OURS if ours else ORIGIN_FOREIGN,
                    state=state,
                    generation=generation,
                    body=None if ours else resource,  # read-only copy of what others wrote
                )
            )
            report.observations += 0 if ours else 1
            PULLED.labels("Observation", state).inc()
        return rows

    def _merge_consents(
        self,
        page: list[dict[str, Any]],
        patients: Mapping[str, str],
        generation: int,
        report: PullReport,
        unsure: set[str],
    ) -> list[PulledResource]:
        """Merge a page of Consents not seen at this version before; the rows to save (those of
        merged foreign consents are saved by ``put_remote_records``, with its ordering check).
        A foreign copy in ``unsure`` (maybe older than the one seen) is merged only if it
        permits nothing (a withdrawal, unreadable, an opt-out without permit exceptions: all
        narrow sharing); else it is held as unreadable (unless it is what is stored already)."""
        now = self.clock()
        foreign_ids = {str(r["id"]): foreign_record_id(self.server, str(r["id"])) for r in page}
        # Ours by resource id (the id we pushed it under); foreign ones by their local id: the
        # patient each is filed under now (a foreign consent whose patient was changed on the
        # server moves, and both patients' gates must run again).
        ours = self.store.get_records([*foreign_ids, *foreign_ids.values()])
        rows: list[PulledResource] = []
        foreign: list[tuple[dict[str, Any], NewRecord, PulledResource]] = []
        moved_away: list[tuple[dict[str, Any], NewRecord, PulledResource]] = []
        for resource in page:
            patient, why = self._patient_of(resource, patients)
            local = ours.get(str(resource["id"]))
            if local is not None and local.family == FAMILY_CONSENT:
                rows.append(
                    self._merge_ours(resource, local.record_id, local.patient, generation, report)
                )
                continue
            if patient is None:
                report.ignored += 1
                report.ignored_why[why] = report.ignored_why.get(why, 0) + 1
                PULLED.labels("Consent", "ignored").inc()
                record_id = foreign_ids[str(resource["id"])]
                before = ours.get(record_id)
                if before is not None and before.family == FAMILY_CONSENT:
                    # Stored for one of our patients, and it names someone we do not know now
                    # (moved on the server): it no longer speaks for that patient.
                    row = self._row(
                        resource,
                        patient=before.patient,
                        record_id=record_id,
                        origin=ORIGIN_FOREIGN,
                        state="ignored",
                        generation=generation,
                    )
                    withdrawn = _revoked_copy(self.store, record_id, now)
                    if withdrawn is None:
                        rows.append(row)
                    else:
                        moved_away.append((resource, withdrawn, row))
                    continue
                rows.append(
                    self._row(
                        resource,
                        patient=None,
                        record_id=None,
                        origin=ORIGIN_FOREIGN,
                        state="ignored",
                        generation=generation,
                    )
                )
                continue
            record_id = foreign_ids[str(resource["id"])]
            new, state = _foreign_record(self._as_read(resource, patient), record_id, patient)
            row = self._row(
                resource,
                patient=patient,
                record_id=record_id,
                origin=ORIGIN_FOREIGN,
                state=state,
                generation=generation,
            )
            foreign.append((resource, new, row))
        self._withdraw_moved_away(moved_away, now, report)
        foreign = self._unsure_in_force_held(foreign, unsure, report)
        foreign, copies_of_ours = self._one_version_each(foreign, now, report)
        rows.extend(copies_of_ours)
        if foreign:
            entries = [
                audit.two_way_event(
                    "pull",
                    new.record_id,
                    new.patient,
                    now,
                    resources=[resource],
                    outcome_code="merged",
                )
                for resource, new, _ in foreign
            ]
            for new, row, result in self._save_foreign(foreign, entries, now, report):
                if row.state in ("unreadable", SAME_IDENTIFIER_STATE):
                    report.unreadable += 1
                PULLED.labels("Consent", row.state).inc()
                if result.outcome is not PutOutcome.UNCHANGED:
                    report.merged += 1
                    report.changed_patients.add(new.patient)
                    before = ours.get(new.record_id)
                    if before is not None:  # moved off a patient: theirs changed too
                        report.changed_patients.add(before.patient)
        return rows

    def _withdraw_moved_away(
        self,
        moved: list[tuple[dict[str, Any], NewRecord, PulledResource]],
        now: datetime,
        report: PullReport,
    ) -> None:
        """Foreign consents of our patients that now name a patient we do not know: revoked here
        (the revoked copies in ``moved``), as a deletion is, saved with their rows (order-checked,
        the rows keeping the patient and record they stood for), their patients marked
        changed."""
        if not moved:
            return
        self._recheck.update(new.patient for _, new, _ in moved)
        entries = [
            audit.two_way_event(
                "pull",
                new.record_id,
                new.patient,
                now,
                resources=[{"resourceType": "Consent", "id": row.resource_id}],
                outcome_code="moved-away",
            )
            for _, new, row in moved
        ]
        for new, _, result in self._save_foreign(moved, entries, now, report):
            if result.outcome is not PutOutcome.UNCHANGED:
                report.changed_patients.add(new.patient)
        log.info("consents moved to patients not known here were withdrawn: %d", len(moved))

    def _save_foreign(
        self,
        foreign: list[tuple[dict[str, Any], NewRecord, PulledResource]],
        audit_entries: list[AuditEntry],
        now: datetime,
        report: PullReport,
    ) -> list[tuple[NewRecord, PulledResource, IntakeResult]]:
        """Store foreign consents with their pulled rows (order-checked in the store's
        transaction); those saved, with their results. One a newer copy overtook meanwhile is
        counted stale."""
        results = self.store.put_remote_records(
            [new for _, new, _ in foreign],
            origin=self.server,
            audit=audit_entries,
            at=now,
            remote=[row for _, _, row in foreign],
        )
        saved = []
        for (_, new, row), result in zip(foreign, results, strict=True):
            if result.outcome is PutOutcome.STALE:  # a newer copy was saved meanwhile
                report.stale += 1
                PULLED.labels("Consent", "stale").inc()
            else:
                saved.append((new, row, result))
        return saved

    def _unsure_in_force_held(
        self,
        foreign: list[tuple[dict[str, Any], NewRecord, PulledResource]],
        unsure: set[str],
        report: PullReport,
    ) -> list[tuple[dict[str, Any], NewRecord, PulledResource]]:
        """``foreign`` with each copy that may be older than the one seen (``unsure``) and would
        keep or put a consent in force replaced by an unreadable placeholder: adopting it could
        widen sharing on an outdated copy, skipping it could keep a permit a newer edit narrowed.
        The placeholder holds the patient's records until a copy of sure order arrives. One that
        is what is stored already counts as a duplicate."""
        maybe_widening = [
            new.record_id
            for resource, new, _ in foreign
            if resource["id"] in unsure and _may_permit(new.body)
        ]
        if not maybe_widening:
            return foreign
        stored = self.store.get_records(maybe_widening)
        kept = []
        for resource, new, row in foreign:
            if new.record_id not in maybe_widening:
                kept.append((resource, new, row))
                continue
            head = stored.get(new.record_id)
            if head is not None and head.content_hash == new.content_hash:
                report.duplicates += 1
                PULLED.labels("Consent", "duplicate").inc()
                continue
            held = _unreadable_record(new.record_id, new.patient, ORDER_UNSURE)
            kept.append((resource, held, replace(row, state="unreadable")))
            log.warning("a consent copy of unsure order is held as unreadable")
        return kept

    def _one_version_each(
        self,
        foreign: list[tuple[dict[str, Any], NewRecord, PulledResource]],
        now: datetime,
        report: PullReport,
    ) -> tuple[list[tuple[dict[str, Any], NewRecord, PulledResource]], list[PulledResource]]:
        """``foreign`` with each readable consent that has the business identifier (compared as
        URIs: :func:`consent_identifier`) of another consent of its patient and says otherwise
        replaced by an unreadable placeholder (:data:`SAME_IDENTIFIER`, which holds the
        patient's records): one of ours (taken in here, whatever its copy on the server says),
        another foreign one earlier in ``foreign``, or one stored whose copy was not deleted on
        the server since (nor moved to another patient). The same consent twice is merged as it
        is: identical records decide alike. A copy of one of ours that says what ours says is
        not kept as a consent (:data:`OURS_COPY_STATE`; a record stored for it before is
        withdrawn): ours decides, and a revocation of ours is not undone by the copy left on the
        server. Returns what to store, and the pulled rows of those copies. Consents are
        compared under the patient key they are filed under (one query per page)."""
        # By the identifier as stored (``system|value``): a consent is read (loaded) only when
        # another one shares its identifier, so a page of distinct consents costs one query.
        keys: dict[int, tuple[str, Identifier]] = {}
        for n, (_, new, row) in enumerate(foreign):
            identifier = _identifier_key(new.identifier) if row.state == "merged" else None
            if identifier is not None:
                keys[n] = (new.patient, identifier)
        if not keys:
            return foreign, []
        in_page = {new.record_id for _, new, _ in foreign}
        wanted = set(keys.values())
        candidates: dict[str, tuple[str, Identifier]] = {}
        mine: set[str] = set()  # record ids of ours among the candidates
        patients = sorted({patient for patient, _ in wanted})
        for record_id, patient, text, origin in self.store.consent_identifiers(
            self.server, patients
        ):
            identifier = _identifier_key(text)
            if identifier is None or record_id in in_page:
                continue  # the page's own copy replaces it
            if (patient, identifier) in wanted:
                candidates[record_id] = (patient, identifier)
                if origin is None:
                    mine.add(record_id)
        seen: dict[tuple[str, Identifier], list[ConsentRecord]] = {}
        # Ours by key: None when one of them cannot be read (nothing says the same as it).
        ours: dict[tuple[str, Identifier], list[ConsentRecord] | None] = {}
        if candidates:
            pulled = sorted(set(candidates) - mine)
            copies = self.store.pulled_of_records(self.server, "Consent", pulled) if pulled else {}
            standing = [r for r, c in copies.items() if c.state not in _GONE_STATES]
            for record_id, head in sorted(self.store.get_records([*standing, *mine]).items()):
                key, stored = candidates[record_id], _readable_consent(head)
                if record_id in mine:
                    known = ours.setdefault(key, [])
                    ours[key] = None if stored is None or known is None else [*known, stored]
                elif stored is not None:
                    seen.setdefault(key, []).append(stored)
        in_page_count = Counter(keys.values())
        kept: list[tuple[dict[str, Any], NewRecord, PulledResource]] = []
        copies_of_ours: list[PulledResource] = []
        held = 0
        for n, (resource, new, row) in enumerate(foreign):
            found = keys.get(n)
            alone = found is None or (
                in_page_count[found] == 1 and found not in seen and found not in ours
            )
            record = None if alone else _loaded_consent(new.body)
            if found is None or record is None:
                kept.append((resource, new, row))
                continue
            if found in ours:  # ours decides: a copy that says the same is not read
                known = ours[found]
                if known is not None and all(says_the_same(o, record) for o in known):
                    report.duplicates += 1
                    copy_row = replace(row, state=OURS_COPY_STATE)
                    withdrawn = _revoked_copy(self.store, new.record_id, now)
                    if withdrawn is None:
                        PULLED.labels("Consent", OURS_COPY_STATE).inc()
                        copies_of_ours.append(copy_row)
                    else:  # stored before (held, or read before ours came): stands no more
                        kept.append((resource, withdrawn, copy_row))
                    continue
            elif all(says_the_same(other, record) for other in seen.setdefault(found, [])):
                seen[found].append(record)
                kept.append((resource, new, row))
                continue
            placeholder = _unreadable_record(new.record_id, new.patient, SAME_IDENTIFIER)
            kept.append((resource, placeholder, replace(row, state=SAME_IDENTIFIER_STATE)))
            self._held_now.add(new.record_id)
            held += 1
        if held:
            log.warning(
                "consents sharing an identifier with another that says otherwise held: %d", held
            )
        return kept, copies_of_ours

    def _recheck_versions(self, patients: Mapping[str, str], report: PullReport) -> None:
        """The consents held for :data:`SAME_IDENTIFIER` of the patients whose consents changed
        or were deleted in this pass, or a new version of whose consent of ours it read, are
        read again by id and merged again: the other version may be gone or agree now (a
        deletion of an already withdrawn consent changes nothing here, so its patients are noted
        apart: ``_recheck``; ours changes here, not by the pull: ``_ours_read``). Those this
        pass held are read again only after a deletion (it came after them: a listing notices
        deletions last). One round: what is merged here is compared with what the pass
        stored."""
        deleted, held_now, ours_read = self._recheck, self._held_now, self._ours_read
        self._recheck, self._held_now, self._ours_read = set(), set(), set()
        concerned = sorted(deleted | report.changed_patients | ours_read)
        if not concerned:
            return
        placeholders = [
            record_id
            for record_id, patient, identifier, origin in self.store.consent_identifiers(
                self.server, concerned
            )
            if origin == self.server
            and identifier.startswith(UNREADABLE_IDENTIFIER)
            and (patient in deleted or record_id not in held_now)
        ]
        if not placeholders:
            return
        copies = self.store.pulled_of_records(self.server, "Consent", placeholders)
        resources = []
        for copy in copies.values():
            if copy.state != SAME_IDENTIFIER_STATE:
                continue
            try:
                resource = self.client.read("Consent", copy.resource_id)
            except NotFoundError:
                continue  # deleted: noticed as deletions are (history or the listing)
            if resource.get("id") == copy.resource_id:  # else not the copy asked for: held on
                resources.append(resource)
        self._merge_page("Consent", resources, patients, None, report)

    def _merge_ours(
        self,
        resource: Mapping[str, Any],
        record_id: str,
        patient: str,
        generation: int,
        report: PullReport,
    ) -> PulledResource:
        """A Consent we pushed, as the server has it now (see the module docstring)."""
        version = _meta(resource).get("versionId")
        last = self.store.last_sent(record_id)
        sent_versions = {s.version_id for s in last.sent} if last is not None else set()

        def row(state: str) -> PulledResource:
            return self._row(
                resource,
                patient=patient,
                record_id=record_id,
                origin=ORIGIN_OURS,
                state=state,
                generation=generation,
            )

        if last is None or version in sent_versions:
            # Our own write (or one in flight whose send is not recorded yet: a crash between
            # the PUT and mark_sent; the retry writes it again).
            self._ours_read.add(patient)
            return row("merged")
        # Read the status as written: an edit of the status alone leaves our consent-state
        # extension disagreeing with it, which the mapper (rightly) refuses to read.
        ours = _stored_consent(self.store, record_id)
        if ours is not None and _undoes_withdrawal(resource.get("status"), ours.status):
            self._reassert_withdrawal(resource, record_id, patient, report)
            # Noted as "withdrawn": the worker's next update of the record is made against this
            # version (``Worker._if_match``), so only a further change meets a 412.
            return row("withdrawn")
        if resource.get("status") != "active" and not _still_a_draft(resource.get("status"), ours):
            return row("withdrawn" if self._withdraw_ours(record_id, patient, report) else "merged")
        report.conflicts += 1
        CONFLICTS.labels("remote-edit-seen").inc()
        # The service is the source of truth: our newest version is queued again (unless a push
        # of the record is pending already: it carries that version). Its update is made
        # If-Match our last written version (the row is noted "conflict", not "withdrawn"), so
        # it meets the 412 and CONFLICT_POLICY settles the edit: overwrite, keep-remote or flag.
        now = self.clock()
        queued = self.store.queue_again(record_id, conflict=REMOTE_EDITED, audit=[], at=now)
        if queued is None and last.item_id is not None:
            self.store.mark_conflict(last.item_id, REMOTE_EDITED, at=now)
        return row("conflict")

    def _withdraw_ours(self, record_id: str, patient: str, report: PullReport) -> bool:
        """Someone withdrew our consent (active, or a draft) on the server (a changed status or a
        deletion): revoke it here too, through intake (audited, versioned, pushed back as
        revoked)."""
        if not withdraw_consent_here(self.store, record_id, self.clock()):
            return False
        report.withdrawn += 1
        report.changed_patients.add(patient)
        PULLED.labels("Consent", "withdrawn").inc()
        return True

    def _reassert_withdrawal(
        self, resource: Mapping[str, Any], record_id: str, patient: str, report: PullReport
    ) -> None:
        """Our consent, withdrawn here, put back in force on the server by someone else: the
        patient's withdrawal stands (the EHR must not share on a consent the patient withdrew).
        Our newest version is queued to be written back (unless a push of the record is pending
        already: it carries that version), audited, and counted as a conflict."""
        now = self.clock()
        stored = self.store.get_record(record_id)
        entry = audit.two_way_event(
            "conflict",
            record_id,
            patient,
            now,
            version=stored.version if stored is not None else None,
            resources=[resource],
            outcome_code=REASSERTED,
        )
        queued = self.store.queue_again(record_id, conflict=REASSERTED, audit=[entry], at=now)
        if queued is None:
            self.store.add_audit([entry])
        report.conflicts += 1
        report.reasserted += 1
        CONFLICTS.labels(REASSERTED).inc()
        log.warning("a consent withdrawn here was put back in force on the server: written back")

    # ------------------------------------------------------------------ deletions

    def _deletions(self, resource_type: str, generation: int, report: PullReport) -> None:
        """After a complete listing: what was seen before and not listed now was deleted."""
        while True:
            gone = self.store.unlisted(self.server, resource_type, generation)
            if not gone:
                return
            rows = [_replace_state(row, "deleted", generation) for row in gone]
            self._delete(resource_type, rows, report)

    def _delete(
        self, resource_type: str, rows: Sequence[PulledResource], report: PullReport
    ) -> None:
        """Resources deleted on the server (``rows``, already in state ``deleted``): a foreign
        consent is revoked here, a withdrawal of ours adopted; the rows are saved."""
        now = self.clock()
        revoked: list[NewRecord] = []
        revoked_rows: list[PulledResource] = []  # saved with the revocations, order-checked
        entries = []
        for row in rows:
            report.deleted += 1
            PULLED.labels(resource_type, "deleted").inc()
            if resource_type != "Consent" or row.record_id is None or row.patient is None:
                continue
            if row.origin == ORIGIN_OURS:
                self._withdraw_ours(row.record_id, row.patient, report)
                continue
            self._recheck.add(row.patient)
            withdrawn = _revoked_copy(self.store, row.record_id, now)
            if withdrawn is not None:
                revoked.append(withdrawn)
                revoked_rows.append(row)
                entries.append(
                    audit.two_way_event(
                        "pull",
                        row.record_id,
                        row.patient,
                        now,
                        resources=[{"resourceType": "Consent", "id": row.resource_id}],
                        outcome_code="deleted",
                    )
                )
        if revoked:
            results = self.store.put_remote_records(
                revoked, origin=self.server, audit=entries, at=now, remote=revoked_rows
            )
            report.changed_patients.update(
                r.patient
                for r, result in zip(revoked, results, strict=True)
                if result.outcome is not PutOutcome.STALE
            )
        saved = {(r.resource_type, r.resource_id) for r in revoked_rows}
        self.store.save_pulled(
            [r for r in rows if (r.resource_type, r.resource_id) not in saved], at=now
        )


def withdraw_consent_here(store: Store, record_id: str, at: datetime) -> bool:
    """Our consent ``record_id`` withdrawn on the server (a changed status, or a deletion, found
    by the pull or by the worker's read-back after a 412): revoked here through intake (audited,
    versioned, queued to be pushed back as revoked). Whether it was (False: not a readable
    consent record, or already withdrawn here)."""
    stored = store.get_record(record_id)
    if stored is None:
        return False
    try:
        record = CONSENT_MAPPER.load(stored.body)
    except InputError:
        return False
    if not isinstance(record, ConsentRecord) or record.status not in REVOCABLE_STATUSES:
        return False  # already withdrawn here
    payload = {
        "kind": "consent-revocation",
        "consent": str(record.id),
        "at": at.replace(microsecond=0).isoformat(),
    }
    intake_records(store, [payload], at=at)
    return True


def _newest(entries: Iterable[HistoryEntry]) -> tuple[datetime, str] | None:
    """The newest stamp among history entries, parsed and as the server wrote it."""
    newest: tuple[datetime, str] | None = None
    for entry in entries:
        at = parse_instant(entry.stamp)
        if at is not None and entry.stamp is not None and (newest is None or at > newest[0]):
            newest = (at, entry.stamp)
    return newest


def _our_source() -> str:
    from fhir_alliance_service.sync.worker import SOURCE_URI

    return SOURCE_URI


def _replace_state(
    row: PulledResource,
    state: str,
    generation: int,
    *,
    version_id: str | None = None,
    last_updated: str | None = None,
) -> PulledResource:
    return PulledResource(
        server=row.server,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        version_id=version_id or row.version_id,
        last_updated=last_updated or row.last_updated,
        patient=row.patient,
        record_id=row.record_id,
        origin=row.origin,
        state=state,
        body=None,
        generation=generation,
    )


def _foreign_record(
    resource: Mapping[str, Any], record_id: str, patient: str
) -> tuple[NewRecord, str]:
    """The local record of a foreign Consent: mapped with the library, or an unreadable
    placeholder that holds the patient's records until the Consent is fixed on the server."""
    try:
        record = from_consent(resource)
    except FhirAllianceError as exc:
        element = getattr(exc, "element", None) or "Consent"  # MappingError names it
        return _unreadable_record(record_id, patient, element), "unreadable"
    body = dict(CONSENT_MAPPER.dump(record))
    return _new_consent(record_id, str(record.id), patient, body), "merged"


def _unreadable_record(record_id: str, patient: str, why: str) -> NewRecord:
    """The placeholder of a foreign Consent that holds its patient's records: ``why`` is the
    element that could not be read, ``ORDER_UNSURE`` or ``SAME_IDENTIFIER``."""
    body: dict[str, Any] = {"kind": UNREADABLE_KIND, "unreadable": why}
    return _new_consent(record_id, f"{UNREADABLE_IDENTIFIER}{record_id}", patient, body)


def _new_consent(record_id: str, identifier: str, patient: str, body: dict[str, Any]) -> NewRecord:
    return NewRecord(
        record_id=record_id,
        identifier=identifier,
        kind=str(body["kind"]),
        family=FAMILY_CONSENT,
        patient=patient,
        body=body,
        content_hash=content_hash(body),
    )


def _may_permit(body: Mapping[str, Any]) -> bool:
    """The local body of a foreign consent is in force (active) and permits something (its
    decision, or a nested exception, is ``permit``): adopting it may widen sharing. A withdrawn
    one, a draft, an unreadable placeholder (which holds) and an opt-out that permits nothing
    (a deny without permit exceptions) cannot."""
    if "unreadable" in body or body.get("status") != ConsentStatus.ACTIVE.value:
        return False
    return body.get("decision") != "deny" or _permits_somewhere(body.get("provision"))


def _permits_somewhere(provision: object) -> bool:
    """Whether a provision of our JSON form has a nested ``permit`` (anything unreadable counts
    as one: deny by default)."""
    if provision is None:
        return False
    if not isinstance(provision, Mapping):
        return True
    nested = provision.get("provisions") or []
    if not isinstance(nested, list):
        return True
    return any(
        not isinstance(p, Mapping) or p.get("type") != "deny" or _permits_somewhere(p)
        for p in nested
    )


def _stored_consent(store: Store, record_id: str) -> ConsentRecord | None:
    """The newest stored version of our consent ``record_id``; None if it cannot be read."""
    stored = store.get_record(record_id)
    return None if stored is None else _readable_consent(stored)


def _readable_consent(stored: StoredRecord) -> ConsentRecord | None:
    """The consent a stored record holds; None if it cannot be read as one."""
    return _loaded_consent(stored.body)


def _loaded_consent(body: Mapping[str, Any]) -> ConsentRecord | None:
    """The consent a record body (our JSON form) holds; None if it cannot be read as one."""
    try:
        record = CONSENT_MAPPER.load(body)
    except InputError:
        return None
    return record if isinstance(record, ConsentRecord) else None


def _identifier_key(text: str) -> Identifier | None:
    """A stored record's identifier (``system|value``) as consent identifiers are compared; None
    when it is not one (an unreadable placeholder's is, and matches no consent's)."""
    try:
        return consent_identifier(Identifier.parse(text, path="identifier"))
    except InputError:
        return None


def _undoes_withdrawal(remote_status: object, ours: ConsentStatus) -> bool:
    """The server's status puts back in force (or on the way to it) a consent of ours that is not
    in force here: ``active`` where ours is not; ``draft`` or ``proposed`` where ours was
    withdrawn (revoked, expired, entered in error)."""
    if ours is ConsentStatus.ACTIVE or remote_status not in _MAY_BE_IN_FORCE:
        return False
    return remote_status == "active" or ours is not ConsentStatus.DRAFT


def _still_a_draft(remote_status: object, ours: ConsentRecord | None) -> bool:
    """A draft of ours that the server still has as a draft (``draft`` or ``proposed``): an edit
    of it withdraws nothing, so it is a conflict like an edit of an active consent left active."""
    return (
        ours is not None
        and ours.status is ConsentStatus.DRAFT
        and remote_status in _NOT_YET_IN_FORCE
    )


def _revoked_copy(store: Store, record_id: str, at: datetime) -> NewRecord | None:
    """A foreign consent deleted on the server: a revoked version of it; for an unreadable one,
    a body the consent loader skips (:data:`DELETED_MARK`). None: nothing to change."""
    stored = store.get_record(record_id)
    if stored is None:
        return None
    record = _readable_consent(stored)
    if record is not None:
        if record.status is not ConsentStatus.ACTIVE:
            return None
        revoked = apply_revocation(
            record, ConsentRevocation(consent=record.id, at=at.replace(microsecond=0))
        )
        body: dict[str, Any] = dict(CONSENT_MAPPER.dump(revoked))
    else:  # an unreadable consent that is gone no longer holds anything
        if stored.body.get(DELETED_MARK):
            return None
        body = {"kind": stored.kind, DELETED_MARK: True}
    return NewRecord(
        record_id=record_id,
        identifier=stored.identifier,
        kind=stored.kind,
        family=FAMILY_CONSENT,
        patient=stored.patient,
        body=body,
        content_hash=content_hash(body),
    )


class TwoWaySync:
    """What the worker loop runs between batches (``tick``): every ``pull_interval_seconds`` a
    pull, then a retraction pass over the patients whose consents changed since the last one;
    every ``pull_full_listing_seconds`` the pull lists everything and the retraction pass looks at
    every patient (expiries change no stamp). At start it only notes the patients' consent
    stamps: what changed before it started is caught by the first full pass (or by
    ``fhir-alliance pull``); the retraction checks noted in the store (one that failed, or that
    a worker did not finish) are made by its first pass. Without ``pull`` (``worker
    --no-pull``) it neither pulls nor runs retraction passes, but still makes the checks noted
    in the store as often (:meth:`Retractor.run_noted`): a check owed for a revocation already
    known, noted by this worker's own read-backs too, or by intake for a consent change made
    through the API (``Store.put_records``), is not left to a worker that pulls."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: FhirClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pull: bool = True,
    ) -> None:
        from fhir_alliance_service.sync.retract import Retractor

        self.settings = settings
        self.puller = Puller(settings, store, client, clock=clock)
        self.retractor = Retractor(settings, store, client, clock=clock)
        self.clock = clock
        self.pull = pull
        self._next_pull: datetime | None = None
        self._next_full: datetime | None = None

    def tick(self) -> PullReport | None:
        """Run a pull (and retraction pass) if one is due; the pull's report, or None. Without
        ``pull``: the retraction checks noted in the store, when due; None. While the last claim
        of noted checks came back full (a backlog: a bulk load of consents notes each patient),
        every tick between makes the next batch of them, so a revocation behind the backlog
        waits batches, not ``PULL_INTERVAL_SECONDS`` per ``WORKER_BATCH_SIZE`` patients."""
        now = self.clock()
        if not self.pull:
            if self._next_pull is None or now >= self._next_pull:
                self._next_pull = now + timedelta(seconds=self.settings.pull_interval_seconds)
                self.retractor.run_noted()
            elif self.retractor.more_noted:
                self.retractor.run_noted()  # a backlog: the next batch of it, not in an interval
            return None
        if self._next_pull is None:  # first tick: note the stamps, pull now
            self.retractor.seed()
            self._next_full = now + timedelta(seconds=self.settings.pull_full_listing_seconds)
        elif now < self._next_pull:
            if self.retractor.more_noted:
                self.retractor.run_noted()  # a backlog of noted checks: next batch, no pull
            return None
        self._next_pull = now + timedelta(seconds=self.settings.pull_interval_seconds)
        report = self.puller.pull()
        everyone = self._next_full is not None and now >= self._next_full
        if everyone:
            self._next_full = now + timedelta(seconds=self.settings.pull_full_listing_seconds)
        self.retractor.run_pass(everyone=everyone)
        return report
