"""What the console's pages read from the store, without a browser: the library's scores with
cutoff and reliable-change marks, consent events in words, the engine's decision now, the daily
trend and opaque patient ids."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fhir_alliance_service.config import Settings
from fhir_alliance_service.console.pages import (
    TEXT_WITHHELD,
    TREND_DAYS,
    find_patient,
    outcome_message,
    overview_page,
    patient_page,
    record_page,
)
from fhir_alliance_service.store import SqlStore, open_store
from fhir_alliance_service.store.interface import SyncState
from fhir_alliance_service.usecases.intake import intake_records
from fhir_alliance_service.usecases.withholding import withhold_resource_text

from fhir_alliance.instruments import InstrumentCode, ReliableChange
from fhir_alliance.mapping.note import MAPPER as NOTES
from tests.service.console.conftest import EHR, ROOT, load_clinic

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
CLIENT_1 = "Patient/demo-client-1"
SETTINGS = Settings(recipients=(EHR,))


@pytest.fixture
def clinic_store(sqlite_url: str) -> Iterator[SqlStore]:
    """A store holding the demo clinic's consents and sessions."""
    store = open_store(sqlite_url)
    intake_records(store, load_clinic("1-consents.json"), at=NOW)
    intake_records(store, load_clinic("2-sessions.json"), at=NOW)
    try:
        yield store
    finally:
        store.close()


def _ors(session: int, values: list[float]) -> dict[str, Any]:
    record = copy.deepcopy(
        next(r for r in load_clinic("2-sessions.json") if r.get("instrument") == "ors")
    )
    record["id"] = f"https://demo-clinic.example.org/alliance-records|ors-client-1-extra-{session}"
    record["effective"] = (datetime(2026, 11, 20, tzinfo=UTC) + timedelta(days=session)).isoformat()
    record["responses"] = {str(i + 1): v for i, v in enumerate(values)}
    return record


def test_scores_are_the_librarys_with_cutoff_and_reliable_change(clinic_store: SqlStore) -> None:
    """ORS totals are summed by the library; a rise of 5 or more is IMPROVED, a fall DETERIORATED,
    and totals under 25 are below the cutoff."""
    intake_records(
        clinic_store, [_ors(1, [7.0, 7.0, 6.0, 6.0]), _ors(2, [5.0, 5.0, 5.0, 5.0])], at=NOW
    )
    page = patient_page(clinic_store, SETTINGS, CLIENT_1, now=NOW)
    ors = page.scores[InstrumentCode.ORS]
    assert [p.total for p in ors] == [
        Decimal("17.6"),
        Decimal("19.8"),
        Decimal("26.0"),
        Decimal("20.0"),
    ]
    assert [p.change for p in ors] == [
        None,
        ReliableChange.NO_RELIABLE_CHANGE,
        ReliableChange.IMPROVED,
        ReliableChange.DETERIORATED,
    ]
    assert [p.below_cutoff for p in ors] == [True, True, False, True]
    wai = page.scores[InstrumentCode.WAI_SR][0]
    assert wai.total == sum(v for v in wai.subscales.values() if v is not None)


def test_events_ratings_consents_and_decision_of_a_patient(clinic_store: SqlStore) -> None:
    """Rupture then repair in time order; the automated rating names its tool; the consents are
    'given' and 'restricted'; the engine permits sharing with the EHR now."""
    page = patient_page(clinic_store, SETTINGS, CLIENT_1, now=NOW)
    assert [e.kind for e in page.events] == ["rupture", "repair"]
    assert [r.automated for r in page.ratings] == [
        "demo-alliance-analyser 1.0.0, reviewed by a clinician"
    ]
    assert [(c.event, c.consent) for c in page.consents] == [
        ("given", "sharing of alliance measures"),
        ("restricted", "restriction"),
    ]
    assert [(d.recipient, d.outcome) for d in page.decisions] == [(EHR, "permit")]
    declined = patient_page(clinic_store, SETTINGS, "Patient/demo-client-2", now=NOW)
    assert ("declined intervention", "intervention (Cognitive behavioral therapy)") in [
        (c.event, c.consent) for c in declined.consents
    ]


def test_a_revocation_shows_in_the_timeline_and_the_decision(clinic_store: SqlStore) -> None:
    """After client 3 revokes her share the timeline ends 'revoked' and nothing is permitted."""
    revocation = next(r for r in load_clinic("3-later.json") if r["kind"] == "consent-revocation")
    intake_records(clinic_store, [revocation], at=NOW)
    page = patient_page(clinic_store, SETTINGS, "Patient/demo-client-3", now=NOW)
    assert [c.event for c in page.consents] == ["given", "revoked"]
    assert page.decisions[0].outcome != "permit"


