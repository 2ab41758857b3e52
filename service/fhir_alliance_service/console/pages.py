"""What each console page shows, read from the store: plain functions, testable without Flask.

Scores come from the library (``fhir_alliance.instruments.score`` and ``ors_reliable_change``);
nothing here re-computes them. Patients are addressed by an opaque id (``Store.patient_token``,
an HMAC of the patient key under the installation's secret, which the store indexes), so no URL
carries a patient reference or identifier, nor anything computable from one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

from fhir_alliance.errors import FhirAllianceError
from fhir_alliance.instruments import (
    DEFAULT_RULES,
    Flag,
    InstrumentCode,
    ReliableChange,
    ors_reliable_change,
    score,
)
from fhir_alliance.mapping.registry import mapper_for_kind
from fhir_alliance.model.consent import ConsentKind, ConsentRecord, ConsentStatus, Decision
from fhir_alliance.model.notes import NoteCategory, SessionNote
from fhir_alliance.model.observations import (
    DimensionRating,
    InstrumentAdministration,
    RaterRole,
    RepairEvent,
    RuptureEvent,
)
from fhir_alliance_service.config import Settings
from fhir_alliance_service.store.interface import (
    AuditEntry,
    Store,
    StoredRecord,
    SyncState,
    SyncStatus,
)
from fhir_alliance_service.sync.target import (
    META_FHIR_BASE_URL,
    META_FHIR_VERSION,
    META_LAST_CONTACT,
)
from fhir_alliance_service.usecases.decisions import decide_for_patient
from fhir_alliance_service.usecases.withholding import (
    Withheld,
    withheld_text,
    withhold_resource_text,
)

__all__ = [
    "SHOWN_STATES",
    "TEXT_WITHHELD",
    "TREND_DAYS",
    "TREND_LINES",
    "daily_trend",
    "find_patient",
    "overview_page",
    "patient_page",
    "record_page",
]

#: The states the overview counts, in the order a record moves through them.
SHOWN_STATES: Final = (
    SyncState.QUEUED,
    SyncState.HELD,
    SyncState.SENT,
    SyncState.FAILED,
    SyncState.DEAD_LETTERED,
)
TREND_DAYS: Final = 14
#: How many held items the overview reads to group them (the counts above are exact).
HELD_SCAN_LIMIT: Final = 5_000
LISTED_PROBLEMS: Final = 50
_PAGE: Final = 500


def find_patient(store: Store, token: str) -> str | None:
    """The patient key whose opaque id is ``token`` (one indexed read in the store)."""
    return store.patient_for_token(token)


# -- overview ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldGroup:
    reason: str
    count: int
    examples: tuple[str, ...]  # record ids


@dataclass(frozen=True, slots=True)
class Problem:
    """A failed or dead-lettered record: the server's message and when it is tried again."""

    status: SyncStatus
    message: str


@dataclass(frozen=True, slots=True)
class PatientLink:
    token: str
    patient: str


@dataclass(frozen=True, slots=True)
class TrendLine:
    """One line of the trend: the audit action it counts, its name and what a number means."""

    action: str
    label: str
    meaning: str


#: The trend's lines, each counted from the audit trail (``Store.audit_counts_by_day``).
TREND_LINES: Final = (
    TrendLine(
        "intake",
        "received",
        "records posted to the service that day (a new record or a new version of one)",
    ),
    TrendLine("disclose", "sent", "records sent to the clinic's FHIR server that day"),
    TrendLine(
        "hold",
        "held",
        "records the consent gate held back that day (a record held again after a consent "
        "change counts again on the day it is held again; a sent record whose repair by "
        "reconcile --fix the gate held counts too, though it stays sent, not in the held list)",
    ),
    TrendLine("dead-letter", "dead-lettered", "records the FHIR server refused for good that day"),
)


@dataclass(frozen=True, slots=True)
class TrendDay:
    """One UTC day of the trend: distinct records per :data:`TREND_LINES` action."""

    day: date
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class OverviewPage:
    counts: dict[SyncState, int]
    trend: list[TrendDay]
    held: list[HeldGroup]
    held_scanned_all: bool
    failed: list[Problem]
    dead_lettered: list[Problem]
    #: Conflicts held for a person (``CONFLICT_POLICY=flag``): how many, and the oldest
    #: :data:`LISTED_PROBLEMS` of them (each decided on its record page).
    conflicts_count: int
    conflicts: list[SyncStatus]
    last_contact: datetime | None
    fhir_version: str | None
    fhir_base_url: str | None
    patients: list[PatientLink]


def outcome_message(outcome: Mapping[str, Any] | None) -> str:
    """What an OperationOutcome says: each issue's text, diagnostics and place. A FHIR server's
    own text is never stored (``sync/outcomes.py``: it may quote patient data), so for its
    outcomes this shows the fixed note that says so, with the place."""
    if not outcome:
        return "no message"
    parts: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        details = issue.get("details")
        text = details.get("text") if isinstance(details, Mapping) else None
        words = text or issue.get("diagnostics") or issue.get("code") or "no message"
        where = ", ".join(str(e) for e in issue.get("expression") or [])
        parts.append(f"{words}{f' (at {where})' if where else ''}")
    return "; ".join(parts) or "no message"


def daily_trend(store: Store, today: date) -> list[TrendDay]:
    """The last :data:`TREND_DAYS` UTC days up to ``today``, oldest first, from the audit trail:
    one aggregate query; a day without activity is a row of zeros."""
    first = today - timedelta(days=TREND_DAYS - 1)
    since = datetime.combine(first, time(), tzinfo=UTC)
    until = datetime.combine(today + timedelta(days=1), time(), tzinfo=UTC)
    actions = [line.action for line in TREND_LINES]
    found = store.audit_counts_by_day(actions, since=since, until=until)
    days = (first + timedelta(days=n) for n in range(TREND_DAYS))
    return [TrendDay(day, {a: found.get(day, {}).get(a, 0) for a in actions}) for day in days]


def overview_page(store: Store, settings: Settings, *, now: datetime) -> OverviewPage:
    counts = store.counts_by_state()
    trend = daily_trend(store, now.astimezone(UTC).date())
    # SyncStatus carries no item id to page on: one bounded read; the page says when it is partial.
    held = store.list_by_state(SyncState.HELD, limit=HELD_SCAN_LIMIT)
    complete = len(held) < HELD_SCAN_LIMIT
    reasons = Counter(s.held_reason or "no reason recorded" for s in held)
    groups = [
        HeldGroup(
            reason=reason,
            count=count,
            examples=tuple(
                s.record_id for s in held if (s.held_reason or "no reason recorded") == reason
            )[:10],
        )
        for reason, count in reasons.most_common()
    ]
    failed = store.list_by_state(SyncState.FAILED, limit=LISTED_PROBLEMS)
    dead = store.list_by_state(SyncState.DEAD_LETTERED, limit=LISTED_PROBLEMS)
    conflicts = store.flagged_conflicts(limit=LISTED_PROBLEMS)
    last_contact = store.get_meta(META_LAST_CONTACT)
    return OverviewPage(
        counts={state: counts.get(state, 0) for state in SHOWN_STATES},
        trend=trend,
        held=groups,
        held_scanned_all=complete,
        failed=[Problem(s, outcome_message(s.last_outcome)) for s in failed],
        dead_lettered=[Problem(s, outcome_message(s.last_outcome)) for s in dead],
        conflicts_count=conflicts.count,
        conflicts=list(conflicts.items),
        last_contact=datetime.fromisoformat(last_contact) if last_contact else None,
        fhir_version=store.get_meta(META_FHIR_VERSION),
        fhir_base_url=store.get_meta(META_FHIR_BASE_URL) or settings.fhir_base_url,
        patients=[PatientLink(store.patient_token(p), p) for p in store.patients()],
    )