def test_overview_counts_trend_and_patients(clinic_store: SqlStore) -> None:
    """Counts equal the store's; the trend covers the 14 UTC days up to today from the audit
    trail (records taken in 15 days ago fall outside it); patients are listed under opaque ids
    that lead back to them."""
    early = copy.deepcopy(load_clinic("2-sessions.json")[0])
    early["id"] = "https://demo-clinic.example.org/alliance-records|early"
    intake_records(clinic_store, [early], at=NOW - timedelta(days=TREND_DAYS))
    page = overview_page(clinic_store, SETTINGS, now=NOW)
    queued = clinic_store.counts_by_state()[SyncState.QUEUED]
    assert page.counts[SyncState.QUEUED] == queued > 0
    days = [NOW.date() - timedelta(days=n) for n in reversed(range(TREND_DAYS))]
    assert [d.day for d in page.trend] == days
    received = len(load_clinic("1-consents.json")) + len(load_clinic("2-sessions.json"))
    assert [d.counts["intake"] for d in page.trend] == [0] * (TREND_DAYS - 1) + [received]
    assert all(d.counts["disclose"] == 0 for d in page.trend)
    assert {p.patient for p in page.patients} == {
        CLIENT_1,
        "Patient/demo-client-2",
        "Patient/demo-client-3",
    }
    for link in page.patients:
        assert (
            link.token == clinic_store.patient_token(link.patient)
            and link.patient not in link.token
        )
        assert find_patient(clinic_store, link.token) == link.patient
    assert find_patient(clinic_store, clinic_store.patient_token("Patient/nobody")) is None


def test_the_servers_message_is_read_from_the_operation_outcome() -> None:
    """details.text, else diagnostics, else the code; with the expression it points at."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "details": {"text": "bad unit"},
                "expression": ["Observation.value"],
            },
            {"severity": "error", "code": "processing", "diagnostics": "rule x"},
            {"severity": "error", "code": "conflict"},
        ],
    }
    assert outcome_message(outcome) == "bad unit (at Observation.value); rule x; conflict"
    assert outcome_message(None) == "no message"


def test_record_page_history_is_in_time_order_with_versions_and_the_state_now(
    clinic_store: SqlStore,
) -> None:
    """A changed record shows both stored versions and its audit entries in time order, ending
    with its state now; the mapped FHIR resource is an Observation for R4."""
    srs = next(r for r in load_clinic("2-sessions.json") if r.get("instrument") == "srs")
    changed = {**srs, "responses": {"1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0}}
    (result,) = intake_records(clinic_store, [changed], at=NOW + timedelta(hours=1))
    page = record_page(clinic_store, result.record_id)
    assert page is not None
    whats = [row.what for row in page.timeline]
    assert "version 1 stored" in whats and "version 2 stored" in whats
    assert whats[-1] == "now queued"
    assert [row.at for row in page.timeline] == sorted(row.at for row in page.timeline)
    assert page.fhir_version == "4.0.1"
    assert '"resourceType": "Observation"' in page.resources[0]
    assert record_page(clinic_store, "00000000-0000-0000-0000-000000000000") is None


def test_therapist_and_client_wai_sr_are_kept_apart(clinic_store: SqlStore) -> None:
    """A WAI-SR-T administration is scored as the therapist form (total only), beside the
    client form with its subscales."""
    therapist = {
        "kind": "instrument-administration",
        "id": "https://demo-clinic.example.org/alliance-records|wai-sr-t-client-1-session-1",
        "instrument": "wai-sr-t",
        "patient": {"reference": CLIENT_1},
        "counterpart": {"reference": "Practitioner/demo-therapist-1"},
        "effective": "2026-11-05T16:10:00+00:00",
        "rater": {"role": "therapist", "who": {"reference": "Practitioner/demo-therapist-1"}},
        "responses": {str(n): 4 for n in range(1, 13)},
    }
    intake_records(clinic_store, [therapist], at=NOW)
    page = patient_page(clinic_store, SETTINGS, CLIENT_1, now=NOW)
    (form,) = page.scores[InstrumentCode.WAI_SR_T]
    assert form.total == Decimal(48) and form.subscales == {}
    assert len(page.scores[InstrumentCode.WAI_SR]) == 1


def test_withholding_note_text_keeps_the_structure_and_drops_every_free_text() -> None:
    """Attachment data and titles and the therapist's label-removal statement are replaced; size,
    hash, labels and the rest of the DocumentReference stay; the mapper's output is not changed."""
    example = ROOT / "examples" / "notes" / "signed-rewritten-note.json"
    note = NOTES.load(json.loads(example.read_text(encoding="utf-8")))
    document = NOTES.to_fhir(note)[0]
    original = json.dumps(document, sort_keys=True)
    shown = withhold_resource_text(document, TEXT_WITHHELD)
    assert json.dumps(document, sort_keys=True) == original
    text = json.dumps(shown)
    assert note.text not in text and base64.b64encode(note.text.encode()).decode() not in text
    assert note.ai_label_removal is not None and note.ai_label_removal.statement not in text
    for section in note.sections:
        assert section.title not in text
    attachments = [c["attachment"] for c in shown["content"]]
    assert all(a["data"] == TEXT_WITHHELD for a in attachments)
    assert [a["hash"] for a in attachments] == [
        c["attachment"]["hash"] for c in document["content"]
    ]
    assert shown["meta"] == document["meta"] and shown["type"] == document["type"]