# -- patient ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScorePoint:
    """One administration's total (and subscales) as the library scored it."""

    record_id: str
    at: datetime
    instrument: InstrumentCode
    total: Decimal | None
    subscales: dict[str, Decimal | None]
    below_cutoff: bool
    cutoff: Decimal | None
    change: ReliableChange | None = None  # ORS: against the previous computable total
    prorated: bool = False


@dataclass(frozen=True, slots=True)
class RatingPoint:
    """A single-dimension rating; ``automated`` names the tool when a machine rated it."""

    record_id: str
    at: datetime
    dimension: str
    value: Decimal
    scale: str
    rater: str
    automated: str | None


@dataclass(frozen=True, slots=True)
class AllianceEvent:
    record_id: str
    at: datetime
    kind: str  # rupture | repair
    detail: str
    rater: str
    automated: str | None


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    at: datetime
    record_id: str
    consent: str  # what the consent is, in words
    event: str  # given, restricted, declined intervention, revoked, …


@dataclass(frozen=True, slots=True)
class DecisionNow:
    recipient: str
    purpose: str
    outcome: str
    explanation: str


@dataclass(frozen=True, slots=True)
class NoteRow:
    """One session note as the patient view lists it: never its text (free text), only what it is,
    where it stands and whether AI drafted it."""

    record_id: str
    session_at: datetime
    kind: str  # "progress note" | "psychotherapy-note content"
    status: str  # the note's status: draft, final, amended, entered-in-error
    signed_by: str | None
    signed_at: datetime | None
    ai_tool: str | None  # the AI tool that drafted it ("name version"); None: no AI drafted it
    ai_labelled: bool  # the content carries the AIAST label (False after a stated rewrite)
    sync: SyncStatus | None


@dataclass(frozen=True, slots=True)
class PatientPage:
    patient: str
    token: str
    scores: dict[InstrumentCode, list[ScorePoint]]
    ratings: list[RatingPoint]
    events: list[AllianceEvent]
    consents: list[ConsentEvent]
    decisions: list[DecisionNow]
    unreadable: list[str] = field(default_factory=list)
    notes: list[NoteRow] = field(default_factory=list)
    srs_cutoff: Decimal = DEFAULT_RULES.srs_cutoff
    ors_cutoff: Decimal = DEFAULT_RULES.ors_clinical_cutoff
    ors_reliable_change: Decimal = DEFAULT_RULES.ors_reliable_change


def _records(store: Store, patient: str) -> Iterator[StoredRecord]:
    after: str | None = None
    while True:
        page = store.list_records(patient=patient, limit=_PAGE, after=after)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].record_id


def rater_words(role: RaterRole, automated: Any = None) -> str:
    if automated is not None:
        return f"automated ({automated.tool} {automated.version})"
    return role.value


def _automated(record: Any) -> str | None:
    tool = record.rater.automated
    if tool is None:
        return None
    reviewed = ", reviewed by a clinician" if tool.clinician_reviewed else ""
    return f"{tool.tool} {tool.version}{reviewed}"


def consent_words(record: ConsentRecord) -> str:
    """What a consent is about, in words a receptionist uses."""
    if record.kind is ConsentKind.TREATMENT:
        what = record.intervention.display if record.intervention else None
        return f"intervention{f' ({what})' if what else ''}"
    return {
        ConsentKind.SHARING: "sharing of alliance measures",
        ConsentKind.RECORDING: "session recording and AI notes",
        ConsentKind.RESTRICTION: "restriction",
    }[record.kind]


def _consent_event(record: ConsentRecord, status: ConsentStatus) -> str:
    if status is ConsentStatus.REVOKED:
        return "revoked"
    if status is ConsentStatus.EXPIRED:
        return "expired"
    if status is ConsentStatus.ENTERED_IN_ERROR:
        return "entered in error"
    if status is ConsentStatus.DRAFT:
        return "drafted"
    if record.kind is ConsentKind.RESTRICTION:
        return "restricted"
    if record.kind is ConsentKind.TREATMENT:
        return "declined intervention" if record.decision is Decision.DENY else "accepted"
    return "given" if record.decision is Decision.PERMIT else "declined"


def _consent_events(row: StoredRecord, record: ConsentRecord) -> list[ConsentEvent]:
    what = consent_words(record)
    changes = record.history or ()
    if not changes:
        return [
            ConsentEvent(record.date, row.record_id, what, _consent_event(record, record.status))
        ]
    return [
        ConsentEvent(c.at, row.record_id, what, _consent_event(record, c.status)) for c in changes
    ]


_NOTE_KIND_WORDS: Final = {
    NoteCategory.PROGRESS_NOTE: "progress note",
    NoteCategory.PSYCHOTHERAPY_NOTE: "psychotherapy-note content",
}


def _ref_words(ref: Any) -> str:
    return str(ref.display or ref.reference or ref.identifier.value)


def _note_row(store: Store, row: StoredRecord, note: SessionNote) -> NoteRow:
    return NoteRow(
        record_id=row.record_id,
        session_at=note.session_at,
        kind=_NOTE_KIND_WORDS[note.category],
        status=note.status.value,
        signed_by=_ref_words(note.signed_by) if note.signed_by else None,
        signed_at=note.signed_at,
        ai_tool=(
            f"{note.ai_drafting.tool} {note.ai_drafting.version}" if note.ai_drafting else None
        ),
        ai_labelled=note.ai_labelled,
        sync=store.sync_status(row.record_id),
    )


def patient_page(store: Store, settings: Settings, patient: str, *, now: datetime) -> PatientPage:
    scores: dict[InstrumentCode, list[ScorePoint]] = {code: [] for code in InstrumentCode}
    ratings: list[RatingPoint] = []
    events: list[AllianceEvent] = []
    consents: list[ConsentEvent] = []
    notes: list[NoteRow] = []
    unreadable: list[str] = []
    for row in _records(store, patient):
        try:
            record = mapper_for_kind(row.kind).load(row.body)
        except FhirAllianceError:
            unreadable.append(row.record_id)
            continue
        if isinstance(record, InstrumentAdministration):
            computed = score(record)
            total = computed[0]
            scores[record.instrument].append(
                ScorePoint(
                    record_id=row.record_id,
                    at=record.effective,
                    instrument=record.instrument,
                    total=total.value,
                    subscales={s.key: s.value for s in computed[1:]},
                    below_cutoff=total.flag is Flag.BELOW_CUTOFF,
                    cutoff=total.cutoff,
                    prorated=total.prorated,
                )
            )
        elif isinstance(record, DimensionRating):
            ratings.append(
                RatingPoint(
                    record_id=row.record_id,
                    at=record.effective,
                    dimension=record.dimension.value,
                    value=record.value,
                    scale=record.scale.value,
                    rater=record.rater.role.value,
                    automated=_automated(record),
                )
            )
        elif isinstance(record, RuptureEvent):
            events.append(
                AllianceEvent(
                    row.record_id,
                    record.effective,
                    "rupture",
                    f"{record.rupture_type.value}, tension {record.tension}",
                    record.rater.role.value,
                    _automated(record),
                )
            )
        elif isinstance(record, RepairEvent):
            strategies = ", ".join(s.value for s in record.strategies) or "no strategy named"
            events.append(
                AllianceEvent(
                    row.record_id,
                    record.effective,
                    "repair",
                    strategies,
                    record.rater.role.value,
                    _automated(record),
                )
            )
        elif isinstance(record, ConsentRecord):
            consents += _consent_events(row, record)
        elif isinstance(record, SessionNote):
            notes.append(_note_row(store, row, record))
    for points in scores.values():
        points.sort(key=lambda p: p.at)
    ors = scores[InstrumentCode.ORS]
    previous: Decimal | None = None
    for index, point in enumerate(ors):
        if point.total is None:
            continue
        if previous is not None:
            change = ors_reliable_change(previous, point.total)
            ors[index] = ScorePoint(**{**_fields(point), "change": change})
        previous = point.total
    ratings.sort(key=lambda r: r.at)
    events.sort(key=lambda e: e.at)
    consents.sort(key=lambda c: c.at)
    notes.sort(key=lambda n: (n.session_at, n.record_id))
    decisions = []
    for recipient in settings.recipients:
        decided = decide_for_patient(store, patient, recipient, settings.purpose, at=now)
        decisions.append(
            DecisionNow(
                recipient=recipient,
                purpose=settings.purpose,
                outcome=decided.decision.outcome.value,
                explanation=decided.explanation,
            )
        )
    return PatientPage(
        patient=patient,
        token=store.patient_token(patient),
        scores=scores,
        ratings=ratings,
        events=events,
        consents=consents,
        decisions=decisions,
        unreadable=unreadable,
        notes=notes,
    )


def _fields(point: ScorePoint) -> dict[str, Any]:
    return {name: getattr(point, name) for name in ScorePoint.__slots__}


# -- record -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One line of a record's status history: an audit entry, a stored version, or the state now."""

    at: datetime
    what: str
    source: str


@dataclass(frozen=True, slots=True)
class RecordPage:
    record: StoredRecord
    sync: SyncStatus | None
    sync_message: str | None
    versions: list[StoredRecord]
    history: list[AuditEntry]
    timeline: list[HistoryRow]
    fhir_version: str
    resources: list[str]  # pretty-printed JSON, one per resource
    mapping_error: str | None
    patient_token: str
    #: Why the resources' free text is withheld (``None``: they carry none, or it is shown).
    text_withheld: Withheld | None = None


def _audit(store: Store, record_id: str) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    after: int | None = None
    while True:
        page = store.list_audit(record_id=record_id, limit=_PAGE, after=after)
        entries += page
        if len(page) < _PAGE or page[-1].id is None:
            return entries
        after = page[-1].id


#: What the record view shows instead of withheld free text (``usecases/withholding.py`` decides
#: what: a session note's text and psychotherapy-note content, whatever the session's scope).
TEXT_WITHHELD: Final = (
    "(withheld: the console never shows a session note's text or psychotherapy-note content)"
)


def record_page(store: Store, record_id: str) -> RecordPage | None:
    record = store.get_record(record_id)
    if record is None:
        return None
    sync = store.sync_status(record_id)
    versions = [
        found
        for version in range(1, record.version + 1)
        if (found := store.get_record(record_id, version=version)) is not None
    ]
    fhir_version = store.get_meta(META_FHIR_VERSION) or "4.0.1"
    resources: list[str] = []
    mapping_error = None
    text_withheld = None
    try:
        mapper = mapper_for_kind(record.kind)
        mapped = mapper.to_fhir(mapper.load(record.body), version=fhir_version)
        # A console session may read no note text: it is no admin key, and no PSYTHPN permit.
        text_withheld = withheld_text(record, resources=mapped, note_text_readable=False)
        if text_withheld is not None:
            mapped = [withhold_resource_text(r, TEXT_WITHHELD) for r in mapped]
        resources = [json.dumps(r, indent=2, ensure_ascii=False) for r in mapped]
    except FhirAllianceError as exc:
        mapping_error = f"the stored record cannot be mapped ({type(exc).__name__})"
    history = _audit(store, record_id)
    timeline = [HistoryRow(e.at, e.action, str(e.resource.get("resourceType"))) for e in history]
    timeline += [HistoryRow(v.created_at, f"version {v.version} stored", "store") for v in versions]
    if sync is not None and sync.updated_at is not None:
        timeline.append(HistoryRow(sync.updated_at, f"now {sync.state.value}", "outbox"))
    timeline.sort(key=lambda row: row.at)
    return RecordPage(
        record=record,
        sync=sync,
        sync_message=outcome_message(sync.last_outcome) if sync and sync.last_outcome else None,
        versions=versions,
        history=history,
        timeline=timeline,
        fhir_version=fhir_version,
        resources=resources,
        mapping_error=mapping_error,
        patient_token=store.patient_token(record.patient),
        text_withheld=text_withheld,
    )


def pretty_json(value: Mapping[str, Any] | Sequence[Any]) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
